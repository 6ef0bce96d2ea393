"""A run killed with SIGKILL mid-training resumes with --resume and ends exactly where an
uninterrupted run with the same seed ends (CPU). The runs that are killed, and those compared,
run the real CLI in a subprocess."""
import json
import os
import signal
import subprocess
import sys
import time

import torch

from helpers import bench
from bench_runtime.runfiles import staging_dir

TIMEOUT_S = 300


def bench_command(*args):
    return [sys.executable, "-m", "benchmarks.cli", *map(str, args)]


def run(*args):
    result = subprocess.run(bench_command(*args), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def kill_after_checkpoint(command, checkpoint, min_step):
    """Start `command`, SIGKILL it as soon as `checkpoint` holds step >= min_step."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            assert process.poll() is None, "the run ended before it could be killed; give it more steps"
            if checkpoint.is_file():
                try:
                    step = torch.load(checkpoint, weights_only=False)["step"]
                except (EOFError, RuntimeError):  # caught between write and rename: not possible, but retry
                    step = -1
                if step >= min_step:
                    os.kill(process.pid, signal.SIGKILL)
                    process.wait()
                    return
            time.sleep(0.05)
        raise AssertionError("no checkpoint appeared in time")
    finally:
        if process.poll() is None:
            process.kill()


def test_pretraining_killed_and_resumed_matches_uninterrupted(toy_voc_root, tmp_path):
    # Augmentation on the device (--augment-on device) resumes exactly too: tests/test_distributed.py
    # checkpoints it on two processes and resumes it on one.
    common = ["--data-root", toy_voc_root, "--image-size", 64, "--batch-size", 4, "--steps", 15,
              "--workers", 0, "--checkpoint-every", 3, "--preview-every", 100, "--mask", "random-block",
              "--augment-on", "loader"]
    run("pretrain", *common, "--out", tmp_path / "whole")
    killed = tmp_path / "killed"
    kill_after_checkpoint(bench_command("pretrain", *common, "--out", killed), killed / "checkpoint.pt", 6)
    assert not (killed / "encoder.pt").exists()
    run("pretrain", "--out", killed, "--resume")

    whole = torch.load(tmp_path / "whole" / "encoder.pt", weights_only=True)
    resumed = torch.load(killed / "encoder.pt", weights_only=True)
    assert all(torch.equal(whole[key], resumed[key]) for key in whole)

    def losses(run_dir):
        return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert losses(killed) == losses(tmp_path / "whole") and len(losses(killed)) == 15


def test_transfer_killed_and_resumed_matches_uninterrupted(toy_voc_root, tmp_path, capsys):
    common = ["transfer", "--task", "cls", "--data-root", toy_voc_root, "--image-size", 64, "--steps", 18,
              "--batch-size", 4, "--fc-width", 16, "--workers", 0, "--checkpoint-every", 3]
    run(*common, "--out", tmp_path / "whole")
    killed = tmp_path / "killed"
    kill_after_checkpoint(bench_command(*common, "--out", killed), staging_dir(killed) / "checkpoint.pt", 6)
    assert not killed.exists()  # no half-written results

    # Starting again without --resume would silently lose the interrupted run: refused.
    assert bench(*common, "--out", killed) == 2 and "--resume" in capsys.readouterr().err
    assert bench(*common, "--out", killed, "--resume", "--lr", "0.5") == 2
    assert "lr was None, now 0.5" in capsys.readouterr().err

    run(*common, "--out", killed, "--resume")
    whole, resumed = (json.loads((d / "record.json").read_text()) for d in (tmp_path / "whole", killed))
    assert resumed["value"] == whole["value"] and resumed["per_class"] == whole["per_class"]
    assert not staging_dir(killed).exists() and not (killed / "checkpoint.pt").exists()


def test_resume_without_an_interrupted_run_is_refused(toy_voc_root, tmp_path, capsys):
    assert bench("transfer", "--task", "cls", "--data-root", toy_voc_root, "--out", tmp_path / "none",
                 "--resume") == 2
    assert "nothing to resume" in capsys.readouterr().err
