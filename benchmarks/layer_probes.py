"""The linear probe per layer (conv1 .. conv5, pool5) of in-domain probe records, beside the
published per-layer numbers of the 2016 protocol (results/published_linear_probes.csv): one
figure, layer_probes.png, and its numbers as layer_probes.csv (mean over seeds).

The published numbers are ImageNet top-1 over 1000 classes at 227 px; ours are top-1 over the
probe root's classes (10 for imagenette) at the pretraining size, so only the shapes and orderings
compare, not the levels.
"""
from pathlib import Path

import matplotlib
import pandas as pd

from bench_runtime.runfiles import write_atomically
from transfer.in_domain import PROBE

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)

PUBLISHED = Path(__file__).resolve().parent.parent / "results" / "published_linear_probes.csv"


def layer_means(records):
    """{row: {layer: mean linear top-1 in %}} from (path, record, task) of in-domain probe records."""
    rows = [{"row": record.get("pretrain_label") or record["pretrain_method"], "layer": layer, "value": 100 * value}
            for _, record, task in records if task == PROBE.name for layer, value in record["per_class"].items()
            if value is not None]
    if not rows:
        return pd.DataFrame(columns=["row", "layer", "value"])
    frame = pd.DataFrame(rows)
    return frame.groupby(["row", "layer"], sort=False)["value"].mean().reset_index()


def write_layer_probes(records, out):
    """Write out/layer_probes.png and .csv when `records` hold in-domain probe records; the paths."""
    means = layer_means(records)
    if means.empty:
        return []
    out = Path(out)
    table = means.pivot(index="row", columns="layer", values="value").round(1)
    table = table[[c for c in means["layer"].unique()]]
    write_atomically(out / "layer_probes.csv", lambda tmp: table.to_csv(tmp))
    published = pd.read_csv(PUBLISHED)
    figure, (ours, theirs) = plt.subplots(1, 2, figsize=(12, 4.2))
    for row, values in table.iterrows():
        ours.plot(values.index, values.to_numpy(), marker="o", label=row)
    ours.set(title="measured: in-domain linear probe (frozen)", ylabel="top-1 (%)", xlabel="layer")
    layers = [c for c in published.columns if c.startswith("conv")]
    for _, row in published.iterrows():
        theirs.plot(layers, row[layers].to_numpy(float), marker="s", linestyle="--", label=row["row"])
    theirs.set(title="published: ImageNet linear probe (Zhang et al. 2016)", ylabel="top-1 (%)", xlabel="layer")
    for axis in (ours, theirs):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    write_atomically(out / "layer_probes.png", lambda tmp: figure.savefig(tmp, format="png", dpi=110))
    plt.close(figure)
    return [out / "layer_probes.png", out / "layer_probes.csv"]
