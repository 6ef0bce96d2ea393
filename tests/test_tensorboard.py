"""TensorBoard event files in <run>/tensorboard/, read back with TensorBoard's own reader: the
training metrics, learning rates, probe scores and preview grids at their steps; each step once
after a resume; in the final folder of a staged run; and a full disk costs the events alone."""
import errno
import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.tensorflow_stub.io.gfile import LocalFileSystem

from helpers import bench
from bench_runtime.runfiles import staging_dir

FAST_PRETRAIN = ["--image-size", 64, "--batch-size", 4, "--workers", 0, "--mask", "central"]


def events(run_dir):
    """{tag: [(step, value)]} of the run's scalars and {tag: [step]} of its images, as TensorBoard
    shows them (size_guidance 0: every event, none sampled away)."""
    reader = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0}).Reload()
    tags = reader.Tags()
    return ({tag: [(e.step, e.value) for e in reader.Scalars(tag)] for tag in tags["scalars"]},
            {tag: [e.step for e in reader.Images(tag)] for tag in tags["images"]})


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_pretraining_events_hold_losses_learning_rates_probe_scores_and_previews(toy_voc_root, tmp_path):
    out = tmp_path / "run"
    assert bench("pretrain", "--data-root", toy_voc_root, "--out", out, *FAST_PRETRAIN, "--steps", 2,
                 "--lr", 0.001, "--warmup-steps", 2, "--preview-every", 1, "--probe-data", toy_voc_root,
                 "--probe-every", 1) == 0
    scalars, images = events(out)
    metrics = read_metrics(out)
    steps = [m for m in metrics if "loss" in m]
    assert scalars["train/loss"] == [(m["step"], pytest.approx(m["loss"])) for m in steps]
    assert scalars["train/l2"] == [(m["step"], pytest.approx(m["l2"])) for m in steps]
    # Each step's own rate: the warmup's first two, before the schedule moves on.
    assert scalars["lr/generator"] == [(1, pytest.approx(0.0005)), (2, pytest.approx(0.00075))]
    probes = [m for m in metrics if "probe_knn_map" in m]
    assert scalars["probe/probe_knn_map"] == [(m["step"], pytest.approx(m["probe_knn_map"])) for m in probes]
    assert [step for step, _ in scalars["probe/dead_conv5"]] == [0, 1, 2]  # from the initialisation on
    assert images == {"preview": [1, 2]}
    assert not any(tag.endswith("elapsed_s") for tag in scalars)


def test_a_resumed_run_shows_each_step_once(toy_voc_root, tmp_path, monkeypatch):
    from pretrain.methods.context_encoder import ContextEncoder
    out = tmp_path / "run"
    real_step, calls = ContextEncoder.train_step, []

    def interrupted_in_step_4(self, batch, optimizers):
        calls.append(1)
        if len(calls) == 5:  # the first call is the step whose FLOPs a new run counts
            raise KeyboardInterrupt
        return real_step(self, batch, optimizers)

    monkeypatch.setattr(ContextEncoder, "train_step", interrupted_in_step_4)
    assert bench("pretrain", "--data-root", toy_voc_root, "--out", out, *FAST_PRETRAIN, "--steps", 4,
                 "--checkpoint-every", 2, "--preview-every", 1) == 130
    monkeypatch.undo()
    assert [step for step, _ in events(out)[0]["train/loss"]] == [1, 2, 3]  # step 3 is past the checkpoint
    assert bench("pretrain", "--out", out, "--resume") == 0
    scalars, images = events(out)
    assert len(list((out / "tensorboard").iterdir())) == 2  # a file per session
    assert scalars["train/loss"] == [(m["step"], pytest.approx(m["loss"])) for m in read_metrics(out)]
    assert [step for step, _ in scalars["train/loss"]] == [1, 2, 3, 4]
    assert [step for step, _ in scalars["lr/generator"]] == [1, 2, 3, 4]
    assert images == {"preview": [1, 2, 3, 4]}


def test_a_staged_transfer_run_ends_with_its_events_in_place(toy_voc_root, tmp_path):
    out = tmp_path / "cls"
    assert bench("transfer", "--task", "cls", "--data-root", toy_voc_root, "--out", out, "--image-size", 64,
                 "--steps", 2, "--batch-size", 4, "--fc-width", 16, "--workers", 0) == 0
    assert not staging_dir(out).exists()
    scalars, _ = events(out)
    assert [step for step, _ in scalars["train/loss"]] == [1, 2]
    assert [step for step, _ in scalars["lr/sgd"]] == [1, 2]


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_full_disk_costs_the_events_alone(toy_voc_root, tmp_path, monkeypatch, capsys):
    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(LocalFileSystem, "_write", disk_full)  # where tensorboard's writer thread writes
    out = tmp_path / "run"
    assert bench("pretrain", "--data-root", toy_voc_root, "--out", out, *FAST_PRETRAIN, "--steps", 2) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "TensorBoard" in warnings[0] and "No space left" in warnings[0], err
    assert "Traceback" not in err
    assert [m["step"] for m in read_metrics(out)] == [1, 2] and (out / "encoder.pt").is_file()


@pytest.mark.parametrize("task, picture", [("seg", "predictions"), ("det", "detections")])
def test_transfer_pictures_are_in_the_events_at_the_last_step(task, picture, toy_voc_root, tmp_path):
    out = tmp_path / task
    assert bench("transfer", "--task", task, "--data-root", toy_voc_root, "--out", out, "--image-size", 64,
                 "--steps", 2, "--batch-size", 2, "--fc-width", 16, "--workers", 0) == 0
    scalars, images = events(out)
    assert [step for step, _ in scalars["train/loss"]] == [1, 2]  # the training events are all still shown
    assert images == {picture: [2]}
    assert (out / f"{picture}.png").is_file()
