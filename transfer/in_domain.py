"""In-domain evaluation of frozen features (`bench transfer --task probe`): how much an encoder's
features, unchanged, tell the classes of a class-folder root (ImageNet's layout, e.g.
imagenette: train/<class>/ -> val/<class>/).

No fine-tuning, so it needs no schedule and resolves what pretraining did to the features
themselves: kNN top-1 at the output (pool5 for AlexNet; --probe-protocol: this suite's sample, or
lightly's imagenette protocol on the whole splits) and a linear probe (logistic regression on
standardised features) at every layer, each map average-pooled to about 9k values (the 2016
protocol of Zhang et al.); the record also holds the share of units per layer that never fire.
The record's value is the linear top-1 at the output; its per_class field holds the linear
top-1 of each layer, conv1 .. pool5.
"""
import dataclasses
import time
from pathlib import Path

from bench_data.pixels import channel_stats
from bench_data.check import checked_class_folders
from pretrain.probe import ClassFolderProbe, class_balanced_sample, output_name
from bench_runtime.device import seed_everything
from bench_runtime.errors import UserError
from .config import probe_protocol
from .encoders import load_encoder
from .finetune import data_dependent_init
from .records import write_record
from .registry import CLASS_FOLDERS, Column, TransferTask, register

CALIBRATION_IMAGES = 64  # training images for the data-dependent inits, as the other tasks


def run_in_domain(config, context, run_dir, progress=True):
    started = time.perf_counter()
    if not config.data_root:
        raise UserError("--task probe needs --data-root, a class-folder root (train/<class>/, val/<class>/), "
                        "e.g. ../shared/data/imagenette")
    root = Path(config.data_root)
    seed_everything(config.seed)
    encoder, init_info = load_encoder(config.init)
    if init_info.get("input_mean") is not None:
        mean, std = init_info["input_mean"], init_info["input_std"]
    else:  # a random init: the training images' own statistics
        classes = checked_class_folders(root, (config.train_split, config.test_split))
        mean, std = channel_stats(class_balanced_sample(root / config.train_split, classes, 100,
                                                        bad_images=config.bad_images)[0])
    probe = ClassFolderProbe(root, context.image_size, mean, std, config.train_split, config.test_split,
                             config.bad_images, probe_protocol(config))
    train_images = probe.images[config.train_split]
    init_info = data_dependent_init(encoder, init_info, train_images[::max(1, len(train_images) // CALIBRATION_IMAGES)],
                                    config.rescale)
    scores = probe(encoder.to(context.device), context.device, linear=True)
    layers = [key.removeprefix("linear_top1_") for key in scores if key.startswith("linear_top1_")]
    return write_record(run_dir, config, context, init_info, "top-1", scores[f"linear_top1_{output_name(encoder)}"],
                        [scores[f"linear_top1_{layer}"] for layer in layers], layers, started, metrics=scores)


def with_probe_protocol(config):
    """`config` with the values of its --probe-protocol filled in where no option changed them, so
    that its config.json and record say what it ran with."""
    return dataclasses.replace(config, **dataclasses.asdict(probe_protocol(config)))


PROBE = register(TransferTask(
    "probe", "frozen features, kNN top-1 and a linear probe at every layer", run_in_domain, CLASS_FOLDERS,
    "train", "val", prepare=with_probe_protocol,
    columns=(Column("In-domain kNN", metric="probe_knn_top1"), Column("In-domain linear"))))
