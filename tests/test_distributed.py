"""Data-parallel training and evaluation under torchrun: two CPU processes (gloo) against one.

* pretraining: the same global batch on 2 processes gives the weights and losses of 1 process,
  only the main process writes the run folder, and a run checkpointed on 2 processes resumes on 1;
* evaluation: each task's metric on 2 processes (sharded test set, confusion matrices summed,
  scores and detections gathered) equals the one-process metric;
* the sampler's sharding and the helpers' one-process behaviour, without processes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bench_data.sampling import EpochOrder
from bench_runtime import distributed
from bench_runtime.errors import UserError
from helpers import bench

TESTS = Path(__file__).resolve().parent
PLUGIN = TESTS / "deterministic_methods.py"
TIMEOUT_S = 300


def launch(*args, processes=1):
    """`args` (a script and its arguments, or ["-m", module, ...]) on 1 process, or on `processes`
    under torchrun (python -m torch.distributed.run), each process on one thread."""
    command = [sys.executable, *map(str, args)]
    if processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc-per-node={processes}", *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, env=env,
                            cwd=TESTS.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def pretrain_args(root, out, *extra):
    return ["pretrain", "--plugin", PLUGIN, "--method", "context-encoder-no-dropout", "--data-root", root,
            "--image-size", 64, "--batch-size", 4, "--workers", 0, "--mask", "random-block", "--lr", LR,
            "--preview-every", 100, "--checkpoint-every", 2, "--out", out, *extra]


def encoder_weights(run):
    return torch.load(run / "encoder.pt", weights_only=True)


LR, MAX_STEPS = 1e-3, 3


def assert_same_weights(first, second):
    """Equal up to rounding. Adam turns a gradient at rounding-noise level into a step of up to lr,
    so a rare weight may differ by that much (one in 884736 of conv4's, or one of the 256 conv4
    biases, with 2 threads here); a wrong batch split moves every weight by about lr."""
    assert first.keys() == second.keys()
    for key in first:
        difference = (first[key] - second[key]).float().abs()
        assert difference.max() <= 2 * LR * MAX_STEPS, key
        assert (difference > 1e-3 * LR).float().mean() <= 0.01, key  # at most 1% of the weights moved


def losses(run):
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("augment_on", ["loader", "device"])
def test_two_processes_pretrain_like_one_and_resume_on_one(augment_on, toy_voc_root, tmp_path, private_registry):
    # One process (in this one): 2 steps, then resumed to 3.
    one = tmp_path / "one"
    where = ("--augment-on", augment_on)
    assert bench(*pretrain_args(toy_voc_root, one, "--steps", 2, *where)) == 0
    one_after_2 = encoder_weights(one)
    assert bench("pretrain", "--plugin", PLUGIN, "--out", one, "--resume", "--steps", 3) == 0

    # Two processes, each with half of every batch of 4 (random-block holes of different sizes).
    two = tmp_path / "two"
    launch("-m", "benchmarks.cli", *pretrain_args(toy_voc_root, two, "--steps", 2, *where), processes=2)
    assert_same_weights(encoder_weights(two), one_after_2)
    # One metrics line per step (the main process writes), with the global batch's loss.
    np.testing.assert_allclose(losses(two), losses(one)[:2], rtol=1e-5)
    checkpoint = torch.load(two / "checkpoint.pt", weights_only=False)
    assert checkpoint["step"] == 2 and len(checkpoint["rng_by_process"]) == 2
    assert json.loads((two / "config.json").read_text())["processes"] == 2

    # Checkpointed on two processes, resumed on one: the same batches, the same end.
    with pytest.warns(UserWarning, match="checkpointed with 2"):
        assert bench("pretrain", "--plugin", PLUGIN, "--out", two, "--resume", "--steps", 3) == 0
    assert_same_weights(encoder_weights(two), encoder_weights(one))
    np.testing.assert_allclose(losses(two), losses(one), rtol=1e-5)


@pytest.mark.parametrize("task", ["cls", "det"])
def test_fine_tuning_trains_on_two_processes(task, toy_voc_root, tmp_path):
    """The engine wraps each trainable child of the task's model in DDP (the detector's backbone,
    RoI heads...): every step runs on both processes, the main one writes the run and its record."""
    out = tmp_path / task
    launch("-m", "benchmarks.cli", "transfer", "--task", task, "--data-root", toy_voc_root, "--out", out,
           "--image-size", 64, "--batch-size", 2, "--steps", 2, "--fc-width", 16, "--workers", 0, processes=2)
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert all(np.isfinite(loss) for loss in losses(out))
    record = json.loads((out / "record.json").read_text())
    assert record["config"]["task"] == task and 0 <= record["value"] <= 1


def test_distributed_evaluation_matches_one_process(toy_voc_root, tmp_path):
    worker = TESTS / "distributed_worker.py"
    launch(worker, toy_voc_root, tmp_path / "two.json", processes=2)
    sys.path.insert(0, str(TESTS))
    from distributed_worker import main as evaluate
    evaluate(toy_voc_root, tmp_path / "one.json")  # in this process: one process, no group
    one, two = (json.loads((tmp_path / name).read_text()) for name in ("one.json", "two.json"))
    assert two["seg"] == one["seg"]  # summed confusion matrices: exact
    np.testing.assert_allclose(two["cls_scores"], one["cls_scores"], rtol=1e-5, atol=1e-6)
    assert two["cls"] == pytest.approx(one["cls"], abs=1e-9)
    assert two["det_count"] == one["det_count"] and two["det"] == pytest.approx(one["det"], abs=1e-9)


@pytest.mark.parametrize("start", [0, 5])
def test_sampler_shards_are_the_one_process_batches(start):
    size, batch, processes = 23, 6, 3
    whole = iter(EpochOrder(size, batch, seed=1, start_step=start))
    shards = [iter(EpochOrder(size, batch, 1, start, rank, processes)) for rank in range(processes)]
    for _ in range(10):  # steps, across epoch boundaries
        expected = [next(whole) for _ in range(batch)]
        assert [key for shard in shards for key in [next(shard) for _ in range(batch // processes)]] == expected


def test_batch_must_split_evenly():
    with pytest.raises(UserError, match="not divisible by the 4 processes"):
        EpochOrder(20, 6, seed=0, rank=0, world_size=4)


def test_helpers_on_one_process():
    assert not distributed.active() and distributed.is_main() and distributed.world_size() == 1
    assert distributed.setup("cpu") == "cpu"
    assert list(distributed.shard(5)) == [0, 1, 2, 3, 4]
    value = np.arange(3)
    assert distributed.all_reduce_sum(value) is value
    assert distributed.concat_in_rank_order([1, 2]) == [1, 2]
    assert distributed.average_metrics({"loss": 2.0}) == {"loss": 2.0}


def test_shards_cover_every_item_once(monkeypatch):
    monkeypatch.setattr(distributed, "active", lambda: True)
    for count in (0, 1, 7, 12):
        parts = []
        for rank in range(3):
            monkeypatch.setattr(distributed, "rank", lambda rank=rank: rank)
            monkeypatch.setattr(distributed, "world_size", lambda: 3)
            parts += list(distributed.shard(count))
        assert parts == list(range(count))


def test_contrastive_loss_on_two_processes_has_the_one_process_loss_and_gradients(tmp_path):
    """SimCLR with batch 4 on each of 2 processes against batch 8 on one: every anchor meets the
    negatives of both processes (gathered with gradients), and after DDP's averaging each
    parameter's gradient is the one-process gradient, unscaled."""
    worker = TESTS / "contrastive_worker.py"
    launch(worker, tmp_path / "two.pt", processes=2)
    sys.path.insert(0, str(TESTS))
    from contrastive_worker import main as contrast
    contrast(tmp_path / "one.pt")  # in this process: one process, no group
    one, two = (torch.load(tmp_path / name, weights_only=True) for name in ("one.pt", "two.pt"))
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-5)
    assert one["grads"].keys() == two["grads"].keys()
    for name, grad in one["grads"].items():
        torch.testing.assert_close(two["grads"][name], grad, rtol=1e-4, atol=1e-5 * grad.abs().max().item(),
                                   msg=name)
