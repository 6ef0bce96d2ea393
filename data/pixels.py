"""Pretraining images: decode, rescale, random crop, flip, normalise, and draw a hole mask.

Every random choice for an item comes from a generator seeded by (seed, epoch, index), so an
item is the same whichever worker loads it and a resumed run sees exactly the same batches.
"""
import sys

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler
from tqdm import tqdm

from .errors import UserError


def load_rgb(path, shorter_side=None):
    """Decode an image as RGB, optionally rescaling it so its shorter side is `shorter_side`."""
    try:
        with Image.open(path) as image:
            if shorter_side is not None:
                image.draft("RGB", (shorter_side, shorter_side))  # cheap JPEG downscale on decode
            image = image.convert("RGB")
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read image {path}: {exc}") from None
    return image if shorter_side is None else resize_shorter_side(image, shorter_side)


BAD_IMAGE_POLICIES = ("fail", "skip")


def readable_only(paths, policy, what, progress=True):
    """`paths` under the --bad-images policy. "fail": unchanged, so a file that cannot be decoded
    stops the run when it is read, with its name. "skip": every file is decoded once up front
    and the unreadable ones are left out, with a warning that counts them."""
    if policy not in BAD_IMAGE_POLICIES:
        raise UserError(f"--bad-images must be one of {', '.join(BAD_IMAGE_POLICIES)}, got {policy!r}")
    if policy == "fail":
        return list(paths)
    readable, unreadable = [], []
    for path in tqdm(paths, desc=f"checking images of {what}", unit="img", disable=not progress):
        try:
            load_rgb(path, 32)  # a small draft still decodes the whole file
            readable.append(path)
        except UserError:
            unreadable.append(path)
    if unreadable:
        print(f"warning: skipping {len(unreadable)} unreadable image(s) of {what}, e.g. {unreadable[0]}",
              file=sys.stderr)
    if not readable:
        raise UserError(f"no readable images in {what}")
    return readable


def resize_shorter_side(image, side, resample=Image.BILINEAR):
    """`image` rescaled so its shorter side is `side`, keeping the aspect ratio."""
    scale = side / min(image.size)
    size = (max(side, round(image.width * scale)), max(side, round(image.height * scale)))
    return image.resize(size, resample)


def normalized_tensor(pixels, mean, std):
    """(H, W, 3) uint8 pixels (array or PIL image) -> (3, H, W) float (x / 255 - mean) / std,
    with mean and std as (3, 1, 1) tensors."""
    return (torch.from_numpy(np.array(pixels)).permute(2, 0, 1).float() / 255 - mean) / std


def channel_stats(paths, max_images=256, side=64):
    """Per-channel mean and std of pixels in [0, 1] over an evenly spaced sample of images."""
    step = max(1, len(paths) // max_images)
    pixels = np.concatenate([
        np.asarray(load_rgb(path, side), dtype=np.float64).reshape(-1, 3) / 255.0
        for path in paths[::step][:max_images]])
    return pixels.mean(0).tolist(), pixels.std(0).tolist()


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


class EpochOrder(Sampler):
    """Endless (epoch, index) keys: a fresh seeded permutation per epoch, whole batches only,
    starting at `start_step` so that a resumed run continues the same sequence.

    With `world_size` processes (torchrun) this also does DistributedSampler's job: process `rank`
    gets items [rank * B / N, (rank + 1) * B / N) of each global batch of B = `batch_size` keys,
    so the processes' batches (of B / N each) together are exactly the one-process batch; the
    order, and resuming from a step, do not depend on the number of processes."""

    def __init__(self, size, batch_size, seed, start_step=0, rank=0, world_size=1):
        if size < batch_size:
            raise UserError(f"only {size} images for a batch of {batch_size}; lower --batch-size")
        if batch_size % world_size:
            raise UserError(f"--batch-size {batch_size} is not divisible by the {world_size} processes; "
                            f"the global batch is split evenly between them")
        self.size, self.batch_size, self.seed, self.start_step = size, batch_size, seed, start_step
        self.batches_per_epoch = size // batch_size
        self.rank, self.world_size = rank, world_size
        self.share = batch_size // world_size

    def __iter__(self):
        epoch, batch = divmod(self.start_step, self.batches_per_epoch)
        while True:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.size)
            for first in range(batch * self.batch_size, self.batches_per_epoch * self.batch_size,
                               self.batch_size):
                start = first + self.rank * self.share
                for index in order[start:start + self.share]:
                    yield epoch, int(index)
            epoch, batch = epoch + 1, 0
