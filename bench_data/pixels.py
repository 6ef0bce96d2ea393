"""Pixels from image files: decode, rescale, centre-crop, normalise, channel statistics, and the
policy for files that cannot be decoded."""
import sys
import warnings

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.functional import center_crop

from bench_runtime.errors import UserError
from bench_runtime.progress import progress_bar


# PIL's guard against decompression bombs (about 89 megapixels): it only warns up to twice this
# many pixels and raises a traceback beyond; here any image above it is one line naming the file.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS
TOO_LARGE = (f"has more than {MAX_PIXELS:,} pixels, PIL's limit against decompression bombs "
             f"(Image.MAX_IMAGE_PIXELS); scale it down")


class ImageTooLarge(UserError):
    """An image with more than MAX_PIXELS pixels."""


def open_image(path):
    """PIL's image of `path` with only its header read, or a UserError naming the file: one that
    cannot be read, or an ImageTooLarge."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLarge(f"image {path} {TOO_LARGE}") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read image {path}: {exc}") from None


def eight_bit(image):
    """`image` with 16-bit grey levels scaled to 8 bits; PIL's convert("RGB") clips them at 255
    instead, which turns most of an image white. Pillow opens 16-bit grey PNGs as I;16 (older
    versions as I)."""
    if not (image.mode.startswith("I;16") or image.mode == "I"):
        return image
    levels = np.asarray(image, dtype=np.float64) / 257  # 0..65535 -> 0..255
    return Image.fromarray(np.clip(np.round(levels), 0, 255).astype(np.uint8))


def load_rgb(path, shorter_side=None):
    """Decode an image as RGB, optionally rescaling it so its shorter side is `shorter_side`."""
    try:
        with open_image(path) as image:
            if shorter_side is not None:
                image.draft("RGB", (shorter_side, shorter_side))  # cheap JPEG downscale on decode
            image = eight_bit(image).convert("RGB")
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read image {path}: {exc}") from None
    return image if shorter_side is None else resize_shorter_side(image, shorter_side)


BAD_IMAGE_POLICIES = ("fail", "skip")
BAD_IMAGES_HELP = ("an image that cannot be decoded: stop the run naming it (fail), or check every image first "
                   "and leave the unreadable ones out with a warning (skip)")


def readable_only(paths, policy, what, progress=True):
    """`paths` under the --bad-images policy. "fail": unchanged, so a file that cannot be decoded
    stops the run when it is read, with its name. "skip": every file is decoded once up front
    and the unreadable ones are left out, with a warning that counts them."""
    if policy not in BAD_IMAGE_POLICIES:
        raise UserError(f"--bad-images must be one of {', '.join(BAD_IMAGE_POLICIES)}, got {policy!r}")
    if policy == "fail":
        return list(paths)
    readable, unreadable = [], []
    for path in progress_bar(paths, desc=f"checking images of {what}", unit="img", disable=not progress):
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


def centre_crop(image, side):
    """The centre `side` x `side` square of a PIL image or a (..., H, W) tensor, by torchvision's
    center_crop: its offset is round(excess / 2), Python's round, so an odd excess of 3, 7, 11 ...
    px puts the extra pixel before the crop (top or left) and one of 1, 5, 9 ... after it."""
    return center_crop(image, [side, side])


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
