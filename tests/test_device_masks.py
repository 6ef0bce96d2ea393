"""Masks drawn a batch at a time on the device (bench_data.device_masks) against the per-image
reference (bench_data.masks): the same distributions of coverage, hole count and shape use, with
bounds that fail when a rule differs; and items that do not depend on their batch."""
import cv2
import numpy as np
import pytest
import torch

from bench_data.device_masks import DeviceMasks, _shape_canvas, random_blocks, random_regions, uniform
from bench_data.masks import MAX_COVERAGE, MaskSampler, central_mask
from bench_data.pretrain_items import PretrainImages

SIDE = 64
DRAWS = 300


def _shapes():
    yy, xx = np.mgrid[:37, :37]
    disc = (yy - 18) ** 2 + (xx - 18) ** 2 <= 18 ** 2
    bar = np.ones((12, 40), dtype=bool)
    corner = np.zeros((30, 30), dtype=bool)
    corner[:, :10] = corner[20:, :] = True
    return [disc, bar, corner]


def _keys(count, epoch=0, start=0):
    return torch.stack([torch.full((count,), epoch), torch.arange(start, start + count)], 1)


def _reference(kind, count=DRAWS, side=SIDE):
    sampler = MaskSampler(kind, side, shapes=_shapes() if kind == "random-region" else None)
    return np.stack([sampler(np.random.default_rng([7, i])) for i in range(count)])


def _device(kind, count=DRAWS, side=SIDE):
    masks = DeviceMasks(MaskSampler(kind, side, shapes=_shapes() if kind == "random-region" else None), seed=7)
    return masks(_keys(count))[:, 0].bool().numpy()


def _holes(mask):
    return cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)[0] - 1


def test_uniform_is_a_pure_function_of_the_item_and_looks_uniform():
    keys = _keys(4000)
    draws = uniform(3, keys, 5, 4)
    assert draws.shape == (4000, 4) and draws.min() >= 0 and draws.max() < 1
    # The same item gives the same numbers in any batch.
    assert torch.equal(uniform(3, keys[1234:1236], 5, 4), draws[1234:1236])
    # Other seeds, epochs and streams give other numbers.
    for other in (uniform(4, keys, 5, 4), uniform(3, _keys(4000, epoch=1), 5, 4), uniform(3, keys, 6, 4)):
        assert (other != draws).float().mean() > 0.99
    flat = draws.flatten().double()
    # 16,000 draws: mean 0.5 +- 0.0023 (1 sigma), variance 1/12; deciles within 4 sigma of 10%.
    assert abs(flat.mean() - 0.5) < 0.01 and abs(flat.var() - 1 / 12) < 0.003
    deciles = torch.histc(flat, bins=10, min=0, max=1) / len(flat)
    assert (deciles - 0.1).abs().max() < 4 * (0.1 * 0.9 / len(flat)) ** 0.5
    # Neighbouring items and draws are not correlated.
    assert abs(np.corrcoef(draws[:-1, 0], draws[1:, 0])[0, 1]) < 0.05
    assert abs(np.corrcoef(draws[:, 0], draws[:, 1])[0, 1]) < 0.05


@pytest.mark.parametrize("kind", ["central", "random-block", "random-region", "noise"])
def test_an_item_has_the_same_hole_in_any_batch(kind):
    """What makes exact resume and the 2-process split hold: a hole depends on (seed, epoch,
    index) only."""
    masks = DeviceMasks(MaskSampler(kind, SIDE, overlap=2, shapes=_shapes()), seed=1)
    whole = masks(_keys(8))
    halves = torch.cat([masks(_keys(4)), masks(_keys(4, start=4))])
    assert whole.shape == (8, 1, SIDE, SIDE) and torch.equal(whole, halves)
    if kind != "central":
        assert not torch.equal(masks(_keys(8, epoch=1)), whole)


def test_central_is_the_reference_square():
    masks = DeviceMasks(MaskSampler("central", 96, overlap=4), seed=0)
    expected = torch.from_numpy(central_mask(96, 4)).float()
    assert all(torch.equal(mask[0], expected) for mask in masks(_keys(3)))


def _differences(reference, device):
    """The distribution checks that fail between two sets of masks: coverage (mean, spread,
    deciles) and the number of separate holes."""
    failed = []
    cover_ref, cover_dev = reference.mean((1, 2)), device.mean((1, 2))
    # Means within 4 standard errors (about 0.002-0.005 here), spreads within 25%.
    error = np.sqrt(cover_ref.var() / len(reference) + cover_dev.var() / len(device))
    if abs(cover_ref.mean() - cover_dev.mean()) >= 4 * error + 1e-3:
        failed.append(f"mean coverage {cover_ref.mean():.4f} against {cover_dev.mean():.4f}")
    if not 0.75 < cover_dev.std() / cover_ref.std() < 1.33:
        failed.append(f"coverage spread {cover_ref.std():.4f} against {cover_dev.std():.4f}")
    for quantile in (0.1, 0.5, 0.9):
        if abs(np.quantile(cover_ref, quantile) - np.quantile(cover_dev, quantile)) >= 0.02:
            failed.append(f"coverage quantile {quantile}")
    holes_ref = np.array([_holes(m) for m in reference])
    holes_dev = np.array([_holes(m) for m in device])
    error = np.sqrt(holes_ref.var() / len(reference) + holes_dev.var() / len(device))
    if abs(holes_ref.mean() - holes_dev.mean()) >= 4 * error + 0.05:
        failed.append(f"holes per mask {holes_ref.mean():.2f} against {holes_dev.mean():.2f}")
    return failed


@pytest.mark.parametrize("kind", ["random-block", "random-region", "noise"])
def test_same_distributions_as_the_per_image_rule(kind):
    reference, device = _reference(kind), _device(kind)
    assert _differences(reference, device) == []
    coverage = device.mean((1, 2))
    if kind == "noise":  # exactly 20-30% by its rule
        assert coverage.min() >= 0.2 and coverage.max() <= 0.3
    else:
        assert coverage.max() <= MAX_COVERAGE


def test_the_distribution_checks_catch_a_changed_rule():
    """Control: blocks twice as big, or a 20% cap, are told apart from the reference."""
    reference = _reference("random-block")
    larger = random_blocks(7, _keys(DRAWS), 2 * SIDE).numpy()[:, SIDE // 2:-SIDE // 2, SIDE // 2:-SIDE // 2]
    assert any("holes" in line for line in _differences(reference, larger))
    capped = random_blocks(7, _keys(DRAWS), SIDE, max_coverage=0.2).numpy()
    assert any("mean coverage" in line for line in _differences(reference, capped))


def test_region_shapes_are_used_evenly_and_pasted_whole():
    canvas, areas = _shape_canvas(_shapes())
    assert areas.tolist() == [float(s.sum()) for s in _shapes()]
    mask, uses = random_regions(7, _keys(DRAWS), SIDE, canvas, areas)
    counts = uses.sum(0).double()
    # Every paste picks a shape uniformly: chi-square with 2 degrees of freedom below its 0.1% tail.
    expected = counts.sum() / len(counts)
    assert ((counts - expected) ** 2 / expected).sum() < 13.8, counts
    # Each mask holds what was pasted into it: at least one shape, and coverage up to the cap.
    assert (uses.sum(1) >= 1).all() and mask.flatten(1).float().mean(1).max() <= MAX_COVERAGE
    # A shape pasted alone covers 3-20% of the image (less where it hangs over the border).
    one = uses.sum(1) == 1
    assert mask[one].flatten(1).float().mean(1).max() <= 0.205


def test_device_items_are_the_loader_crops_flipped_or_not(toy_voc_root):
    """augment_on="device": the same crop as the loader path, normalised the same way and
    mirrored or not; holes of the right shape."""
    from bench_data.images import list_images
    paths = list_images(toy_voc_root)[:6]
    sampler = MaskSampler("random-block", 48)
    common = (paths, 48, 56, [0.4, 0.5, 0.6], [0.2, 0.25, 0.3], sampler, 3)
    loader, device = PretrainImages(*common), PretrainImages(*common, augment_on="device")
    keys = [(2, i) for i in range(len(paths))]
    items = [device[key] for key in keys]
    assert items[0]["pixels"].dtype == torch.uint8 and "hole" not in items[0]
    batch = device.finish_batch({name: torch.stack([item[name] for item in items]) for name in items[0]})
    assert batch["hole"].shape == (6, 1, 48, 48) and set(batch) == {"image", "hole"}
    flips = 0
    for key, image in zip(keys, batch["image"]):
        expected = loader[key]["image"]
        same = torch.allclose(image, expected, atol=1e-6)
        mirrored = torch.allclose(image, expected.flip(-1), atol=1e-6)
        assert same or mirrored
        flips += mirrored and not same
    assert batch["hole"].mean() <= MAX_COVERAGE
