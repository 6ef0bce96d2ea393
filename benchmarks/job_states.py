"""jobs.json of a suite folder: the plan (every job and the jobs it needs) and the state the last
launcher left each job in. The sequential suite and the submitit launchers both keep it."""
import json
from pathlib import Path

from bench_runtime.readers import read_json
from bench_runtime.runfiles import mark_output, write_atomically

STATE_FILE = "jobs.json"


def read_job_file(out):
    """jobs.json's content; {} for a suite that has none yet."""
    path = Path(out) / STATE_FILE
    if not path.exists():
        return {}
    return read_json(path, hint="; delete it and run the suite again (finished runs are kept and skipped)")


def read_job_states(out):
    """{job name: {"state": ..., "job_id", "error"}} as the last launcher left them."""
    return read_job_file(out).get("jobs", {})


def start_job_states(out, jobs):
    """Mark the folder of a suite that starts as a suite's, and record its plan, keeping the states
    of jobs that are done."""
    mark_output(out, "suite")
    kept = {name: entry for name, entry in read_job_states(out).items() if entry.get("state") == "done"}
    write_job_states(out, kept, [{"name": job.name, "needs": list(job.needs)} for job in jobs])


def write_job_states(out, state, plan=None):
    """<out>/jobs.json: the plan (every job and what it needs) and the launcher's state of each."""
    Path(out).mkdir(parents=True, exist_ok=True)
    saved = read_job_file(out)
    plan = plan if plan is not None else saved.get("plan", [])
    text = json.dumps({"plan": plan, "jobs": state}, indent=1) + "\n"
    write_atomically(Path(out) / STATE_FILE, lambda tmp: tmp.write_text(text))
