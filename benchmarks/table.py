"""`bench table`: the paper's Table 2 beside the measured transfer records.

Measured rows group records by (pretraining method, data set); each task cell is
"mean ± std (n)" over seeds, in percent. Writes table.csv, table.md, table.json and table.png.
"""
import json
from pathlib import Path

import matplotlib
import pandas as pd

from pretrain.errors import UserError
from pretrain.runfiles import write_atomically, save_json

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)

PAPER_TABLE = Path(__file__).resolve().parent.parent / "results" / "paper_table2.csv"
# Column of each (task, protocol); the paper's numbers are full fine-tuning.
COLUMNS = {("cls", "finetune"): "Classification", ("cls", "svm"): "Classification (SVM)",
           ("det", "selective-search"): "Detection", ("det", "rpn"): "Detection (RPN)",
           ("seg", "finetune"): "Segmentation"}
PAPER_COLUMNS = {"cls": "Classification", "det": "Detection", "seg": "Segmentation"}


def load_records(folder):
    """One row per record.json below `folder`."""
    paths = sorted(Path(folder).rglob("record.json"))
    if not paths:
        raise UserError(f"no record.json files under {folder}; run `bench transfer` first")
    rows = []
    for path in paths:
        try:
            record = json.loads(path.read_text())
            rows.append({"method": record.get("pretrain_label") or record["pretrain_method"], "data": Path(record["data_root"]).name,
                         "column": COLUMNS[_variant(record)],
                         "value": record["value"], "seed": record["seed"],
                         "pretrain_seconds": record["pretrain_seconds"], "record": str(path)})
        except (json.JSONDecodeError, KeyError) as exc:
            raise UserError(f"{path} is not a transfer record ({exc})") from None
    return pd.DataFrame(rows)


def _variant(record):
    """(task, protocol), or (det, proposal kind) for detection."""
    if record["task"] == "det":
        return "det", record.get("config", {}).get("proposals", "selective-search")
    return record["task"], record["protocol"]


def _cell(values):
    values = values.dropna() * 100
    if values.empty:
        return ""
    if len(values) == 1:
        return f"{values.iloc[0]:.1f} (n=1)"
    return f"{values.mean():.1f} ± {values.std(ddof=1):.1f} (n={len(values)})"


def _duration(seconds):
    if pd.isna(seconds):  # e.g. downloaded weights: their training time is not known here
        return "not measured"
    if seconds < 1:
        return "none"
    return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.1f} h"


def build_table(records):
    """(table rows for people, numeric summary for the plot and JSON)."""
    summary = (records.groupby(["method", "data", "column"])["value"]
               .agg(mean="mean", std="std", n="count").reset_index())
    rows = []
    paper = pd.read_csv(PAPER_TABLE)
    for _, p in paper.iterrows():
        rows.append({"Pretraining": f"{p['pretraining']} (paper)", "Source": "paper: PASCAL VOC, 227 px",
                     "Pretraining time": p["pretraining_time"],
                     **{PAPER_COLUMNS[t]: ("" if pd.isna(p[t]) else f"{p[t]:.1f}") for t in PAPER_COLUMNS}})
    for (method, data), group in records.groupby(["method", "data"], sort=True):
        row = {"Pretraining": method, "Source": f"measured: {data}",
               "Pretraining time": _duration(group["pretrain_seconds"].mean())}
        for column in COLUMNS.values():
            row[column] = _cell(group.loc[group["column"] == column, "value"])
        rows.append(row)
    table = pd.DataFrame(rows).fillna("")
    order = ["Pretraining", "Source", "Pretraining time", *COLUMNS.values()]
    return table[[c for c in order if (table[c] != "").any()]], summary


def write_table(records_folder, out_folder):
    table, summary = build_table(load_records(records_folder))
    out = Path(out_folder)
    out.mkdir(parents=True, exist_ok=True)
    write_atomically(out / "table.csv", lambda tmp: table.to_csv(tmp, index=False))
    write_atomically(out / "table.md", lambda tmp: tmp.write_text(_markdown(table)))
    save_json({"rows": table.to_dict(orient="records"),
               "measured": summary.to_dict(orient="records")}, out / "table.json")
    write_atomically(out / "table.png", lambda tmp: _plot(summary, tmp))
    return table


def _markdown(table):
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _plot(summary, path):
    columns = list(dict.fromkeys(summary["column"]))
    one_data_set = summary["data"].nunique() == 1
    names = summary["method"] if one_data_set else summary["method"] + " / " + summary["data"]
    groups = list(dict.fromkeys(names))
    figure, axes = plt.subplots(1, len(columns), figsize=(3.2 * len(columns), 4.2), squeeze=False)
    for axis, column in zip(axes[0], columns):
        chosen = (summary["column"] == column).to_numpy()
        part, labels = summary[chosen], names[chosen].tolist()
        axis.bar(range(len(part)), part["mean"] * 100, yerr=part["std"].fillna(0) * 100, capsize=4,
                 color=[f"C{groups.index(label)}" for label in labels])
        axis.set_xticks(range(len(part)), labels, rotation=30, ha="right", fontsize=8)
        axis.set_title(column)
        axis.set_ylabel("%")
    if one_data_set:
        figure.suptitle(f"measured on {summary['data'].iloc[0]} (mean ± std over seeds)", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=120)
    plt.close(figure)
