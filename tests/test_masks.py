"""Hole masks (docs/protocol.md, "Hole masks"): coverage rules, determinism, VOC shape loading and error cases."""
import pickle

import numpy as np
import pytest
from PIL import Image

from bench_data.masks import (MASK_KINDS, MAX_COVERAGE, MaskSampler, central_mask, load_region_shapes, noise_mask,
                        random_block_mask, random_region_mask)
from bench_data.toy_voc import voc_palette
from bench_runtime.errors import UserError

DRAWS = 200


def _disc(radius):
    yy, xx = np.mgrid[:2 * radius + 1, :2 * radius + 1]
    return (yy - radius) ** 2 + (xx - radius) ** 2 <= radius ** 2


def _rectangle(height, width):
    return np.ones((height, width), dtype=bool)


def _l_shape():
    shape = np.zeros((30, 30), dtype=bool)
    shape[:, :10] = True
    shape[20:, :] = True
    return shape


NUMPY_SHAPES = [_disc(18), _rectangle(12, 40), _l_shape()]


@pytest.fixture
def voc_mask_dir(tmp_path):
    """Two VOC-style class-index PNGs: a palette image and an 'L' image in a sub-folder.

    a.png (palette, 48x48): class 5 rectangle 20x12 ringed by 255 void, class 12 disc (r=8),
    class 7 blob of 9 px (below min_pixels: skipped).
    sub/b.png (L, 160x220): class 3 rectangle 150x200 (longer side shrunk to 128).
    """
    folder = tmp_path / "SegmentationClass"
    (folder / "sub").mkdir(parents=True)
    a = np.zeros((48, 48), dtype=np.uint8)
    a[3:25, 5:19] = 255                      # void ring ...
    a[4:24, 6:18] = 5                        # ... around a 20x12 rectangle of class 5
    disc = _disc(8)
    a[28:45, 28:45][disc] = 12
    a[40:43, 2:5] = 7                        # 9 px: too small to be a shape
    image = Image.fromarray(a, mode="P")
    image.putpalette(voc_palette())
    image.save(folder / "a.png")
    b = np.zeros((160, 220), dtype=np.uint8)
    b[5:155, 10:210] = 3
    Image.fromarray(b, mode="L").save(folder / "sub" / "b.png")
    return folder


# ---------------------------------------------------------------- central

@pytest.mark.parametrize("side,overlap", [(64, 0), (64, 4), (96, 4), (128, 4), (227, 4), (227, 7),
                                          (63, 2), (66, 3)])
def test_central_mask_is_centred_square(side, overlap):
    mask = central_mask(side, overlap)
    assert mask.shape == (side, side) and mask.dtype == bool
    hole = side // 2 - 2 * overlap
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    assert mask.sum() == hole * hole
    assert rows[-1] - rows[0] + 1 == hole and cols[-1] - cols[0] + 1 == hole
    assert mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()
    # Centred: margins equal, or differ by one pixel where the parity of side - hole forces it.
    top, bottom = rows[0], side - 1 - rows[-1]
    assert abs(top - bottom) <= (side - hole) % 2
    assert (rows == cols).all()
    # Hole + overlap band on each side is exactly the centre quarter (released code's layout).
    quarter = central_mask(side, 0)
    assert quarter.sum() == (side // 2) ** 2
    assert quarter[rows[0] - overlap:rows[-1] + overlap + 1, cols[0] - overlap:cols[-1] + overlap + 1].all()


def test_central_mask_too_much_overlap_is_user_error():
    with pytest.raises(UserError, match="overlap"):
        central_mask(32, 8)


# ---------------------------------------------------------------- coverage

@pytest.mark.parametrize("side", [64, 96, 227])
def test_random_block_coverage(side):
    rng = np.random.default_rng(0)
    coverage = np.array([random_block_mask(rng, side).mean() for _ in range(DRAWS)])
    assert coverage.max() <= MAX_COVERAGE
    assert coverage.mean() > 0.15
    assert coverage.min() > 0


@pytest.mark.parametrize("side", [64, 96, 227])
def test_random_region_coverage_numpy_shapes(side):
    rng = np.random.default_rng(1)
    coverage = np.array([random_region_mask(rng, side, NUMPY_SHAPES).mean() for _ in range(DRAWS)])
    assert coverage.max() <= MAX_COVERAGE
    assert coverage.mean() > 0.15


def test_random_region_coverage_loaded_shapes(voc_mask_dir):
    shapes = load_region_shapes(voc_mask_dir)
    rng = np.random.default_rng(2)
    coverage = np.array([random_region_mask(rng, 96, shapes).mean() for _ in range(DRAWS)])
    assert coverage.max() <= MAX_COVERAGE
    assert coverage.mean() > 0.15


def test_random_region_without_shapes_is_user_error():
    with pytest.raises(UserError):
        random_region_mask(np.random.default_rng(0), 64, [])


def test_noise_mask_coverage_in_band():
    rng = np.random.default_rng(0)
    for side in (96, 227):
        coverage = np.array([noise_mask(rng, side).mean() for _ in range(DRAWS // 2)])
        assert coverage.min() >= 0.2 and coverage.max() <= 0.3, (side, coverage.min(), coverage.max())
        assert 0.23 < coverage.mean() < 0.27


def test_noise_mask_coverage_in_band_small_images():
    cases = [(64, 386), (64, 490), (64, 612), (96, 433), (128, 1764), (128, 1789)]
    coverage = {case: noise_mask(np.random.default_rng(case[1]), case[0]).mean() for case in cases}
    assert all(0.2 <= value <= 0.3 for value in coverage.values()), coverage


# ---------------------------------------------------------------- determinism

@pytest.mark.parametrize("kind", MASK_KINDS)
def test_same_seed_same_mask(kind):
    sampler = MaskSampler(kind, 96, overlap=4, shapes=NUMPY_SHAPES if kind == "random-region" else None)
    first = [sampler(np.random.default_rng(seed)) for seed in range(5)]
    again = [sampler(np.random.default_rng(seed)) for seed in range(5)]
    for a, b in zip(first, again):
        assert a.dtype == bool and a.shape == (96, 96)
        assert np.array_equal(a, b)
    if kind != "central":
        assert any(not np.array_equal(first[0], other) for other in first[1:])
    # Picklable, as DataLoader workers need; the copy draws the same masks.
    clone = pickle.loads(pickle.dumps(sampler))
    assert np.array_equal(clone(np.random.default_rng(3)), first[3])


def test_sampler_dispatches_to_kind():
    rng_seed = 11
    assert np.array_equal(MaskSampler("central", 64, overlap=4)(np.random.default_rng(0)), central_mask(64, 4))
    assert np.array_equal(MaskSampler("random-block", 64)(np.random.default_rng(rng_seed)),
                          random_block_mask(np.random.default_rng(rng_seed), 64))
    assert np.array_equal(MaskSampler("noise", 64)(np.random.default_rng(rng_seed)),
                          noise_mask(np.random.default_rng(rng_seed), 64))
    assert np.array_equal(MaskSampler("random-region", 64, shapes=NUMPY_SHAPES)(np.random.default_rng(rng_seed)),
                          random_region_mask(np.random.default_rng(rng_seed), 64, NUMPY_SHAPES))


# ---------------------------------------------------------------- VOC shapes

def test_load_region_shapes_from_class_pngs(voc_mask_dir):
    shapes = load_region_shapes(voc_mask_dir)
    # a.png: class 5 (20x12 rectangle), class 12 (disc); class 7 too small; 0 and 255 never shapes.
    # sub/b.png: class 3 (150x200 rectangle) shrunk so the longer side is 128.
    assert len(shapes) == 3
    assert all(shape.dtype == bool and shape.flags.c_contiguous for shape in shapes)
    assert shapes[0].shape == (20, 12) and shapes[0].all()
    assert np.array_equal(shapes[1], _disc(8))
    assert shapes[2].shape == (96, 128) and shapes[2].all()


def test_load_region_shapes_limits(voc_mask_dir):
    shapes = load_region_shapes(voc_mask_dir, max_side=10, min_pixels=1)
    # Now the 9-px class-7 blob counts, and every shape's longer side is at most 10.
    assert len(shapes) == 4
    assert max(max(shape.shape) for shape in shapes) <= 10


def test_load_region_shapes_missing_folder(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_region_shapes(tmp_path / "nope")


def test_load_region_shapes_empty_folder(tmp_path):
    with pytest.raises(UserError, match="no object shapes"):
        load_region_shapes(tmp_path)


def test_load_region_shapes_only_background_and_void(tmp_path):
    labels = np.zeros((32, 32), dtype=np.uint8)
    labels[8:24, 8:24] = 255
    Image.fromarray(labels, mode="L").save(tmp_path / "void.png")
    with pytest.raises(UserError, match="no object shapes"):
        load_region_shapes(tmp_path)


def test_load_region_shapes_rgb_png_is_user_error(tmp_path):
    Image.new("RGB", (16, 16), (128, 0, 0)).save(tmp_path / "colour.png")
    with pytest.raises(UserError, match="single-channel"):
        load_region_shapes(tmp_path)


def test_mask_sampler_unknown_kind():
    with pytest.raises(UserError, match="unknown mask"):
        MaskSampler("checkerboard", 64)


def test_mask_sampler_region_needs_shapes():
    with pytest.raises(UserError, match="--mask-dir"):
        MaskSampler("random-region", 64)
