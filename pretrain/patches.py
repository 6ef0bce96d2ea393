"""A masked autoencoder's patches, masks and loss as pure functions of tensors: images cut into
row-major patches and back, a random share of each image's patches hidden, and the squared error
on the hidden ones (pretrain.methods.mae)."""
import torch


def patchify(images, patch):
    """(B, C, H, W) -> (B, H/p * W/p, p * p * C), patches in row-major order."""
    count, channels, height, width = images.shape
    grid = images.reshape(count, channels, height // patch, patch, width // patch, patch)
    return grid.permute(0, 2, 4, 3, 5, 1).reshape(count, (height // patch) * (width // patch), -1)


def unpatchify(patches, patch, side):
    count = len(patches)
    grid = patches.reshape(count, side // patch, side // patch, patch, patch, -1)
    return grid.permute(0, 5, 1, 3, 2, 4).reshape(count, -1, side, side)


def random_masking(count, patches, ratio, device, generator=None):
    """(visible (B, K) patch indices, masked (B, N) bool): K = N (1 - ratio) patches per image,
    each image its own random choice."""
    keep = int(patches * (1 - ratio))
    order = torch.rand(count, patches, device=device, generator=generator).argsort(1)
    visible = order[:, :keep]
    return visible, torch.ones(count, patches, dtype=torch.bool, device=device).scatter(1, visible, False)


def masked_patch_loss(predicted, target, masked):
    """Mean squared error per patch, averaged over the masked patches only."""
    per_patch = (predicted - target).pow(2).mean(-1)
    return (per_patch * masked).sum() / masked.sum()


def normalised_patches(patches, eps=1e-6):
    mean, var = patches.mean(-1, keepdim=True), patches.var(-1, keepdim=True)
    return (patches - mean) / (var + eps).sqrt()
