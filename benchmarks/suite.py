"""`bench suite`: pretrain every method of a preset for every seed, run every transfer task on
every encoder, and build the table, in one command. Work whose output already exists (a run's
encoder.pt, a transfer's record.json) is skipped, and runs stopped half-way resume from their
checkpoints, so an interrupted suite picks up where it stopped.

Layout under --out:
    pretrain/<method>-seed<k>/        bench pretrain run folders
    transfer/<task>-<method>-seed<k>/ bench transfer run folders (record.json)
    table.csv, table.md, table.json, table.png
    report.html                       the page of all of it (bench report)
    probe_curves.png, probe_curves.csv   when the pretraining runs were probed (mean +- std over seeds)
"""
import dataclasses
import sys
from pathlib import Path

import yaml

from pretrain.curves import probe_comparison
from pretrain.methods import get_method
from pretrain.train import PretrainConfig, pretrain, resume_pretraining
from runtime.errors import UserError
from runtime.options import parse_options
from runtime.progress import info
from runtime.runfiles import CHECKPOINT, has_interrupted_run, staged_run_dir
from transfer.finetune import TransferConfig, task_names
from transfer.tasks import run_task
from .report import write_report
from .table import write_table

PRESETS = Path(__file__).resolve().parent / "presets"


def load_preset(name):
    """A preset by name (benchmarks/presets/<name>.yaml) or by path to a YAML file."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else PRESETS / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PRESETS.glob("*.yaml")))
        raise UserError(f"unknown preset {name!r}; choose from {known} or give a YAML file")
    return yaml.safe_load(path.read_text())


def check_needs(preset, name, given):
    """Refuse to start a preset without the command-line options its `needs:` names ({option: value})."""
    for option, hint in (preset.get("needs") or {}).items():
        if given.get(option) is None:
            raise UserError(f"preset {name} needs --{option} ({hint})")


def check_preset(preset):
    """Fail on a misspelt option before hours of work, not after."""
    for key in ("seeds", "pretrain", "methods", "transfer", "tasks"):
        if key not in preset:
            raise UserError(f"preset has no {key!r} section")
    for name, options in preset["methods"].items():
        if not _no_pretraining(options):
            pretrain_config(preset, options, f"methods.{name}")
    for name, options in preset["tasks"].items():
        options = {**preset["transfer"], **options}
        if "task" not in options:
            raise UserError(f"preset tasks.{name}: it names no task (one of {', '.join(task_names())})")
        parse_options(TransferConfig, options, f"preset tasks.{name}")


def pretrain_config(preset, options, where):
    """The PretrainConfig of a method entry over the preset's `pretrain` section: the names that are
    not general options are the method's own (its Options), checked as `bench pretrain` checks them."""
    merged = {**preset["pretrain"], **options}
    general = {f.name for f in dataclasses.fields(PretrainConfig)}
    config = parse_options(PretrainConfig, {k: v for k, v in merged.items() if k in general}, f"preset {where}")
    own = {k: v for k, v in merged.items() if k not in general}
    method = get_method(config.method)
    parse_options(method.Options, own, f"preset {where} (--method {method.name})")
    return dataclasses.replace(config, method_options=own)


def _no_pretraining(options):
    """A method entry that is only an --init (e.g. {init: random-gaussian}); null means random."""
    return options is None or set(options) == {"init"}


def run_suite(preset, out, data_root, mask_dir=None, transfer_data_root=None, seeds=None, device="auto",
              progress=True):
    """Run the preset; return the table."""
    check_preset(preset)
    out = Path(out)
    seeds = seeds or preset["seeds"]
    transfer_root = transfer_data_root or data_root
    encoders, failures = {}, []
    for name, options in preset["methods"].items():
        for seed in seeds:
            if _no_pretraining(options):  # a random-init row
                encoders[name, seed] = (options or {}).get("init", "random")
                continue
            run_dir = out / "pretrain" / f"{name}-seed{seed}"
            encoders[name, seed] = str(run_dir)
            if (run_dir / "encoder.pt").is_file():
                info(f"skip pretraining {run_dir}: done")
                continue
            if (run_dir / CHECKPOINT).is_file():
                info(f"resuming pretraining {name}, seed {seed} in {run_dir}")
                resume_pretraining(run_dir, progress=progress)
                continue
            config = pretrain_config(preset, options, f"methods.{name}")
            # A method may name its own data (e.g. supervised: {data_root: labelled/class/folders}).
            config = dataclasses.replace(config, data_root=config.data_root or str(data_root),
                                         mask_dir=mask_dir or config.mask_dir, seed=seed, device=device)
            if preset.get("probe") and config.probe_data is None:  # the probe curve on the transfer data
                config = dataclasses.replace(config, probe_data=str(transfer_root))
            info(f"pretraining {name}, seed {seed} -> {run_dir}")
            pretrain(config, run_dir, overwrite=True, progress=progress)
    for task_name, task_options in preset["tasks"].items():
        for (name, seed), init in encoders.items():
            run_dir = out / "transfer" / f"{task_name}-{name}-seed{seed}"
            if (run_dir / "record.json").is_file():
                info(f"skip {run_dir}: done")
                continue
            config = parse_options(TransferConfig, {**preset["transfer"], **task_options}, f"preset tasks.{task_name}")
            config = dataclasses.replace(config, init=init, data_root=str(transfer_root), seed=seed, device=device)
            info(f"transfer {task_name} from {name}, seed {seed} -> {run_dir}")
            try:
                with staged_run_dir(run_dir, overwrite=True, resume=has_interrupted_run(run_dir)) as staging:
                    record = run_task(config, staging, progress=progress)
            except UserError as exc:  # e.g. a diverging fine-tuning: the other runs still count
                failures.append(f"{run_dir.name}: {exc}")
                print(f"  failed: {exc}", file=sys.stderr)
                continue
            print(f"  {record['metric']} = {100 * record['value']:.1f}%")
    _probe_curves(encoders, out)
    table = write_table(out / "transfer", out)
    write_report(out)
    if failures:
        raise UserError(f"{len(failures)} transfer run(s) failed and are missing from the table in {out}: "
                        + "; ".join(failures))
    return table


def guide(out):
    """Where a finished suite's files are and how to read them (what the demo ends with)."""
    out = Path(out)
    return "\n".join([
        f"report (open in a browser): {out / 'report.html'}",
        f"table: {out / 'table.md'}; bar chart: {out / 'table.png'}",
        f"pretraining previews and losses: {out / 'pretrain' / '*' / 'preview.png'}, loss.png",
        f"prediction grids: {out / 'transfer' / 'seg-*' / 'predictions.png'}, {out / 'transfer' / 'det-*' / 'detections.png'}",
        "How to read them: each measured row is one pretraining followed by the same fine-tuning; compare a "
        "row with the random-init row, taking the ± (the spread over seeds; n=1 has none) as the noise, "
        "and the paper's rows as the scale at 227 px on real VOC, not as a target for toy data."])


def _probe_curves(encoders, out):
    """probe_curves.png/.csv: every probed pretraining run's curve, mean +- std over seeds per method."""
    runs = {}
    for (name, _seed), init in encoders.items():
        if (Path(init) / "metrics.jsonl").is_file():
            runs.setdefault(name, []).append(init)
    if probe_comparison(runs, out / "probe_curves.png", "kNN probe of the encoders during pretraining").empty:
        return
    print(f"probe curves: {out / 'probe_curves.png'} (+ .csv)")
