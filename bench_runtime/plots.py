"""The loss curves of any training run (pretraining or transfer), from the training engine's
metrics.jsonl, and the atomic PNG write that every curve figure goes through."""
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import pandas as pd  # noqa: E402

from .engine import METRICS  # noqa: E402


def metric_rows(run_dir):
    """The rows of run_dir/metrics.jsonl as dicts; none when the run logged nothing yet."""
    path = Path(run_dir) / METRICS
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def plot_losses(run_dir, name=None, terms=()):
    """Write run_dir/loss.png: every column of the training steps (the rows with a "loss"; other
    rows, such as probe scores, are left out) whose name holds "loss", and the loss `terms` named
    otherwise, smoothed, the raw values faint, titled with `name` (default: the folder's). Returns
    its path, or None when no step was logged."""
    run_dir = Path(run_dir)
    steps = pd.DataFrame([row for row in metric_rows(run_dir) if "loss" in row])
    if steps.empty:
        return None
    steps = steps.set_index("step")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    span = max(1, len(steps) // 20)
    for column in [c for c in steps.columns if "loss" in c or c in terms]:
        raw = ax.plot(steps.index, steps[column], alpha=0.25, linewidth=0.8)[0]
        ax.plot(steps.index, steps[column].ewm(span=span).mean(), color=raw.get_color(), label=column)
    ax.set(xlabel="step", ylabel="loss", title=f"{name or run_dir.name}: training loss (smoothed, raw faint)")
    ax.legend()
    return save_png(fig, run_dir / "loss.png")


def save_png(fig, path):
    """Write `fig` to `path` as a PNG through a temporary file (a reader never sees half of it),
    close it, and return `path`."""
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    tmp.replace(path)
    return path
