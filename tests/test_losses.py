"""Context-encoder losses (paper §3.2): overlap band, weights, masked L2, GAN terms."""
import math

import numpy as np
import pytest
import torch

from bench_data.masks import central_mask
from pretrain import losses


def _square_hole(size=32, top=10, left=12, side=8, batch=1):
    hole = torch.zeros(batch, 1, size, size)
    hole[..., top:top + side, left:left + side] = 1
    return hole


def _ring(size, top, left, side, width):
    """The band drawn by hand: the hole's square grown by `width` on every side, minus the hole."""
    ring = np.zeros((size, size), dtype=np.float32)
    ring[max(0, top - width):top + side + width, max(0, left - width):left + side + width] = 1
    ring[top:top + side, left:left + side] = 0
    return ring


@pytest.mark.parametrize("width", [1, 2, 4, 7])
def test_overlap_band_is_ring_around_square_hole(width):
    hole = _square_hole(size=32, top=10, left=12, side=8)
    band = losses.overlap_band(hole, width)
    assert band.shape == hole.shape
    assert set(band.unique().tolist()) <= {0.0, 1.0}
    assert band.sum().item() == (8 + 2 * width) ** 2 - 8 ** 2
    assert np.array_equal(band[0, 0].numpy(), _ring(32, 10, 12, 8, width))
    assert (band * hole).sum() == 0


def test_overlap_band_clipped_at_image_border():
    hole = _square_hole(size=16, top=0, left=0, side=5)
    band = losses.overlap_band(hole, 2)
    assert band.sum().item() == 7 * 7 - 5 * 5
    assert np.array_equal(band[0, 0].numpy(), _ring(16, 0, 0, 5, 2))


def test_overlap_band_zero_width_is_empty():
    hole = _square_hole()
    assert losses.overlap_band(hole, 0).sum() == 0
    assert losses.overlap_band(hole, -3).sum() == 0


def test_overlap_band_per_image_in_batch():
    hole = torch.zeros(2, 1, 20, 20)
    hole[0, :, 2:6, 2:6] = 1
    hole[1, :, 10:18, 10:18] = 1
    band = losses.overlap_band(hole, 1)
    assert band[0].sum().item() == 6 * 6 - 4 * 4
    assert band[1].sum().item() == 10 * 10 - 8 * 8


def test_central_hole_plus_band_is_centre_quarter():
    side, overlap = 64, 4
    hole = torch.from_numpy(central_mask(side, overlap)).float()[None, None]
    region = hole + losses.overlap_band(hole, overlap)
    assert torch.equal(region[0, 0], torch.from_numpy(central_mask(side, 0)).float())


def test_reconstruction_weights_values():
    hole = _square_hole(size=32, top=10, left=12, side=8)
    weights = losses.reconstruction_weights(hole, overlap=3, overlap_weight=10.0)
    ring = torch.from_numpy(_ring(32, 10, 12, 8, 3))[None, None]
    expected = hole + 10 * ring
    assert torch.equal(weights, expected)
    assert (weights[hole.bool()] == 1).all()
    assert (weights[ring.bool()] == 10).all()
    assert (weights[(hole + ring) == 0] == 0).all()
    assert weights.sum().item() == 64 + 10 * ((8 + 6) ** 2 - 64)


def test_reconstruction_weights_defaults_and_custom_weight():
    hole = _square_hole(size=32, top=10, left=12, side=8)
    default = losses.reconstruction_weights(hole)  # overlap 4, weight 10
    assert default.sum().item() == 64 + 10 * (16 ** 2 - 64)
    custom = losses.reconstruction_weights(hole, overlap=2, overlap_weight=3.0)
    assert sorted(custom.unique().tolist()) == [0.0, 1.0, 3.0]


def test_masked_l2_constant_error_by_hand():
    hole = _square_hole(size=32, top=10, left=12, side=8)   # 64 hole px
    weights = losses.reconstruction_weights(hole, overlap=3)  # band: 14*14 - 64 = 132 px at weight 10
    target = torch.randn(1, 3, 32, 32)
    prediction = target + 0.5
    # A squared error of 0.25 everywhere, weighted 1 on 64 hole px and 10 on 132 band px, over the
    # 196 predicted px (channels cancel): 0.25 * (64 + 1320) / 196.
    value = losses.masked_l2(prediction, target, weights)
    assert value.item() == pytest.approx(0.25 * 1384 / 196, rel=1e-6)


def test_masked_l2_ignores_pixels_outside_region():
    hole = _square_hole(size=32, top=10, left=12, side=8, batch=2)
    weights = losses.reconstruction_weights(hole, overlap=3)
    target = torch.zeros(2, 3, 32, 32)
    prediction = torch.full_like(target, 2.0)
    outside = (weights == 0).expand_as(prediction)
    wild = prediction.clone()
    wild[outside] = 1e3
    assert losses.masked_l2(wild, target, weights).item() == pytest.approx(
        losses.masked_l2(prediction, target, weights).item())
    # With the band weight at 1 the loss is the plain mean squared error over hole + band.
    flat = losses.reconstruction_weights(hole, overlap=3, overlap_weight=1.0)
    assert losses.masked_l2(prediction, target, flat).item() == pytest.approx(4.0)


def test_masked_l2_hole_only_error():
    hole = _square_hole(size=32, top=10, left=12, side=8)
    weights = losses.reconstruction_weights(hole, overlap=3)
    target = torch.zeros(1, 3, 32, 32)
    prediction = hole.expand(1, 3, 32, 32) * 3.0  # error 3 in the hole only
    assert losses.masked_l2(prediction, target, weights).item() == pytest.approx(9.0 * 64 / 196)


def test_masked_l2_empty_region_is_zero():
    weights = torch.zeros(1, 1, 8, 8)
    value = losses.masked_l2(torch.ones(1, 3, 8, 8), torch.zeros(1, 3, 8, 8), weights)
    assert value.item() == 0.0


def test_masked_l2_has_gradient_only_in_region():
    hole = _square_hole(size=16, top=4, left=4, side=4)
    weights = losses.reconstruction_weights(hole, overlap=1)
    prediction = torch.zeros(1, 3, 16, 16, requires_grad=True)
    losses.masked_l2(prediction, torch.ones(1, 3, 16, 16), weights).backward()
    has_grad = prediction.grad.abs().sum(1)[0] > 0
    assert torch.equal(has_grad, (weights[0, 0] > 0))


def test_joint_loss_weights():
    l2, adv = torch.tensor(2.0), torch.tensor(3.0)
    assert losses.joint_loss(l2, adv).item() == pytest.approx(0.999 * 2.0 + 0.001 * 3.0)
    assert losses.joint_loss(l2, adv, adversarial_weight=0.5).item() == pytest.approx(2.5)
    assert losses.joint_loss(l2, adv, adversarial_weight=0.0).item() == pytest.approx(2.0)


def test_gan_losses_at_chance():
    zero = torch.zeros(5)
    assert losses.adversarial_generator_loss(zero).item() == pytest.approx(math.log(2))
    assert losses.discriminator_loss(zero, zero).item() == pytest.approx(2 * math.log(2))
    # A confident, correct discriminator has a small loss; the generator's loss is then large.
    real, fake = torch.full((5,), 10.0), torch.full((5,), -10.0)
    assert losses.discriminator_loss(real, fake).item() < 1e-3
    assert losses.adversarial_generator_loss(fake).item() > 9
