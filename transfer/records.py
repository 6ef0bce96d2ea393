"""Transfer records: one JSON file per transfer run, the input of `bench table`."""
import dataclasses
import math
import time
from pathlib import Path

from pretrain.probe import PROBE_PROTOCOLS
from bench_runtime import distributed, formats
from bench_runtime.identity import data_name, identity
from bench_runtime.readers import read_json
from bench_runtime.runfiles import environment_info, save_json
from .encoders import read_encoder_json

# Transfer settings that cannot change a record's numbers, left out of its identity: its seed, how
# batches are loaded, checkpoints, the device (see pretrain.train.NOT_IDENTITY), where the image size
# came from, its table label, and the paths of its init and data (the init's own identity and the
# data's name stand for them). Bad images or annotations left out change the data, and with it the
# image count a check reports, not these options' values.
# --probe-protocol only names the values the probe options then hold.
NOT_IDENTITY = {"seed", "workers", "checkpoint_every", "device", "compile", "image_size_from", "init", "label",
                "bad_images", "bad_annotations", "data_root", "probe_protocol"}
# The probe's options enter the identity where they differ from the sample the probe always took
# before they were options (None: a task that has no probe), so earlier records keep theirs.
EARLIER_PROBE = dataclasses.asdict(PROBE_PROTOCOLS["sampled"])


def transfer_settings(config):
    """What decides a transfer's numbers beside its encoder (`config`: its settings as the record's
    "config" holds them, TransferContext.recorded): the input of the record's identity."""
    settings = {k: v for k, v in config.items() if k not in NOT_IDENTITY
                and not (k in EARLIER_PROBE and v in (None, EARLIER_PROBE[k]))}
    return {**settings, "data": data_name(config.get("data_root"))}


def read_record(path):
    """A record.json (transfer or inpainting) in today's format (bench_runtime.formats)."""
    return formats.upgrade("record", read_json(path), path, {1: _record_from_version_1})


def _record_from_version_1(record):
    """A record from before identities: the encoder's identity from its run folder when that still
    exists, else from the method label alone (such records share a row as they did before)."""
    if record.get("task") == "inpaint":
        return record
    config = record.get("config") or {"task": record.get("task"), "protocol": record.get("protocol")}
    init = Path(str(config.get("init") or ""))
    encoder_json = (init if init.is_dir() else init.parent) / "encoder.json"
    if init.name and encoder_json.is_file():
        meta = read_encoder_json(encoder_json)
        pretrain_settings, control = meta["settings"], meta["control_identity"]
    else:
        pretrain_settings, control = {"label": record.get("pretrain_label") or record.get("pretrain_method")}, None
    settings = transfer_settings(config)
    pretraining = identity(pretrain_settings)
    return {**record, "label": None, "identity": identity({**settings, "pretraining": pretraining}),
            "pretrain_identity": pretraining, "control_identity": control, "pretrain_settings": pretrain_settings,
            "transfer_settings": settings}


def write_record(run_dir, config, context, init_info, metric_name, metric, per_class, class_names, started,
                 metrics=None):
    """Write run_dir/record.json (the main process, under torchrun) and return the record of the run
    of `config` in `context` (a TransferContext); `metrics` (a dict) holds a task's further
    measurements."""
    recorded = context.recorded(config)
    settings = transfer_settings(recorded)
    record = formats.stamped("record", {
        "task": config.task, "protocol": config.protocol, "label": config.label,
        "identity": identity({**settings, "pretraining": init_info["identity"]}),
        "pretrain_identity": init_info["identity"], "control_identity": init_info.get("control_identity"),
        "pretrain_settings": init_info["settings"], "transfer_settings": settings,
        "init": init_info.get("init"), "pretrain_method": init_info.get("method"),
        "pretrain_label": init_info.get("label", init_info.get("method")),
        "pretrain_seconds": init_info.get("pretrain_seconds"), "pretrain_flops": init_info.get("pretrain_flops"),
        "seed": config.seed,
        "data_root": config.data_root, "year": config.year,
        "image_size": context.image_size, "image_size_from": context.image_size_from,
        "train_split": config.train_split, "test_split": config.test_split,
        "metric": metric_name, "value": _finite_or_none(metric),
        "per_class": {name: _finite_or_none(value) for name, value in zip(class_names, per_class)},
        **({"metrics": {k: _finite_or_none(v) for k, v in metrics.items()}} if metrics else {}),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "config": recorded, "environment": environment_info(),
    })
    if distributed.is_main():
        save_json(record, run_dir / "record.json")
    return record


def _finite_or_none(value):
    """NaN (a class that cannot be scored) becomes null: JSON has no NaN."""
    return None if value is None or math.isnan(value) else float(value)
