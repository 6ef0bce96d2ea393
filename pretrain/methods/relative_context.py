"""Relative context (Doersch, Gupta and Efros, "Unsupervised Visual Representation Learning by Context
Prediction", ICCV 2015): given the centre patch of a 3x3 grid and one of its eight neighbours, say
which neighbour it is. The "relative context" row of the paper's Table 2.

Both patches go through the same AlexNet encoder; an MLP on their concatenated pool5 features
predicts the neighbour's position. Three things keep the network from solving the task with
low-level cues instead of objects (Doersch §3.1): a gap between patches (no continuing lines or
textures across borders), a random jitter of each patch (no exact alignment), and colour dropping
(no chromatic aberration, which shifts colour channels towards the image edges).
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bench_runtime.engine import take_step
from bench_runtime.errors import UserError
from ..backbones import feature_shape
from .base import PretextMethod, classification_metrics
from .registry import register

# (row, column) steps from the centre cell to each neighbour, in reading order; label = index.
NEIGHBOUR_OFFSETS = torch.tensor([(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)])
NETWORK_PATCH_MIN = 64  # the smallest input AlexNet reduces to a 1x1 pool5
MIN_PATCH = 8           # below this the jitter (1/8 patch) would be zero
HIDDEN = 512


@dataclass(frozen=True)
class PatchGrid:
    """A 3x3 grid of `patch`-pixel squares `gap` pixels apart in an `image_size` square image; each
    square moves independently by up to `jitter` pixels along each axis."""
    image_size: int
    patch: int
    gap: int
    jitter: int

    @property
    def stride(self):
        """Distance between the corners of adjacent cells before jitter."""
        return self.patch + self.gap

    @property
    def span(self):
        """Side of the whole grid before jitter."""
        return 3 * self.patch + 2 * self.gap


def patch_grid(image_size):
    """The largest grid with Doersch's proportions (gap = patch / 2, jitter = patch / 8; his 96 px
    patches have a 48 px gap and up to 7 px of jitter) that fits in the image with all its jitter:
    3 patches + 2 gaps + 2 jitters = 4.25 patches <= image_size."""
    patch = image_size * 4 // 17
    if patch < MIN_PATCH:
        raise UserError(f"--image-size {image_size} is too small for relative context "
                        f"(at least {-(-MIN_PATCH * 17 // 4)} px)")
    return PatchGrid(image_size, patch, patch // 2, patch // 8)


def patch_pair_positions(grid, labels, generator=None):
    """Top-left corners, as (N, 2) (row, column) tensors, of a centre patch and of its neighbour at
    `labels` ((N,), 0..7, see NEIGHBOUR_OFFSETS), for N images.

    The whole grid sits at a random place in the image (where there is room), and each patch moves by
    its own jitter; every patch stays inside the image.
    """
    count = len(labels)
    room = grid.image_size - grid.span - 2 * grid.jitter
    origin = grid.jitter + torch.randint(room + 1, (count, 2), generator=generator)
    jitter = torch.randint(-grid.jitter, grid.jitter + 1, (2, count, 2), generator=generator)
    centre = origin + grid.stride + jitter[0]
    neighbour = origin + grid.stride * (1 + NEIGHBOUR_OFFSETS[labels]) + jitter[1]
    return centre, neighbour


def crop_patches(images, corners, size):
    """(N, C, H, W) images and (N, 2) top-left corners -> the (N, C, size, size) squares there."""
    steps = torch.arange(size)
    rows = (corners[:, 0:1] + steps).to(images.device)
    columns = (corners[:, 1:2] + steps).to(images.device)
    index = torch.arange(len(images), device=images.device)
    # Advanced indices split by the channel slice come first in the result: (N, size, size, C).
    return images[index[:, None, None], :, rows[:, :, None], columns[:, None, :]].permute(0, 3, 1, 2)


def drop_colours(patches, generator=None):
    """Doersch's colour dropping: in each (C, H, W) patch keep one random channel and replace the
    others with Gaussian noise of 1/100 the kept channel's standard deviation, around 0 (the dataset
    mean of normalised inputs). Returns the new patches and the (N,) kept channel indices.

    Drawn on the CPU, the generator a checkpoint saves, so a resumed run sees the same patches.
    """
    count, channels = patches.shape[:2]
    kept = torch.randint(channels, (count,), generator=generator)
    noise = torch.randn(patches.shape, generator=generator).to(patches.device)
    kept_on_device = kept.to(patches.device)
    scale = patches[torch.arange(count, device=patches.device), kept_on_device].flatten(1).std(1) / 100
    keep = F.one_hot(kept_on_device, channels).bool()[:, :, None, None]
    return torch.where(keep, patches, noise * scale[:, None, None, None]), kept


def outline(images, corners, size, colour):
    """Copies of `images` with a 1-pixel frame of `colour` ((3,), in the images' normalisation)
    around the `size`-pixel square at each of the (N, 2) top-left `corners`."""
    framed = images.clone()
    colour = colour[:, None, None]
    for image, (top, left) in zip(framed, corners.tolist()):
        bottom, right = top + size - 1, left + size - 1
        image[:, top:bottom + 1, [left, right]] = colour
        image[:, [top, bottom], left:right + 1] = colour
    return framed


@register
class RelativeContext(PretextMethod):
    name = "relative-context"
    description = "say where a patch lies among the 8 neighbours of another (Doersch et al. 2015)"

    def __init__(self, config, dataset_mean, dataset_std):
        super().__init__(config, dataset_mean, dataset_std)
        self.grid = patch_grid(config.image_size)
        # Patches are much smaller than the image; those under AlexNet's minimum are scaled up to it.
        self.network_patch = max(self.grid.patch, NETWORK_PATCH_MIN)
        channels, side = feature_shape(self.encoder, self.network_patch)
        self.head = nn.Sequential(
            nn.Linear(2 * channels * side * side, HIDDEN), nn.ReLU(inplace=True),
            nn.Dropout(0.5), nn.Linear(HIDDEN, len(NEIGHBOUR_OFFSETS)))

    def forward(self, centres, neighbours):
        """Neighbour-position logits (N, 8) for N pairs of patches."""
        # One encoder pass over both halves: the same weights see both patches.
        features = self.encoder(torch.cat([centres, neighbours])).flatten(1)
        return self.head(torch.cat(features.chunk(2), dim=1))

    def sample_pairs(self, images, generator=None):
        """One random pair per image: (centre patches, neighbour patches, labels on the images'
        device, centre corners, neighbour corners), patches colour-dropped at the network's size."""
        labels = torch.randint(len(NEIGHBOUR_OFFSETS), (len(images),), generator=generator)
        centre_at, neighbour_at = patch_pair_positions(self.grid, labels, generator)
        patches = torch.cat([crop_patches(images, corners, self.grid.patch)
                             for corners in (centre_at, neighbour_at)])
        if self.network_patch != self.grid.patch:
            patches = F.interpolate(patches, size=self.network_patch, mode="bilinear",
                                    align_corners=False)
        patches, _ = drop_colours(patches, generator)
        centres, neighbours = patches.chunk(2)
        return centres, neighbours, labels.to(images.device), centre_at, neighbour_at

    def configure_optimizers(self):
        return {"network": torch.optim.Adam(self.parameters(), lr=self.config.lr or 1e-3)}

    def train_step(self, batch, optimizers):
        centres, neighbours, labels, _, _ = self.sample_pairs(batch["image"])
        loss, accuracy = classification_metrics(self(centres, neighbours), labels)
        take_step(optimizers["network"], loss)
        return {"loss": loss.item(), "accuracy": accuracy.item()}

    @torch.no_grad()
    def preview(self, batch):
        """Row 1: the images with the centre patch framed in white, the true neighbour in green and,
        where the network is wrong, its guess (the unjittered cell) in red. Rows 2-3: the centre and
        neighbour patches as the network sees them (colour-dropped), at the image size."""
        images = batch["image"]
        # Its own fixed generator: the same pairs in every preview, and the training RNG untouched.
        centres, neighbours, labels, centre_at, neighbour_at = self.sample_pairs(
            images, torch.Generator().manual_seed(0))
        predicted = self(centres, neighbours).argmax(1).cpu()
        mean, std = torch.tensor(self.input_mean), torch.tensor(self.input_std)

        def colour(rgb):
            return ((torch.tensor(rgb) - mean) / std).to(images.device)

        size = self.grid.patch
        framed = outline(images, centre_at, size, colour([1.0, 1.0, 1.0]))
        framed = outline(framed, neighbour_at, size, colour([0.0, 1.0, 0.0]))
        wrong = predicted != labels.cpu()
        guess_at = centre_at + self.grid.stride * NEIGHBOUR_OFFSETS[predicted]
        guess_at = guess_at.clamp(0, images.shape[-1] - size)  # the centre's jitter can push it out
        on_device = wrong.to(images.device)
        framed[on_device] = outline(framed[on_device], guess_at[wrong], size, colour([1.0, 0.0, 0.0]))
        image_size = images.shape[-2:]
        return [framed, *(F.interpolate(patches, size=image_size, mode="bilinear", align_corners=False)
                          for patches in (centres, neighbours))]
