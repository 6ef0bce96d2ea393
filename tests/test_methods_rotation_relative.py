"""Rotation prediction and relative context: the batches they build (rotations and labels; patch
geometry, crops and colour dropping), that they learn, and `bench pretrain` end to end for both."""
import json

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from benchmarks.cli import main

# Importing the two modules registers "relative-context" and "rotation" for the CLI tests below.
from pretrain.methods.relative_context import (NEIGHBOUR_OFFSETS, RelativeContext, crop_patches, drop_colours,
                                               patch_grid, patch_pair_positions)
from pretrain.methods.rotation import RotationPrediction, rotated_batch
from pretrain.train import PretrainConfig
from bench_runtime.errors import UserError

MEAN, STD = [0.45, 0.43, 0.40], [0.25, 0.24, 0.26]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def build(method_class, image_size=64, **config):
    return method_class(PretrainConfig(image_size=image_size, **config), MEAN, STD)


# ---------------------------------------------------------------- rotation prediction

def test_rotated_batch_holds_every_image_in_every_rotation():
    images = torch.randn(3, 3, 8, 8)
    rotated, labels = rotated_batch(images)
    assert rotated.shape == (12, 3, 8, 8)
    assert labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    for index, label in enumerate(labels.tolist()):
        expected = torch.rot90(images[index % 3], label, dims=(-2, -1))
        assert torch.equal(rotated[index], expected)
    # Label 1 is one quarter turn counter-clockwise: the top row becomes the left column, reversed.
    assert torch.equal(rotated[3, :, :, 0], images[0, :, 0, :].flip(-1))


def test_rotation_train_step_is_finite():
    method = build(RotationPrediction)
    metrics = method.train_step({"image": torch.randn(2, 3, 64, 64)}, method.configure_optimizers())
    assert list(metrics) == ["loss", "accuracy"]
    assert np.isfinite(metrics["loss"]) and 0 <= metrics["accuracy"] <= 1


def test_rotation_overfits_a_fixed_batch():
    method = build(RotationPrediction)
    optimizers = method.configure_optimizers()
    batch = {"image": torch.randn(1, 3, 64, 64)}  # four rotated copies to tell apart
    losses = [method.train_step(batch, optimizers)["loss"] for _ in range(30)]
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])


def test_rotation_needs_a_backbone_and_63_px():
    with pytest.raises(UserError, match="unknown --arch 'inpaint'"):
        build(RotationPrediction, arch="inpaint")
    with pytest.raises(UserError, match="--image-size 48"):
        build(RotationPrediction, image_size=48)


# ---------------------------------------------------------------- relative context

@pytest.mark.parametrize("image_size", [64, 96, 128, 227])
def test_patch_pairs_stay_inside_the_image_apart_and_in_place(image_size):
    grid = patch_grid(image_size)
    assert grid.patch >= 8 and grid.jitter >= 1
    assert grid.gap - 2 * grid.jitter > 0  # patches never touch, whatever their jitter
    labels = torch.arange(8).repeat(50)
    centre, neighbour = patch_pair_positions(grid, labels, torch.Generator().manual_seed(1))
    for corners in (centre, neighbour):
        assert corners.min() >= 0 and corners.max() + grid.patch <= image_size
    offsets = NEIGHBOUR_OFFSETS[labels]
    shift = neighbour - centre
    aligned = offsets == 0
    # Along an axis the neighbour shares with the centre, only the jitter moves it...
    assert shift[aligned].abs().max() <= 2 * grid.jitter
    # ...along the others it lies on the labelled side, past a gap.
    assert torch.equal(shift[~aligned].sign(), offsets[~aligned])
    assert shift[~aligned].abs().min() >= grid.patch + grid.gap - 2 * grid.jitter
    # Label 0 is up-left, 4 right, 7 down-right.
    assert NEIGHBOUR_OFFSETS[[0, 4, 7]].tolist() == [[-1, -1], [0, 1], [1, 1]]


def test_patch_grid_too_small():
    with pytest.raises(UserError, match="--image-size 30 is too small"):
        patch_grid(30)


def test_crop_patches_takes_the_pixels_at_each_corner():
    images = torch.randn(2, 3, 20, 20)
    corners = torch.tensor([[0, 3], [11, 7]])
    patches = crop_patches(images, corners, 9)
    assert torch.equal(patches[0], images[0, :, 0:9, 3:12])
    assert torch.equal(patches[1], images[1, :, 11:20, 7:16])


def test_drop_colours_keeps_exactly_one_channel():
    patches = torch.randn(16, 3, 10, 10)
    dropped, kept = drop_colours(patches, torch.Generator().manual_seed(0))
    assert len(set(kept.tolist())) > 1
    for patch, original, channel in zip(dropped, patches, kept.tolist()):
        equal = [torch.equal(patch[c], original[c]) for c in range(3)]
        assert equal == [c == channel for c in range(3)]
        noise = torch.cat([patch[c].flatten() for c in range(3) if c != channel])
        assert 0 < noise.std() < 0.05 * original[channel].std()


def test_relative_context_draws_from_torch_rng_only():
    method = build(RelativeContext)
    images = torch.randn(4, 3, 64, 64)
    draws = []
    for numpy_seed in (1, 2):
        np.random.seed(numpy_seed)
        torch.manual_seed(5)
        draws.append(method.sample_pairs(images))
    for first, second in zip(*draws):
        assert torch.equal(first, second)


@pytest.mark.parametrize("image_size", [64, 128])
def test_relative_context_train_step_is_finite(image_size):
    method = build(RelativeContext, image_size)
    images = torch.randn(3, 3, image_size, image_size)
    centres, neighbours, labels, _, _ = method.sample_pairs(images)
    assert centres.shape == neighbours.shape == (3, 3, 64, 64)  # small patches scaled up for AlexNet
    assert labels.min() >= 0 and labels.max() < 8
    metrics = method.train_step({"image": images}, method.configure_optimizers())
    assert list(metrics) == ["loss", "accuracy"]
    assert np.isfinite(metrics["loss"]) and 0 <= metrics["accuracy"] <= 1


# ---------------------------------------------------------------- through the CLI

@pytest.mark.parametrize("method, preview_rows", [("rotation", 8), ("relative-context", 3)])
def test_cli_pretrain_exports_a_torchvision_alexnet(toy_voc_root, tmp_path, method, preview_rows):
    out = tmp_path / "run"
    assert main(["pretrain", "--method", method, "--data-root", str(toy_voc_root), "--out", str(out),
                 "--image-size", "64", "--steps", "2", "--batch-size", "4", "--workers", "0"]) == 0
    features = torchvision.models.alexnet(weights=None).features
    features.load_state_dict(torch.load(out / "encoder.pt", weights_only=True))
    encoder = json.loads((out / "encoder.json").read_text())
    assert (encoder["method"], encoder["arch"], encoder["steps"]) == (method, "alexnet", 2)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [list(m)[:3] for m in metrics] == [["step", "loss", "accuracy"]] * 2
    with Image.open(out / "preview.png") as grid:  # 8 preview images a row, 64 px tiles, 2 px padding
        assert grid.size == (8 * 66 + 2, preview_rows * 66 + 2)
