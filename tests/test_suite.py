"""`bench suite` on a tiny preset: every method x task x seed gets a record, the table is built,
and a second call skips finished work."""
import json

import pandas as pd
import pytest
import yaml

from benchmarks.cli import main
from benchmarks.suite import PRESETS, SuiteConfig, check_preset, load_preset, plan_suite
from pretrain.methods import METHODS

TINY = {
    "seeds": [0],
    "pretrain": {"image_size": 96, "batch_size": 4, "steps": 2, "workers": 0},
    "methods": {"ce": {"method": "context-encoder", "mask": "central"},
                "ae": {"method": "autoencoder"}, "random": None},
    "transfer": {"image_size": 96, "batch_size": 4, "fc_width": 16, "workers": 0},
    "tasks": {"seg": {"task": "seg", "steps": 2}, "cls-svm": {"task": "cls", "protocol": "svm"}},
}


def test_suite_runs_everything_then_skips(toy_voc_root, tmp_path, capsys):
    preset = tmp_path / "tiny.yaml"
    preset.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "suite"
    args = ["suite", "--preset", str(preset), "--data-root", str(toy_voc_root), "--out", str(out)]
    assert main(args) == 0
    records = sorted(p.parent.name for p in (out / "transfer").rglob("record.json"))
    assert records == sorted(f"{t}-{m}-seed0" for t in ("seg", "cls-svm") for m in ("ce", "ae", "random"))
    assert (out / "pretrain" / "ce-seed0" / "encoder.pt").is_file()
    assert not (out / "pretrain" / "random-seed0").exists()
    table = pd.read_csv(out / "table.csv", keep_default_na=False).set_index("Pretraining")
    for label in ("ce", "ae", "random"):  # a suite's rows keep its preset's names
        assert table.loc[label, "Segmentation"].endswith("(n=1)")
        assert table.loc[label, "Classification (SVM)"].endswith("(n=1)")
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("record.json")}
    guide = capsys.readouterr().err  # where the files are, and how to read them
    assert f"report (open in a browser): {out / 'report.html'}" in guide and "How to read them" in guide
    assert main(args) == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("record.json")} == stamps
    assert capsys.readouterr().err.count("skip") == 2 + 6  # status lines go to stderr


def test_in_domain_probe_task_and_curves_use_the_class_folder_root(toy_class_folders, tmp_path, capsys):
    preset = tmp_path / "in-domain.yaml"
    preset.write_text(yaml.safe_dump({
        **TINY, "probe": True, "pretrain": {**TINY["pretrain"], "image_size": 64, "probe_every": 1},
        "transfer": {**TINY["transfer"], "image_size": 64},
        "methods": {"ae": {"method": "autoencoder"}, "random": None}, "tasks": {"in-domain": {"task": "probe"}}}))
    out = tmp_path / "suite"
    args = ["suite", "--preset", str(preset), "--data-root", str(toy_class_folders / "train"), "--out", str(out)]
    assert main(args) == 2
    assert "give --in-domain-data" in capsys.readouterr().err
    assert main([*args, "--in-domain-data", str(toy_class_folders)]) == 0
    probes = [json.loads(line) for line in (out / "pretrain" / "ae-seed0" / "metrics.jsonl").read_text().splitlines()
              if "probe_knn_top1" in line]
    assert [p["step"] for p in probes] == [0, 1, 2]
    table = pd.read_csv(out / "table.csv", keep_default_na=False).set_index("Pretraining")
    assert table.loc["ae", "In-domain linear"].endswith("(n=1)")
    assert table.loc["random", "In-domain kNN"].endswith("(n=1)")
    assert (out / "resolution.csv").is_file()


def test_a_failed_transfer_is_reported_and_the_others_still_run(toy_voc_root, tmp_path, capsys):
    preset = tmp_path / "failing.yaml"
    preset.write_text(yaml.safe_dump({
        **TINY, "methods": {"random": None},
        "tasks": {"bad": {"task": "seg", "test_split": "nosuch"}, "cls-svm": TINY["tasks"]["cls-svm"]}}))
    out = tmp_path / "suite"
    assert main(["suite", "--preset", str(preset), "--data-root", str(toy_voc_root), "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: 1 transfer run(s) failed") and "bad-random-seed0" in error
    assert (out / "transfer" / "cls-svm-random-seed0" / "record.json").is_file()
    assert not (out / "transfer" / "bad-random-seed0").exists()
    assert (out / "table.csv").is_file()


def test_unknown_preset_and_option(tmp_path, capsys):
    assert main(["suite", "--preset", "nosuch"]) == 2
    assert "quick" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**TINY, "tasks": {"seg": {"task": "seg", "stepz": 1}}}))
    assert main(["suite", "--preset", str(bad), "--out", str(tmp_path / "o"),
                 "--data-root", str(tmp_path)]) == 2
    assert "stepz" in capsys.readouterr().err


def test_builtin_presets_parse():
    names = {p.stem for p in PRESETS.glob("*.yaml")}
    assert {"quick", "cpu", "paper", "methods", "imagenet-subset", "laptop-ssl", "imagenette-simclr-gpu"} <= names
    for name in names:
        check_preset(load_preset(name))


def test_preset_refuses_to_run_without_the_data_it_needs(capsys):
    assert main(["suite", "--preset", "imagenet-subset", "--transfer-data", "x", "--mask-dir", "y"]) == 2
    assert "needs --pretrain-data" in capsys.readouterr().err


def test_separate_pretraining_and_transfer_data_init_rows_and_probe_curves(toy_voc_root, tmp_path):
    """Pretraining reads a plain image folder, transfer a VOC root; init-only rows need no
    pretraining; `probe: true` probes each run on the transfer data."""
    images = toy_voc_root / "VOCdevkit" / "VOC2012" / "JPEGImages"
    preset = tmp_path / "split.yaml"
    preset.write_text(yaml.safe_dump({
        **TINY, "probe": True, "pretrain": {**TINY["pretrain"], "probe_every": 1},
        "methods": {"ce": {"method": "context-encoder", "mask": "random-block"},
                    "gaussian": {"init": "random-gaussian"}},
        "transfer": {**TINY["transfer"], "train_split": "train", "test_split": "val", "year": "2012"},
        "tasks": {"cls-svm": TINY["tasks"]["cls-svm"]}}))
    out = tmp_path / "suite"
    assert main(["suite", "--preset", str(preset), "--pretrain-data", str(images),
                 "--transfer-data", str(toy_voc_root), "--out", str(out)]) == 0
    config = json.loads((out / "pretrain" / "ce-seed0" / "config.json").read_text())["config"]
    assert (config["data_root"], config["probe_data"]) == (str(images), str(toy_voc_root))
    record = json.loads((out / "transfer" / "cls-svm-gaussian-seed0" / "record.json").read_text())
    assert record["init"] == "random-gaussian" and record["data_root"] == str(toy_voc_root)
    curves = pd.read_csv(out / "probe_curves.csv")
    assert set(curves["name"]) == {"ce"} and list(curves["step"]) == [0, 1, 2]
    # Against compute: each probe at its step's share of the run's counted training FLOPs.
    flops = config["flops_per_step"]
    assert flops > 0 and list(curves["pflop"]) == pytest.approx([0, flops / 1e15, 2 * flops / 1e15])
    assert (out / "probe_curves.png").read_bytes()[:4] == b"\x89PNG"
    table = pd.read_csv(out / "table.csv", keep_default_na=False).set_index("Pretraining")
    assert table.loc["gaussian", "Classification (SVM)"].endswith("(n=1)")


def test_the_random_row_has_the_backbone_the_preset_pretrains(tmp_path):
    """A bare `random` row in a preset that pretrains a ResNet is a random ResNet, not AlexNet;
    an explicit init is kept."""
    preset = {**TINY, "pretrain": {**TINY["pretrain"], "arch": "timm:resnet18"},
              "methods": {"random": None, "gaussian": {"init": "random-gaussian"}}}
    jobs = plan_suite(preset, SuiteConfig(out=str(tmp_path / "suite")), progress=False)
    inits = {job.name: job.config.init for job in jobs if job.kind == "transfer"}
    assert inits["transfer/seg-random-seed0"] == "random:timm:resnet18"
    assert inits["transfer/seg-gaussian-seed0"] == "random-gaussian"
    alexnet = plan_suite(TINY, SuiteConfig(out=str(tmp_path / "suite")), progress=False)
    assert {job.config.init for job in alexnet if job.name.startswith("transfer/seg-random")} == {"random"}


def test_methods_preset_plans_a_row_per_built_in_method(tmp_path, capsys):
    """The `methods` preset names every built-in method, and a suite of it plans each one's
    pretraining and its transfer (each method's own run through every task: tests/test_methods.py)."""
    methods = load_preset("methods")["methods"]
    assert {options["method"] for options in methods.values() if options} == set(METHODS)
    assert main(["suite", "--preset", "methods", "--dry-run", "--out", str(tmp_path / "suite"), "-q"]) == 0
    planned = {line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]}
    for name, options in methods.items():
        assert f"transfer/cls-svm-{name}-seed0" in planned, name
        assert (f"pretrain/{name}-seed0" in planned) == (options is not None), name
