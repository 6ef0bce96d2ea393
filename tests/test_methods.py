"""Pretext methods: one smoke harness runs every registered method on toy data (a few steps,
finite losses, the encoder loads into every transfer task's model); docs/extending.md's "Add a
pretext method" example runs through pretrain -> transfer -> table as a --plugin; entry points and
`bench methods`; labelled image folders for the supervised method."""
import importlib.metadata
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench_data.images import image_labels
from pretrain.methods import ENTRY_POINT_GROUP, METHODS
from bench_runtime.errors import UserError
from transfer.classification import Classifier
from transfer.detection import build_detector
from transfer.encoders import load_encoder
from transfer.config import TransferConfig
from transfer.segmentation import FCN32s
from helpers import bench

EXTENDING = Path(__file__).resolve().parent.parent / "docs" / "extending.md"
BUILT_IN = sorted(METHODS)
SIZE = 64
VIT = f"timm:vit_tiny_patch16_224,depth=2,patch_size=8,img_size={SIZE}"
# Every method on the paper's AlexNet and a ResNet; the masked autoencoder on a ViT only, and one
# other method on a ViT, so every transfer task builds on each kind of backbone.
CASES = [(method, arch) for method in BUILT_IN if method != "mae" for arch in ("alexnet", "timm:resnet18")] \
    + [("mae", VIT), ("simclr", VIT)]


@pytest.fixture(scope="module")
def class_folders(toy_voc_root, tmp_path_factory):
    """An image-folder data set: root/<class>/<image>.jpg, two classes."""
    root = tmp_path_factory.mktemp("folders")
    images = sorted((toy_voc_root / "VOCdevkit" / "VOC2012" / "JPEGImages").glob("*.jpg"))
    for index, image in enumerate(images):
        folder = root / ("first" if index % 2 else "second")
        folder.mkdir(exist_ok=True)
        shutil.copy(image, folder / image.name)
    return root


def loads_into_every_task(run_dir):
    encoder, info = load_encoder(str(run_dir))
    image = torch.rand(1, 3, SIZE, SIZE)
    with torch.no_grad():
        assert Classifier(encoder, SIZE, 16).eval()(image).shape == (1, 20)
        assert FCN32s(encoder, 16).eval()(image).shape == (1, 21, SIZE, SIZE)
        detector = build_detector(encoder, TransferConfig(fc_width=16), SIZE, info["input_mean"],
                                  info["input_std"]).eval()
        detections = detector([image[0]], [torch.tensor([[4.0, 4.0, 40.0, 40.0]])])
    assert set(detections[0]) == {"boxes", "scores", "labels"}


@pytest.mark.parametrize("method, arch", CASES)
def test_every_method_trains_and_transfers(method, arch, toy_voc_root, tmp_path):
    out = tmp_path / method
    assert bench("pretrain", "--method", method, "--arch", arch, "--data-root", toy_voc_root, "--out", out,
                 "--image-size", SIZE, "--steps", 2, "--batch-size", 4, "--workers", 0) == 0
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2 and all(math.isfinite(m["loss"]) for m in metrics)
    encoder_info = json.loads((out / "encoder.json").read_text())
    assert encoder_info["method"] == method and encoder_info["arch"] == arch
    assert (out / "preview.png").stat().st_size > 0
    loads_into_every_task(out)


def docs_example(heading):
    section = EXTENDING.read_text().split(f"## {heading}", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


# The plug-ins of docs/extending.md: (its heading, the method it registers, an option of its own).
DOCS_EXAMPLES = [("Add a pretext method", "colourisation", ("loss", "l1")),
                 ("A modern method, worked", "tiny-simclr", ("temperature", 0.3))]


@pytest.mark.parametrize("heading, method, option", DOCS_EXAMPLES, ids=[m for _, m, _ in DOCS_EXAMPLES])
def test_docs_examples_run_through_pretrain_transfer_and_table(heading, method, option, toy_voc_root, tmp_path,
                                                               capsys, private_registry):
    example = docs_example(heading)
    assert len(example.splitlines()) <= 60
    plugin = tmp_path / "my_methods.py"
    plugin.write_text(example)
    assert bench("methods", "--plugin", plugin) == 0
    assert method in capsys.readouterr().out
    run = tmp_path / "run"
    name, value = option
    assert bench("pretrain", "--plugin", plugin, "--method", method, f"--{name}", value,
                 "--data-root", toy_voc_root, "--out", run, "--image-size", SIZE, "--steps", 2, "--batch-size", 4,
                 "--workers", 0) == 0
    # Its own option, declared in the plug-in only, reaches the run and its record.
    assert json.loads((run / "config.json").read_text())["config"]["method_options"] == {name: value}
    records = tmp_path / "records"
    assert bench("transfer", "--task", "cls", "--protocol", "svm", "--init", run, "--data-root", toy_voc_root,
                 "--image-size", SIZE, "--workers", 0, "--out", records / "svm") == 0
    assert bench("table", "--records", records, "--out", tmp_path / "table") == 0
    rows = json.loads((tmp_path / "table" / "table.json").read_text())["rows"]
    measured = [row for row in rows if row["Pretraining"] == method]
    assert len(measured) == 1 and measured[0]["Classification (SVM)"].endswith("(n=1)")


def test_entry_point_plugins_register_and_failures_are_one_line(tmp_path, monkeypatch, capsys,
                                                                private_registry):
    (tmp_path / "entry_point_methods.py").write_text(
        "from pretrain.methods import PretextMethod, register\n\n\n"
        "@register\nclass Listed(PretextMethod):\n    name = 'listed-by-entry-point'\n"
        "    description = 'registered through an entry point'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    entry = importlib.metadata.EntryPoint("listed", "entry_point_methods", ENTRY_POINT_GROUP)
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group: [entry] if group == ENTRY_POINT_GROUP else [])
    assert bench("methods") == 0
    assert "listed-by-entry-point  registered through an entry point" in capsys.readouterr().out

    broken = importlib.metadata.EntryPoint("broken", "no_such_module_here", ENTRY_POINT_GROUP)
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [broken])
    assert bench("methods") == 2
    assert "pretext plugin 'broken' (no_such_module_here) failed to load" in capsys.readouterr().err


def test_bench_methods_lists_the_built_ins(capsys):
    assert bench("methods") == 0
    listing = capsys.readouterr().out
    for name in BUILT_IN:
        assert re.search(rf"^{re.escape(name)}\s+\S", listing, re.M), name


def test_supervised_on_class_folders(class_folders, tmp_path):
    out = tmp_path / "run"
    assert bench("pretrain", "--method", "supervised", "--data-root", class_folders, "--out", out,
                 "--image-size", SIZE, "--steps", 2, "--batch-size", 4, "--workers", 0) == 0
    assert json.loads((out / "config.json").read_text())["config"]["classes"] == ["first", "second"]


def test_image_labels(class_folders, toy_voc_root, tmp_path):
    paths = sorted(class_folders.rglob("*.jpg"))
    labels, classes = image_labels(paths, class_folders)
    assert classes == ["first", "second"]
    assert all(classes[label] == path.parent.name for label, path in zip(labels, paths))
    with pytest.raises(UserError, match="not inside a class folder"):
        image_labels([class_folders / "loose.jpg"], class_folders)
    with pytest.raises(UserError, match="1 class folder"):
        image_labels([p for p in paths if p.parent.name == "first"], class_folders)
    # A VOC root: each image's 20 labels from the per-class files, in the order of the paths given.
    voc = toy_voc_root / "VOCdevkit" / "VOC2012"
    ids = (voc / "ImageSets" / "Main" / "train.txt").read_text().split()[::-1]
    labels, classes = image_labels([voc / "JPEGImages" / f"{i}.jpg" for i in ids], toy_voc_root)
    assert classes[7] == "cat" and len(labels) == len(ids) and labels[0].shape == (20,)
    cat_file = (voc / "ImageSets" / "Main" / "cat_train.txt").read_text().split()
    cat = dict(zip(cat_file[::2], cat_file[1::2]))
    assert [int(label[7]) for label in labels] == [int(cat[i]) for i in ids]


LAB_PLUGIN = '''
"""A research repository's method: it imports its own package named `data`, as most do."""
import torch
from data.images import flip_half
from pretrain.methods.rotation import RotationPrediction
from pretrain.methods.registry import register


@register
class FlippedRotation(RotationPrediction):
    name = "lab-flipped-rotation"
    description = "rotation on half-flipped images (a plug-in with its own data package)"

    def train_step(self, batch, optimizers):
        return super().train_step({**batch, "image": flip_half(batch["image"])}, optimizers)
'''


def test_a_plugin_with_its_own_data_package_loads(toy_voc_root, tmp_path):
    """A plug-in run from its repository's folder, where a package named `data` comes first on the
    path: the suite's own packages have names that it cannot shadow, and the plug-in gets its own."""
    lab = tmp_path / "lab"
    (lab / "data").mkdir(parents=True)
    (lab / "data" / "__init__.py").write_text("")
    # Module names a research repository's data package often has, and the suite's once had.
    (lab / "data" / "images.py").write_text(
        "import torch\n\ndef flip_half(images):\n    return torch.cat([images[::2].flip(-1), images[1::2]])\n")
    (lab / "data" / "voc.py").write_text("CLASSES = ('cat', 'dog')\n")
    (lab / "lab_methods.py").write_text(LAB_PLUGIN)
    run = tmp_path / "run"
    # `python -m` puts the working folder first on sys.path, as running from one's repository does.
    done = subprocess.run([sys.executable, "-m", "benchmarks.cli", "pretrain", "--plugin", "lab_methods",
                           "--method", "lab-flipped-rotation", "--data-root", str(toy_voc_root), "--out", str(run),
                           "--image-size", str(SIZE), "--steps", "2", "--batch-size", "4", "--workers", "0", "-q"],
                          cwd=lab, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""})
    assert done.returncode == 0, done.stderr
    assert (run / "encoder.pt").is_file()
    assert json.loads((run / "config.json").read_text())["config"]["method"] == "lab-flipped-rotation"
