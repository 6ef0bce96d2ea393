"""One entry point for every transfer task, used by `bench transfer` and `bench suite`."""
import dataclasses
from pathlib import Path

from bench_data.images import voc_year
from bench_data.toy_voc import data_root_or_toy
from bench_runtime import distributed
from bench_runtime.device import start_process
from bench_runtime.engine import check_training_options
from bench_runtime.errors import UserError
from bench_runtime.readers import read_json
from bench_runtime.runfiles import CHECKPOINT, save_json, staged_run_dir
from .config import TransferConfig, TransferContext
from .encoders import pretrained_image_size
from .registry import VOC, get_task, registered_tasks

DEFAULT_IMAGE_SIZE = 96


def run_task(config, run_dir, progress=True):
    """Run `config`'s task into run_dir (resuming from its checkpoint when there is one); the record."""
    config, context = resolve_transfer(config)
    recorded = context.recorded(config)
    _check_same_run(recorded, run_dir / "config.json")
    distributed.barrier()  # every process has compared before the main one rewrites it
    if distributed.is_main():
        save_json(recorded, run_dir / "config.json")
    record = get_task(config.task).run(config, context, run_dir, progress=progress)
    distributed.barrier()  # every process is done with the checkpoint
    if distributed.is_main():
        (run_dir / CHECKPOINT).unlink(missing_ok=True)  # the record is the run's result now
    return record


def check_transfer_options(config):
    """A one-line error for a task, a protocol or a number that `config` cannot run with."""
    if config.protocol not in get_task(config.task).protocols:
        takers = [task.name for task in registered_tasks() if config.protocol in task.protocols]
        raise UserError(f"--protocol {config.protocol} applies to --task {' or '.join(takers)} only")
    check_training_options(config, ("--fc-width", config.fc_width, config.fc_width >= 1, "at least 1"))


def run_transfer(config, folder, progress=True):
    """`bench transfer`: run `config` into folder.out (default: transfer_run_name), built in a
    staging folder that replaces it when complete. Returns the record."""
    if get_task(config.task).data_kind == VOC:  # the toy set is VOC; other kinds have no default
        config = dataclasses.replace(config, data_root=data_root_or_toy(config.data_root))
    out = folder.check().out or transfer_run_name(config)
    with staged_run_dir(out, "transfer-run", folder.overwrite, folder.resume, config.input_paths(),
                        config.input_runs()) as staging:
        record = run_task(config, staging, progress)
    if distributed.is_main():
        print(f"{config.task} {record['metric']} = {100 * record['value']:.1f}%  (record: {Path(out) / 'record.json'})")
    return record


def resolve_transfer(config):
    """(`config` with its task's data where the options give none, the run's context), the options
    checked: this process started on its device (start_process resolves it, here only; under
    torchrun it joins the process group), and the image size with where it came from."""
    device = start_process(config.device)
    check_transfer_options(config)
    return with_task_data(config), TransferContext(device, *image_size_and_source(config))


def with_task_data(config):
    """`config` with the task's paper data where it gives no year or split: the year when the
    root has it, else the newest year it has."""
    task = get_task(config.task)
    return dataclasses.replace(
        config, year=config.year or (task.year and voc_year(config.data_root, task.year)),
        train_split=config.train_split or task.train_split, test_split=config.test_split or task.test_split)


def transfer_run_name(config):
    """The default run folder: runs/transfer/<task>-<protocol or proposals>-<init>[-rescaled]-seed<seed>,
    <init> named by its run folder (an encoder.pt by the folder it is in)."""
    init = Path(config.init)
    if config.init.startswith("random"):
        init_name = config.init
    else:
        init_name = (init.parent if init.name == "encoder.pt" else init).resolve().name.removesuffix(".pt")
    variant = getattr(config, get_task(config.task).variant_option)
    return f"runs/transfer/{config.task}-{variant}-{init_name}{'-rescaled' if config.rescale else ''}-seed{config.seed}"


def image_size_and_source(config):
    """(the image size of a run of `config`, where it came from): the one given ("option"), else
    the size the encoder was pretrained at ("encoder.json"), else DEFAULT_IMAGE_SIZE ("default")."""
    if config.image_size is not None:
        return config.image_size, "option"
    pretrained = pretrained_image_size(config.init)
    if pretrained is not None:
        return pretrained, "encoder.json"
    return DEFAULT_IMAGE_SIZE, "default"


# Options that may differ between an interrupted run and its resumption.
RESUMABLE_CHANGES = {"device", "workers", "compile"}


def _check_same_run(recorded, saved_path):
    """A resumed run must have the interrupted run's settings (`recorded`: as its config.json holds
    them, TransferContext.recorded), or its checkpoint means nothing."""
    if not saved_path.is_file():
        return
    saved = read_json(saved_path, hint="; the run cannot be resumed")
    # A setting added since the run was saved had its default then.
    saved = {**{f.name: f.default for f in dataclasses.fields(TransferConfig)}, **saved}
    changed = sorted(key for key, value in recorded.items()
                     if key not in RESUMABLE_CHANGES and saved.get(key) != value)
    if changed:
        raise UserError("the run being resumed had other settings: " + ", ".join(
            f"{key} was {saved.get(key)!r}, now {recorded[key]!r}" for key in changed))
