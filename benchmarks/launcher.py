"""`bench suite --launcher local|slurm`: every job of a suite (benchmarks.suite.plan_suite) as its
own process or SLURM job, through submitit (the optional `cluster` extra).

- local: up to --jobs N at once on this machine, each pinned to its share of the CPU cores
  (--cpus-per-job, default cores / N) and to one GPU each when there are N; a transfer starts when its encoder's pretraining has
  finished; a failed job blocks only the jobs that need its output. The table and the report are
  built at the end, in this process.
- slurm: every job is submitted at once, a transfer with `afterok` on its pretraining, and the
  table job last with `afterany` on all of them; the command returns after submitting.

A job that gets the preemption or time-out signal writes its checkpoint at the next step and
requeues itself (bench_runtime.preemption); the requeued job resumes exactly. Work whose output exists
is never resubmitted, so re-running the same command submits only what is missing. The state
of every job is kept in <out>/jobs.json, which `bench suite --status <out>` reads.
"""
import dataclasses
import os
import pickle
import signal
import time
from pathlib import Path

from bench_runtime.errors import UserError
from bench_runtime.options import at_least, option, parse_options
from bench_runtime.progress import info
from .job_states import read_job_states, start_job_states, write_job_states

# Light imports only (no torch): `bench suite --help` builds its options from ClusterOptions.
LAUNCHERS = ("sequential", "local", "slurm")
JOBS_FOLDER = "jobs"  # submitit's pickles and per-job logs
LOCAL_TIME_LIMIT_MIN = 7 * 24 * 60  # local jobs have no scheduler limit; submitit needs one
SLURM_CPUS = 8  # a SLURM job's CPUs when neither the preset nor --cpus-per-job says


@dataclasses.dataclass
class ClusterOptions:
    """SLURM resources of every job (and the cores and GPUs a local job gets). As flags of `bench
    suite` they default to the preset's `cluster:` section, else to these values."""
    partition: str | None = option(None, "slurm partition")
    gpus_per_job: int = option(0, "slurm: GPUs per job; pretraining runs one process per GPU (torchrun-style)",
                               check=at_least(0))
    cpus_per_job: int | None = option(None, "slurm and local: CPUs per job; where none is given, 8 on SLURM and "
                                      "cores / --jobs locally", check=at_least(1))
    mem_gb: int = option(32, "slurm: memory per job in GB", check=at_least(1))
    time_min: int = option(240, "slurm: time limit per job in minutes", check=at_least(1))
    signal_delay_s: int = option(120, "slurm: how long before the time limit the job is told to checkpoint",
                                 check=at_least(0))


def cluster_options(preset, given):
    """ClusterOptions from the command line (`given`, None where not given) over the preset's
    `cluster:` section over the defaults."""
    section = preset.get("cluster") or {}
    return parse_options(ClusterOptions, {**section, **{k: v for k, v in given.items() if v is not None}},
                         "preset cluster")


def _submitit():
    try:
        import submitit
    except ImportError:
        raise UserError("--launcher local|slurm needs submitit: pip install -e '.[cluster]'") from None
    return submitit


class Requeueable:
    """A suite job as a submitit callable: it runs on its share of the machine, and on the
    preemption signal it checkpoints at a step boundary and is resubmitted as it is."""

    def __init__(self, job, cpus=None):
        self.job, self.cpus = job, cpus

    def __call__(self):
        from bench_runtime import preemption
        if self.cpus:
            os.sched_setaffinity(0, self.cpus)  # bench_runtime.device sizes its threads from the affinity
        submitit = _submitit()
        environment = submitit.JobEnvironment()
        if environment.num_tasks > 1:  # one task per GPU: the variables torchrun would set
            submitit.helpers.TorchDistributedEnvironment().export()
        preemption.defer([signal.SIGUSR1, signal.SIGUSR2])
        return self.job()

    def checkpoint(self, *args, **kwargs):
        return _submitit().helpers.DelayedSubmission(self, *args, **kwargs)


def describe(jobs, launcher, cluster):
    """The lines `--dry-run` prints: each job still to run, what it waits for and its resources."""
    todo = [job for job in jobs if not job.done()]
    names = {job.name for job in todo}
    lines = [f"{len(todo)} job(s) to run with --launcher {launcher} ({len(jobs) - len(todo)} done already):"]
    for job in todo:
        waits = [n for n in job.needs if n in names]
        if job.kind == "table":
            after = f"afterany:{','.join(waits)}" if waits else "-"
        else:
            after = f"afterok:{','.join(waits)}" if waits else "-"
        gpus = cluster.gpus_per_job if job.kind != "table" else 0
        tasks = max(1, gpus)
        lines.append(f"  {job.name:<45} after {after:<40} partition={cluster.partition or 'default'} "
                     f"gpus={gpus} tasks={tasks} cpus={cluster.cpus_per_job or SLURM_CPUS} mem={cluster.mem_gb}G "
                     f"time={cluster.time_min}min")
    return lines


def launch(jobs, out, launcher, max_jobs=1, cluster=None, dry_run=False):
    """Run or submit `jobs` (plan_suite's list) with submitit. Returns the table for local runs,
    None after a SLURM submission or a dry run."""
    cluster = cluster or ClusterOptions()
    if dry_run:
        print("\n".join(describe(jobs, launcher, cluster)))
        return None
    submitit = _submitit()
    out = Path(out)
    folder = out / JOBS_FOLDER
    start_job_states(out, jobs)
    if launcher == "slurm":
        _submit_to_slurm(submitit, jobs, out, folder, cluster)
        return None
    return _run_locally(submitit, jobs, out, folder, max_jobs, cluster)


def _slurm_executor(submitit, folder, cluster, gpus):
    """One task per GPU (what bench_runtime.distributed reads after TorchDistributedEnvironment.export)."""
    tasks = max(1, gpus)
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    executor.update_parameters(timeout_min=cluster.time_min, gpus_per_node=gpus, tasks_per_node=tasks,
                               cpus_per_task=max(1, (cluster.cpus_per_job or SLURM_CPUS) // tasks), mem_gb=cluster.mem_gb,
                               slurm_signal_delay_s=cluster.signal_delay_s,
                               **({"slurm_partition": cluster.partition} if cluster.partition else {}))
    return executor


def _submit_to_slurm(submitit, jobs, out, folder, cluster):
    ids, state = {}, read_job_states(out)
    for job in jobs:
        if job.done():
            continue
        waits = [ids[n] for n in job.needs if n in ids]
        executor = _slurm_executor(submitit, folder, cluster, 0 if job.kind == "table" else cluster.gpus_per_job)
        if waits:
            executor.update_parameters(slurm_additional_parameters={
                "dependency": f"{'afterany' if job.kind == 'table' else 'afterok'}:{':'.join(waits)}"})
        executor.update_parameters(name=job.name.replace("/", "-"))
        submitted = executor.submit(Requeueable(job))
        ids[job.name] = submitted.job_id
        state[job.name] = {"state": "submitted", "job_id": submitted.job_id, "launcher": "slurm"}
        info(f"submitted {job.name}: SLURM job {submitted.job_id}")
    write_job_states(out, state)


def _slots(max_jobs, cpus_per_job=None):
    """(index, CPU cores) of each of the `max_jobs` places a local job can run in: `cpus_per_job`
    cores each (default: an equal share), consecutive, wrapping round when they overlap.

    A run's numbers depend on its thread count (the order of floating-point sums), so a job on
    half the cores matches a sequential run on that many cores; `cpus_per_job` = all cores
    matches the plain sequential run, at the cost of the jobs sharing the cores."""
    cores = sorted(os.sched_getaffinity(0))
    share = min(len(cores), cpus_per_job or max(1, len(cores) // max_jobs))
    return [(k, {cores[(k * share + i) % len(cores)] for i in range(share)}) for k in range(max_jobs)]


def _run_locally(submitit, jobs, out, folder, max_jobs, cluster):
    import torch

    work, finish = jobs[:-1], jobs[-1]
    slots = _slots(max_jobs, cluster.cpus_per_job)
    gpus_each = torch.cuda.device_count() >= max_jobs and torch.cuda.device_count() > 0
    state = {name: entry for name, entry in read_job_states(out).items() if entry.get("state") == "done"}
    pending = [job for job in work if not job.done()]
    running = {}  # job name -> (submitit job, slot)
    started = time.perf_counter()
    todo = {job.name for job in pending}
    while pending or running:
        for name, (submitted, slot) in list(running.items()):
            if not submitted.done():
                continue
            del running[name]
            slots.append(slot)
            try:
                submitted.result()
                state[name] = {"state": "done", "job_id": submitted.job_id}
            except Exception:  # the job's own error, raised again here by submitit
                state[name] = {"state": "failed", "job_id": submitted.job_id, "error": _error_line(submitted),
                               "log": str(submitted.paths.stderr)}
                info(f"failed: {name}: {state[name]['error']}")
            finished = sum(state.get(n, {}).get("state") in ("done", "failed", "blocked") for n in todo)
            elapsed = time.perf_counter() - started
            info(f"{name}: {state[name]['state']} ({finished}/{len(todo)} jobs, {elapsed:.0f} s, "
                 f"ETA {elapsed / finished * (len(todo) - finished):.0f} s)")
        for job in list(pending):
            broken = [n for n in job.needs if state.get(n, {}).get("state") in ("failed", "blocked")]
            if broken:
                pending.remove(job)
                state[job.name] = {"state": "blocked", "error": f"needs {', '.join(broken)}, which did not finish"}
            elif slots and all(n not in running and n not in [p.name for p in pending] for n in job.needs):
                pending.remove(job)
                slot = slots.pop(0)
                index, cpus = slot
                executor = submitit.LocalExecutor(folder=folder)
                gpu = [index] if gpus_each else []  # slot k of N: GPU k
                executor.update_parameters(timeout_min=LOCAL_TIME_LIMIT_MIN, gpus_per_node=len(gpu), visible_gpus=gpu)
                running[job.name] = (executor.submit(Requeueable(job, cpus=cpus)), slot)
                state[job.name] = {"state": "running", "job_id": running[job.name][0].job_id}
                info(f"started {job.name} (job {running[job.name][0].job_id})")
        write_job_states(out, state)
        time.sleep(0.5)
    failed = {name: entry for name, entry in state.items() if entry["state"] in ("failed", "blocked")}
    table = finish()
    if failed:
        raise UserError(f"{len(failed)} job(s) did not finish; the table in {out} has the others: "
                        + "; ".join(f"{name}: {entry['error']}" for name, entry in failed.items()))
    return table


def _error_line(submitted):
    """The last line of a failed job's traceback; for a UserError, its message alone."""
    try:
        _outcome, trace = pickle.loads(submitted.paths.result_pickle.read_bytes())
        line = [line for line in str(trace).splitlines() if line.strip()][-1].strip()
    except (OSError, ValueError, IndexError, pickle.UnpicklingError):
        return f"see {submitted.paths.stderr}"
    return line.removeprefix(f"{UserError.__module__}.{UserError.__name__}: ")
