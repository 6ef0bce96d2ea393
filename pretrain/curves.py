"""Curves of a training run from its metrics.jsonl: loss.png (every loss term, smoothed, the raw
values faint; pretraining and transfer runs) and, when a pretraining run was probed, probe.png
(kNN mAP against steps)."""
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import pandas as pd  # noqa: E402

PROBE_KEY = "probe_knn_map"


def read_metrics(run_dir):
    """(training steps, probe rows) of a run as two DataFrames indexed by step."""
    path = Path(run_dir) / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    probes = pd.DataFrame([r for r in rows if PROBE_KEY in r], columns=["step", PROBE_KEY])
    steps = pd.DataFrame([r for r in rows if PROBE_KEY not in r])
    return steps.set_index("step") if len(steps) else steps, probes.set_index("step")


def plot_curves(run_dir, name=None):
    """Write loss.png (and probe.png if the run has probes) into run_dir, titled with `name` (default:
    the folder's); return their paths."""
    run_dir = Path(run_dir)
    name = name or run_dir.name
    steps, probes = read_metrics(run_dir)
    written = []
    losses = [c for c in steps.columns if c != "elapsed_s" and ("loss" in c or c in ("l2", "adv"))]
    if losses:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        span = max(1, len(steps) // 20)
        for column in losses:
            raw = ax.plot(steps.index, steps[column], alpha=0.25, linewidth=0.8)[0]
            ax.plot(steps.index, steps[column].ewm(span=span).mean(), color=raw.get_color(), label=column)
        ax.set(xlabel="step", ylabel="loss", title=f"{name}: training loss (smoothed, raw faint)")
        ax.legend()
        written.append(_save(fig, run_dir / "loss.png"))
    if len(probes):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(probes.index, 100 * probes[PROBE_KEY], marker="o")
        ax.set(xlabel="pretraining step", ylabel="kNN mAP (%)", title=f"{name}: frozen pool5 kNN probe")
        ax.grid(alpha=0.3)
        written.append(_save(fig, run_dir / "probe.png"))
    return written


def probe_comparison(runs, path, title):
    """Probe curves of several runs in one plot: `runs` maps a name to its run folders (e.g. one
    per seed); each name is drawn as the mean over its runs with a +-1 std band. Writes `path`
    (PNG) and the curves beside it as CSV (name, run, step, mAP); returns the CSV rows as a
    DataFrame (empty when no run was probed)."""
    rows = [{"name": name, "run": Path(run_dir).name, "step": step, PROBE_KEY: value}
            for name, run_dirs in runs.items() for run_dir in run_dirs
            for step, value in read_metrics(run_dir)[1][PROBE_KEY].items()]
    curves = pd.DataFrame(rows, columns=["name", "run", "step", PROBE_KEY])
    if curves.empty:
        return curves
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, part in curves.groupby("name", sort=False):
        stats = part.groupby("step")[PROBE_KEY].agg(["mean", "std", "count"]) * [100, 100, 1]
        runs_drawn = int(stats["count"].max())
        line = ax.plot(stats.index, stats["mean"], marker=".", label=f"{name} (n={runs_drawn})")[0]
        if runs_drawn > 1:
            ax.fill_between(stats.index, stats["mean"] - stats["std"], stats["mean"] + stats["std"],
                            color=line.get_color(), alpha=0.15)
    ax.set(xlabel="pretraining step", ylabel="kNN mAP (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, Path(path))
    curves.to_csv(Path(path).with_suffix(".csv"), index=False)
    return curves


def _save(fig, path):
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    tmp.replace(path)
    return path
