"""`bench table` on fixed records: the paper's rows beside measured mean ± std (n)."""
import errno
import json

import matplotlib.figure
import pandas as pd
import pytest

from benchmarks.cli import main
from benchmarks.table import write_table
from helpers import bench
from transfer import registry


def record(folder, name, label, task, protocol, value, seed, pretrain_seconds=600.0, data="pets-voc", **more):
    path = folder / name / "record.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({
        "task": task, "protocol": protocol, "pretrain_method": label.split(" ")[0], "pretrain_label": label,
        "pretrain_seconds": pretrain_seconds, "seed": seed, "data_root": f"/data/{data}", "value": value, **more}))


@pytest.fixture
def records(tmp_path):
    folder = tmp_path / "records"
    record(folder, "a", "context-encoder (random-region)", "cls", "finetune", 0.50, 0)
    record(folder, "b", "context-encoder (random-region)", "cls", "finetune", 0.70, 1)
    record(folder, "c", "context-encoder (random-region)", "seg", "finetune", 0.30, 0)
    record(folder, "d", "random", "seg", "finetune", 0.20, 0, pretrain_seconds=0.0)
    record(folder, "e", "random", "cls", "svm", 0.25, 0, pretrain_seconds=0.0)
    return folder


def test_table_rows_and_numbers(records, tmp_path):
    out = tmp_path / "results"
    write_table(records, out)
    table = pd.read_csv(out / "table.csv", keep_default_na=False).set_index("Pretraining")
    # Paper rows first, as printed in the paper.
    assert table.loc["Context encoder (paper)", "Classification"] == "56.5"
    assert table.loc["Random Gaussian + Krähenbühl scaling (paper)", "Segmentation"] == "19.8"
    assert table.loc["Wang et al. (paper)", "Segmentation"] == ""
    ce = table.loc["context-encoder (random-region)"]
    # mean of 50 and 70 is 60; sample std sqrt(((-10)^2 + 10^2) / 1) = 14.14
    assert ce["Classification"] == "60.0 ± 14.1 (n=2)"
    assert ce["Segmentation"] == "30.0 (n=1)"
    assert ce["Source"] == "measured: pets-voc" and ce["Pretraining time"] == "10.0 min"
    assert table.loc["random", "Classification (SVM)"] == "25.0 (n=1)"
    assert table.loc["random", "Pretraining time"] == "none"
    assert "Detection" in table.columns  # the paper has detection numbers
    assert list(table.columns[:2]) == ["Source", "Pretraining time"]

    rows = json.loads((out / "table.json").read_text())
    measured = {(m["method"], m["column"]): m for m in rows["measured"]}
    assert measured[("context-encoder (random-region)", "Classification")]["n"] == 2
    assert (out / "table.md").read_text().startswith("| Pretraining | Source |")
    assert (out / "table.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pretraining_compute_is_shown_beside_the_time(tmp_path):
    folder = tmp_path / "records"
    record(folder, "a", "context-encoder", "seg", "finetune", 0.3, 0, pretrain_flops=2e15)
    record(folder, "b", "context-encoder", "seg", "finetune", 0.4, 1, pretrain_flops=2e15)
    record(folder, "c", "autoencoder", "seg", "finetune", 0.3, 0, pretrain_flops=3.4e9)
    record(folder, "d", "random", "seg", "finetune", 0.2, 0, pretrain_seconds=0.0, pretrain_flops=0.0)
    record(folder, "e", "rotation", "seg", "finetune", 0.2, 0)  # a record from before compute was counted
    write_table(folder, tmp_path / "out")
    table = pd.read_csv(tmp_path / "out" / "table.csv", keep_default_na=False).set_index("Pretraining")
    assert list(table.columns[1:3]) == ["Pretraining time", "Pretraining compute"]
    assert table["Pretraining compute"].to_dict() == {
        **{name: "" for name in table.index if name.endswith("(paper)")},
        "context-encoder": "2.0 PFLOP", "autoencoder": "3.4 GFLOP", "random": "none", "rotation": "not measured"}


def test_a_full_disk_leaves_the_table_folder_as_it_was(records, tmp_path, monkeypatch, capsys):
    out = tmp_path / "results"
    write_table(records, out)
    record(records, "f", "random", "seg", "finetune", 0.40, 1, pretrain_seconds=0.0)  # the table changes
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", disk_full)  # table.png is written after the csv/md/json
    capsys.readouterr()
    assert main(["table", "--records", str(records), "--out", str(out)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == f"error: cannot write {out / 'table.png'}: No space left on device; {out} is left as it was"
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_table_cli_without_records(tmp_path, capsys):
    assert main(["table", "--records", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "no record.json" in capsys.readouterr().err


def test_table_names_a_broken_record(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "record.json").write_text("{}")
    assert main(["table", "--records", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert str(tmp_path / "x" / "record.json") in capsys.readouterr().err


def test_a_registered_task_is_offered_and_tabled(tmp_path, monkeypatch, capsys):
    """A task registered from outside the package (as a plug-in would) is a `--task` choice with
    its help, and its records fill the columns it declares, after the built-ins'."""
    monkeypatch.setattr(registry, "TASKS", dict(registry.TASKS))  # the plug-in leaves with the test
    registry.register(registry.TransferTask(
        "cls-knn", "kNN on frozen features, mAP", lambda config, context, run_dir, progress: None, registry.VOC,
        "trainval", "test", year="2007", columns=(registry.Column("Classification (kNN)"),)))
    assert bench("transfer", "--help") == 0
    help_text = " ".join(capsys.readouterr().out.split())  # as argparse wraps it, whatever the width
    choices = "{" + ",".join(sorted(registry.TASKS)) + "}"
    assert "cls-knn" in choices and choices in help_text and "kNN on frozen features, mAP" in help_text

    folder = tmp_path / "records"
    record(folder, "a", "context-encoder", "cls-knn", "finetune", 0.4, 0)
    record(folder, "b", "context-encoder", "seg", "finetune", 0.3, 0)
    write_table(folder, tmp_path / "results")
    table = pd.read_csv(tmp_path / "results" / "table.csv", keep_default_na=False).set_index("Pretraining")
    assert table.loc["context-encoder", "Classification (kNN)"] == "40.0 (n=1)"
    assert list(table.columns).index("Classification (kNN)") > list(table.columns).index("Segmentation")


def test_a_record_of_an_unregistered_task_is_named(tmp_path, capsys):
    record(tmp_path / "records", "a", "context-encoder", "depth", "finetune", 0.4, 0)
    assert main(["table", "--records", str(tmp_path / "records"), "--out", str(tmp_path / "out")]) == 2
    assert "unknown task 'depth'" in capsys.readouterr().err
