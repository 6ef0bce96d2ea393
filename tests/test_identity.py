"""Run identity and file versions: runs that differ in a setting never share a table row, runs
that differ only in seed do; the no-learning control changes no weight and is paired with its
learned run; files of the earlier format still load, files of a newer one are refused."""
import json
import shutil

import pandas as pd
import pytest
import torch

from benchmarks.table import write_table
from helpers import bench
from pretrain.train import build_method, load_run_config
from bench_runtime import formats
from bench_runtime.device import seed_everything
from bench_runtime.identity import describe, differing, identity
from transfer.encoders import load_encoder

TINY = ("--image-size", 64, "--steps", 2, "--batch-size", 4, "--workers", 0, "--mask", "central")


def pretrain(root, out, *options):
    assert bench("pretrain", "--data-root", root, "--out", out, *TINY, *options) == 0
    return out


def seg(root, init, out):
    assert bench("transfer", "--task", "seg", "--init", init, "--data-root", root, "--out", out, "--steps", 2,
                 "--batch-size", 2, "--workers", 0, "--image-size", 64, "--fc-width", 16) == 0


@pytest.fixture(scope="module")
def sweep(toy_voc_root, tmp_path_factory):
    """Four pretrainings: lr 1e-3 with seeds 0 and 1, its no-learning control, and lr 1e-5 with
    BatchNorm; each transferred to segmentation; the table of their records."""
    folder = tmp_path_factory.mktemp("sweep")
    runs = {"a0": ("--lr", "1e-3"), "a1": ("--lr", "1e-3", "--seed", 1), "control": ("--lr", "1e-3", "--no-learning"),
            "b": ("--lr", "1e-5", "--encoder-norm", "batch")}
    for name, options in runs.items():
        pretrain(toy_voc_root, folder / "pretrain" / name, *options)
        seg(toy_voc_root, folder / "pretrain" / name, folder / "transfer" / name)
    write_table(folder / "transfer", folder / "table")
    return folder


def test_runs_that_differ_in_a_setting_get_rows_of_their_own_named_by_it(sweep):
    table = pd.read_csv(sweep / "table" / "table.csv", keep_default_na=False)
    measured = table[~table["Pretraining"].str.endswith("(paper)")].set_index("Pretraining")["Segmentation"]
    assert sorted(measured.index) == ["context-encoder (central, no learning)",
                                      "context-encoder (central; encoder_norm batch, lr 1e-05)",
                                      "context-encoder (central; encoder_norm none, lr 0.001)"]
    assert measured["context-encoder (central; encoder_norm none, lr 0.001)"].endswith("(n=2)")  # the two seeds
    assert measured["context-encoder (central; encoder_norm batch, lr 1e-05)"].endswith("(n=1)")


def test_identity_leaves_out_the_seed_and_is_written_in_every_file(sweep):
    encoders = {name: json.loads((sweep / "pretrain" / name / "encoder.json").read_text()) for name in ("a0", "a1", "b")}
    assert encoders["a0"]["identity"] == encoders["a1"]["identity"] != encoders["b"]["identity"]
    config = json.loads((sweep / "pretrain" / "a0" / "config.json").read_text())
    record = json.loads((sweep / "transfer" / "a0" / "record.json").read_text())
    assert config["identity"] == record["pretrain_identity"] == encoders["a0"]["identity"]
    assert record["identity"] == json.loads((sweep / "transfer" / "a1" / "record.json").read_text())["identity"]
    for content in (config, encoders["a0"], record):
        assert content["format_version"] == 2
    assert torch.load(sweep / "pretrain" / "a0" / "checkpoint.pt", weights_only=True)["format_version"] == 2


def test_identity_ignores_key_order_and_descriptions_name_what_differs():
    assert identity({"lr": 1e-3, "steps": 2}) == identity({"steps": 2, "lr": 1e-3}) != identity({"lr": 1e-4, "steps": 2})
    runs = [{"lr": 1e-3, "steps": 2, "norm": "none"}, {"lr": 1e-5, "steps": 2}]
    assert differing(runs) == ["lr", "norm"]
    assert describe(runs[1], differing(runs)) == "lr 1e-05, norm none"


def test_no_learning_moves_no_weight_and_pairs_with_its_learned_run(sweep):
    control = sweep / "pretrain" / "control"
    config = load_run_config(control)
    seed_everything(config.seed)
    initial = build_method(config).encoder.state_dict()
    saved = torch.load(control / "encoder.pt", weights_only=True)
    assert all(torch.equal(saved[key], value) for key, value in initial.items())
    learned = json.loads((sweep / "pretrain" / "a0" / "encoder.json").read_text())
    made = json.loads((control / "encoder.json").read_text())
    assert learned["control_identity"] == made["identity"]
    assert made["label"] == "context-encoder (central, no learning)"
    differences = pd.read_csv(sweep / "table" / "differences.csv")
    against = differences[differences["row"] == "context-encoder (central; encoder_norm none, lr 0.001)"]["against"]
    assert "context-encoder (central, no learning)" in set(against)  # learned minus its own control


def test_no_learning_with_batchnorm_folds_gathered_statistics(toy_voc_root, tmp_path):
    """The control's encoder is its init rescaled by the BatchNorm statistics of the batches."""
    control = pretrain(toy_voc_root, tmp_path / "control", "--encoder-norm", "batch", "--no-learning")
    checkpoint = torch.load(control / "checkpoint.pt", weights_only=True)["model"]
    config = load_run_config(control)
    seed_everything(config.seed)
    initial = build_method(config).state_dict()
    weights = [key for key in initial if key.endswith("weight") and initial[key].dim() == 4]
    assert weights and all(torch.equal(checkpoint[key], initial[key]) for key in weights)
    means = [key for key in checkpoint if key.endswith("running_mean")]
    assert means and any(checkpoint[key].abs().sum() > 0 for key in means)  # statistics were gathered
    encoder, _ = load_encoder(control)
    assert not torch.equal(encoder.state_dict()["0.weight"], initial["generator.encoder.0.0.weight"])  # and folded


def _as_version_1(path):
    content = json.loads(path.read_text())
    for key in ("format_version", "identity", "identity_settings", "settings", "control_identity", "label",
                "pretrain_identity", "pretrain_settings", "transfer_settings"):
        content.pop(key, None)
    path.write_text(json.dumps(content))


def test_files_of_the_earlier_format_still_load(sweep, tmp_path):
    folder = shutil.copytree(sweep, tmp_path / "old")
    for name in ("a0", "a1", "control", "b"):
        for path in (folder / "pretrain" / name / "config.json", folder / "pretrain" / name / "encoder.json",
                     folder / "transfer" / name / "record.json"):
            _as_version_1(path)
    _, info = load_encoder(folder / "pretrain" / "a0")
    assert info["identity"] == json.loads((sweep / "pretrain" / "a0" / "encoder.json").read_text())["identity"]
    # Records whose run folders moved away: grouped by their label, as before identities.
    write_table(folder / "transfer", tmp_path / "table")
    table = pd.read_csv(tmp_path / "table" / "table.csv", keep_default_na=False).set_index("Pretraining")
    assert len(table[~table.index.str.endswith("(paper)")]) == 3


def test_a_newer_format_is_refused_in_one_line(pretrain_run, toy_voc_root, tmp_path, capsys):
    run = shutil.copytree(pretrain_run, tmp_path / "run")
    meta = json.loads((run / "encoder.json").read_text())
    (run / "encoder.json").write_text(json.dumps({**meta, "format_version": formats.CURRENT["encoder"] + 1}))
    assert bench("transfer", "--task", "seg", "--init", run, "--data-root", toy_voc_root, "--out", tmp_path / "t",
                 "--steps", 1) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "newer version of the suite" in err[0] and "encoder.json" in err[0]
    assert not (tmp_path / "t").exists()
