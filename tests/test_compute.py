"""Equal-compute rows: the FLOPs of a training step are counted before training, a budget buys
floor(budget / FLOPs per step) steps and is part of the run's identity, every run records its
training FLOPs, and `bench table` shows them beside the pretraining time."""
import json

import pytest

from benchmarks.suite import pretrain_config
from bench_data.masks import central_mask
from helpers import bench
from pretrain.runs import build_method, count_flops, fixed_batch_step, resolve_pretraining
from pretrain.train import PretrainConfig
from bench_runtime.errors import UserError

TINY = ("--image-size", 64, "--batch-size", 4, "--workers", 0, "--mask", "central")


def step_flops():
    """The FLOPs of one TINY training step, counted here as `bench pretrain` counts them."""
    config = PretrainConfig(image_size=64, batch_size=4, mask="central", device="cpu", dataset_mean=[0.5] * 3,
                            dataset_std=[0.25] * 3)
    context = resolve_pretraining(config, paths=[])
    return count_flops(fixed_batch_step(build_method(context.recorded(config)), config, context, central_mask(64)))


def test_a_budget_sets_the_steps_from_the_measured_flops(toy_voc_root, tmp_path):
    flops = step_flops()
    out = tmp_path / "budget"
    assert bench("pretrain", "--data-root", toy_voc_root, "--out", out, *TINY, "--budget-pflops", 2.5 * flops / 1e15) == 0
    encoder = json.loads((out / "encoder.json").read_text())
    assert encoder["steps"] == 2 and encoder["flops_per_step"] == flops and encoder["pretrain_flops"] == 2 * flops
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["steps"] == 2 and config["training_flops"] == 2 * flops
    assert config["identity_settings"]["budget_pflops"] == pytest.approx(2.5 * flops / 1e15)


def test_every_run_records_its_compute_and_a_budget_changes_the_identity(pretrain_run):
    encoder = json.loads((pretrain_run / "encoder.json").read_text())
    assert encoder["pretrain_flops"] == encoder["steps"] * encoder["flops_per_step"] > 0
    assert encoder["budget_pflops"] is None and "budget_pflops" not in encoder["settings"]  # identity as before


@pytest.mark.parametrize("budget, message", [
    (("--steps", 3, "--budget-pflops", 1), "give --steps or --budget-pflops, not both"),
    (("--budget-pflops", 1e-12), "buys no training step"),
    (("--budget-pflops", 0), "must be more than 0"),
])
def test_a_budget_with_steps_or_below_one_step_is_refused(budget, message, toy_voc_root, tmp_path, capsys):
    assert bench("pretrain", "--data-root", toy_voc_root, "--out", tmp_path / "run", *TINY, *budget) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()[-1:]
    assert message in line
    assert not (tmp_path / "run" / "encoder.json").exists()


def test_too_few_images_for_a_batch_are_refused_before_the_compute_is_measured(toy_voc_root, tmp_path, capsys,
                                                                              monkeypatch):
    import pretrain.train

    def no_count(step):
        raise AssertionError("the compute was measured for a run that cannot start")

    monkeypatch.setattr(pretrain.train, "count_flops", no_count)
    assert bench("pretrain", "--data-root", toy_voc_root, "--out", tmp_path / "run", "--image-size", 64,
                 "--batch-size", 100000, "--steps", 1, "--workers", 0) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()[-1:]
    assert "for a batch of 100000; lower --batch-size" in line


def test_a_preset_sets_the_budget_for_every_method_and_not_beside_steps():
    preset = {"pretrain": {"budget_pflops": 2.0, "image_size": 64}, "methods": {}}
    for options in ({"method": "context-encoder"}, {"method": "autoencoder"}):
        assert pretrain_config(preset, options, "methods.m").budget_pflops == 2.0
    with pytest.raises(UserError, match="preset methods.m: give --steps or --budget-pflops, not both"):
        pretrain_config(preset, {"method": "autoencoder", "steps": 10}, "methods.m")
