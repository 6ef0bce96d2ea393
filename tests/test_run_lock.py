"""One writer per run folder: a lock beside the folder refuses a second writer with one line, and
a lock whose process is gone is taken over with a warning."""
import json
import os
import socket
import subprocess
import sys
import time

from helpers import bench
from bench_runtime.runfiles import lock_path

PRETRAIN = ["--image-size", 64, "--batch-size", 4, "--workers", 0, "--mask", "central"]


def write_lock(out, pid, host=None):
    lock_path(out).write_text(json.dumps({"pid": pid, "host": host or socket.gethostname()}))


def test_a_live_lock_refuses_pretraining_and_transfer_with_one_line(toy_voc_root, tmp_path, capsys):
    out = tmp_path / "run"
    write_lock(out, os.getpid())  # this very process: alive
    assert bench("pretrain", "--data-root", toy_voc_root, "--out", out, "--steps", 1, *PRETRAIN) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "is being written by another run" in err[0]
    assert f"pid {os.getpid()}" in err[0] and not out.exists()
    record = tmp_path / "seg"
    write_lock(record, os.getpid())
    assert bench("transfer", "--task", "cls", "--protocol", "svm", "--data-root", toy_voc_root,
                 "--image-size", 64, "--out", record) == 2
    assert "is being written by another run" in capsys.readouterr().err and not record.exists()
    # A lock held on another machine is never taken over: its process cannot be checked from here.
    write_lock(out, 1, host="elsewhere.invalid")
    assert bench("pretrain", "--data-root", toy_voc_root, "--out", out, "--steps", 1, *PRETRAIN) == 2


def test_a_stale_lock_is_taken_over_with_a_warning_and_released(toy_voc_root, tmp_path, capsys):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    out = tmp_path / "run"
    write_lock(out, gone.pid)
    assert bench("pretrain", "--data-root", toy_voc_root, "--out", out, "--steps", 1, *PRETRAIN) == 0
    assert "warning: taking over the lock" in capsys.readouterr().err
    assert (out / "encoder.pt").is_file() and not lock_path(out).exists()
    lock_path(out).write_text("")  # a writer that died while writing its lock
    assert bench("pretrain", "--out", out, "--resume", "--steps", 2) == 0
    assert not lock_path(out).exists()


def test_two_writers_to_one_folder_leave_one_complete_run_and_a_clear_error(toy_voc_root, tmp_path, capsys):
    out = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-c", "import sys; from benchmarks.cli import main; sys.exit(main(sys.argv[1:]))",
         "pretrain", "--data-root", str(toy_voc_root), "--out", str(out), "--steps", "40", "--quiet",
         *map(str, PRETRAIN)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not lock_path(out).exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lock_path(out).exists(), "the first run never took the lock"
    assert bench("pretrain", "--data-root", toy_voc_root, "--out", out, "--steps", 3, "--overwrite", *PRETRAIN) == 2
    assert "is being written by another run" in capsys.readouterr().err
    assert first.wait(timeout=300) == 0, first.stderr.read()
    config = json.loads((out / "config.json").read_text())["config"]
    encoder = json.loads((out / "encoder.json").read_text())
    assert config["steps"] == encoder["steps"] == 40  # every file is the first run's
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 40
    assert not lock_path(out).exists()


def test_a_failed_overwrite_keeps_the_previous_run_and_a_killed_one_resumes(toy_voc_root, tmp_path, monkeypatch,
                                                                             capsys):
    from bench_runtime.engine import Engine
    from bench_runtime.runfiles import staging_dir
    out = tmp_path / "run"
    assert bench("pretrain", "--data-root", toy_voc_root, "--out", out, "--steps", 2, *PRETRAIN) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    monkeypatch.setattr(Engine, "train_one_step", lambda *args: {"loss": float("nan")})
    assert bench("pretrain", "--data-root", toy_voc_root, "--out", out, "--steps", 3, "--overwrite", *PRETRAIN) == 2
    assert "non-finite" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert not staging_dir(out).exists() and not lock_path(out).exists()
    monkeypatch.undo()
    # Killed after its first checkpoint: the old run stays, and --resume finishes the new one in place.
    original = Engine.train_one_step
    calls = []

    def killed_after_two(self, *args):
        calls.append(1)
        if len(calls) > 3:  # the first call is the step whose FLOPs a new run counts
            raise KeyboardInterrupt
        return original(self, *args)
    monkeypatch.setattr(Engine, "train_one_step", killed_after_two)
    try:
        bench("pretrain", "--data-root", toy_voc_root, "--out", out, "--steps", 4, "--checkpoint-every", 2,
              "--overwrite", *PRETRAIN)
    except KeyboardInterrupt:
        pass
    monkeypatch.undo()
    assert (staging_dir(out) / "checkpoint.pt").is_file()
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert bench("pretrain", "--out", out, "--resume") == 0
    assert json.loads((out / "encoder.json").read_text())["steps"] == 4 and not staging_dir(out).exists()
