"""Pretraining as a library, for the code that uses a pretraining without training it through
`pretrain()`: build one from a config (`build_pretraining`), load a finished run folder
(`load_run`), and run training steps of a method on one fixed batch (`fixed_batch_step`, what
`bench speed` times, and `count_flops` counts, as `bench pretrain` does for its compute). The
training loop's own batches (`training_batches`) and engine (`pretraining_engine`) are offered
here too, for timing the loop end to end. What a run works out from its config is its
`PretrainContext` (`resolve_pretraining`); the functions that train take both.
"""
from dataclasses import dataclass
from pathlib import Path

from bench_data.pretrain_items import PretrainImages
from bench_runtime.engine import read_checkpoint
from bench_runtime.errors import UserError
from bench_runtime.runfiles import CHECKPOINT
from .methods import PretextMethod
from .train import (PretrainConfig, PretrainContext, build, build_method, count_flops, fixed_batch_step,
                    load_run_config, pretraining_engine, resolve_pretraining, training_batches, training_images)

__all__ = ["Pretraining", "PretrainContext", "build_method", "build_pretraining", "count_flops", "fixed_batch_step",
           "load_run", "pretraining_engine", "resolve_pretraining", "training_batches", "training_images"]


@dataclass
class Pretraining:
    """A pretraining ready to train: its config, its context, its image files, the method and its dataset."""
    config: PretrainConfig
    context: PretrainContext
    paths: list[Path]
    method: PretextMethod
    dataset: PretrainImages


def build_pretraining(config, progress=True):
    """The pretraining `config` describes, as `bench pretrain` builds it (without measuring its
    compute): the config checked and its context resolved (device, load size, mask folder,
    classes, dataset statistics, the method's options), the method seeded by config.seed on the
    context's device with the speed options, and the dataset of its images (with the image cache
    when config.image_cache)."""
    paths = training_images(config)
    context = resolve_pretraining(config, paths)
    method, dataset = build(config, context, paths, progress)
    return Pretraining(config, context, paths, method, dataset)


def load_run(run_dir):
    """(config, method) of a `bench pretrain` run folder: the PretrainConfig its config.json records
    (also one written by an earlier version), and the method built from it with the trained weights
    of its checkpoint.pt, on the CPU, in eval mode."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise UserError(f"{run_dir}: not a `bench pretrain` run folder (no config.json)")
    config = load_run_config(run_dir)
    checkpoint = run_dir / CHECKPOINT
    if not checkpoint.is_file():
        raise UserError(f"{run_dir}: {CHECKPOINT} is missing (it holds the trained weights)")
    method = build_method(config)
    # Memory-mapped: only the network's tensors are read, not the optimiser state beside them.
    method.load_state_dict(read_checkpoint(checkpoint, mmap=True, hint="")["model"])
    return config, method.eval()
