"""How a run's time suffers from another process on the same cores, per OpenMP setting.

Runs a command (default: the quick demo, `bench suite --preset quick`) alone and with a
`nice -n 19` busy loop beside it, once per setting of the OpenMP variables torch reads when it is
imported, and prints and writes the wall times (contention.json, contention.md):

    python -m experiments.contention --out results/contention
    python -m experiments.contention --settings "OMP_WAIT_POLICY=ACTIVE" "OMP_WAIT_POLICY=PASSIVE" -- \
        bench pretrain --steps 50 --out {out}

`{out}` in the command is replaced by a fresh folder for each run. Nothing else should run on the
machine meanwhile: the busy loop is the only competitor the numbers are meant to contain.
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.speed import hardware_name

DEFAULT_COMMAND = [str(Path(sys.executable).with_name("bench")), "suite", "--preset", "quick", "--out", "{out}",
                   "--quiet"]
# "" is the environment as it is (what the CLI does when nothing is set); the others are set on top of it.
DEFAULT_SETTINGS = ["", "OMP_WAIT_POLICY=PASSIVE"]
BUSY_LOOP = ["nice", "-n", "19", sys.executable, "-c", "while True: pass"]


def timed_run(command, environment, folder, busy):
    """Wall seconds of `command` (with {out} a new folder under `folder`), with a busy loop beside it
    when `busy`; a failed command stops the measurement."""
    out = tempfile.mkdtemp(dir=folder)
    os.rmdir(out)  # the command makes it
    loop = subprocess.Popen(BUSY_LOOP) if busy else None
    try:
        started = time.perf_counter()
        subprocess.run([part.replace("{out}", out) for part in command], env=environment, check=True,
                       stdout=subprocess.DEVNULL)
        return time.perf_counter() - started
    finally:
        if loop:
            loop.kill()
            loop.wait()


def measure(command, settings, folder):
    """{setting: {"alone": s, "beside a busy loop": s}} for each setting (NAME=VALUE, or "" for none)."""
    results = {}
    for setting in settings:
        environment = dict(os.environ)
        if setting:
            name, _, value = setting.partition("=")
            environment[name] = value
        results[setting or "as set"] = {
            where: round(timed_run(command, environment, folder, busy), 1)
            for where, busy in (("alone", False), ("beside a busy loop", True))}
        print(setting or "as set", results[setting or "as set"], flush=True)
    return results


def cpu_flags():
    """Which of the vector instruction sets that matter to torch's CPU kernels this CPU has."""
    flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("flags")), [])
    return [flag for flag in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if flag in flags]


def markdown(results):
    lines = ["| OpenMP setting | alone (s) | beside a nice-19 busy loop (s) | slowdown |", "|---|---|---|---|"]
    for setting, times in results.items():
        alone, busy = times["alone"], times["beside a busy loop"]
        lines.append(f"| {setting} | {alone:.0f} | {busy:.0f} | {busy / alone:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS,
                        help="NAME=VALUE environment settings to compare ('' for the environment as it is)")
    parser.add_argument("--out", default=None, help="folder for contention.json and contention.md")
    parser.add_argument("command", nargs="*", default=DEFAULT_COMMAND, help="the command timed (after --)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        results = measure(args.command or DEFAULT_COMMAND, args.settings, folder)
    print(markdown(results))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        record = {"command": shlex.join(args.command or DEFAULT_COMMAND), "results": results,
                  "cpu": hardware_name("cpu"), "cores": len(os.sched_getaffinity(0)),
                  "flags": cpu_flags()}
        (out / "contention.json").write_text(json.dumps(record, indent=1) + "\n")
        (out / "contention.md").write_text(markdown(results))


if __name__ == "__main__":
    main()
