"""`bench suite` on a tiny preset: every method x task x seed gets a record, the table is built,
and a second call skips finished work."""
import pandas as pd
import yaml

from benchmarks.cli import main
from benchmarks.suite import PRESETS, _check_preset, load_preset
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
    for label in ("context-encoder (central)", "autoencoder", "random"):
        assert table.loc[label, "Segmentation"].endswith("(n=1)")
        assert table.loc[label, "Classification (SVM)"].endswith("(n=1)")
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("record.json")}
    capsys.readouterr()
    assert main(args) == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("record.json")} == stamps
    assert capsys.readouterr().out.count("skip") == 2 + 6


def test_unknown_preset_and_option(tmp_path, capsys):
    assert main(["suite", "--preset", "nosuch"]) == 2
    assert "quick" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**TINY, "tasks": {"seg": {"task": "seg", "stepz": 1}}}))
    assert main(["suite", "--preset", str(bad), "--out", str(tmp_path / "o"),
                 "--data-root", str(tmp_path)]) == 2
    assert "stepz" in capsys.readouterr().err


def test_builtin_presets_parse():
    assert {p.stem for p in PRESETS.glob("*.yaml")} == {"quick", "cpu", "paper", "methods"}
    for name in ("quick", "cpu", "paper", "methods"):
        preset = load_preset(name)
        assert preset["methods"]["random"] is None and preset["tasks"]
        _check_preset(preset)


def test_methods_preset_gives_a_row_per_built_in_method(toy_voc_root, tmp_path):
    """The `methods` preset's method list, shrunk to a few steps: one suite call, one row each."""
    methods = load_preset("methods")["methods"]
    assert {options["method"] for options in methods.values() if options} == set(METHODS)
    preset = tmp_path / "methods-tiny.yaml"
    preset.write_text(yaml.safe_dump({**TINY, "pretrain": {**TINY["pretrain"], "image_size": 64},
                                      "transfer": {**TINY["transfer"], "image_size": 64},
                                      "methods": methods, "tasks": {"cls-svm": TINY["tasks"]["cls-svm"]}}))
    out = tmp_path / "suite"
    assert main(["suite", "--preset", str(preset), "--data-root", str(toy_voc_root), "--out", str(out)]) == 0
    table = pd.read_csv(out / "table.csv", keep_default_na=False).set_index("Pretraining")
    for label in ("context-encoder (random-region)", *sorted(set(METHODS) - {"context-encoder"}), "random"):
        assert table.loc[label, "Classification (SVM)"].endswith("(n=1)"), label
