"""Bad input ends in one line naming the problem and exit status 2, never a traceback, and never
costs results already written: unreadable images (by --bad-images policy), masks that do not
fit their image, unknown choices, and a disk that fills up while a checkpoint is written."""
import errno
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from helpers import bench

FAST_PRETRAIN = ["--image-size", 64, "--batch-size", 4, "--workers", 0, "--mask", "random-block"]
FAST_TRANSFER = ["--image-size", 64, "--batch-size", 4, "--steps", 2, "--fc-width", 16, "--workers", 0]


def error_lines(capsys):
    return [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines()
            if line.startswith(("error", "warning", "bench: error"))]


def truncate(path):
    path.write_bytes(path.read_bytes()[:60])


def split_ids(voc, split, image_sets="Main"):
    return (voc / "ImageSets" / image_sets / f"{split}.txt").read_text().split()


def test_pretraining_skips_unreadable_images_when_asked(toy_copy, tmp_path, capsys):
    voc = toy_copy / "VOCdevkit" / "VOC2012"
    train = split_ids(voc, "train")
    for image_id in train[:2]:
        truncate(voc / "JPEGImages" / f"{image_id}.jpg")
    out = tmp_path / "run"
    assert bench("pretrain", "--data-root", toy_copy, "--out", out, "--steps", 2, *FAST_PRETRAIN,
                 "--bad-images", "skip") == 0
    assert any("skipping 2 unreadable image(s)" in line for line in error_lines(capsys))
    assert json.loads((out / "config.json").read_text())["images"] == len(train) - 2

    # The default policy stops at the first unreadable image and names it.
    assert bench("pretrain", "--data-root", toy_copy, "--out", tmp_path / "fail", "--steps", 2,
                 *FAST_PRETRAIN) == 2
    last = error_lines(capsys)[-1]
    assert last.startswith("error: cannot read image")
    assert f"{train[0]}.jpg" in last or f"{train[1]}.jpg" in last


def test_transfer_skips_unreadable_images_when_asked(toy_copy, tmp_path, capsys):
    voc = toy_copy / "VOCdevkit" / "VOC2007"
    bad = split_ids(voc, "trainval")[0]
    truncate(voc / "JPEGImages" / f"{bad}.jpg")
    out = tmp_path / "cls"
    assert bench("transfer", "--task", "cls", "--protocol", "svm", "--data-root", toy_copy, "--out", out,
                 *FAST_TRANSFER, "--bad-images", "skip") == 0
    assert any("skipping 1 unreadable image(s) of VOC2007 trainval" in line for line in error_lines(capsys))
    assert 0 <= json.loads((out / "record.json").read_text())["value"] <= 1


@pytest.mark.parametrize("break_mask, message", [
    (lambda mask: mask.resize((mask.width + 3, mask.height)), "but its image is"),
    (lambda mask: mask.convert("RGB"), "has mode RGB"),
])
def test_segmentation_mask_that_does_not_fit(toy_copy, tmp_path, capsys, break_mask, message):
    voc = toy_copy / "VOCdevkit" / "VOC2012"
    path = voc / "SegmentationClass" / f"{split_ids(voc, 'train', 'Segmentation')[0]}.png"
    with Image.open(path) as mask:
        break_mask(mask).save(path)
    assert bench("transfer", "--task", "seg", "--data-root", toy_copy, "--out", tmp_path / "seg",
                 *FAST_TRANSFER) == 2
    last = error_lines(capsys)[-1]
    assert last.startswith("error: mask") and path.name in last and message in last
    assert not (tmp_path / "seg").exists()


@pytest.mark.parametrize("args, message", [
    (["pretrain", "--method", "no-such-method"], "invalid choice: 'no-such-method'"),
    (["pretrain", "--mask", "stars"], "invalid choice: 'stars'"),
    (["transfer", "--task", "cls", "--bad-images", "ignore"], "invalid choice: 'ignore'"),
    (["suite", "--preset", "huge"], "unknown preset 'huge'"),
])
def test_unknown_choices_are_named(args, message, tmp_path, capsys):
    assert bench(*args, "--out", tmp_path / "out") == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_disk_full_while_checkpointing_keeps_the_last_checkpoint(toy_voc_root, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    write_bytes = Path.write_bytes
    checkpoints = []

    def fill_disk_at_second_checkpoint(path, data):
        if path.name == ".checkpoint.pt.tmp":
            checkpoints.append(path)
            if len(checkpoints) == 2:
                write_bytes(path, bytes(data)[:100])  # part of it lands, then the disk is full
                raise OSError(errno.ENOSPC, "No space left on device")
        return write_bytes(path, data)

    monkeypatch.setattr(Path, "write_bytes", fill_disk_at_second_checkpoint)
    assert bench("pretrain", "--data-root", toy_voc_root, "--out", out, "--steps", 4, "--checkpoint-every", 2,
                 *FAST_PRETRAIN) == 2
    assert error_lines(capsys)[-1] == (f"error: cannot write {out / 'checkpoint.pt'}: No space left on device; "
                                       f"the previous checkpoint.pt is kept")
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 2
    assert not (out / ".checkpoint.pt.tmp").exists()

    monkeypatch.setattr(Path, "write_bytes", write_bytes)  # space freed: the run resumes
    assert bench("pretrain", "--out", out, "--resume") == 0
    assert json.loads((out / "encoder.json").read_text())["steps"] == 4
