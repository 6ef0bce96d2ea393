"""`bench transfer`: each task trains a few iterations on toy data through the CLI and writes a
valid record; --init forms and their errors; run folders are never half-written or clobbered."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from bench_data.images import VOC_CLASSES
from pretrain.networks import alexnet_encoder, he_init
from transfer.encoders import standardize_units
from transfer.config import TransferConfig
from transfer.tasks import transfer_run_name
from helpers import bench

FAST = ["--steps", 3, "--batch-size", 4, "--fc-width", 16, "--workers", 0]


def transfer(root, out, *extra):
    return bench("transfer", "--data-root", root, "--out", out, *FAST, *extra)


def read_record(out):
    text = (out / "record.json").read_text()
    assert "NaN" not in text  # strict JSON
    return json.loads(text)


def test_segmentation_record(toy_voc_root, tmp_path):
    out = tmp_path / "seg"
    assert transfer(toy_voc_root, out, "--task", "seg") == 0
    record = read_record(out)
    assert record["task"] == "seg" and record["metric"] == "mean_iu"
    assert record["year"] == "2012" and (record["train_split"], record["test_split"]) == ("train", "val")
    assert 0 <= record["value"] <= 1
    assert list(record["per_class"]) == ["background", *VOC_CLASSES]
    assert record["init"] == "random" and record["pretrain_seconds"] == 0 and record["pretrain_flops"] == 0
    assert record["config"]["steps"] == 3 and "torch" in record["environment"]
    # The confusion matrix counts every non-void pixel of the val masks at their original size.
    confusion = np.array(json.loads((out / "confusion.json").read_text())["confusion"])
    voc = toy_voc_root / "VOCdevkit" / "VOC2012"
    ids = (voc / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    labelled = sum(int((np.array(Image.open(voc / "SegmentationClass" / f"{i}.png")) != 255).sum()) for i in ids)
    assert confusion.sum() == labelled


def test_classification_finetune_record(toy_voc_root, tmp_path):
    out = tmp_path / "cls"
    assert transfer(toy_voc_root, out, "--task", "cls") == 0
    record = read_record(out)
    assert (record["task"], record["protocol"], record["metric"]) == ("cls", "finetune", "mAP")
    assert record["year"] == "2007" and (record["train_split"], record["test_split"]) == ("trainval", "test")
    assert list(record["per_class"]) == list(VOC_CLASSES)
    scored = [v for v in record["per_class"].values() if v is not None]
    assert scored and all(0 <= v <= 1 for v in scored)
    assert record["value"] == pytest.approx(np.mean(scored))


def test_classification_svm_from_pretrained_run(toy_voc_root, tmp_path, pretrain_run):
    out = tmp_path / "svm"
    assert transfer(toy_voc_root, out, "--task", "cls", "--protocol", "svm", "--init", pretrain_run) == 0
    record = read_record(out)
    assert record["protocol"] == "svm" and record["pretrain_method"] == "context-encoder"
    assert record["init"] == str(pretrain_run) and record["pretrain_seconds"] > 0
    assert record["pretrain_flops"] == json.loads((pretrain_run / "encoder.json").read_text())["pretrain_flops"] > 0
    assert 0 <= record["value"] <= 1


@pytest.mark.parametrize("task", ["cls", "seg"])
def test_same_seed_same_metrics(toy_voc_root, tmp_path, task):
    # At lr 1e-3: with seg's default 1e-2, three steps from the calibrated head already predict
    # background everywhere on the toy images, whatever the seed.
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        assert transfer(toy_voc_root, tmp_path / name, "--task", task, "--workers", 1, "--seed", seed,
                        "--lr", 1e-3) == 0
    first, second, other = (read_record(tmp_path / name) for name in ("a", "b", "c"))
    assert first["value"] == second["value"] and first["per_class"] == second["per_class"]
    assert other["per_class"] != first["per_class"]


def test_timm_backbone_transfers(toy_voc_root, tmp_path, capsys):
    out = tmp_path / "det"
    assert transfer(toy_voc_root, out, "--task", "det", "--init", "random:timm:resnet18", "--image-size", 64) == 0
    record = read_record(out)
    assert record["pretrain_label"] == "random [timm:resnet18]" and 0 <= record["value"] <= 1
    assert transfer(toy_voc_root, tmp_path / "r", "--task", "seg", "--init", "random:timm:resnet18",
                    "--rescale") == 2
    assert "--rescale is for AlexNet encoders" in capsys.readouterr().err


def test_rescaled_svm_record_is_its_own_row(toy_voc_root, tmp_path, pretrain_run):
    out = tmp_path / "svm-rescaled"
    assert transfer(toy_voc_root, out, "--task", "cls", "--protocol", "svm", "--init", pretrain_run,
                    "--rescale") == 0
    record = read_record(out)
    assert record["config"]["rescale"] is True
    assert record["pretrain_label"].endswith(" + rescaled") and 0 <= record["value"] <= 1


def test_kraehenbuehl_init_gives_unit_channels_and_revives_dead_ones():
    torch.manual_seed(0)
    encoder = alexnet_encoder()
    he_init(encoder, linear_output=False)
    with torch.no_grad():
        encoder[3].bias[:5] = -1e3  # five conv2 channels that never fire
        encoder[6].weight[:3] = 0   # three conv3 channels constant over every input
    images = torch.randn(8, 3, 96, 96)
    standardize_units(list(encoder), images)
    x = images
    with torch.no_grad():
        for layer in encoder:
            y = layer(x)
            if isinstance(layer, torch.nn.Conv2d):
                channels = y.transpose(0, 1).flatten(1)
                live = channels.std(1) > 1e-6
                assert torch.allclose(channels.mean(1), torch.zeros(len(channels)), atol=1e-4)
                assert torch.allclose(channels.std(1)[live], torch.ones(int(live.sum())), atol=1e-3)
                if layer is encoder[3]:
                    assert (channels[:5] > 0).any(1).all()  # the dead channels fire again
                if layer is encoder[6]:
                    assert not live[:3].any() and torch.isfinite(layer.weight).all()
            x = y


def test_encoder_file_init_uses_its_weights(toy_voc_root, pretrain_run):
    from transfer.encoders import load_encoder
    encoder, info = load_encoder(pretrain_run / "encoder.pt")
    saved = torch.load(pretrain_run / "encoder.pt", weights_only=True)
    assert all(torch.equal(encoder.state_dict()[k], saved[k]) for k in saved)
    assert info["input_mean"] == json.loads((pretrain_run / "encoder.json").read_text())["input_mean"]


def test_encoder_of_another_architecture_lists_keys(toy_voc_root, tmp_path, capsys):
    weights = tmp_path / "encoder.pt"
    torch.save({"conv.weight": torch.zeros(1), "0.weight": torch.zeros(3)}, weights)
    (tmp_path / "encoder.json").write_text(json.dumps({"arch": "alexnet"}))
    assert transfer(toy_voc_root, tmp_path / "out", "--task", "cls", "--init", weights) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing keys" in err[0] and "conv.weight" in err[0] and "0.weight (shape)" in err[0]


def test_inpainting_encoder_is_refused(toy_voc_root, tmp_path, capsys):
    torch.save({}, tmp_path / "encoder.pt")
    (tmp_path / "encoder.json").write_text(json.dumps({"arch": "inpaint"}))
    assert transfer(toy_voc_root, tmp_path / "out", "--task", "seg", "--init", tmp_path) == 2
    assert "'inpaint'" in capsys.readouterr().err


def test_missing_init(toy_voc_root, tmp_path, capsys):
    assert transfer(toy_voc_root, tmp_path / "out", "--task", "seg", "--init", tmp_path / "nope") == 2
    assert str(tmp_path / "nope") in capsys.readouterr().err


def test_svm_is_for_classification_only(tmp_path, capsys):
    assert bench("transfer", "--task", "seg", "--protocol", "svm", "--out", tmp_path / "out") == 2
    assert "--task cls" in capsys.readouterr().err


def test_existing_results_survive_refusal_and_failed_overwrite(toy_voc_root, tmp_path, capsys):
    out = tmp_path / "seg"
    assert transfer(toy_voc_root, out, "--task", "seg") == 0
    before = (out / "record.json").read_bytes()
    assert transfer(toy_voc_root, out, "--task", "seg") == 2
    assert "already exists" in capsys.readouterr().err
    # --overwrite with an impossible batch fails before anything replaces the old results.
    assert bench("transfer", "--data-root", toy_voc_root, "--out", out, "--task", "seg", "--steps", 1,
                 "--batch-size", 500, "--workers", 0, "--overwrite") == 2
    assert (out / "record.json").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["seg"]  # no staging folder left behind


def test_unknown_split_is_named(toy_voc_root, tmp_path, capsys):
    assert transfer(toy_voc_root, tmp_path / "out", "--task", "cls", "--test-split", "nosuch") == 2
    assert "nosuch.txt" in capsys.readouterr().err


def test_detection_through_the_cli(toy_voc_root, tmp_path):
    out = tmp_path / "det"
    assert transfer(toy_voc_root, out, "--task", "det", "--steps", 2, "--batch-size", 2) == 0
    record = read_record(out)
    assert (record["task"], record["metric"], record["year"]) == ("det", "mAP", "2007")
    assert record["config"]["proposals"] == "selective-search" and (out / "detections.json").is_file()


def test_default_transfer_folder_is_named_by_the_run_the_encoder_comes_from(tmp_path):
    names = {init: transfer_run_name(TransferConfig(task="cls", init=str(init), seed=1))
             for init in (tmp_path / "ce-a" / "encoder.pt", tmp_path / "ce-b" / "encoder.pt", tmp_path / "ce-a")}
    assert names[tmp_path / "ce-a" / "encoder.pt"] == names[tmp_path / "ce-a"]
    assert names[tmp_path / "ce-a"] == "runs/transfer/cls-finetune-ce-a-seed1"
    assert names[tmp_path / "ce-b" / "encoder.pt"] == "runs/transfer/cls-finetune-ce-b-seed1"
    assert transfer_run_name(TransferConfig(task="det", init="random-gaussian", rescale=True)) == \
        "runs/transfer/det-selective-search-random-gaussian-rescaled-seed0"
