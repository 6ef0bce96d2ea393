"""Pretraining images: decode, rescale, random crop, flip, normalise, and draw a hole mask.

Every random choice for an item comes from (seed, epoch, index), so an item is the same whichever
worker loads it and a resumed run sees exactly the same batches.

Where the work happens (`augment_on`):
* "loader" (the reference): all of it per image in the DataLoader workers, holes by bench_data.masks;
* "device": a worker only slices the crop from the image (cache) as uint8; the flip, the
  normalisation and the holes (bench_data.device_masks) run a batch at a time on the training device
  (`finish_batch`), which keeps a GPU fed with fewer loader cores. Same rules, other random numbers.
"""
import numpy as np
import torch
from torch.utils.data import Dataset

from bench_runtime.errors import UserError
from .device_masks import DeviceMasks, uniform
from .pixels import load_rgb, normalized_tensor

AUGMENT_ON = ("loader", "device")
FLIP_STREAM = 1 << 20  # the device flip's draws: a stream no mask round reaches


class PretrainImages(Dataset):
    """Items are looked up by (epoch, index) keys from `EpochOrder`; each is
    {"image": (3, S, S) normalised} plus {"hole": (1, S, S) float} when a mask sampler is given
    and {"label": int64 class index} when labels are given. With augment_on "device" an item is
    {"pixels": (S, S, 3) uint8 crop, "key": (epoch, index)} (+ label), and `finish_batch` makes
    the image and hole of a whole batch."""

    def __init__(self, paths, image_size, load_size, mean, std, mask_sampler=None, seed=0, labels=None,
                 cache=None, augment_on="loader"):
        if load_size < image_size:
            raise UserError(f"--load-size {load_size} is smaller than --image-size {image_size}")
        if augment_on not in AUGMENT_ON:
            raise UserError(f"--augment-on must be one of {', '.join(AUGMENT_ON)}, got {augment_on!r}")
        self.augment_on = augment_on
        self.device_masks = None if mask_sampler is None or augment_on == "loader" else \
            DeviceMasks(mask_sampler, seed)
        self.paths, self.image_size, self.load_size = list(paths), image_size, load_size
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)
        self.mask_sampler, self.seed, self.labels = mask_sampler, seed, labels
        # An ImageCache of the paths at load_size (the same pixels as decoding them each time).
        self.cache = cache

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, key):
        epoch, index = key
        rng = np.random.default_rng([self.seed, epoch, index])
        image = (self.cache[index] if self.cache is not None
                 else np.asarray(load_rgb(self.paths[index], self.load_size)))
        side = self.image_size
        top = int(rng.integers(0, image.shape[0] - side + 1))
        left = int(rng.integers(0, image.shape[1] - side + 1))
        crop = image[top:top + side, left:left + side]
        if self.augment_on == "device":  # the rest is done a batch at a time, in finish_batch
            item = {"pixels": torch.from_numpy(np.ascontiguousarray(crop)), "key": torch.tensor([epoch, index])}
        else:
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            item = {"image": normalized_tensor(crop, self.mean, self.std)}
            if self.mask_sampler is not None:
                item["hole"] = torch.from_numpy(self.mask_sampler(rng)).float().unsqueeze(0)
        if self.labels is not None:
            item["label"] = torch.tensor(self.labels[index])
        return item

    def finish_batch(self, batch):
        """A collated batch, on the training device, as the method takes it: with augment_on
        "device", the flip, normalisation and holes of its uint8 crops; else unchanged."""
        if self.augment_on == "loader":
            return batch
        batch = dict(batch)
        keys, pixels = batch.pop("key"), batch.pop("pixels")
        images = pixels.permute(0, 3, 1, 2).contiguous().float() / 255  # NCHW, as the loader path gives
        flip = uniform(self.seed, keys, FLIP_STREAM, 1)[:, 0] < 0.5
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        batch["image"] = (images - self.mean.to(images.device)) / self.std.to(images.device)
        if self.device_masks is not None:
            batch["hole"] = self.device_masks(keys)
        return batch

    def denormalize(self, images):
        return (images * self.std + self.mean).clamp(0, 1)
