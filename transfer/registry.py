"""The registry of transfer tasks. A task is one module that calls `register` with a TransferTask
saying all the rest of the suite needs of it: its data, its table columns and its runner. The
built-in task modules are imported by the transfer package, so that importing any of transfer
fills it; this module imports none of them (they import it)."""
from collections.abc import Callable
from dataclasses import dataclass

from bench_runtime.errors import UserError

VOC = "voc"  # a VOC root: JPEGImages/, Annotations/, ImageSets/ (the built-in toy set by default)
CLASS_FOLDERS = "class-folders"  # ImageNet's layout: train/<class>/, val/<class>/; no default
TASKS = {}  # name -> TransferTask, in registration order (the table's column order)


@dataclass(frozen=True)
class Column:
    """A `bench table` column that a task's records fill."""
    heading: str
    variant: str | None = None  # the records whose variant (TransferTask.variant_option) is this; None: all
    metric: str | None = None  # the record's metrics entry shown; None: the record's value
    paper: bool = False  # holds the paper's number (results/paper_table2.csv's column named as the task)


@dataclass(frozen=True)
class TransferTask:
    name: str
    summary: str  # what it trains and scores, for `bench transfer --help`
    run: Callable  # run(config, context: a TransferContext, run_dir, progress) -> the record it wrote into run_dir
    data_kind: str  # VOC or CLASS_FOLDERS
    train_split: str  # the paper's data, where the options give none
    test_split: str
    columns: tuple[Column, ...]
    year: str | None = None  # the VOC year (the newest a root has, where it lacks this one)
    protocols: tuple[str, ...] = ("finetune",)  # the --protocol values it runs
    variant_option: str = "protocol"  # the option whose value picks its column and names its run folder
    prepare: Callable | None = None  # config -> config with the task's own defaults filled in, before it is saved

    def data_help(self):
        year = f" {self.year}" if self.year else ""
        kind = "VOC" if self.data_kind == VOC else "class folders"
        return f"{kind}{year} {self.train_split} -> {self.test_split}"


def register(task):
    """Add `task` under its name (a task of the same name is replaced); returns it."""
    TASKS[task.name] = task
    return task


def task_names():
    """The registered tasks' names, sorted: the choices of `--task`."""
    return sorted(TASKS)


def registered_tasks():
    """The registered tasks in registration order."""
    return list(TASKS.values())


def get_task(name):
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}; choose from {', '.join(task_names())}")
    return TASKS[name]


def task_help():
    """The help of `--task`: a line per task, with its default data."""
    return "; ".join(f"{task.name} ({task.data_help()}): {task.summary}" for task in registered_tasks())
