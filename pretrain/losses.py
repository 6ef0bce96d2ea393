"""Context-encoder losses (paper §3.2) as pure functions of tensors."""
import torch
import torch.nn.functional as F

from bench_runtime import distributed


def overlap_band(hole, width):
    """Pixels within `width` px outside the hole (B, 1, H, W): the context the generator also
    predicts so that its output blends with the surroundings."""
    if width <= 0:
        return torch.zeros_like(hole)
    grown = F.max_pool2d(hole, kernel_size=2 * width + 1, stride=1, padding=width)
    return grown - hole


def reconstruction_weights(hole, overlap=4, overlap_weight=10.0):
    """Per-pixel L2 weights: 1 in the hole, `overlap_weight` in the overlap band, 0 elsewhere."""
    return hole + overlap_weight * overlap_band(hole, overlap)


def masked_l2(prediction, target, weights):
    """Weighted squared error, averaged over the predicted region (hole + band) and channels.

    When training under torchrun (a process group is active and gradients are on), the region is
    counted over the global batch (divided by the number of processes): holes differ in size, and
    the processes' losses, averaged as take_step averages their gradients, are then exactly the
    one-process loss of the whole batch. Evaluation and previews (no gradients) stay local."""
    weights = weights.expand(prediction.shape[0], 1, *prediction.shape[2:])
    region = (weights > 0).to(prediction.dtype)
    channels = prediction.shape[1]
    total = (weights * (prediction - target).pow(2)).sum()
    count = region.sum()
    if torch.is_grad_enabled() and distributed.active():
        count = distributed.all_reduce_sum(count) / distributed.world_size()
    return total / (count * channels).clamp_min(1.0)


def visible_statistics(image, visible):
    """Per image and channel, the mean and std (population, +1e-6 under the root) of `image`
    over the pixels where `visible` (B, 1, H, W) is 1: what a fill may be standardised by."""
    count = visible.sum((2, 3), keepdim=True).clamp(min=1)
    mean = (image * visible).sum((2, 3), keepdim=True) / count
    std = (((image - mean) ** 2 * visible).sum((2, 3), keepdim=True) / count + 1e-6).sqrt()
    return mean, std


def adversarial_generator_loss(fake_logits):
    """Non-saturating GAN loss for the generator: -log D(G(x))."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def discriminator_loss(real_logits, fake_logits):
    return (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))


def joint_loss(l2, adversarial, adversarial_weight=0.001):
    """0.999 * L2 + 0.001 * adversarial (paper's weights for the inpainting results)."""
    return (1.0 - adversarial_weight) * l2 + adversarial_weight * adversarial
