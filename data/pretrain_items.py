"""Pretraining images: decode, rescale, random crop, flip, normalise, and draw a hole mask.

Every random choice for an item comes from a generator seeded by (seed, epoch, index), so an
item is the same whichever worker loads it and a resumed run sees exactly the same batches.
"""
import numpy as np
import torch
from torch.utils.data import Dataset

from runtime.errors import UserError
from .pixels import load_rgb, normalized_tensor


class PretrainImages(Dataset):
    """Items are looked up by (epoch, index) keys from `EpochOrder`; each is
    {"image": (3, S, S) normalised} plus {"hole": (1, S, S) float} when a mask sampler is given
    and {"label": int64 class index} when labels are given."""

    def __init__(self, paths, image_size, load_size, mean, std, mask_sampler=None, seed=0, labels=None,
                 cache=None):
        if load_size < image_size:
            raise UserError(f"--load-size {load_size} is smaller than --image-size {image_size}")
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
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        item = {"image": normalized_tensor(crop, self.mean, self.std)}
        if self.mask_sampler is not None:
            item["hole"] = torch.from_numpy(self.mask_sampler(rng)).float().unsqueeze(0)
        if self.labels is not None:
            item["label"] = torch.tensor(self.labels[index])
        return item

    def denormalize(self, images):
        return (images * self.std + self.mean).clamp(0, 1)
