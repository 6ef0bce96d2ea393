"""`bench suite --launcher`: jobs as separate processes through submitit's local executor (no
SLURM needed), preemption with requeue, failures that block only their dependants, --status and
the SLURM dry run."""
import json
import os
import signal
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from benchmarks.cli import main
from benchmarks.launcher import Requeueable
from benchmarks.suite import SuiteConfig, plan_suite
from bench_runtime.runfiles import staging_dir

submitit = pytest.importorskip("submitit")

TINY = {
    "seeds": [0],
    "pretrain": {"image_size": 64, "batch_size": 4, "steps": 2, "workers": 0},
    "methods": {"ce": {"method": "context-encoder", "mask": "central"}, "random": None},
    "transfer": {"image_size": 64, "batch_size": 4, "fc_width": 16, "workers": 0},
    "tasks": {"seg": {"task": "seg", "steps": 2}, "cls-svm": {"task": "cls", "protocol": "svm"}},
}


def _suite(tmp_path, preset, out, *extra):
    path = tmp_path / f"{out}.yaml"
    path.write_text(yaml.safe_dump(preset))
    return ["suite", "--preset", str(path), "--out", str(tmp_path / out), "-q", *extra]


def _measured(table_csv):
    table = pd.read_csv(table_csv, keep_default_na=False)
    return table[table["Source"].str.startswith("measured")].drop(columns="Pretraining time")


def test_separate_processes_give_the_sequential_table(toy_voc_root, tmp_path):
    """Numbers depend on the threads a run uses (the order of floating-point sums): 2 local jobs,
    each on half the cores (the default), match a sequential run on half the cores."""
    data = ["--data-root", str(toy_voc_root)]
    preset = {**TINY, "tasks": {"seg": TINY["tasks"]["seg"]}}
    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, set(sorted(cores)[:max(1, len(cores) // 2)]))
    try:
        assert main(_suite(tmp_path, preset, "sequential-half", *data)) == 0
    finally:
        os.sched_setaffinity(0, cores)
    assert main(_suite(tmp_path, preset, "local", *data, "--launcher", "local", "--jobs", "2")) == 0
    pd.testing.assert_frame_equal(_measured(tmp_path / "sequential-half" / "table.csv"),
                                  _measured(tmp_path / "local" / "table.csv"))
    states = json.loads((tmp_path / "local" / "jobs.json").read_text())["jobs"]
    assert {name: entry["state"] for name, entry in states.items()} == {
        "pretrain/ce-seed0": "done", **{f"transfer/seg-{m}-seed0": "done" for m in ("ce", "random")}}
    assert (tmp_path / "local" / "report.html").is_file()


def test_a_failed_job_blocks_only_the_jobs_that_need_it(toy_voc_root, tmp_path, capsys):
    empty = tmp_path / "no-images"
    empty.mkdir()
    preset = {**TINY, "methods": {"ce": {**TINY["methods"]["ce"], "data_root": str(empty)}, "random": None}}
    args = _suite(tmp_path, preset, "suite", "--data-root", str(toy_voc_root), "--launcher", "local", "--jobs", "2")
    assert main(args) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: 3 job(s) did not finish") and "pretrain/ce-seed0" in error
    out = tmp_path / "suite"
    for task in ("seg", "cls-svm"):  # random init's transfers ran; the table has them
        assert (out / "transfer" / f"{task}-random-seed0" / "record.json").is_file()
    assert (out / "table.csv").is_file()
    assert main(["suite", "--status", str(out)]) == 0
    status = {line.split()[0]: line.split(None, 2)[1:] for line in capsys.readouterr().out.splitlines()}
    assert status["pretrain/ce-seed0"][0] == "failed" and str(empty) in status["pretrain/ce-seed0"][1]
    assert status["transfer/seg-ce-seed0"] == ["blocked", "needs pretrain/ce-seed0, which did not finish"]
    assert status["transfer/seg-random-seed0"] == ["done"] and status["table"] == ["done"]


def _children(pid):
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # field 4 of /proc/<pid>/stat: the parent's pid
            found.append(int(stat.parent.name))
    return found


def test_a_preempted_job_checkpoints_requeues_and_ends_with_the_same_record(toy_voc_root, tmp_path):
    preset = {**TINY, "methods": {"random": None}, "tasks": {"seg": {"task": "seg", "steps": 120,
                                                                      "checkpoint_every": 1000}}}
    (job_reference, _), (job, _) = (plan_suite(preset, SuiteConfig(data_root=str(toy_voc_root), out=str(tmp_path / name)),
                                               progress=False)
                                    for name in ("reference", "preempted"))
    job_reference()
    executor = submitit.LocalExecutor(folder=tmp_path / "jobs")
    executor.update_parameters(timeout_min=10)
    submitted = executor.submit(Requeueable(job))
    metrics = staging_dir(job.run_dir) / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3):
        assert time.time() < deadline and not submitted.done(), submitted.paths.stderr.read_text()[-2000:]
        time.sleep(0.05)
    (task,) = _children(int(submitted.job_id))
    os.kill(task, signal.SIGUSR2)  # what the local executor sends before a time-out
    submitted.result()
    log = submitted.paths.stderr.read_text() + submitted.paths.stdout.read_text()
    assert "Caught signal SIGUSR2" in log and "Requeued job" in log  # submitit's checkpoint-and-requeue
    assert "resuming transfer transfer/seg-random-seed0" in log       # the second start found the checkpoint
    steps = [json.loads(line)["step"] for line in (job.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 121))  # every step once: resumed where the checkpoint was
    record, reference = (json.loads((j.run_dir / "record.json").read_text()) for j in (job, job_reference))
    assert record["value"] == reference["value"] and record["per_class"] == reference["per_class"]


def test_the_slurm_dry_run_prints_the_dependency_graph(tmp_path, capsys):
    preset = {**TINY, "seeds": [0, 1], "cluster": {"partition": "gpu", "gpus_per_job": 4, "time_min": 600}}
    assert main(_suite(tmp_path, preset, "suite", "--launcher", "slurm", "--dry-run", "--mem-gb", "64")) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("11 job(s) to run with --launcher slurm")  # 2 pretrainings, 8 transfers, the table
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert rows["pretrain/ce-seed1"][:2] == ["after", "-"]
    assert rows["transfer/seg-ce-seed1"][:2] == ["after", "afterok:pretrain/ce-seed1"]
    assert rows["transfer/cls-svm-random-seed0"][:2] == ["after", "-"]
    assert rows["table"][1] == "afterany:" + ",".join(name for name in rows if name != "table")
    assert "partition=gpu gpus=4 tasks=4 cpus=8 mem=64G time=600min" in " ".join(rows["pretrain/ce-seed0"])
    assert not (tmp_path / "suite").exists()  # nothing submitted, nothing written


def test_without_submitit_the_launcher_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if not installed
    assert main(_suite(tmp_path, TINY, "suite", "--launcher", "local")) == 2
    assert capsys.readouterr().err.strip() == "error: --launcher local|slurm needs submitit: pip install -e '.[cluster]'"


def test_status_of_a_folder_without_a_suite(tmp_path, capsys):
    assert main(["suite", "--status", str(tmp_path)]) == 2
    assert "has no jobs.json" in capsys.readouterr().err


def test_presets_may_set_cluster_options_and_misspelt_ones_are_refused(tmp_path, capsys):
    preset = {**TINY, "cluster": {"gpus": 4}}
    assert main(_suite(tmp_path, preset, "suite", "--launcher", "slurm", "--dry-run")) == 2
    assert "preset cluster: unknown option(s) gpus" in capsys.readouterr().err
