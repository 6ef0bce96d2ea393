"""Transfer records: one JSON file per transfer run, the input of `bench table`."""
import dataclasses
import math
import time

from runtime import distributed
from runtime.runfiles import environment_info, save_json


def write_record(run_dir, config, init_info, metric_name, metric, per_class, class_names, started, metrics=None):
    """Write run_dir/record.json (the main process, under torchrun) and return the record; `metrics`
    (a dict) holds a task's further measurements."""
    record = {
        "task": config.task, "protocol": config.protocol,
        "init": init_info.get("init"), "pretrain_method": init_info.get("method"),
        "pretrain_label": init_info.get("label", init_info.get("method")),
        "pretrain_seconds": init_info.get("pretrain_seconds"), "seed": config.seed,
        "data_root": config.data_root, "year": config.year,
        "image_size": config.image_size, "image_size_from": config.image_size_from,
        "train_split": config.train_split, "test_split": config.test_split,
        "metric": metric_name, "value": _finite_or_none(metric),
        "per_class": {name: _finite_or_none(value) for name, value in zip(class_names, per_class)},
        **({"metrics": {k: _finite_or_none(v) for k, v in metrics.items()}} if metrics else {}),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "config": dataclasses.asdict(config), "environment": environment_info(),
    }
    if distributed.is_main():
        save_json(record, run_dir / "record.json")
    return record


def _finite_or_none(value):
    """NaN (a class that cannot be scored) becomes null: JSON has no NaN."""
    return None if value is None or math.isnan(value) else float(value)
