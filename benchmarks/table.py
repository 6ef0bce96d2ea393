"""`bench table`: the paper's tables beside the measured records.

Table 2 (transfer): measured rows group records by (pretraining method, data set); each task cell
is "mean ± std (n)" over seeds, in percent; beside the pretraining time, its compute (training
FLOPs, steps x the FLOPs of one step, from encoder.json), the budget rows compare at. Written as table.csv, table.md, table.json, table.png.
Each task's records fill the columns its registration names (transfer.registry); those of a task
on class folders (the in-domain probe) join the row of their method's transfer records. Beside
it, what the table can resolve (benchmarks.resolution): per column its range, positive control
and seed spread (resolution.csv/.md), and per pretrained row its difference from the best random
init and the autoencoder with a 95% interval (differences.csv/.md); table.json holds both.
Table 1 (inpainting, from `bench eval-inpaint` records): one row per (method, data set, hole kind),
mean L1 and L2 in percent, PSNR in dB and SSIM, each "mean ± std (n)" over pretraining seeds.
Written as inpaint_table.csv, .md and .json.
"""
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

from bench_runtime.errors import UserError
from bench_runtime.identity import describe, differing
from bench_runtime.options import option
from bench_runtime.progress import warning
from bench_runtime.runfiles import save_json, staged_files, write_atomically
from transfer.config import TransferConfig
from transfer.records import read_record
from transfer.registry import CLASS_FOLDERS, get_task, registered_tasks
from .layer_probes import write_layer_probes
from .resolution import column_resolution, row_differences, shown

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)

RESULTS = Path(__file__).resolve().parent.parent / "results"
PAPER_TABLE = RESULTS / "paper_table2.csv"
PAPER_INPAINT_TABLE = RESULTS / "paper_table1.csv"
INPAINT_TASK = "inpaint"
# Inpainting columns: (record metric, heading, scale, decimals).
INPAINT_COLUMNS = [("l1", "Mean L1 (%)", 100, 2), ("l2", "Mean L2 (%)", 100, 2),
                   ("psnr", "PSNR (dB)", 1, 2), ("ssim", "SSIM", 1, 3)]
# A record's settings from before an option was one had its default.
TRANSFER_DEFAULTS = {field.name: field.default for field in dataclasses.fields(TransferConfig)}
COMPUTE_UNITS = {9: "GFLOP", 12: "TFLOP", 15: "PFLOP", 18: "EFLOP"}


def read_records(folder):
    """(path, record, task) of every record.json below `folder`, in today's format."""
    paths = sorted(Path(folder).rglob("record.json"))
    if not paths:
        raise UserError(f"no record.json files under {folder}; run `bench transfer` or `bench eval-inpaint` first")
    records = []
    for path in paths:
        record = read_record(path)
        if "task" not in record:
            raise UserError(f"{path}: not a transfer or inpainting record (it names no task)")
        records.append((path, record, record["task"]))
    return records


def load_records(records):
    """One row per column that a transfer record of `records` (from read_records) fills (two for
    an in-domain probe record: kNN and linear). Records of one pretraining identity and data set
    make one table row ("method" names it, see row_names); an in-domain row joins the transfer row of its identity
    when that identity was transferred to one data set ("data" becomes that data set's,
    "probe_data" keeps its own)."""
    rows = []
    for path, record, task in records:
        if task == INPAINT_TASK:
            continue
        try:
            base = {"label": record.get("label") or record.get("pretrain_label") or record["pretrain_method"],
                    "pretrain_method": record["pretrain_method"], "data": Path(record["data_root"]).name,
                    "identity": record["pretrain_identity"], "control_identity": record.get("control_identity"),
                    "settings": record["pretrain_settings"], "transfer_identity": record["identity"],
                    "transfer_settings": record["transfer_settings"], "probe_data": "", "seed": record["seed"],
                    "pretrain_seconds": record["pretrain_seconds"],
                    "pretrain_flops": record.get("pretrain_flops"), "record": str(path)}
            kind = get_task(task)
            variant = {**TRANSFER_DEFAULTS, "protocol": record["protocol"], **record.get("config", {})}[
                kind.variant_option]
            if kind.data_kind == CLASS_FOLDERS:
                base["probe_data"] = base["data"]
            for column in kind.columns:
                if column.variant in (None, variant):
                    value = record["value"] if column.metric is None else record["metrics"][column.metric]
                    rows.append({**base, "column": column.heading, "value": value})
        except (KeyError, TypeError) as exc:
            raise UserError(f"{path} is not a transfer record ({exc})") from None
        except UserError as exc:  # a task no module registered
            raise UserError(f"{path}: {exc}") from None
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    in_domain = frame["probe_data"] != ""
    for encoder, group in frame[~in_domain].groupby("identity"):
        if group["data"].nunique() == 1:
            frame.loc[in_domain & (frame["identity"] == encoder), "data"] = group["data"].iloc[0]
    frame["method"] = row_names(frame)
    for message in mixed_transfer_settings(frame):
        warning(message)
    return frame


def row_names(frame):
    """Each record's row name. A row is one pretraining identity on one data set; where records
    of one row and column differ in transfer settings, each setting makes a row of its own. Rows
    are named by their label, and rows that share a label add the settings that tell them apart:
    "context-encoder (random-region; lr 1e-05, encoder_norm batch)"."""
    variants = pd.Series("", index=frame.index)
    for _, group in frame.groupby(["identity", "data", "column"]):
        if group["transfer_identity"].nunique() > 1:
            keys = differing(group["transfer_settings"].tolist())
            variants[group.index] = [describe(s, keys) for s in group["transfer_settings"]]
    keys = pd.Series(list(zip(frame["identity"], variants)), index=frame.index)
    names = frame["label"].copy()
    for _, group in frame.groupby("label"):
        shared = keys[group.index]
        if shared.nunique() == 1:
            continue
        first = group.groupby(shared).head(1)
        apart = differing(first["settings"].tolist())
        for index in group.index:
            details = "; ".join(filter(None, [describe(frame.at[index, "settings"], apart), variants[index]]))
            names[index] = _with_details(frame.at[index, "label"], details)
    return names


def _with_details(label, details):
    """`label` with `details` inside its closing bracket, or in a bracket of their own."""
    if label.endswith(")"):
        return f"{label[:-1]}; {details})"
    return f"{label} ({details})"


def mixed_transfer_settings(frame):
    """A warning for each column whose rows were transferred with different settings (other than
    the encoder): their difference is not the encoders' alone."""
    messages = []
    for (data, column), group in frame.groupby(["data", "column"]):
        first = group.groupby("method").head(1)
        keys = differing(first["transfer_settings"].tolist())
        if keys:
            messages.append(f"{column} on {data}: the rows were transferred with different {', '.join(keys)}; "
                            f"their differences are not the encoders' alone")
    return messages


def load_inpaint_records(records):
    """One row per metric of each inpainting record of `records` (from read_records)."""
    rows = []
    for path, record, task in records:
        if task != INPAINT_TASK:
            continue
        try:
            for metric, heading, scale, _ in INPAINT_COLUMNS:
                rows.append({"method": record["pretrain_label"], "data": Path(record["data_root"]).name,
                             "holes": record["mask"], "column": heading,
                             "value": float(record["metrics"][metric]) * scale, "seed": record["pretrain_seed"],
                             "record": str(path)})
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{path} is not an inpainting record ({exc})") from None
    return pd.DataFrame(rows)


def _cell(values, scale=100, decimals=1):
    values = values.dropna() * scale
    if values.empty:
        return ""
    if len(values) == 1:
        return f"{values.iloc[0]:.{decimals}f} (n=1)"
    if np.isinf(values).any():  # an exact fill somewhere: infinite PSNR
        return f"{values.mean():.{decimals}f} (n={len(values)})"
    return f"{values.mean():.{decimals}f} ± {values.std(ddof=1):.{decimals}f} (n={len(values)})"


def _duration(seconds):
    if pd.isna(seconds):  # e.g. downloaded weights: their training time is not known here
        return "not measured"
    if seconds < 1:
        return "none"
    return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.1f} h"


def _compute(flops):
    """Training FLOPs in the largest unit that keeps a digit before the point: "2.0 PFLOP"."""
    if pd.isna(flops):  # downloaded weights, or a run from before compute was counted
        return "not measured"
    if flops < 1:
        return "none"
    exponent = min(max(int(np.log10(flops)) // 3 * 3, 9), 18)
    return f"{flops / 10**exponent:.1f} {COMPUTE_UNITS[exponent]}"


def paper_columns(paper):
    """(task, column heading) of each task whose number the paper's table (a frame) holds."""
    return [(task.name, column.heading) for task in registered_tasks() if task.name in paper
            for column in task.columns if column.paper]


def build_table(records):
    """(table rows for people, numeric summary for the plot and JSON)."""
    headings = [column.heading for task in registered_tasks() for column in task.columns]
    summary = (records.groupby(["method", "data", "column"])["value"]
               .agg(mean="mean", std="std", n="count").reset_index())
    rows = []
    paper = pd.read_csv(PAPER_TABLE)
    for _, p in paper.iterrows():
        rows.append({"Pretraining": f"{p['pretraining']} (paper)", "Source": "paper: PASCAL VOC, 227 px",
                     "Pretraining time": p["pretraining_time"],
                     **{column: ("" if pd.isna(p[task]) else f"{p[task]:.1f}")
                        for task, column in paper_columns(paper)}})
    for (method, data), group in records.groupby(["method", "data"], sort=True):
        probe_data = sorted(set(group["probe_data"]) - {"", data})
        source = f"measured: {data}" + "".join(f"; in-domain: {name}" for name in probe_data)
        row = {"Pretraining": method, "Source": source,
               "Pretraining time": _duration(group["pretrain_seconds"].mean()),
               "Pretraining compute": _compute(group["pretrain_flops"].mean())}
        for column in headings:
            row[column] = _cell(group.loc[group["column"] == column, "value"])
        rows.append(row)
    table = pd.DataFrame(rows).fillna("")
    order = ["Pretraining", "Source", "Pretraining time", "Pretraining compute", *headings]
    return table[[c for c in order if (table[c] != "").any()]], summary


def build_inpaint_table(records):
    """(table rows for people, numeric summary): the paper's Table 1, then the measured rows."""
    summary = (records.groupby(["method", "data", "holes", "column"], sort=False)["value"]
               .agg(mean="mean", std="std", n="count").reset_index())
    rows = []
    for _, p in pd.read_csv(PAPER_INPAINT_TABLE).iterrows():
        rows.append({"Method": f"{p['method']} (paper)", "Source": "paper: Paris StreetView, 128 px",
                     "Holes": "central", "Mean L1 (%)": f"{p['mean_l1']:.2f}",
                     "Mean L2 (%)": f"{p['mean_l2']:.2f}", "PSNR (dB)": f"{p['psnr']:.2f}", "SSIM": ""})
    # Measured rows ranked by mean L1 within each data set and hole kind: the best fill first.
    l1 = records[records["column"] == INPAINT_COLUMNS[0][1]].groupby(["method", "data", "holes"])["value"].mean()
    for (data, holes, _, method), group in sorted(
            (key[1:] + (l1[key], key[0]), group) for key, group in records.groupby(["method", "data", "holes"])):
        row = {"Method": method, "Source": f"measured: {data}", "Holes": holes}
        for _, heading, _, decimals in INPAINT_COLUMNS:
            row[heading] = _cell(group.loc[group["column"] == heading, "value"], 1, decimals)
        rows.append(row)
    return pd.DataFrame(rows), summary


@dataclass
class TableConfig:
    """the paper's Tables 2 and 1 beside the measured records

    Read every record.json under --records and write into --out: from transfer records table.csv,
    table.md, table.json and table.png (mean ± std over seeds) next to the paper's Table 2
    (results/paper_table2.csv); from `bench eval-inpaint` records inpaint_table.csv/.md/.json next to
    the paper's Table 1 (results/paper_table1.csv, measured on Paris StreetView, which is not public)."""
    records: str = option("runs/transfer", "folder searched for record.json files")
    out: str = option("results", "folder for the table files")


def make_table(config):
    """`bench table`: write the tables and print them."""
    print_tables(write_table(config.records, config.out), config.out)


def print_tables(tables, folder):
    """Each table as text, and the files it was written to."""
    for stem, table in tables.items():
        print(for_people(table).to_string(index=False))
        also = {"table": ".csv, .json, .png", "inpaint_table": ".csv, .json"}.get(stem, ".csv")
        print(f"written: {Path(folder) / stem}.md (+ {also})\n")


def write_table(records_folder, out_folder):
    """Write the tables the records under `records_folder` make; returns {file stem: table}."""
    records = read_records(records_folder)
    with staged_files(out_folder) as out:
        return _write_tables(records, out)


def _write_tables(records, out):
    tables = {}
    transfer = load_records(records)
    if not transfer.empty:
        table, summary = build_table(transfer)
        resolution, differences = column_resolution(transfer).round(1), row_differences(transfer).round(1)
        _write("table", table, summary, out, resolution=resolution.to_dict(orient="records"),
               differences=differences.to_dict(orient="records"))
        write_atomically(out / "table.png", lambda tmp: _plot(summary, tmp))
        tables["table"] = table
        for stem, frame in (("resolution", resolution), ("differences", differences)):
            if not frame.empty:
                write_atomically(out / f"{stem}.csv", lambda tmp: frame.to_csv(tmp, index=False))
                write_atomically(out / f"{stem}.md", lambda tmp: tmp.write_text(markdown_table(frame)))
                tables[stem] = frame
        write_layer_probes(records, out)
    inpainting = load_inpaint_records(records)
    if not inpainting.empty:
        table, summary = build_inpaint_table(inpainting)
        _write("inpaint_table", table, summary, out)
        tables["inpaint_table"] = table
    return tables


def _write(stem, table, summary, out, **extra):
    write_atomically(out / f"{stem}.csv", lambda tmp: table.to_csv(tmp, index=False))
    write_atomically(out / f"{stem}.md", lambda tmp: tmp.write_text(markdown_table(table)))
    save_json({"rows": table.to_dict(orient="records"),
               "measured": summary.to_dict(orient="records"), **extra}, out / f"{stem}.json")


def markdown_table(table):
    table = for_people(table)
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def for_people(table):
    """`table` with "–" in every cell that has no value (resolution.shown)."""
    return table.map(shown)


def _plot(summary, path):
    columns = list(dict.fromkeys(summary["column"]))
    one_data_set = summary["data"].nunique() == 1
    names = summary["method"] if one_data_set else summary["method"] + " / " + summary["data"]
    groups = list(dict.fromkeys(names))
    figure, axes = plt.subplots(1, len(columns), figsize=(3.2 * len(columns), 4.2), squeeze=False)
    for axis, column in zip(axes[0], columns):
        chosen = (summary["column"] == column).to_numpy()
        part, labels = summary[chosen], names[chosen].tolist()
        # One seed has no spread: its NaN std draws no error bar (0 would claim a spread of zero).
        axis.bar(range(len(part)), part["mean"] * 100, yerr=part["std"] * 100, capsize=4,
                 color=[f"C{groups.index(label)}" for label in labels])
        axis.set_xticks(range(len(part)), labels, rotation=30, ha="right", fontsize=8)
        axis.set_title(column)
        axis.set_ylabel("%")
    if one_data_set:
        spread = "one seed" if (summary["n"] == 1).all() else "mean ± std over seeds"
        figure.suptitle(f"measured on {summary['data'].iloc[0]} ({spread})", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=120)
    plt.close(figure)
