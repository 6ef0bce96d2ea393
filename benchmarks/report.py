"""`bench report DIR`: one HTML page, DIR/report.html, for a suite folder or a single run folder.

It shows what the folder holds: the table beside the paper's rows and its bar chart (table.json,
table.png), the probe curves, and for every pretraining run (a folder with encoder.json) and every
transfer run (a folder with record.json) its score, loss curve, preview or prediction grids, its
configuration and the versions it ran with. Images are linked by relative paths, so the page works
offline wherever the folder is copied whole; if one does not load (the page was moved out of its
folder), a line at the top of the page says how many.
"""
import html
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from bench_runtime.errors import UserError
from bench_runtime.options import option
from bench_runtime.readers import read_json
from bench_runtime.runfiles import write_atomically
from .resolution import RESOLVING_SPREADS, shown

REPORT = "report.html"
RUN_PICTURES = {  # file -> caption, in the order shown
    "loss.png": "training loss (smoothed; raw values faint)",
    "probe.png": "kNN probe accuracy during pretraining",
    "preview.png": "the pretext task on held-out images: input, network output, original",
    "predictions.png": "image, ground truth, prediction (VOC colours)",
    "detections.png": "ground truth white; top detections: true positives green, false positives red",
}
SUITE_PICTURES = {
    "table.png": "the table as bars (mean over seeds; error bars one standard deviation where there are several)",
    "probe_curves.png": "kNN probe accuracy during pretraining, per method (mean over seeds)",
    "layer_probes.png": "in-domain linear probe per layer, measured, beside the published 2016 numbers",
}
STYLE = """
body { font-family: sans-serif; margin: 2em auto; padding: 0 1em; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 90%; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; }
tr.paper td { color: #777; }
figure { display: inline-block; margin: 0.5em 1em 0.5em 0; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 85%; color: #555; }
pre { background: #f6f6f6; padding: 0.5em; font-size: 80%; overflow-x: auto; }
#missing { color: #b00; font-weight: bold; }
"""
# Counts the images that loaded (data-images-loaded / data-images-total on <body>, which the
# browser test reads) and warns on the page when some did not.
IMAGE_CHECK = """
window.addEventListener("load", function () {
  var images = Array.from(document.images);
  var broken = images.filter(function (image) { return !(image.complete && image.naturalWidth > 0); });
  document.body.dataset.imagesTotal = images.length;
  document.body.dataset.imagesLoaded = images.length - broken.length;
  if (broken.length) {
    document.getElementById("missing").textContent = broken.length + " of " + images.length +
      " images did not load: open this page from inside its folder (" +
      broken.map(function (image) { return image.getAttribute("src"); }).join(", ") + ")";
  }
});
"""


def _read_json(path):
    """The JSON object in `path`, None when there is no such file; a broken one is a one-line error."""
    return read_json(path, hint="; fix or remove it, then write the report again") if path.is_file() else None


def _figures(folder, page_dir, pictures):
    shown = []
    for name, caption in pictures.items():
        if (folder / name).is_file():
            source = html.escape((folder / name).relative_to(page_dir).as_posix())
            shown.append(f'<figure><img src="{source}" alt="{html.escape(name)}">'
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    return "\n".join(shown)


def _details(title, data):
    return (f"<details><summary>{html.escape(title)}</summary>"
            f"<pre>{html.escape(json.dumps(data, indent=1, default=str))}</pre></details>")


def _table(rows):
    """An HTML table of table.json's rows; the paper's rows are greyed."""
    if not rows:
        return ""
    columns = list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for row in rows:
        paper = str(row.get("Source", "")).startswith("paper")
        cells = "".join(f"<td>{html.escape(str(shown(row.get(c))))}</td>" for c in columns)
        body.append(f'<tr class="{"paper" if paper else "measured"}">{cells}</tr>')
    return f'<table id="results"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _versions(environment):
    if not environment:
        return ""
    return "<p>versions: " + html.escape(", ".join(f"{k} {v}" for k, v in environment.items())) + "</p>"


def _heading(run, page_dir):
    return f"<h3>{html.escape(run.name if run == page_dir else run.relative_to(page_dir).as_posix())}</h3>"


def _pretraining_section(run, page_dir):
    encoder = _read_json(run / "encoder.json") or {}
    config = _read_json(run / "config.json") or {}
    minutes = encoder.get("pretrain_seconds", 0) / 60
    summary = (f"{encoder.get('label', run.name)}: {encoder.get('steps', '?')} steps at "
               f"{encoder.get('image_size', '?')} px, {minutes:.1f} min")
    return (f'<section class="run">{_heading(run, page_dir)}<p>{html.escape(summary)}</p>'
            f"{_figures(run, page_dir, RUN_PICTURES)}"
            f"{_versions(config.get('environment'))}{_details('configuration', config.get('config', config))}"
            "</section>")


def _transfer_section(run, page_dir):
    record = _read_json(run / "record.json") or {}
    value = record.get("value")
    score = f"{record.get('metric', 'score')} = {100 * value:.1f}%" if isinstance(value, float) else "no score"
    summary = (f"{record.get('task', '?')} ({record.get('protocol', '?')}) from "
               f"{record.get('pretrain_label', record.get('init', '?'))}, seed {record.get('seed', '?')}: {score}")
    return (f'<section class="run">{_heading(run, page_dir)}<p>{html.escape(summary)}</p>'
            f"{_figures(run, page_dir, RUN_PICTURES)}"
            f"{_versions(record.get('environment'))}{_details('configuration', record.get('config', {}))}"
            "</section>")


def report_html(folder):
    """The page for `folder` (a suite, a folder of runs, or one run) as a string."""
    folder = Path(folder)
    pretraining = sorted(p.parent for p in folder.rglob("encoder.json"))
    transfers = sorted(p.parent for p in folder.rglob("record.json"))
    table = _read_json(folder / "table.json") or {}
    if not (pretraining or transfers or table):
        raise UserError(f"{folder} holds no suite, pretraining run (encoder.json) or transfer run (record.json)")
    parts = [f"<h1>{html.escape(folder.resolve().name)}</h1>",
             f"<p>bench report, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC: "
             f"{len(pretraining)} pretraining run(s), {len(transfers)} transfer run(s).</p>",
             '<p id="missing"></p>']
    if table:
        parts += ["<h2>Results beside the paper's Table 2</h2>",
                  "<p>Grey rows are the paper's numbers (PASCAL VOC, 227 px); the others were measured "
                  "here, mean ± standard deviation over seeds (n seeds).</p>", _table(table.get("rows"))]
        if table.get("resolution"):
            parts += ["<h3>What the table can resolve</h3>",
                      f"<p>Per column, in percentage points: the range of the measured rows, the positive control "
                      f"(supervised minus the best random init) and the pooled seed spread. A column ranks "
                      f"pretraining when range and control are both at least {RESOLVING_SPREADS} spreads.</p>",
                      _table(table["resolution"])]
        if table.get("differences"):
            parts += ["<h3>Each pretrained row against the best random init, the autoencoder and its own "
                      "no-learning control</h3>",
                      "<p>Difference of the means in percentage points, with its 95% confidence interval over "
                      "seeds (Welch's t): above, level (the interval holds zero) or below.</p>",
                      _table(table["differences"])]
    parts.append(_figures(folder, folder, SUITE_PICTURES))
    if pretraining:
        parts += ["<h2>Pretraining runs</h2>", *(_pretraining_section(run, folder) for run in pretraining)]
    if transfers:
        parts += ["<h2>Transfer runs</h2>", *(_transfer_section(run, folder) for run in transfers)]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(folder.resolve().name)}: bench report</title><style>{STYLE}</style>"
            f"<script>{IMAGE_CHECK}</script></head>\n<body>\n" + "\n".join(p for p in parts if p)
            + "\n</body></html>\n")


@dataclass
class ReportConfig:
    """one HTML page of a suite or run folder: table, curves, grids, configs

    Write DIR/report.html: the table beside the paper's rows, the bar chart, loss and probe curves,
    preview and prediction grids, and each run's configuration and versions. Images are linked
    relatively: copy the folder whole to share it."""
    folder: str = option("", "a `bench suite` output folder, a folder of runs, or one run folder", flags=("DIR",))


def make_report(config):
    """`bench report`: write the report and say where."""
    print(f"written: {write_report(config.folder)}")


def write_report(folder):
    """Write `folder`/report.html (replacing an earlier report) and return its path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder")
    page = report_html(folder)
    path = folder / REPORT
    write_atomically(path, lambda tmp: tmp.write_text(page))
    return path
