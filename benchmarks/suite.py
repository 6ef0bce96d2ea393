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
import os
import sys
import typing
from pathlib import Path

import pydantic
import yaml

from pretrain.curves import probe_comparison
from pretrain.methods import PluginOptions, get_method, load_plugins
from pretrain.train import PretrainConfig, check_pretrain_options, check_steps_or_budget, pretrain, resume_pretraining
from bench_data.toy_voc import data_root_or_toy
from bench_runtime.device import DEVICE_NAMES, device_name, seed_value
from bench_runtime.errors import UserError
from bench_runtime.options import at_least, option, parse_options
from bench_runtime.progress import info
from bench_runtime.runfiles import CHECKPOINT, check_output_of, has_interrupted_run, staged_run_dir
from transfer.config import TransferConfig
from transfer.registry import CLASS_FOLDERS, get_task, task_names
from transfer.tasks import check_transfer_options, run_task
from .job_states import STATE_FILE, read_job_file, read_job_states, start_job_states, write_job_states
from .launcher import LAUNCHERS, cluster_options, launch
from .report import write_report
from .table import print_tables, write_table

PRESETS = Path(__file__).resolve().parent / "presets"


class PresetFile(pydantic.BaseModel):
    """The sections of a preset file; the options inside them are checked against the config
    dataclasses (check_preset), so every key at every level is known and typed."""
    model_config = pydantic.ConfigDict(extra="forbid", strict=True)  # `seeds: [yes]` is not seed 1
    needs: dict[str, str] = {}
    probe: bool = False
    data_root: str | None = None
    mask_dir: str | None = None
    cluster: dict[str, typing.Any] = {}
    seeds: list[int]
    pretrain: dict[str, typing.Any]
    methods: dict[str, dict[str, typing.Any] | None]
    transfer: dict[str, typing.Any]
    tasks: dict[str, dict[str, typing.Any]]


def load_preset(name):
    """A preset by name (benchmarks/presets/<name>.yaml) or by path to a YAML file, its sections
    checked (PresetFile): a misspelt or mistyped key is a one-line error naming it."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else PRESETS / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PRESETS.glob("*.yaml")))
        raise UserError(f"unknown preset {name!r}; choose from {known} or give a YAML file")
    try:
        preset = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(preset, dict):
        raise UserError(f"{path}: a preset is a mapping of sections (seeds, pretrain, methods, transfer, tasks), "
                        f"got {type(preset).__name__}")
    try:
        PresetFile.model_validate(preset)
    except pydantic.ValidationError as exc:
        # A misspelt section first: its "unknown" explains the "missing" that comes with it.
        problem = min(exc.errors(), key=lambda error: error["type"] != "extra_forbidden")
        key = ".".join(str(part) for part in problem["loc"])
        message = "unknown section" if problem["type"] == "extra_forbidden" else problem["msg"].lower()
        got = "" if problem["type"] == "missing" else f", got {problem['input']!r}"
        raise UserError(f"{path}: {key}: {message}{got}") from None
    return preset


# The `bench data fetch` set that serves each data option a preset may need: the VOC year of the
# presets' transfers, and its SegmentationClass PNGs as masks.
FETCH_FOR = {"pretrain-data": "imagenette-320", "in-domain-data": "imagenette-320", "transfer-data": "voc2012",
             "mask-dir": "voc2012"}


def check_needs(preset, name, given):
    """Refuse to start a preset without the command-line options its `needs:` names ({option: value}),
    naming the command that fetches the data where there is one."""
    for needed, hint in (preset.get("needs") or {}).items():
        if given.get(needed) is None:
            fetch = (f"; fetch it with: bench data fetch {FETCH_FOR[needed]} --root data/ (it prints the path to pass)"
                     if needed in FETCH_FOR else "")
            raise UserError(f"preset {name} needs --{needed} ({hint}){fetch}")


def check_preset(preset):
    """Fail on a misspelt option before hours of work, not after."""
    for key in ("seeds", "pretrain", "methods", "transfer", "tasks"):
        if key not in preset:
            raise UserError(f"preset has no {key!r} section")
    for key, noun in (("seeds", "seed"), ("methods", "method"), ("tasks", "task")):
        if not preset[key]:
            raise UserError(f"preset {key}: empty; a suite needs at least one {noun}")
    general = {f.name for f in dataclasses.fields(PretrainConfig)}
    parse_options(PretrainConfig, {k: v for k, v in preset["pretrain"].items() if k in general}, "preset pretrain")
    parse_options(TransferConfig, preset["transfer"], "preset transfer")
    for name, options in preset["methods"].items():
        if not _no_pretraining(options):
            config = pretrain_config(preset, options, f"methods.{name}")
            _named(f"preset methods.{name}", check_pretrain_options, config)
    for name, options in preset["tasks"].items():
        options = {**preset["transfer"], **options}
        if "task" not in options:
            raise UserError(f"preset tasks.{name}: it names no task (one of {', '.join(task_names())})")
        _named(f"preset tasks.{name}", check_transfer_options,
               parse_options(TransferConfig, options, f"preset tasks.{name}"))


def _named(where, check, config):
    """`check(config)`, its error prefixed with `where` in the preset the config came from."""
    try:
        check(config)
    except UserError as error:
        raise UserError(f"{where}: {error}") from None


def pretrain_config(preset, options, where):
    """The PretrainConfig of a method entry over the preset's `pretrain` section: the names that are
    not general options are the method's own (its Options), checked as `bench pretrain` checks them.
    A budget_pflops there (in the section: for every method) sets the steps, so neither may set steps."""
    merged = {**preset["pretrain"], **options}
    check_steps_or_budget(merged, f"preset {where}")
    general = {f.name for f in dataclasses.fields(PretrainConfig)}
    config = parse_options(PretrainConfig, {k: v for k, v in merged.items() if k in general}, f"preset {where}")
    own = {k: v for k, v in merged.items() if k not in general}
    method = get_method(config.method)
    parse_options(method.Options, own, f"preset {where} (--method {method.name})")
    return dataclasses.replace(config, method_options=own)


def _no_pretraining(options):
    """A method entry that is only an --init and maybe its row label (e.g. {init: random-gaussian});
    null means random."""
    return options is None or (set(options) <= {"init", "label"} and "init" in options)


@dataclasses.dataclass
class Job:
    """One unit of a suite: a pretraining run, a transfer run, or the closing table and report.
    Calling it does the work the sequential suite does; `bench suite --launcher` submits it as a
    separate process or cluster job (it is pickled, so it holds only configs and paths)."""
    name: str                    # pretrain/<method>-seed<k>, transfer/<task>-<method>-seed<k>, or "table"
    out: Path                    # the suite folder
    config: object = None        # PretrainConfig or TransferConfig (None: the table)
    needs: tuple = ()            # names of the jobs whose output this one reads
    plugins: tuple = ()          # --plugin modules, imported again in a job's own process
    progress: bool = True

    @property
    def kind(self):
        return self.name.split("/")[0]

    @property
    def run_dir(self):
        return self.out / self.name

    def done(self):
        """True when the job's output exists (what makes a re-run skip it)."""
        if self.kind == "pretrain":
            return (self.run_dir / "encoder.pt").is_file()
        if self.kind == "transfer":
            return (self.run_dir / "record.json").is_file()
        return False  # the table is cheap: always rebuilt from the records

    def __call__(self):
        load_plugins(self.plugins)
        if self.kind == "pretrain":
            if (self.run_dir / CHECKPOINT).is_file() or has_interrupted_run(self.run_dir):
                info(f"resuming pretraining {self.name} in {self.run_dir}")
                resume_pretraining(self.run_dir, progress=self.progress)
            else:
                info(f"pretraining {self.name} -> {self.run_dir}")
                pretrain(self.config, self.run_dir, overwrite=True, progress=self.progress)
            return str(self.run_dir)
        if self.kind == "transfer":
            interrupted = has_interrupted_run(self.run_dir)
            info(f"{'resuming transfer' if interrupted else 'transfer'} {self.name} -> {self.run_dir}")
            with staged_run_dir(self.run_dir, "transfer-run", overwrite=True, resume=interrupted,
                                inputs=self.config.input_paths(), runs=self.config.input_runs()) as staging:
                record = run_task(self.config, staging, progress=self.progress)
            return record
        return finish_suite(self.out, self.needs)


@dataclasses.dataclass
class SuiteConfig(PluginOptions):
    """pretrain every method, run every task for several seeds, build the table

    Run a preset (benchmarks/presets/*.yaml, or a YAML file of the same form): pretraining for each
    method and seed, every transfer task on every encoder, then the table. Finished work (encoder.pt /
    record.json present) is skipped."""
    preset: str = option("quick", f"{', '.join(sorted(p.stem for p in PRESETS.glob('*.yaml')))}, or a YAML file")
    data_root: str | None = option(None, "pretraining images (VOC root or folder); default: the preset's data_root, "
                                   "else the built-in toy VOC set", flags=("--pretrain-data", "--data-root"))
    transfer_data_root: str | None = option(None, "VOC root for the tasks (and the pretraining probe); default: "
                                            "--pretrain-data", flags=("--transfer-data", "--transfer-data-root"))
    in_domain_data: str | None = option(None, "class-folder root (train/<class>/, val/<class>/) for the in-domain "
                                        "probe: the presets' probe task and the pretraining probe curves, e.g. "
                                        "../shared/data/imagenette")
    mask_dir: str | None = option(None, "VOC segmentation PNGs for random-region masks (default: the preset's)")
    seeds: list[int] | None = option(None, "override the preset's seeds", nargs="+", check=seed_value)
    device: str = option("auto", DEVICE_NAMES, check=device_name)
    out: str | None = option(None, "suite folder (default: runs/suite-<preset>)")
    launcher: str = option("sequential", "sequential: one job after another in this process; local: each job its "
                           "own process, up to --jobs at once; slurm: each job a SLURM job, transfers after their "
                           "pretraining (local and slurm need submitit: pip install -e '.[cluster]')",
                           choices=LAUNCHERS)
    jobs: int = option(1, "local: jobs at once (each gets its share of the cores, and a GPU of its own when there "
                       "are enough)", check=at_least(1))
    dry_run: bool = option(False, "print the jobs, what each waits for and their resources; run nothing")
    status: str | None = option(None, "list every job of the suite in OUT: done, running, failed (with its "
                                "error), not started", metavar="OUT")
    cluster: dict = dataclasses.field(default_factory=dict)  # ClusterOptions given on the command line

    def out_folder(self):
        return Path(self.out or f"runs/suite-{Path(self.preset).stem}")

    def input_paths(self):
        """(option, path) of the data the suite reads: its folder must lie apart from them."""
        return [("--pretrain-data", self.data_root), ("--transfer-data", self.transfer_data_root),
                ("--in-domain-data", self.in_domain_data), ("--mask-dir", self.mask_dir)]


def run_suite_command(config):
    """`bench suite`: the suite's status, or the suite run (or submitted), its table printed."""
    if config.status:
        for name, state, detail in job_status(saved_plan(config.status), config.status):
            print(f"{name:<50} {state:<12} {detail}")
        return
    preset = load_preset(config.preset)
    load_plugins(config.plugin)
    check_preset(preset)  # every option of every section, before any data is made or read
    check_needs(preset, config.preset, {"pretrain-data": config.data_root, "transfer-data": config.transfer_data_root,
                                        "in-domain-data": config.in_domain_data, "mask-dir": config.mask_dir})
    config = dataclasses.replace(config, data_root=data_root_or_toy(config.data_root or preset.get("data_root")),
                                 mask_dir=config.mask_dir or preset.get("mask_dir"))
    out = check_output_of(config.out_folder(), "suite", config.input_paths())  # a new or earlier suite's folder
    if config.launcher == "sequential" and not config.dry_run:
        table = run_suite(preset, config)
    else:
        cluster = cluster_options(preset, config.cluster)
        table = launch(plan_suite(preset, config), out, config.launcher, config.jobs, cluster, config.dry_run)
        if table is None:
            if config.launcher == "slurm" and not config.dry_run:
                print(f"submitted; follow it with: bench suite --status {out}")
            return
    print_tables(table, out)
    info(guide(out))


def plan_suite(preset, suite, progress=True):
    """The preset's jobs in a runnable order: pretrainings, then transfers (each needs its encoder's
    pretraining, if any), then the table, for `suite` (a SuiteConfig: the folder, data, seeds and device)."""
    check_preset(preset)
    out, device, seeds = suite.out_folder(), suite.device, suite.seeds or preset["seeds"]
    data_root, mask_dir = suite.data_root, suite.mask_dir
    transfer_root = suite.transfer_data_root or data_root
    in_domain = suite.in_domain_data
    probed_root = in_domain or transfer_root
    jobs, encoders = [], {}  # encoders: (method, seed) -> (init, row label, the job that makes it or None)
    common = {"out": out, "plugins": tuple(suite.plugin), "progress": progress}
    for name, options in preset["methods"].items():
        for seed in seeds:
            if _no_pretraining(options):  # a random-init row
                init_only = options or {}
                encoders[name, seed] = (_row_init(init_only.get("init", "random"), preset),
                                        init_only.get("label") or name, None)
                continue
            config = pretrain_config(preset, options, f"methods.{name}")
            config = dataclasses.replace(config, label=config.label or name)  # rows keep the preset's names
            # A method may name its own data (e.g. supervised: {data_root: labelled/class/folders}).
            config = dataclasses.replace(config, data_root=config.data_root or str(data_root),
                                         mask_dir=mask_dir or config.mask_dir, seed=seed, device=device)
            if preset.get("probe") and config.probe_data is None:  # the probe curve: in-domain, else transfer data
                config = dataclasses.replace(config, probe_data=str(probed_root))
            job = Job(f"pretrain/{name}-seed{seed}", config=config, **common)
            encoders[name, seed] = (str(job.run_dir), config.label, job.name)
            jobs.append(job)
    for task_name, task_options in preset["tasks"].items():
        for (name, seed), (init, label, maker) in encoders.items():
            config = parse_options(TransferConfig, {**preset["transfer"], **task_options}, f"preset tasks.{task_name}")
            on_class_folders = get_task(config.task).data_kind == CLASS_FOLDERS
            if on_class_folders and not in_domain:
                raise UserError(f"preset tasks.{task_name} reads class folders: give --in-domain-data, a "
                                f"class-folder root (train/<class>/, val/<class>/)")
            task_root = in_domain if on_class_folders else transfer_root
            config = dataclasses.replace(config, init=init, label=label, data_root=str(task_root), seed=seed,
                                         device=device)
            jobs.append(Job(f"transfer/{task_name}-{name}-seed{seed}", config=config,
                            needs=(maker,) if maker else (), **common))
    jobs.append(Job("table", needs=tuple(job.name for job in jobs), **common))
    return jobs


def _row_init(init, preset):
    """An init-only row's --init: a bare "random" is a fresh copy of the backbone the preset's
    pretrainings train (e.g. random:timm:resnet18), so that the random row compares like with like."""
    arch = preset["pretrain"].get("arch")
    return f"random:{arch}" if init == "random" and arch and arch != "alexnet" else init


def saved_plan(out):
    """The jobs of the suite in `out`, from its jobs.json (enough to check what is done)."""
    plan = read_job_file(out).get("plan")
    if not plan:
        raise UserError(f"{out} has no {STATE_FILE}: not a suite folder, or one from before suites recorded their jobs")
    return [Job(entry["name"], Path(out), needs=tuple(entry["needs"])) for entry in plan]


def job_status(jobs, out):
    """(name, state, detail) of every job of the suite in `out`: done, interrupted (a checkpoint
    to resume from), running or submitted, failed or blocked with the last error line, not started."""
    recorded = read_job_states(out)
    rows = []
    for job in jobs:
        entry = recorded.get(job.name, {})
        if job.done() or (job.kind == "table" and (Path(out) / "table.json").is_file()):
            rows.append((job.name, "done", ""))
        elif entry.get("state") in ("failed", "blocked"):
            rows.append((job.name, entry["state"], entry.get("error", "")))
        elif entry.get("state") in ("running", "submitted"):
            rows.append((job.name, entry["state"], f"job {entry.get('job_id')}"))
        elif (job.run_dir / CHECKPOINT).is_file() or (job.kind == "transfer" and has_interrupted_run(job.run_dir)):
            rows.append((job.name, "interrupted", "a checkpoint to resume from"))
        else:
            rows.append((job.name, "not started", ""))
    return rows


def run_suite(preset, config, progress=True):
    """Run the preset's jobs one after another in this process; return the table."""
    out = config.out_folder()
    jobs = plan_suite(preset, config, progress)
    start_job_states(out, jobs)
    states, failures = {}, []
    for job in jobs[:-1]:
        if job.done():
            info(f"skip {job.run_dir}: done")
            continue
        states[job.name] = {"state": "running", "job_id": f"pid {os.getpid()}"}
        write_job_states(out, states)
        try:
            record = job()
        except UserError as exc:  # e.g. a diverging fine-tuning: the other runs still count
            states[job.name] = {"state": "failed", "error": str(exc)}
            write_job_states(out, states)
            if job.kind == "pretrain":
                raise
            failures.append(f"{job.run_dir.name}: {exc}")
            print(f"  failed: {exc}", file=sys.stderr)
            continue
        states[job.name] = {"state": "done"}
        write_job_states(out, states)
        if job.kind == "transfer":
            print(f"{job.name}: {record['metric']} = {100 * record['value']:.1f}%")
    table = jobs[-1]()
    if failures:
        raise UserError(f"{len(failures)} transfer run(s) failed and are missing from the table in {out}: "
                        + "; ".join(failures))
    return table


def finish_suite(out, job_names=()):
    """The closing job: probe curves of the pretraining runs among `job_names`, the table and the report."""
    out = Path(out)
    _probe_curves([out / name for name in job_names if name.startswith("pretrain/")], out)
    table = write_table(out / "transfer", out)
    write_report(out)
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


def _probe_curves(run_dirs, out):
    """probe_curves.png/.csv: every probed pretraining run's curve, mean +- std over seeds per method."""
    runs = {}
    for run_dir in run_dirs:
        if (run_dir / "metrics.jsonl").is_file():
            runs.setdefault(run_dir.name.rsplit("-seed", 1)[0], []).append(str(run_dir))
    if probe_comparison(runs, out / "probe_curves.png", "kNN probe of the encoders during pretraining").empty:
        return
    info(f"probe curves: {out / 'probe_curves.png'} (+ .csv)")
