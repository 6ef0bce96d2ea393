"""A run never writes into the config it is given: PretrainConfig and TransferConfig are frozen, and
what a run works out from them (the device, once; the load size, mask folder, statistics, the
method's options, the FLOPs of a step and the steps a budget buys; a transfer's task data and image
size) goes into its context, from which its files record it."""
import dataclasses
import json

import pytest

from bench_runtime import device
from pretrain.train import PretrainConfig, pretrain
from transfer.config import TransferConfig
from transfer.tasks import run_task


@pytest.fixture
def resolved(monkeypatch):
    """The device names resolved while the test runs, in order."""
    names, resolve = [], device.resolve_device

    def counting(name):
        names.append(name)
        return resolve(name)
    monkeypatch.setattr(device, "resolve_device", counting)
    return names


@pytest.mark.parametrize("config", [PretrainConfig(), TransferConfig()], ids=["pretrain", "transfer"])
def test_a_config_refuses_assignment(config):
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.steps = 5


def test_pretraining_leaves_its_config_as_given_and_records_what_it_worked_out(toy_voc_root, tmp_path, resolved):
    config = PretrainConfig(data_root=str(toy_voc_root), mask="random-region", image_size=64, batch_size=4, workers=0,
                            budget_pflops=2.5e-6, method_options={"overlap_weight": 5.0})
    given = dataclasses.asdict(config)
    out = pretrain(config, tmp_path / "run", progress=False)
    assert dataclasses.asdict(config) == given
    assert resolved == ["auto"]  # one resolution, for this run in this process

    recorded = json.loads((out / "config.json").read_text())["config"]
    assert recorded.keys() == given.keys()
    assert {key for key in given if recorded[key] != given[key]} == {
        "device", "load_size", "mask_dir", "dataset_mean", "dataset_std", "method_options", "flops_per_step",
        "steps"}
    assert recorded["steps"] == int(2.5e-6 * 1e15 // recorded["flops_per_step"]) != config.steps
    assert recorded["method_options"]["overlap_weight"] == 5.0 and "overlap" in recorded["method_options"]
    encoder = json.loads((out / "encoder.json").read_text())
    assert encoder["method_options"] == recorded["method_options"] and encoder["steps"] == recorded["steps"]


def test_transfer_leaves_its_config_as_given_and_records_what_it_worked_out(toy_voc_root, pretrain_run, tmp_path,
                                                                            resolved):
    config = TransferConfig(task="cls", protocol="svm", init=str(pretrain_run), data_root=str(toy_voc_root),
                            workers=0)
    given = dataclasses.asdict(config)
    record = run_task(config, tmp_path, progress=False)
    assert dataclasses.asdict(config) == given
    assert resolved == ["auto"]

    assert record["config"] == json.loads((tmp_path / "config.json").read_text())
    assert record["config"] == {**given, "year": "2007", "train_split": "trainval", "test_split": "test",
                                "image_size": 96, "image_size_from": "encoder.json"}
