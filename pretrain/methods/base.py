"""What a pretext method provides to the training engine, and a helper for writing one."""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bench_runtime.options import parse_options
from ..backbones import build_backbone


@dataclass
class NoOptions:
    """The options of a method that has none of its own."""


class PretextMethod(nn.Module):
    """One self-supervised pretext task built around a backbone.

    The base class builds what every method shares from the config: `self.config`, `self.options`
    (resolved), the encoder (`self.encoder`, a backbone of config.arch with config.encoder_norm,
    refused in one line where the arch cannot honour it), `encoder_arch` (what transfer loads it
    into), `input_mean` and `input_std` (the dataset's per-channel statistics, which transfer uses
    too), and the same statistics as (1, 3, 1, 1) buffers `mean` and `std` for methods that work on
    pixels. A subclass sets `name` and `description`, calls `super().__init__(config, dataset_mean,
    dataset_std)` and adds its head and loss. A method whose encoder lives inside a network of its own
    (the autoencoders, the masked autoencoder) defines `encoder` as a property of that network and
    builds the network from `self.new_encoder()`; the base class then leaves `self.encoder` to it.
    It provides:

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
    config.method_options holds their values. The base class resolves them once into `self.options`
    (`resolve_options`: checked, defaults filled in); the run records them in config.json and
    encoder.json.

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

    def __init__(self, config, dataset_mean, dataset_std):
        super().__init__()
        self.config, self.options = config, self.resolve_options(config)
        self.encoder_arch = config.arch
        self.input_mean, self.input_std = list(dataset_mean), list(dataset_std)
        self.register_buffer("mean", torch.tensor(self.input_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.input_std).view(1, 3, 1, 1), persistent=False)
        if not isinstance(getattr(type(self), "encoder", None), property):
            self.encoder = self.new_encoder()

    def new_encoder(self):
        """A freshly initialised backbone of config.arch (with config.encoder_norm)."""
        return build_backbone(self.config.arch, self.config.encoder_norm)

    def pixels(self, images):
        """Normalised `images` back to pixels in [0, 1]."""
        return (images.float() * self.std + self.mean).clamp(0, 1)

    def normalised(self, pixels):
        return (pixels - self.mean) / self.std

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
