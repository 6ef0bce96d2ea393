"""Hole masks drawn a batch at a time as torch operations, on the training device: the four rules
of bench_data.masks (which stays the per-image reference and the default) for a GPU that a loader
drawing masks per image on the CPU cannot keep busy.

Each item's random numbers are a pure function of (seed, epoch, index, draw): a counter-based
generator hashes them with a 32-bit integer mixer ("lowbias32", C. Wellons) into floats in
[0, 1). An item gets the same hole in any batch, on any number of processes, and a resumed run
the same holes, with no generator state to carry. The holes are not the ones bench_data.masks draws
for that item (other random numbers), but they follow the same rules:

* central        the same centre square for every item;
* random-block   squares with sides in [side/8, side/4] added until 5 have been rejected for
                 taking the coverage over 1/4;
* random-region  VOC shapes, scaled to 3-20% of the image, rotated, flipped and moved anywhere
                 (nearest-neighbour sampling with torch's grid_sample), pasted until the coverage
                 reaches 15% or 20 have been rejected for taking it over 1/4 or missing the image;
* noise          low-frequency noise, bilinearly upsampled; the lowest 20-30% of pixels.
The two loops stop after MAX_ROUNDS rounds at the latest (bench_data.masks has no cap); every item of a
batch runs the same rounds, finished ones unchanged.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F

from bench_runtime.errors import UserError
from .masks import (BLOCK_REJECTIONS, MAX_COVERAGE, NOISE_BLOB_PX, NOISE_COVERAGE, REGION_AREA, REGION_MIN_COVERAGE,
                    REGION_REJECTIONS, central_mask)

MASK32 = 0xFFFFFFFF
MAX_ROUNDS = 200
REGION_CANVAS = 128  # bench_data.masks.load_region_shapes shrinks shapes to at most this side


def _mul32(x, constant):
    """x * constant mod 2**32 for int64 x in [0, 2**32), without int64 overflow."""
    low, high = constant & 0xFFFF, constant >> 16
    return (x * low + (((x * high) & 0xFFFF) << 16)) & MASK32


def _mix(x):
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def uniform(seed, keys, stream, count):
    """(B, count) float32 in [0, 1): draw j of `stream` for the items `keys` ((B, 2) int64:
    epoch, index), a pure function of (seed, epoch, index, stream, j)."""
    state = _mix(torch.full_like(keys[:, 0], seed & MASK32))
    for value in (keys[:, 0], keys[:, 1], torch.full_like(keys[:, 0], stream)):
        state = _mix(state ^ (value & MASK32))
    draws = torch.arange(count, device=keys.device, dtype=torch.int64)
    bits = _mix((state[:, None] + _mul32(draws + 1, 0x9E3779B9)) & MASK32)
    return (bits >> 8).to(torch.float32) / float(1 << 24)


class DeviceMasks:
    """Draws masks of `sampler`'s kind and side (a bench_data.masks.MaskSampler, which has checked them),
    a batch at a time: `masks(keys)` is a (B, 1, side, side) float tensor (1 = hole) on the keys'
    device."""

    def __init__(self, sampler, seed):
        self.kind, self.side, self.seed = sampler.kind, sampler.side, seed
        self.central = torch.from_numpy(central_mask(sampler.side, sampler.overlap)) if self.kind == "central" else None
        self.canvas = self.areas = None
        if self.kind == "random-region":
            self.canvas, self.areas = _shape_canvas(sampler.shapes)

    def __call__(self, keys):
        device = keys.device
        if self.kind == "central":
            mask = self.central.to(device).expand(len(keys), self.side, self.side)
        elif self.kind == "random-block":
            mask = random_blocks(self.seed, keys, self.side)
        elif self.kind == "noise":
            mask = noise(self.seed, keys, self.side)
        else:
            self.canvas, self.areas = self.canvas.to(device), self.areas.to(device)
            mask, _ = random_regions(self.seed, keys, self.side, self.canvas, self.areas)
        return mask.unsqueeze(1).float()


def random_blocks(seed, keys, side, max_coverage=MAX_COVERAGE, max_rejections=BLOCK_REJECTIONS):
    """(B, side, side) bool: bench_data.masks.random_block_mask's rule for every item at once."""
    low, high = max(1, side // 8), max(1, side // 4)
    mask = torch.zeros(len(keys), side, side, dtype=torch.bool, device=keys.device)
    rejections = torch.zeros(len(keys), dtype=torch.int64, device=keys.device)
    pixels = torch.arange(side, device=keys.device)
    for round_ in range(MAX_ROUNDS):
        active = rejections < max_rejections
        if not active.any():
            break
        u = uniform(seed, keys, round_, 3)
        block = low + (u[:, 0] * (high - low + 1)).long()
        top, left = ((u[:, 1:] * (side - block + 1)[:, None]).long()).unbind(1)
        rows = (pixels >= top[:, None]) & (pixels < (top + block)[:, None])
        cols = (pixels >= left[:, None]) & (pixels < (left + block)[:, None])
        candidate = mask | (rows[:, :, None] & cols[:, None, :])
        fits = candidate.flatten(1).float().mean(1) <= max_coverage
        mask = torch.where((active & fits)[:, None, None], candidate, mask)
        rejections += (active & ~fits).long()
    return mask


def noise(seed, keys, side, coverage=NOISE_COVERAGE, blob_px=NOISE_BLOB_PX):
    """(B, side, side) bool: bench_data.masks.noise_mask's rule for every item at once."""
    cells = int(np.ceil(side / blob_px)) + 1
    grid = uniform(seed, keys, 0, cells * cells).view(-1, 1, cells, cells)
    values = F.interpolate(grid, size=(side, side), mode="bilinear", align_corners=False).flatten(1)
    area = side * side
    count = (uniform(seed, keys, 1, 1)[:, 0] * (coverage[1] - coverage[0]) + coverage[0]) * area
    count = count.round().clamp(math.ceil(coverage[0] * area), math.floor(coverage[1] * area)).long()
    order = torch.argsort(values, dim=1, stable=True)
    chosen = torch.arange(area, device=keys.device)[None, :] < count[:, None]
    return torch.zeros_like(chosen).scatter(1, order, chosen).view(-1, side, side)


def _shape_canvas(shapes):
    """The shapes centred on (N, 1, REGION_CANVAS, REGION_CANVAS) uint8 canvases, and their areas."""
    canvas = torch.zeros(len(shapes), 1, REGION_CANVAS, REGION_CANVAS, dtype=torch.uint8)
    for k, shape in enumerate(shapes):
        height, width = shape.shape
        if max(height, width) > REGION_CANVAS:
            raise UserError(f"region shape {k} is {height}x{width} px; at most {REGION_CANVAS} px fit")
        top, left = (REGION_CANVAS - height) // 2, (REGION_CANVAS - width) // 2
        canvas[k, 0, top:top + height, left:left + width] = torch.from_numpy(np.ascontiguousarray(shape))
    return canvas, canvas.flatten(1).sum(1).float()


def random_regions(seed, keys, side, canvas, areas, min_coverage=REGION_MIN_COVERAGE, max_coverage=MAX_COVERAGE,
                   max_rejections=REGION_REJECTIONS):
    """(B, side, side) bool: bench_data.masks.random_region_mask's rule for every item at once; and
    (B, N) int64: how many times each shape was pasted into each item."""
    count = len(keys)
    mask = torch.zeros(count, side, side, dtype=torch.bool, device=keys.device)
    uses = torch.zeros(count, len(canvas), dtype=torch.int64, device=keys.device)
    rejections = torch.zeros(count, dtype=torch.int64, device=keys.device)
    # Output pixel centres, in pixels.
    ys, xs = torch.meshgrid(torch.arange(side, device=keys.device, dtype=torch.float32),
                            torch.arange(side, device=keys.device, dtype=torch.float32), indexing="ij")
    centre = (REGION_CANVAS - 1) / 2
    for round_ in range(MAX_ROUNDS):
        active = (mask.flatten(1).float().mean(1) < min_coverage) & (rejections < max_rejections)
        if not active.any():
            break
        u = uniform(seed, keys, round_, 6)
        index = (u[:, 0] * len(canvas)).long().clamp(max=len(canvas) - 1)
        flip = torch.where(u[:, 1] < 0.5, -1.0, 1.0)
        low, high = REGION_AREA
        scale = torch.sqrt((low + (high - low) * u[:, 2]) * side * side / areas[index])
        angle = (u[:, 3] * 2 - 1) * math.pi
        place_x, place_y = u[:, 4] * side, u[:, 5] * side
        # Each output pixel back to the shape's canvas: undo the move, rotation, scale and flip.
        dx = xs[None] + 0.5 - place_x[:, None, None]
        dy = ys[None] + 0.5 - place_y[:, None, None]
        cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
        source_x = flip[:, None, None] * (cos * dx + sin * dy) / scale[:, None, None] + centre
        source_y = (-sin * dx + cos * dy) / scale[:, None, None] + centre
        grid = torch.stack([(source_x + 0.5) / REGION_CANVAS * 2 - 1, (source_y + 0.5) / REGION_CANVAS * 2 - 1], -1)
        pasted = F.grid_sample(canvas[index].float(), grid, mode="nearest", padding_mode="zeros",
                               align_corners=False)[:, 0] > 0.5
        candidate = mask | pasted
        fits = (candidate.flatten(1).float().mean(1) <= max_coverage) & pasted.flatten(1).any(1)
        accepted = active & fits
        mask = torch.where(accepted[:, None, None], candidate, mask)
        uses[torch.arange(count, device=keys.device), index] += accepted.long()
        rejections += (active & ~fits).long()
    return mask, uses
