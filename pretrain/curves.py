"""Curves of a pretraining run from its metrics.jsonl: loss.png (bench_runtime.plots, which transfer runs
draw too) and, when the run was probed, probe.png (the kNN score against steps, and beside it the
share of units per layer that never fire); and the probe curves of several runs in one plot."""
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import pandas as pd  # noqa: E402

from bench_runtime.plots import metric_rows, plot_losses, save_png  # noqa: E402
from .probe import DEAD_WARNING  # noqa: E402

# A probe row's score: kNN mAP on a VOC root, kNN top-1 on a class-folder root.
PROBE_KEYS = {"probe_knn_map": "kNN mAP (%)", "probe_knn_top1": "kNN top-1 (%)"}
DEAD_PREFIX = "dead_"
LOSS_TERMS = ("l2", "adv")  # the context encoder's loss terms whose names lack "loss"


def read_metrics(run_dir):
    """(training steps, probe rows) of a run as two DataFrames indexed by step; probe rows hold
    one of PROBE_KEYS and, when recorded, dead_<layer> shares."""
    rows = metric_rows(run_dir)
    is_probe = [any(key in r for key in PROBE_KEYS) for r in rows]
    probes = pd.DataFrame([r for r, p in zip(rows, is_probe) if p])
    steps = pd.DataFrame([r for r, p in zip(rows, is_probe) if not p])
    probes = probes.drop(columns=["elapsed_s"], errors="ignore")
    return (steps.set_index("step") if len(steps) else steps,
            probes.set_index("step") if len(probes) else pd.DataFrame(columns=list(PROBE_KEYS)))


def probe_score_key(probes):
    """The score column that `probes` (read_metrics' second result) holds, or None."""
    return next((key for key in PROBE_KEYS if key in probes.columns and probes[key].notna().any()), None)


def plot_curves(run_dir, name=None):
    """Write loss.png (and probe.png if the run has probes) into run_dir, titled with `name` (default:
    the folder's); return their paths."""
    run_dir = Path(run_dir)
    name = name or run_dir.name
    loss_png = plot_losses(run_dir, name, LOSS_TERMS)
    written = [loss_png] if loss_png else []
    probes = read_metrics(run_dir)[1]
    key = probe_score_key(probes)
    if key:
        dead = [c for c in probes.columns if c.startswith(DEAD_PREFIX)]
        fig, axes = plt.subplots(1, 2 if dead else 1, figsize=(11 if dead else 6, 3.5), squeeze=False)
        axes[0, 0].plot(probes.index, 100 * probes[key], marker="o")
        axes[0, 0].set(xlabel="pretraining step", ylabel=PROBE_KEYS[key], title=f"{name}: frozen-feature kNN probe")
        axes[0, 0].grid(alpha=0.3)
        if dead:
            for column in dead:
                axes[0, 1].plot(probes.index, 100 * probes[column], marker=".", label=column.removeprefix(DEAD_PREFIX))
            axes[0, 1].axhline(100 * DEAD_WARNING, color="grey", linestyle="--", linewidth=0.8,
                               label="bench pretrain warns above")
            axes[0, 1].set(xlabel="pretraining step", ylabel="units that never fire (%)",
                           title="unit health (channels; every value of the output)")
            axes[0, 1].grid(alpha=0.3)
            axes[0, 1].legend(fontsize=8)
        written.append(save_png(fig, run_dir / "probe.png"))
    return written


def step_flops(run_dir):
    """The FLOPs of one training step of the run (its config.json), None where it has no count."""
    try:
        return json.loads((Path(run_dir) / "config.json").read_text())["config"].get("flops_per_step")
    except (OSError, ValueError, KeyError, TypeError):
        return None


def probe_comparison(runs, path, title):
    """Probe curves of several runs in one plot: `runs` maps a name to its run folders (e.g. one
    per seed); each name is drawn as the mean over its runs with a +-1 std band, against the
    training compute (PFLOP) when every run counted its steps' FLOPs (methods whose steps cost
    differently then line up at equal compute), else against the step. Writes `path` (PNG) and the
    curves beside it as CSV (name, run, step, pflop, score key, value); returns the CSV rows as a
    DataFrame (empty when no run was probed)."""
    rows = []
    for name, run_dirs in runs.items():
        for run_dir in run_dirs:
            probes = read_metrics(run_dir)[1]
            key = probe_score_key(probes)
            flops = step_flops(run_dir)
            if key:
                rows += [{"name": name, "run": Path(run_dir).name, "step": step,
                          "pflop": None if flops is None else step * flops / 1e15, "score": key, "value": value}
                         for step, value in probes[key].items()]
    curves = pd.DataFrame(rows, columns=["name", "run", "step", "pflop", "score", "value"])
    if curves.empty:
        return curves
    by_compute = curves["pflop"].notna().all()
    x = "pflop" if by_compute else "step"
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, part in curves.groupby("name", sort=False):
        stats = part.groupby(x)["value"].agg(["mean", "std", "count"]) * [100, 100, 1]
        runs_drawn = int(stats["count"].max())
        line = ax.plot(stats.index, stats["mean"], marker=".", label=f"{name} (n={runs_drawn})")[0]
        if runs_drawn > 1:
            ax.fill_between(stats.index, stats["mean"] - stats["std"], stats["mean"] + stats["std"],
                            color=line.get_color(), alpha=0.15)
    ax.set(xlabel="pretraining compute (PFLOP)" if by_compute else "pretraining step",
           ylabel=" / ".join(PROBE_KEYS[k] for k in curves["score"].unique()), title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_png(fig, Path(path))
    curves.to_csv(Path(path).with_suffix(".csv"), index=False)
    return curves
