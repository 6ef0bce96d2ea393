"""Hole masks for context prediction (paper §3.3).

Every function is pure: it takes a NumPy Generator and a square image side and returns a
bool array (side, side) where True marks a dropped pixel. Coverage rules:

* central       one centre square of side/2 (1/4 of the area), shrunk by `overlap` px on each
                side so that hole + overlap band is exactly the centre quarter (released code).
* random-block  squares with sides in [side/8, side/4] at random places, possibly overlapping,
                added until no further square fits under 1/4 coverage (the paper gives no sizes).
* random-region shapes of VOC segmentation masks from other images, randomly scaled, rotated,
                flipped and shifted, pasted until coverage reaches `min_coverage` without ever
                exceeding 1/4. The paper's strategy for all feature-learning results.
* noise         the released code's fallback for when no VOC masks exist: low-frequency
                uniform noise thresholded so that 20-30% of the image is covered.
"""
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from bench_runtime.errors import UserError

MASK_KINDS = ("central", "random-block", "random-region", "noise")
MAX_COVERAGE = 0.25
# The rules' constants, shared with bench_data.device_masks (the same rules drawn a batch at a time).
BLOCK_REJECTIONS = 5
REGION_MIN_COVERAGE = 0.15
REGION_REJECTIONS = 20
REGION_AREA = (0.03, 0.20)  # a pasted shape's area, as a fraction of the image
NOISE_COVERAGE = (0.2, 0.3)
NOISE_BLOB_PX = 16.7


def central_mask(side, overlap=0):
    quarter = side // 2
    start = (side - quarter) // 2 + overlap
    stop = start + quarter - 2 * overlap
    if stop <= start:
        raise UserError(f"overlap {overlap} px leaves no hole in a {side} px image")
    mask = np.zeros((side, side), dtype=bool)
    mask[start:stop, start:stop] = True
    return mask


def random_block_mask(rng, side, max_coverage=MAX_COVERAGE, max_rejections=BLOCK_REJECTIONS):
    mask = np.zeros((side, side), dtype=bool)
    low, high = max(1, side // 8), max(1, side // 4)
    rejections = 0
    while rejections < max_rejections:
        block = int(rng.integers(low, high + 1))
        y, x = rng.integers(0, side - block + 1, size=2)
        candidate = mask.copy()
        candidate[y:y + block, x:x + block] = True
        if candidate.mean() > max_coverage:
            rejections += 1
        else:
            mask = candidate
    return mask


def random_region_mask(rng, side, shapes, min_coverage=REGION_MIN_COVERAGE, max_coverage=MAX_COVERAGE,
                       max_rejections=REGION_REJECTIONS):
    if not shapes:
        raise UserError("random-region masks need at least one shape")
    mask = np.zeros((side, side), dtype=bool)
    rejections = 0
    while mask.mean() < min_coverage and rejections < max_rejections:
        pasted = _deform_and_place(rng, shapes[int(rng.integers(len(shapes)))], side)
        candidate = mask | pasted
        if candidate.mean() > max_coverage or not pasted.any():
            rejections += 1
        else:
            mask = candidate
    return mask


def _deform_and_place(rng, shape, side):
    """Scale `shape` to a random area of 3-20% of the image, rotate, flip and paste it anywhere."""
    if rng.random() < 0.5:
        shape = shape[:, ::-1]
    area = shape.sum()
    scale = np.sqrt(rng.uniform(*REGION_AREA) * side * side / area)
    angle = rng.uniform(-180.0, 180.0)
    centre_src = (shape.shape[1] / 2.0, shape.shape[0] / 2.0)
    matrix = cv2.getRotationMatrix2D(centre_src, angle, scale)
    # Move the shape's centre to a random point; it may hang over the border.
    matrix[:, 2] += rng.uniform(0, side, size=2) - np.array(centre_src)
    warped = cv2.warpAffine(shape.astype(np.uint8), matrix, (side, side), flags=cv2.INTER_NEAREST)
    return warped.astype(bool)


def noise_mask(rng, side, coverage=NOISE_COVERAGE, blob_px=NOISE_BLOB_PX):
    # The released code thresholds upsampled noise at 0.25 and rejects crops outside 20-30%;
    # at 227 px almost every crop is rejected, so we threshold at the quantile that gives a
    # coverage drawn from that band directly. The blob scale (~17 px) is the released one.
    cells = int(np.ceil(side / blob_px)) + 1
    noise = cv2.resize(rng.random((cells, cells), dtype=np.float32), (side, side),
                       interpolation=cv2.INTER_LINEAR)
    count = int(np.clip(round(rng.uniform(*coverage) * side * side),
                        np.ceil(coverage[0] * side * side), np.floor(coverage[1] * side * side)))
    # Exactly `count` pixels: the upsampled noise has ties, so a value threshold could miss the band.
    mask = np.zeros(side * side, dtype=bool)
    mask[np.argsort(noise, axis=None, kind="stable")[:count]] = True
    return mask.reshape(side, side)


def load_region_shapes(folder, max_shapes=2000, max_side=128, min_pixels=64):
    """Binary object shapes from a folder of VOC segmentation PNGs (class-index palette images).

    Each class present in a mask (values 1..254; 0 is background, 255 void) gives one shape,
    cropped to its bounding box and shrunk so its longer side is at most `max_side`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"mask folder {folder} does not exist")
    files = sorted(folder.rglob("*.png"))[:max_shapes]
    shapes = []
    for path in files:
        labels = np.asarray(Image.open(path))
        if labels.ndim != 2:
            raise UserError(f"{path} is not a single-channel class-index mask")
        for value in np.unique(labels):
            if value in (0, 255):
                continue
            shape = labels == value
            ys, xs = np.nonzero(shape)
            if len(ys) < min_pixels:
                continue
            shape = shape[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
            shrink = max_side / max(shape.shape)
            if shrink < 1:
                size = (max(1, round(shape.shape[1] * shrink)), max(1, round(shape.shape[0] * shrink)))
                shape = cv2.resize(shape.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
            shapes.append(np.ascontiguousarray(shape))
    if not shapes:
        raise UserError(f"no object shapes found in the PNG masks under {folder}")
    return shapes


class MaskSampler:
    """Draws masks of one kind for one image side; picklable, so DataLoader workers can use it."""

    def __init__(self, kind, side, overlap=0, shapes=None):
        if kind not in MASK_KINDS:
            raise UserError(f"unknown mask {kind!r}; choose from {', '.join(MASK_KINDS)}")
        if kind == "random-region" and not shapes:
            raise UserError("random-region masks need a folder of VOC segmentation masks (--mask-dir)")
        self.kind, self.side, self.overlap, self.shapes = kind, side, overlap, shapes

    @classmethod
    def from_folder(cls, kind, side, overlap=0, mask_dir=None):
        """A sampler of `kind`; random-region shapes come from the VOC segmentation PNGs in mask_dir."""
        return cls(kind, side, overlap, load_region_shapes(mask_dir) if kind == "random-region" else None)

    def __call__(self, rng):
        if self.kind == "central":
            return central_mask(self.side, self.overlap)
        if self.kind == "random-block":
            return random_block_mask(rng, self.side)
        if self.kind == "random-region":
            return random_region_mask(rng, self.side, self.shapes)
        return noise_mask(rng, self.side)
