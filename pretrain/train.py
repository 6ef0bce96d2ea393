"""The pretraining loop: one function from a config to a run folder.

A run folder holds
  config.json       the configuration with what the run worked out written in (PretrainContext.recorded),
                    and the environment it ran in
  metrics.jsonl     one JSON line per step (and one per probe, with probe_knn_map)
  loss.png          the loss curves; probe.png, the probe's mAP against steps (with --probe-data)
  checkpoint.pt     everything needed to --resume
  encoder.pt        the transferable encoder's state_dict (plain, torchvision key names for AlexNet)
  encoder.json      what transfer needs to use it: arch, input size and normalisation, pretraining time
                    and compute (training FLOPs)
  previews/         PNG grids (rows: masked input / prediction / original), and preview.png, the latest
  tensorboard/      TensorBoard event files: the metrics, learning rates and preview grids
"""
import dataclasses
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode
from torchvision.utils import make_grid, save_image

from bench_data import images
from bench_data.imagecache import ImageCache
from bench_data.masks import MASK_KINDS, MaskSampler
from bench_data.pixels import BAD_IMAGE_POLICIES, BAD_IMAGES_HELP, channel_stats, readable_only
from bench_data.pretrain_items import AUGMENT_ON, PretrainImages
from bench_data.sampling import epoch_batches
from bench_data.toy_voc import data_root_or_toy
from bench_runtime import distributed, formats, speedups
from bench_runtime.device import DeviceOptions, check_scaling_options, seed_everything, seed_value, start_process
from bench_runtime.engine import Engine, check_training_options, prepare_model
from bench_runtime.errors import UserError
from bench_runtime.identity import data_name, identity
from bench_runtime.options import flag, option, positive
from bench_runtime.progress import info, warning
from bench_runtime.readers import read_json
from bench_runtime.runfiles import (check_new_run_dir, check_resumable, create_run_dir, environment_info, has_interrupted_run,
                              replace_run_dir, run_lock, save_json, save_torch, staging_dir)
from .backbones import ENCODER_NORMS, label_with_arch, plain_encoder
from .curves import plot_curves
from .methods import get_method, method_names
from .probe import DEAD_WARNING, check_probe_data, make_probe, output_name

PREVIEW_IMAGES = 8


@dataclass(frozen=True)
class PretrainConfig(DeviceOptions):
    """learn an encoder without labels

    Train a pretext method and write a run folder: config.json, metrics.jsonl, checkpoint.pt,
    encoder.pt + encoder.json (for `bench transfer`) and preview PNGs. With no options: the context
    encoder on the built-in toy data (quick preset).

    Everything a pretraining run depends on: each field with help text is a `bench pretrain` flag,
    and the method's own options are in method_options (see PretextMethod.Options)."""
    method: str = option("context-encoder", "pretext method (`bench methods` lists them)", choices=method_names)
    arch: str = option("alexnet", "backbone: alexnet (the paper's feature-learning network, any size >= 63 px) or "
                       "timm:<model name> (e.g. timm:resnet18); context-encoder also takes inpaint (the 128 px "
                       "inpainting network with a 4000-d bottleneck)")
    encoder_norm: str = option("none", "batch: BatchNorm after each AlexNet convolution while pretraining, folded "
                               "into the convolutions when encoder.pt is written (it stays a plain AlexNet)",
                               choices=ENCODER_NORMS)
    mask: str = option("random-region", "hole strategy of methods with holes", choices=MASK_KINDS)
    data_root: str = option("", "a VOC root (VOCdevkit parent, VOCdevkit or VOC<year>) or any folder of images; "
                            "default: the built-in toy VOC set")
    split: str = option("train", "image set of a VOC root")
    year: str | None = option(None, "VOC year folder (default: the newest present)")
    mask_dir: str | None = option(None, "folder of VOC segmentation PNGs for random-region shapes "
                                  "(default: the data root's SegmentationClass)")
    image_size: int = option(96, "square crop side fed to the network (paper: 227 alexnet, 128 inpaint)")
    load_size: int | None = option(None, "images are rescaled to this shorter side before the random crop "
                                   "(default: 1.15 x image size; the paper's inpainting used 350)")
    batch_size: int = option(32, "images per step (split between processes under torchrun)")
    lr: float | None = option(None, "learning rate (default: the method's own; the context encoder's Adam: "
                              "1e-3 central / 1e-4 other masks for alexnet, 2e-3 for inpaint)")
    steps: int = option(300, "training iterations")
    budget_pflops: float | None = option(None, "train for this many PFLOP (10^15 FLOPs, a multiply-add counting 2) "
                                         "instead of --steps: steps = floor(budget / the FLOPs of one training "
                                         "step of the method, forward and backward, counted by torch's "
                                         "FlopCounterMode before training), so that methods compare at equal "
                                         "compute", check=positive)
    warmup_steps: int = option(0, "learning rate rises linearly from lr / N to lr over the first N steps (0: none)")
    learning: bool = option(True, "update the weights; --no-learning is the control run: the same pipeline "
                            "(steps, batches, holes, BatchNorm statistics gathered and folded) with no weight "
                            "update, so its encoder is the method's init after that data-dependent rescaling; "
                            "`bench table` subtracts it from the learned run of the same settings")
    label: str | None = option(None, "row name in `bench table` (default: the method and what sets it apart)")
    seed: int = option(0, "seed of weights, batches, holes and dropout", check=seed_value)
    bad_images: str = option("fail", BAD_IMAGES_HELP, choices=BAD_IMAGE_POLICIES)
    augment_on: str = option("loader", "where crops are flipped and normalised and holes drawn: loader (per image "
                             "in the DataLoader workers, the reference) or device (a batch at a time on the "
                             "training device, same rules, other random numbers; the workers only slice crops)",
                             choices=AUGMENT_ON)
    image_cache: bool = option(True, "decode and resize every image once into the uint8 memory-mapped cache "
                               "under the cache folder ($BENCH_CACHE_DIR/images)")
    probe_data: str | None = option(None, "labelled images: a VOC root (kNN mAP) or a class-folder root "
                                    "<split>/<class>/<image> such as imagenette (kNN top-1); every --probe-every "
                                    "steps (and at step 0) the encoder's frozen pool5 features are scored by kNN on "
                                    "its --probe-splits, and the share of units per layer that never fire is "
                                    "logged (metrics.jsonl, probe.png)")
    probe_every: int = option(100, "steps between probes")
    probe_splits: list[str] = option(["train", "val"], "image sets of --probe-data: kNN neighbours, scored images",
                                     nargs=2, metavar=("TRAIN", "TEST"))
    preview_every: int = option(100, "write a preview grid every N steps")
    checkpoint_every: int = option(100, "write checkpoint.pt every N steps")
    method_options: dict = field(default_factory=dict)  # the fields of the method's Options
    # Worked out by the run (PretrainContext) and recorded in its config.json: None in a config a
    # user gives. Given (a run folder's config, or a caller that knows the images' statistics),
    # the run takes them as they are.
    classes: list | None = None  # class names of labelled data, for methods that use labels
    dataset_mean: list | None = None
    dataset_std: list | None = None
    flops_per_step: float | None = None  # measured before training (measure_compute); None in runs from before

    def input_paths(self):
        """(option, path) of what the run reads: its run folder must lie apart from them."""
        return [("--data-root", self.data_root), ("--probe-data", self.probe_data), ("--mask-dir", self.mask_dir)]


@dataclass(frozen=True)
class PretrainContext:
    """What a run works out from its PretrainConfig before it trains, once (resolve_pretraining,
    then measure_compute); the code that trains reads these here and the options in the config.
    A value the config gives (a run folder's recorded config gives them all) is taken as given."""
    device: str  # this process's: --device resolved ("auto": cuda if there is a GPU), cuda:LOCAL_RANK under torchrun
    world_size: int  # the processes taking part (torchrun's)
    load_size: int  # --load-size, else 1.15 x the image size
    mask_dir: str | None  # --mask-dir, else for random-region holes the data root's SegmentationClass if any
    classes: list | None  # class names of labelled data, for methods that use labels
    dataset_mean: list  # per-channel statistics of the training images
    dataset_std: list
    method_options: dict  # the method's Options as it resolves them (its defaults filled in)
    flops_per_step: float | None  # one training step's FLOPs (measure_compute); None in runs from before
    steps: int  # the steps it trains: --steps, or what --budget-pflops buys (measure_compute)

    def recorded(self, config):
        """`config` with this context written in: the run's config as config.json records it (so
        an earlier run loads, resumes and keeps its identity), and what its method is built from."""
        return dataclasses.replace(config, device=self.device, load_size=self.load_size, mask_dir=self.mask_dir,
                                   classes=self.classes, dataset_mean=self.dataset_mean, dataset_std=self.dataset_std,
                                   method_options=self.method_options, flops_per_step=self.flops_per_step,
                                   steps=self.steps)


def pretrain_run_name(config):
    """The default run folder: runs/<method>-<arch>[-<mask>]-<size>px-seed<seed>."""
    mask = f"-{config.mask}" if get_method(config.method).uses_masks else ""
    return f"runs/{config.method}-{config.arch}{mask}-{config.image_size}px-seed{config.seed}"


def check_pretrain_options(config):
    """A one-line error for a number of `config` out of its range, or options that do not go together."""
    check_training_options(config, ("--preview-every", config.preview_every, config.preview_every >= 1, "at least 1"),
                           ("--probe-every", config.probe_every, config.probe_every >= 1, "at least 1"),
                           ("--warmup-steps", config.warmup_steps, config.warmup_steps >= 0, "0 or more"))
    if config.arch == "inpaint" and config.encoder_norm != "none":
        # The inpainting network has BatchNorm of its own: the option would change nothing.
        raise UserError(f"--encoder-norm {config.encoder_norm} applies to --arch alexnet, not --arch inpaint")


def check_steps_or_budget(given, where="bench pretrain"):
    """A one-line error when `given` ({option: value}, as the command line or a preset gives them)
    sets both the steps and the budget: the budget sets the steps."""
    if given.get("steps") is not None and given.get("budget_pflops") is not None:
        raise UserError(f"{where}: give --steps or --budget-pflops, not both (the budget sets the steps)")


def resolve_pretraining(config, paths):
    """The context of a run of `config` on the images `paths` (training_images; [] for steps on
    synthetic batches, the statistics given), its options checked: this process started on its
    device (the one place a pretraining resolves it), and what the config leaves to the run worked
    out, the images read only for that. The compute is measured after this (measure_compute)."""
    check_pretrain_options(config)
    if config.probe_data is not None:
        check_probe_data(config.probe_data, config.probe_splits)
    if paths and len(paths) < config.batch_size:  # before the compute is measured: a refused run costs nothing
        raise UserError(f"only {len(paths)} images in {config.data_root} ({config.split}) for a batch "
                        f"of {config.batch_size}; lower --batch-size")
    method = get_method(config.method)
    mask_dir = config.mask_dir
    if mask_dir is None and method.uses_masks and config.mask == "random-region":
        mask_dir = _voc_shapes(config)
    classes = config.classes
    if classes is None and method.uses_labels:
        classes = images.image_labels(paths, config.data_root, config.split, config.year)[1]
    mean, std = (config.dataset_mean, config.dataset_std) if config.dataset_mean is not None else channel_stats(paths)
    device = start_process(config.device)
    check_scaling_options(config, device)
    return PretrainContext(
        device=device, world_size=distributed.world_size(),
        load_size=round(config.image_size * 1.15) if config.load_size is None else config.load_size,
        mask_dir=mask_dir, classes=classes, dataset_mean=mean, dataset_std=std,
        method_options=dataclasses.asdict(method.resolve_options(config)), flops_per_step=config.flops_per_step,
        steps=config.steps)


def _voc_shapes(config):
    """The SegmentationClass folder of `config`'s VOC root (None when it has none): random-region
    shapes from other images of the same root, whose image never matches the hole."""
    if not images.is_voc_root(config.data_root):
        return None
    folder = images.find_voc_dir(config.data_root, config.year) / "SegmentationClass"
    return str(folder) if folder.is_dir() else None


def training_images(config):
    return readable_only(images.list_images(config.data_root, config.split, config.year), config.bad_images,
                         f"{config.data_root} ({config.split})")


def training_batches(dataset, config, context, start_step):
    """This process's share of each global batch (all of it on one process), on the device."""
    device = context.device
    channels_last = speedups.use_channels_last(device)
    for batch in epoch_batches(dataset, config.batch_size, config.seed, start_step, config.workers, device):
        batch = dataset.finish_batch({key: value.to(device, non_blocking=True) for key, value in batch.items()})
        yield {key: speedups.to_device(value, device, channels_last) for key, value in batch.items()}


def _save_preview(method, dataset, preview_batch, engine, run_dir, step):
    """The preview grid at `step`: previews/step_<step>.png, preview.png and TensorBoard's "preview"."""
    was_training = method.training
    method.eval()
    rows = method.preview(preview_batch)
    method.train(was_training)
    grid = make_grid(torch.cat([dataset.denormalize(row.cpu()) for row in rows]), nrow=len(rows[0]), padding=2)
    path = run_dir / "previews" / f"step_{step:06d}.png"
    path.parent.mkdir(exist_ok=True)
    save_image(grid, path)
    save_image(grid, run_dir / "preview.png")
    engine.log_image("preview", grid, step)


def pretrain(config, out, overwrite=False, progress=True):
    """Train `config.method` into a new run folder `out` and return it.

    Under torchrun every process calls this; the main one alone writes the run folder, holding
    its lock (bench_runtime.runfiles.run_lock) from the first check to the encoder. With `overwrite`, an
    existing run in `out` (only a folder bench wrote: bench_runtime.runfiles.output_kind) is kept until
    the new one is complete: the new run is written into a staging folder beside it
    (bench_runtime.runfiles.staging_dir) that replaces `out` at the end, and a run killed there continues
    with resume_pretraining(out)."""
    inputs = config.input_paths()
    check_new_run_dir(out, overwrite, inputs)  # before any work: a refused run costs nothing
    with run_lock(out):
        out = check_new_run_dir(out, overwrite, inputs)  # again: a run that held the lock may have finished it
        replacing = out.exists() and any(out.iterdir())
        run_dir = staging_dir(out) if replacing else out
        paths = training_images(config)
        context = measure_compute(config, resolve_pretraining(config, paths))
        method, dataset = build(config, context, paths, progress)
        distributed.barrier()  # every process has checked `out` before the main one writes
        if distributed.is_main():
            create_run_dir(run_dir, "pretrain-run")
            recorded = context.recorded(config)
            settings = pretraining_settings(recorded, method, len(paths))
            save_json(formats.stamped("config", {
                "config": dataclasses.asdict(recorded), "identity": identity(settings), "identity_settings": settings,
                "training_flops": training_flops(context, context.steps), "images": len(paths),
                "processes": context.world_size, "environment": environment_info()}),
                run_dir / "config.json")
        distributed.barrier()
        try:
            _train(config, context, method, dataset, run_dir, progress=progress)
        except BaseException:
            # A failed replacement leaves the old run as it was; a checkpoint stays for --resume.
            if replacing and distributed.is_main() and not has_interrupted_run(out):
                shutil.rmtree(run_dir, ignore_errors=True)
            raise
        return _put_in_place(run_dir, out)


def resume_pretraining(out, given=None, progress=True):
    """Continue the run in `out` from its checkpoint, with the options `given` on the command line
    (see resumed_config), or, when an --overwrite run of `out` was killed, that run in its staging
    folder, which then replaces `out`. The number of processes may differ from the interrupted
    run's: the batches are the same."""
    run_dir = staging_dir(out) if has_interrupted_run(out) else Path(out)
    check_resumable(run_dir)
    with run_lock(out):
        config = resumed_config(load_run_config(check_resumable(run_dir)), given or {}, out)
        paths = training_images(config)
        context = resolve_pretraining(config, paths)  # the recorded config gives all but the device
        method, dataset = build(config, context, paths, progress)
        _train(config, context, method, dataset, run_dir, progress)
        return _put_in_place(run_dir, Path(out))


# What a resumed run may change: neither its model nor its batches depend on them.
RESUMABLE_CHANGES = ("steps", "device", "workers", "image_cache")


def resumed_config(saved, given, out):
    """The `saved` config of the run in `out` with the options `given` on the command line ({name:
    value}, the method's own included) that a resumed run may change (RESUMABLE_CHANGES); a
    one-line error listing the others given that differ from the saved run's, which its checkpoint
    cannot continue."""
    check_steps_or_budget({**given, "budget_pflops": saved.budget_pflops}, f"--resume {out}")
    settings = {**dataclasses.asdict(saved), **saved.method_options}
    differ = sorted(name for name, value in given.items()
                    if name not in RESUMABLE_CHANGES and settings.get(name) != value)
    if differ:
        raise UserError(f"--resume {out}: the run was saved with "
                        + ", ".join(f"{name.replace('_', '-')} {settings.get(name)}" for name in differ)
                        + "; these options differ: " + ", ".join(f"{flag(name)} {given[name]}" for name in differ))
    return dataclasses.replace(saved, **{name: given[name] for name in RESUMABLE_CHANGES if name in given})


def _put_in_place(run_dir, out):
    """Rename a finished staging folder over `out` (main process); `out`."""
    if run_dir != out and distributed.is_main():
        replace_run_dir(run_dir, out)
    distributed.barrier()
    return out


# Context-encoder options that were general PretrainConfig fields before methods had options.
EARLIER_GENERAL_FIELDS = ("loss", "overlap", "overlap_weight", "adv_weight", "optimizer")


def load_run_config(run_dir):
    """The PretrainConfig a run folder's config.json records (older formats upgraded)."""
    path = Path(run_dir) / "config.json"
    content = read_json(path, hint="; the run cannot be resumed")
    saved = content.get("config")
    if not isinstance(saved, dict) or not isinstance(saved.get("method"), str):
        raise UserError(f"{path}: has no run configuration (a 'config' object naming its method); "
                        f"the run cannot be resumed")
    saved = formats.upgrade("config", content, path, {1: _config_from_version_1})["config"]
    known = {f.name for f in dataclasses.fields(PretrainConfig)}
    unknown = sorted(set(saved) - known)
    if unknown:
        raise UserError(f"{path}: unknown settings {', '.join(unknown)}; the run cannot be resumed")
    return PretrainConfig(**saved)


def _config_from_version_1(content):
    """A config.json from before versions in the version-2 layout: the probe's two split options
    as one, the context encoder's earlier general options among its own, and no identity (it is
    worked out again where it is needed). A setting added since takes its default."""
    saved = dict(content["config"])
    if "probe_train_split" in saved:
        saved["probe_splits"] = [saved.pop("probe_train_split"), saved.pop("probe_test_split")]
    earlier = {name: saved.pop(name) for name in EARLIER_GENERAL_FIELDS if name in saved}
    own = {f.name for f in dataclasses.fields(get_method(saved["method"]).Options)}
    saved["method_options"] = {**{k: v for k, v in earlier.items() if k in own}, **saved.get("method_options", {})}
    return {**content, "config": saved}


# Settings that cannot change what a run learns, left out of its identity: its seed (runs that
# differ only there are repeats), where and how often it writes and shows things, how its batches
# are loaded (the batches are the same), the device and compilation (float rounding, far below seed
# noise; config.json's environment records them), the probe (it reads the encoder, changes
# nothing), its table label, the data's paths (named by data_name instead), and the measured FLOPs
# of a step (the settings decide them; the steps they give under a budget are in the identity).
NOT_IDENTITY = {"seed", "workers", "checkpoint_every", "preview_every", "image_cache", "device", "compile",
                "probe_data", "probe_every", "probe_splits", "label", "bad_images", "data_root", "mask_dir",
                "method_options", "flops_per_step"}


def pretraining_settings(config, method, images):
    """What decides a pretraining run's numbers, flat (the method's options beside the general
    ones): the input of its identity, and what row names show to tell runs apart."""
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in NOT_IDENTITY}
    settings.update(config.method_options)
    if not method.uses_masks:
        settings.pop("mask")
    if config.budget_pflops is None:  # runs without a budget keep the identity they had before budgets
        settings.pop("budget_pflops")
    settings.update(data=data_name(config.data_root), images=images,
                    **({"mask_dir": data_name(config.mask_dir)} if method.uses_masks else {}))
    return settings


def saved_run_settings(run_dir):
    """The identity settings of the run in `run_dir`, from its config.json (a run from before
    identities: worked out from the settings it saved)."""
    content = read_json(Path(run_dir) / "config.json")
    if "identity_settings" in content:
        return content["identity_settings"]
    config = load_run_config(run_dir)
    method = get_method(config.method)
    config = dataclasses.replace(config, method_options=dataclasses.asdict(method.resolve_options(config)))
    return pretraining_settings(config, method, content.get("images"))


def control_settings(settings):
    """The settings of the no-learning control of a run with `settings`."""
    return {**settings, "learning": False}


def build_method(config):
    """The method a run's config names (with its statistics: context.recorded, or a run folder's
    load_run_config), freshly initialised on the CPU. The methods read their classes and options
    from the config they are given."""
    return get_method(config.method)(config, config.dataset_mean, config.dataset_std)


def build(config, context, paths, progress=True):
    """The method (seeded by config.seed, on the context's device, with the speed options applied)
    and its dataset of `paths`."""
    seed_everything(config.seed)
    method = prepare_model(build_method(context.recorded(config)), context.device, config.compile, config.sync_bn)
    labels = None
    if method.uses_labels:
        labels, classes = images.image_labels(paths, config.data_root, config.split, config.year)
        if classes != context.classes:
            raise UserError(f"the class folders of {config.data_root} changed since the run started")
    # Holes are a data-side transform: per item in the loader's workers, or per batch on the device.
    holes = hole_sampler(config, context, method)
    dataset = PretrainImages(paths, config.image_size, context.load_size, method.input_mean,
                             method.input_std, holes, config.seed, labels, augment_on=config.augment_on)
    if config.image_cache:
        with distributed.main_first(local=True):  # one process per machine builds it, the others read it
            dataset.cache = ImageCache(paths, context.load_size, progress=progress and distributed.is_local_main())
    return method, dataset


def hole_sampler(config, context, method):
    """The MaskSampler of `method`'s holes (None for a method without holes)."""
    if not method.uses_masks:
        return None
    if config.mask == "random-region" and context.mask_dir is None:
        raise UserError("--mask random-region needs --mask-dir, a folder of VOC segmentation PNGs "
                        "(or use --mask noise)")
    return MaskSampler.from_folder(config.mask, config.image_size, method.hole_band, context.mask_dir)


def pretraining_engine(method, config, context, run_dir, progress=True):
    """(the engine that trains `method` in run_dir, resuming from its checkpoint when there is one;
    the step it runs: the method's own train_step with the method's optimisers)."""
    optimizers = method.configure_optimizers()
    if not config.learning:  # every optimiser scales its step by lr: at 0 no weight moves, all else runs
        for optimizer in optimizers.values():
            for group in optimizer.param_groups:
                group["lr"] = 0.0
    schedules = {name: torch.optim.lr_scheduler.LinearLR(optimizer, 1 / config.warmup_steps, 1, config.warmup_steps)
                 for name, optimizer in optimizers.items()} if config.warmup_steps else {}
    engine = Engine(method, optimizers, run_dir, steps=context.steps, batch_size=config.batch_size, seed=config.seed,
                    device=context.device, precision=config.precision, checkpoint_every=config.checkpoint_every,
                    schedules=schedules, desc=f"pretraining {config.method}", progress=progress)
    return engine, lambda trained, batch: trained.train_step(batch, optimizers)


def fixed_batch_step(method, config, context, hole=None, seed=0, memory_format=None):
    """A function of no arguments that runs one training step of `method` (in training mode, with its
    optimisers and config.precision, as the training loop steps it) on the same batch every time,
    and returns the step's metrics.

    The batch: config.batch_size images of config.image_size px drawn from a normal distribution by
    a generator seeded with `seed` (the same seed gives the same images), and for a method with
    holes, `hole` (an (S, S) array, 1 where pixels are dropped) in every image, for one with labels,
    labels of context.classes drawn by the same generator; on context.device in `memory_format`
    (default: the layout training uses there)."""
    if method.uses_masks and hole is None:
        raise ValueError(f"{config.method} trains on holes: a fixed batch needs its `hole`")
    device = context.device
    if memory_format is None:
        memory_format = torch.channels_last if speedups.use_channels_last(device) else torch.contiguous_format
    side, generator = config.image_size, torch.Generator().manual_seed(seed)
    batch = {"image": torch.randn(config.batch_size, 3, side, side, generator=generator)}
    if method.uses_masks:
        batch["hole"] = torch.as_tensor(hole).float().expand(config.batch_size, 1, side, side)
    batch = {key: value.to(device).contiguous(memory_format=memory_format) for key, value in batch.items()}
    if method.uses_labels:
        batch["label"] = torch.randint(len(context.classes), (config.batch_size,), generator=generator).to(device)
    method.train()
    engine, train_step = pretraining_engine(method, config, context, None, progress=False)
    return lambda: engine.train_one_step(train_step, method, batch)


def count_flops(step):
    """The FLOPs of one call of `step()` (a training step: forward and backward), as torch's
    FlopCounterMode counts them (convolutions and matmuls, a multiply-add counting 2)."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def measure_compute(config, context):
    """`context` with flops_per_step: one training step of a freshly built copy of the method on
    its device, counted (the weights and random streams of the run are untouched: build seeds them
    afresh); and with --budget-pflops, the steps the budget buys."""
    # Uncompiled: the counter sees every operation.
    method = prepare_model(build_method(context.recorded(config)), context.device)
    sampler = hole_sampler(config, context, method)
    hole = None if sampler is None else sampler(np.random.default_rng(0))
    flops = float(count_flops(fixed_batch_step(method, config, context, hole)))
    steps = config.steps
    if config.budget_pflops is not None:
        steps = math.floor(config.budget_pflops * 1e15 / flops)
        if steps < 1:
            raise UserError(f"--budget-pflops {config.budget_pflops:g} buys no training step: one step of "
                            f"{config.method} costs {flops / 1e15:.3g} PFLOP")
        info(f"budget {config.budget_pflops:g} PFLOP: {steps} steps of {flops / 1e9:.3g} GFLOP")
    return dataclasses.replace(context, flops_per_step=flops, steps=steps)


def training_flops(context, steps):
    """The FLOPs of `steps` training steps of a run (None for a run from before they were counted)."""
    return None if context.flops_per_step is None else steps * context.flops_per_step


def _train(config, context, method, dataset, run_dir, progress=True):
    """Train through the engine (which resumes from run_dir's checkpoint when there is one), with
    previews, probes and the loss curves from the main process, then write the encoder."""
    main = distributed.is_main()
    engine, train_step = pretraining_engine(method, config, context, run_dir, progress)
    preview_batch = _preview_batch(dataset, context.device) if main else None
    probe = make_probe(config.probe_data, config.image_size, method.input_mean, method.input_std,
                       config.probe_splits, config.bad_images) if main and config.probe_data else None
    warned = False

    def after_step(step, metrics):
        if metrics is not None and (step % config.preview_every == 0 or step == context.steps):
            _save_preview(method, dataset, preview_batch, engine, run_dir, step)
        # The probe curve starts at the initialisation (the call before the first step).
        nonlocal warned
        if probe is not None and (step % config.probe_every == 0 or step == context.steps):
            scores = probe(method.encoder, context.device)
            engine.log({"step": step, **scores, "elapsed_s": round(engine.elapsed, 3)}, section="probe")
            plot_curves(run_dir)
            output = output_name(method.encoder)
            dead = scores[f"dead_{output}"]
            info(f"step {step}: probe {probe.score_key.removeprefix('probe_')} {100 * scores[probe.score_key]:.1f}%, "
                 f"{100 * dead:.1f}% of {output} never fires")
            if dead > DEAD_WARNING and not warned:
                warned = True
                warning(f"step {step}: {100 * dead:.0f}% of {output} never fires on the probe images (over "
                        f"{100 * DEAD_WARNING:.0f}%): pretraining is killing units; see probe.png")

    engine.run(train_step, lambda start: training_batches(dataset, config, context, start), after_step)
    if main:
        plot_curves(run_dir)
        _save_encoder(method, config, context, run_dir, engine, len(dataset))
    distributed.barrier()  # the run folder is complete for every process (a suite transfers it next)
    return run_dir


def _preview_batch(dataset, device):
    """A fixed batch (keys from an epoch no training step reaches) shows progress on the same holes."""
    preview_keys = [(2**31 - 1, i % len(dataset)) for i in range(PREVIEW_IMAGES)]
    preview_items = [dataset[k] for k in preview_keys]
    return dataset.finish_batch({key: torch.stack([item[key] for item in preview_items]).to(device)
                                 for key in preview_items[0]})


def pretraining_label(config, method):
    """A table row's name: the method, what it shows in brackets (e.g. its holes), its backbone."""
    details = ", ".join(filter(None, [method.label_details(config), "" if config.learning else "no learning"]))
    return label_with_arch(f"{config.method} ({details})" if details else config.method, method.encoder_arch)


def _save_encoder(method, config, context, run_dir, engine, images):
    state = {key: value.detach().cpu() for key, value in plain_encoder(method.encoder).state_dict().items()}
    save_torch(state, run_dir / "encoder.pt")
    loss_terms = {"mask": config.mask} if method.uses_masks else {}
    settings = pretraining_settings(context.recorded(config), method, images)
    save_json(formats.stamped("encoder", {
        "method": config.method, "label": config.label or pretraining_label(config, method),
        "arch": method.encoder_arch, "image_size": config.image_size, **loss_terms,
        "method_options": context.method_options, "input_mean": method.input_mean, "input_std": method.input_std,
        "steps": engine.step, "pretrain_seconds": round(engine.elapsed, 1), "flops_per_step": context.flops_per_step,
        "pretrain_flops": training_flops(context, engine.step), "budget_pflops": config.budget_pflops,
        "seed": config.seed,
        "data_root": config.data_root, "split": config.split, "identity": identity(settings),
        "control_identity": identity(control_settings(settings)), "settings": settings}),
        run_dir / "encoder.json")


def run_pretraining(config, folder, progress=True, given=None):
    """`bench pretrain`: a new run of `config` in folder.out (default: pretrain_run_name), or with
    folder.resume the interrupted one continued with the options `given` on the command line
    ({name: value}; see resumed_config). Returns the run folder."""
    out = folder.check().out or pretrain_run_name(config)
    if folder.resume:
        run_dir = resume_pretraining(out, given, progress)
    else:
        check_steps_or_budget(given or {})
        config = dataclasses.replace(config, data_root=data_root_or_toy(config.data_root))
        run_dir = pretrain(config, out, folder.overwrite, progress)
    if distributed.is_main():
        print(f"run folder: {run_dir}  (encoder: {run_dir / 'encoder.pt'}, preview: {run_dir / 'preview.png'})")
    return run_dir
