"""What a pretext method provides to the training engine, and a helper for writing one."""
from dataclasses import dataclass

import torch.nn.functional as F
from torch import nn

from bench_runtime.options import parse_options


@dataclass
class NoOptions:
    """The options of a method that has none of its own."""


class PretextMethod(nn.Module):
    """One self-supervised pretext task built around a backbone.

    A subclass sets `name` and `description`, builds its networks in `__init__(config, dataset_mean,
    dataset_std)`, and provides:

    * `encoder`                 the module that transfer tasks load (saved as encoder.pt);
    * `encoder_arch`            what that module is ("alexnet" loads into torchvision's AlexNet features);
    * `input_mean`, `input_std` per-channel normalisation of its inputs (lists of 3 floats), which
                                transfer must use too;
    * `uses_masks`              class attribute: True if its batches carry a "hole" drawn by the data side
                                from --mask/--mask-dir;
    * `hole_band`               pixels by which central holes shrink on each side (default 0): the band
                                stays visible in the input and the method weights it in its loss, so
                                the data side draws holes with it (the context encoder's --overlap);
    * `uses_labels`             class attribute: True if it needs batch["label"]: the data root is then an
                                image folder with one sub-folder per class, listed in config.classes;
    * `configure_optimizers()`  -> {name: optimizer};
    * `train_step(batch, optimizers)` -> {metric: float}, with "loss" first; it runs backward and steps
                                (`take_step`), calling its sub-networks as attributes of `self`: under
                                torchrun the engine calls it on a copy whose trainable children are
                                wrapped in DistributedDataParallel (bench_runtime.engine.data_parallel_view);
    * `preview(batch)`          -> list of image batches (normalised) shown as rows of the preview grid.

    A method's own options are the fields of its `Options` dataclass, each declared with
    bench_runtime.options.option(default, help, choices): `bench pretrain --method NAME --help` lists them,
    they become flags of `bench pretrain`, presets give them beside the general options, and
    config.method_options holds their values. `__init__` resolves them once, as
    `self.options = self.resolve_options(config)` (checked, defaults filled in); the run records
    `self.options` in config.json and encoder.json.

    Default hyper-parameters live in the method: `configure_optimizers` uses `config.lr` when given
    and the method's own default otherwise. Random draws inside `train_step` should use torch's RNG:
    it is seeded from --seed and saved in checkpoints, so runs repeat and resume exactly.
    """

    name = ""
    description = ""
    uses_masks = False
    uses_labels = False
    hole_band = 0
    Options = NoOptions
    options = NoOptions()  # a method without options of its own may leave it

    @classmethod
    def resolve_options(cls, config):
        """An `Options` from config.method_options, checked (unknown names, choices). A method whose
        defaults depend on the rest of the config fills them in here, so config.json records them."""
        return parse_options(cls.Options, config.method_options, f"--method {cls.name}")

    def label_details(self, config):
        """What the table's row name shows in brackets after the method name ("" for nothing)."""
        return config.mask if self.uses_masks else ""


def classification_metrics(logits, labels):
    """(softmax cross-entropy, accuracy) of class `logits` against integer `labels`."""
    return F.cross_entropy(logits, labels), (logits.argmax(1) == labels).float().mean()
