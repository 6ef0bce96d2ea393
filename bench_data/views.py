"""Random views of a batch of images, drawn per image on the training device: the augmentations
that contrastive and masked-image methods declare (random resized crop, flip, colour jitter,
grayscale, Gaussian blur), applied to the crops the data side delivers.

torchvision's transforms draw one set of parameters per call, so a call on a batch gives every
image the same crop and colours; here every image draws its own, in a few batched operations.
Draws come from torch's generator of the images' device (or the one given): the engine seeds it
from --seed and saves it in checkpoints, so runs repeat and resume exactly.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

LUMA = (0.299, 0.587, 0.114)  # ITU-R 601 grey, as torchvision's rgb_to_grayscale


@dataclass(frozen=True)
class ViewAugmentation:
    """One random view of each image: crop (area share `crop_scale`, aspect `crop_ratio`) resized
    back to the input size, mirrored with probability `flip`; then with probability `jitter_p`
    brightness, contrast, saturation and hue jittered by up to `jitter` (in a random order per
    image, as torchvision's ColorJitter); grey with probability `grayscale_p`; Gaussian blur
    (sigma in `blur_sigma`, kernel about a tenth of the side) with probability `blur_p`."""
    crop_scale: tuple = (0.08, 1.0)
    crop_ratio: tuple = (3 / 4, 4 / 3)
    flip: float = 0.5
    jitter: tuple = (0.0, 0.0, 0.0, 0.0)
    jitter_p: float = 0.0
    grayscale_p: float = 0.0
    blur_p: float = 0.0
    blur_sigma: tuple = (0.1, 2.0)

    def __call__(self, pixels, generator=None):
        """(B, 3, S, S) floats in [0, 1] -> (B, 3, S, S): one random view of each image."""
        def draw(*shape):
            return torch.rand(*shape, device=pixels.device, generator=generator)

        views = resized_crops(pixels, self.crop_scale, self.crop_ratio, self.flip, draw)
        if self.jitter_p > 0:
            views = colour_jitter(views, self.jitter, self.jitter_p, draw)
        if self.grayscale_p > 0:
            grey = draw(len(views)) < self.grayscale_p
            views = torch.where(grey[:, None, None, None], grayscale(views).expand_as(views), views)
        if self.blur_p > 0:
            sigma = self.blur_sigma[0] + (self.blur_sigma[1] - self.blur_sigma[0]) * draw(len(views))
            views = gaussian_blur(views, sigma, draw(len(views)) < self.blur_p)
        return views


def resized_crops(pixels, scale, ratio, flip, draw, tries=10):
    """torchvision's RandomResizedCrop rule per image (up to `tries` draws of area share and
    log-uniform aspect until the box fits, else the whole image), resampled bilinearly to the
    input size, each mirrored with probability `flip`."""
    count = len(pixels)
    area = scale[0] + (scale[1] - scale[0]) * draw(count, tries)
    aspect = torch.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * draw(count, tries))
    width, height = torch.sqrt(area * aspect), torch.sqrt(area / aspect)  # shares of the (square) side
    fits = (width <= 1) & (height <= 1)
    first = fits.float().argmax(1)  # the first try that fits
    rows = torch.arange(count, device=pixels.device)
    found = fits.any(1)
    width = torch.where(found, width[rows, first], torch.ones_like(area[:, 0]))
    height = torch.where(found, height[rows, first], torch.ones_like(area[:, 0]))
    left, top = draw(count) * (1 - width), draw(count) * (1 - height)
    mirror = torch.where(draw(count) < flip, -1.0, 1.0)
    # Output coordinates in [-1, 1] -> input coordinates of the box (a negative x scale mirrors).
    theta = torch.zeros(count, 2, 3, device=pixels.device)
    theta[:, 0, 0], theta[:, 0, 2] = width * mirror, 2 * left + width - 1
    theta[:, 1, 1], theta[:, 1, 2] = height, 2 * top + height - 1
    grid = F.affine_grid(theta, list(pixels.shape), align_corners=False)
    return F.grid_sample(pixels, grid, mode="bilinear", padding_mode="border", align_corners=False)


def grayscale(pixels):
    """(B, 1, H, W) luma."""
    return torch.einsum("c,bchw->bhw", torch.tensor(LUMA, device=pixels.device), pixels).unsqueeze(1)


def _brightness(pixels, factor):
    return (pixels * factor[:, None, None, None]).clamp(0, 1)


def _contrast(pixels, factor):
    mean = grayscale(pixels).mean((-2, -1), keepdim=True)
    return torch.lerp(mean, pixels, factor[:, None, None, None]).clamp(0, 1)


def _saturation(pixels, factor):
    return torch.lerp(grayscale(pixels), pixels, factor[:, None, None, None]).clamp(0, 1)


def _hue(pixels, shift):
    """Colours turned about the grey axis by `shift` turns (Rodrigues' rotation): the hue wheel
    turned, greys unchanged. torchvision shifts the HSV hue instead; the two agree on the hue
    shift and differ a little in the saturation and value they leave."""
    angle = 2 * math.pi * shift
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    axis = torch.full((3, 3), 1 / 3, device=pixels.device)
    cross = torch.tensor([[0.0, -1, 1], [1, 0, -1], [-1, 1, 0]], device=pixels.device) / math.sqrt(3)
    rotation = cos * torch.eye(3, device=pixels.device) + (1 - cos) * axis + sin * cross
    return torch.einsum("bij,bjhw->bihw", rotation, pixels).clamp(0, 1)


def colour_jitter(pixels, strengths, p, draw):
    """Brightness, contrast and saturation factors in [1 - s, 1 + s] and a hue shift in [-s, s],
    applied in a random order per image, to each image with probability `p`."""
    count = len(pixels)
    operations = (_brightness, _contrast, _saturation, _hue)
    amounts = [1 + s * (2 * draw(count) - 1) for s in strengths[:3]] + [strengths[3] * (2 * draw(count) - 1)]
    order = draw(count, len(operations)).argsort(1)
    rows = torch.arange(count, device=pixels.device)
    jittered = pixels
    for position in range(len(operations)):
        candidates = torch.stack([operation(jittered, amount) for operation, amount in zip(operations, amounts)])
        jittered = candidates[order[:, position], rows]
    return torch.where((draw(count) < p)[:, None, None, None], jittered, pixels)


def gaussian_blur(pixels, sigma, apply):
    """Each image blurred by a separable Gaussian of its own `sigma` where `apply`, with a kernel
    of about a tenth of the side (SimCLR's), edges reflected."""
    count, channels, height, width = pixels.shape
    radius = max(1, round(0.05 * min(height, width)))
    offsets = torch.arange(-radius, radius + 1, device=pixels.device, dtype=pixels.dtype)
    weights = torch.exp(-offsets ** 2 / (2 * sigma[:, None] ** 2))
    weights = weights / weights.sum(1, keepdim=True)
    identity = (offsets == 0).to(pixels.dtype).expand_as(weights)
    kernel = torch.where(apply[:, None], weights, identity).repeat_interleave(channels, 0)  # (B * C, k)
    flat = pixels.reshape(1, count * channels, height, width)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="reflect"), kernel[:, None, None, :],
                    groups=count * channels)
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="reflect"), kernel[:, None, :, None],
                    groups=count * channels)
    return flat.view(count, channels, height, width)
