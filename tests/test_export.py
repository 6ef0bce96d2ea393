"""`bench export`: names and shapes of the torchvision and detectron2 layouts (detectron2 itself
is not installed), the round trip back through --init torchvision-alexnet:PATH, and refusals."""
import json
import pickle

import numpy as np
import torch
import torchvision

from transfer.encoders import load_encoder
from helpers import bench


def test_torchvision_layout_loads_into_torchvision_alexnet(pretrain_run, tmp_path):
    out = tmp_path / "alexnet.pth"
    assert bench("export", "--run", pretrain_run, "--to", "torchvision", "--out", out) == 0
    state = torch.load(out, weights_only=True)
    model = torchvision.models.alexnet(weights=None)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(key.startswith("classifier.") for key in missing)
    encoder = torch.load(pretrain_run / "encoder.pt", weights_only=True)
    assert all(torch.equal(model.features.state_dict()[key], value) for key, value in encoder.items())


def test_torchvision_layout_imports_back_as_an_init(pretrain_run, tmp_path, toy_voc_root):
    out = tmp_path / "alexnet.pth"
    assert bench("export", "--run", pretrain_run, "--to", "torchvision", "--out", out) == 0
    encoder, info = load_encoder(f"torchvision-alexnet:{out}")
    original, _ = load_encoder(str(pretrain_run))
    assert all(torch.equal(a, b) for a, b in zip(encoder.state_dict().values(), original.state_dict().values()))
    assert info["label"] == "torchvision-alexnet" and info["input_mean"] == [0.485, 0.456, 0.406]
    # A full torchvision AlexNet file (classifier included) works the same way, through the CLI.
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), tmp_path / "full.pth")
    record_dir = tmp_path / "svm"
    assert bench("transfer", "--task", "cls", "--protocol", "svm", "--data-root", toy_voc_root,
                 "--init", f"torchvision-alexnet:{tmp_path / 'full.pth'}", "--out", record_dir,
                 "--image-size", 64, "--workers", 0) == 0
    assert json.loads((record_dir / "record.json").read_text())["pretrain_label"] == "torchvision-alexnet"


def test_detectron2_layout(pretrain_run, tmp_path):
    out = tmp_path / "encoder.pkl"
    assert bench("export", "--run", pretrain_run / "encoder.pt", "--to", "detectron2", "--out", out) == 0
    checkpoint = pickle.loads(out.read_bytes())
    assert checkpoint["matching_heuristics"] is True and checkpoint["__author__"]
    model = checkpoint["model"]
    assert list(model) == [f"conv{k}.{kind}" for k in range(1, 6) for kind in ("weight", "bias")]
    assert all(isinstance(value, np.ndarray) for value in model.values())
    shapes = {name: value.shape for name, value in model.items() if name.endswith("weight")}
    assert shapes == {"conv1.weight": (64, 3, 11, 11), "conv2.weight": (192, 64, 5, 5),
                      "conv3.weight": (384, 192, 3, 3), "conv4.weight": (256, 384, 3, 3),
                      "conv5.weight": (256, 256, 3, 3)}
    encoder = torch.load(pretrain_run / "encoder.pt", weights_only=True)
    assert np.array_equal(model["conv5.bias"], encoder["10.bias"].numpy())


def test_timm_layout_loads_into_the_timm_model_and_back(toy_voc_root, tmp_path):
    import timm
    run = tmp_path / "run"
    assert bench("pretrain", "--method", "rotation", "--arch", "timm:resnet18", "--data-root", toy_voc_root,
                 "--out", run, "--image-size", 64, "--steps", 1, "--batch-size", 4, "--workers", 0) == 0
    out = tmp_path / "resnet18.pth"
    assert bench("export", "--run", run, "--to", "timm", "--out", out) == 0
    state = torch.load(out, weights_only=True)
    model = timm.create_model("resnet18", pretrained=False)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and sorted(missing) == ["fc.bias", "fc.weight"]
    encoder = torch.load(run / "encoder.pt", weights_only=True)
    assert torch.equal(model.layer4[1].conv2.weight, encoder["model.layer4.1.conv2.weight"])
    # A full timm state_dict (classifier included) is an --init too.
    torch.save(model.state_dict(), tmp_path / "full.pth")
    imported, info = load_encoder(f"timm:resnet18:{tmp_path / 'full.pth'}")
    assert info["arch"] == "timm:resnet18" and torch.equal(
        imported.model.layer4[1].conv2.weight, encoder["model.layer4.1.conv2.weight"])
    assert bench("export", "--run", run, "--to", "torchvision", "--out", tmp_path / "x.pth") == 2


def test_export_refusals(pretrain_run, tmp_path, capsys):
    out = tmp_path / "taken.pth"
    out.write_text("a user's file")
    assert bench("export", "--run", pretrain_run, "--to", "torchvision", "--out", out) == 2
    assert "already exists" in capsys.readouterr().err and out.read_text() == "a user's file"
    assert bench("export", "--run", pretrain_run, "--to", "timm", "--out", tmp_path / "t.pth") == 2
    assert "--to timm takes timm:<model> encoders only (export it --to torchvision)" in capsys.readouterr().err
    assert bench("export", "--run", tmp_path / "nothing", "--to", "torchvision", "--out", tmp_path / "x.pth") == 2
    assert "no encoder file" in capsys.readouterr().err


def test_torchvision_init_that_is_not_alexnet(tmp_path, capsys, toy_voc_root):
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    assert bench("transfer", "--task", "cls", "--data-root", toy_voc_root, "--out", tmp_path / "r",
                 "--init", f"torchvision-alexnet:{tmp_path / 'other.pth'}") == 2
    assert "not a torchvision AlexNet" in capsys.readouterr().err
