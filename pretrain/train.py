"""The pretraining loop: one function from a config to a run folder.

A run folder holds
  config.json       the resolved configuration (and the environment it ran in)
  metrics.jsonl     one JSON line per step (and one per probe, with probe_knn_map)
  loss.png          the loss curves; probe.png, the probe's mAP against steps (with --probe-data)
  checkpoint.pt     everything needed to --resume
  encoder.pt        the transferable encoder's state_dict (plain, torchvision key names for AlexNet)
  encoder.json      what transfer needs to use it: arch, input size and normalisation, pretraining time
  previews/         PNG grids (rows: masked input / prediction / original), and preview.png, the latest
"""
import contextlib
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision.utils import save_image
from tqdm import tqdm

from data import images
from data.imagecache import ImageCache
from data.pixels import channel_stats, readable_only
from data.pretrain_items import PretrainImages
from data.sampling import EpochOrder
from runtime import distributed, speedups
from runtime.errors import UserError
from runtime.runfiles import (
    CHECKPOINT,
    check_new_run_dir,
    check_resumable,
    create_run_dir,
    environment_info,
    save_json,
    save_torch,
)
from .backbones import label_with_arch
from .curves import plot_curves
from .methods import get_method
from .methods.context_encoder import default_overlap
from .probe import KNNProbe

PREVIEW_IMAGES = 8


@dataclass
class PretrainConfig:
    method: str = "context-encoder"
    arch: str = "alexnet"
    mask: str = "random-region"
    loss: str = "l2"
    data_root: str = ""
    split: str = "train"
    year: str | None = None
    mask_dir: str | None = None
    image_size: int = 96
    load_size: int | None = None
    batch_size: int = 32
    lr: float | None = None
    steps: int = 300
    seed: int = 0
    device: str = "auto"
    workers: int = 1
    # Band around the hole predicted too, at overlap_weight x. None: 0 for the feature networks
    # (the paper's Eq. 1, L2 over the dropped pixels only), 4 for --arch inpaint (released code).
    overlap: int | None = None
    overlap_weight: float = 10.0
    adv_weight: float = 0.001
    optimizer: str = "adam"     # the context encoder's generator: adam, or sgd with momentum 0.9
    preview_every: int = 100
    checkpoint_every: int = 100
    bad_images: str = "fail"
    classes: list | None = None  # class names of labelled data, for methods that use labels
    dataset_mean: list | None = None
    dataset_std: list | None = None
    precision: str = "fp32"     # fp32 | bf16 | fp16 (autocast; see pretrain.speedups)
    compile: bool = False       # torch.compile the networks
    sync_bn: bool = False       # SyncBatchNorm across processes under torchrun (CUDA)
    image_cache: bool = True    # decode and resize each image once into a uint8 memory-mapped cache
    probe_data: str | None = None   # labelled VOC root: kNN probe of the encoder (see pretrain.probe)
    probe_every: int = 100          # steps between probes (and step 0 and the last step)
    probe_train_split: str = "train"
    probe_test_split: str = "val"


def resolve_config(config):
    """Validate `config` and fill in what depends on the data: default load size, mask folder,
    dataset statistics. Returns (resolved config, image paths)."""
    config = dataclasses.replace(config)
    for name, value, ok, rule in [
            ("--steps", config.steps, config.steps >= 1, "at least 1"),
            ("--batch-size", config.batch_size, config.batch_size >= 1, "at least 1"),
            ("--image-size", config.image_size, config.image_size >= 1, "at least 1"),
            ("--workers", config.workers, config.workers >= 0, "0 or more"),
            ("--lr", config.lr, config.lr is None or config.lr > 0, "positive"),
            ("--overlap", config.overlap, config.overlap is None or config.overlap >= 0, "0 or more"),
            ("--overlap-weight", config.overlap_weight, config.overlap_weight >= 0, "0 or more"),
            ("--adv-weight", config.adv_weight, 0 <= config.adv_weight <= 1, "in [0, 1]"),
            ("--preview-every", config.preview_every, config.preview_every >= 1, "at least 1"),
            ("--checkpoint-every", config.checkpoint_every, config.checkpoint_every >= 1, "at least 1"),
            ("--probe-every", config.probe_every, config.probe_every >= 1, "at least 1")]:
        if not ok:
            raise UserError(f"{name} must be {rule}, got {value}")
    if config.probe_data is not None and not images.is_voc_root(config.probe_data):
        raise UserError(f"--probe-data {config.probe_data} is not a VOC root (it needs ImageSets/Main labels)")
    paths = training_images(config)
    if len(paths) < config.batch_size:
        raise UserError(f"only {len(paths)} images in {config.data_root} ({config.split}) for a batch "
                        f"of {config.batch_size}; lower --batch-size")
    if config.load_size is None:
        config.load_size = round(config.image_size * 1.15)
    if config.overlap is None:
        config.overlap = default_overlap(config.arch)  # recorded as used, in config.json and encoder.json
    needs_shapes = get_method(config.method).uses_masks and config.mask == "random-region"
    if needs_shapes and config.mask_dir is None:
        # Shapes from other images of the same VOC root; their image never matches the hole.
        candidate = images.find_voc_dir(config.data_root, config.year) / "SegmentationClass" \
            if images.is_voc_root(config.data_root) else None
        if candidate is None or not candidate.is_dir():
            raise UserError("--mask random-region needs --mask-dir, a folder of VOC segmentation PNGs "
                            "(or use --mask noise)")
        config.mask_dir = str(candidate)
    if get_method(config.method).uses_labels and config.classes is None:
        config.classes = images.image_labels(paths, config.data_root, config.split, config.year)[1]
    config.device = resolve_device(config.device)
    check_scaling_options(config)
    if config.dataset_mean is None:
        config.dataset_mean, config.dataset_std = channel_stats(paths)
    return config, paths


def training_images(config):
    return readable_only(images.list_images(config.data_root, config.split, config.year), config.bad_images,
                         f"{config.data_root} ({config.split})")


def training_batches(dataset, config, start_step):
    """This process's share of each global batch (all of it on one process), on the device."""
    processes = distributed.world_size()
    sampler = EpochOrder(len(dataset), config.batch_size, config.seed, start_step,
                         distributed.rank(), processes)
    loader = DataLoader(dataset, batch_size=config.batch_size // processes, sampler=sampler,
                        num_workers=config.workers, persistent_workers=config.workers > 0,
                        pin_memory=config.device.startswith("cuda"), worker_init_fn=seed_worker,
                        # Its own generator: creating the loader must not advance the global RNG
                        # that dropout draws from, or a resumed run would diverge.
                        generator=torch.Generator().manual_seed(config.seed))
    channels_last = speedups.use_channels_last(config.device)
    for batch in loader:
        yield {key: speedups.to_device(value, config.device, channels_last) for key, value in batch.items()}


def make_optimizers(method, config):
    """The method's optimisers, each with the GradScaler take_step uses for fp16 (or None)."""
    optimizers = method.configure_optimizers()
    for optimizer in optimizers.values():
        optimizer.grad_scaler = speedups.grad_scaler(config.precision, config.device)
    return optimizers


def training_step(method, batch, optimizers, config):
    """One step of the method (forwards, backwards, optimiser steps) in config.precision."""
    # Optimiser steps happen inside train_step, hence no autocast weight cache (see speedups).
    with speedups.autocast(config.precision, config.device, weight_cache=False):
        return method.train_step(batch, optimizers)


def _save_preview(method, dataset, preview_batch, run_dir, step):
    was_training = method.training
    method.eval()
    rows = method.preview(preview_batch)
    method.train(was_training)
    grid = torch.cat([dataset.denormalize(row.cpu()) for row in rows])
    path = run_dir / "previews" / f"step_{step:06d}.png"
    path.parent.mkdir(exist_ok=True)
    save_image(grid, path, nrow=len(rows[0]), padding=2)
    save_image(grid, run_dir / "preview.png", nrow=len(rows[0]), padding=2)


def pretrain(config, out, overwrite=False, progress=True):
    """Train `config.method` into a new run folder `out` and return it.

    Under torchrun every process calls this; the main one alone writes the run folder."""
    check_new_run_dir(out, overwrite)
    config, paths = resolve_config(config)
    run_config = dataclasses.replace(config, device=distributed.setup(config.device))
    method, dataset = build(run_config, paths, progress)
    distributed.barrier()  # every process has checked `out` before the main one replaces it
    if distributed.is_main():
        run_dir = create_run_dir(out, overwrite)
        save_json({"config": dataclasses.asdict(config), "images": len(paths), "processes": distributed.world_size(),
                   "environment": environment_info()}, run_dir / "config.json")
    distributed.barrier()
    return _train(run_config, method, dataset, Path(out), progress=progress)


def resume_pretraining(out, steps=None, progress=True):
    """Continue the run in `out` from its checkpoint, to `steps` (default: its configured steps).
    The number of processes may differ from the interrupted run's: the batches are the same."""
    run_dir = check_resumable(out)
    config = PretrainConfig(**json.loads((run_dir / "config.json").read_text())["config"])
    if steps is not None:
        config.steps = steps
    check_scaling_options(config)
    config.device = distributed.setup(config.device)
    method, dataset = build(config, training_images(config), progress)
    state = torch.load(run_dir / CHECKPOINT, map_location=config.device, weights_only=False)
    return _train(config, method, dataset, run_dir, state, progress)


def build(config, paths, progress=True):
    """The method (on config.device, with the speed options applied) and its dataset."""
    seed_everything(config.seed)
    method = get_method(config.method)(config, config.dataset_mean, config.dataset_std)
    if config.sync_bn and distributed.world_size() > 1:
        method = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method)
    method = method.to(config.device)
    if speedups.use_channels_last(config.device):
        method = method.to(memory_format=torch.channels_last)
    if config.compile:
        speedups.compile_children(method)
    labels = None
    if method.uses_labels:
        labels, classes = images.image_labels(paths, config.data_root, config.split, config.year)
        if classes != config.classes:
            raise UserError(f"the class folders of {config.data_root} changed since the run started")
    dataset = PretrainImages(paths, config.image_size, config.load_size, method.input_mean,
                             method.input_std, method.mask_sampler, config.seed, labels)
    if config.image_cache:
        with distributed.main_first(local=True):  # one process per machine builds it, the others read it
            dataset.cache = ImageCache(paths, config.load_size, progress=progress and distributed.is_local_main())
    return method, dataset


def _train(config, method, dataset, run_dir, state=None, progress=True):
    main = distributed.is_main()
    progress = progress and main
    optimizers = make_optimizers(method, config)
    step, elapsed = 0, 0.0
    if state is not None:
        method.load_state_dict(state["method"])
        for name, optimizer in optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
            if optimizer.grad_scaler is not None and name in state.get("grad_scalers", {}):
                optimizer.grad_scaler.load_state_dict(state["grad_scalers"][name])
        _restore_rng(state, config)
        step, elapsed = state["step"], state["elapsed"]
        if main:
            _truncate_metrics(run_dir / "metrics.jsonl", step)
    elif distributed.rank() > 0:
        # Model weights came from the same seed everywhere; dropout must differ between processes.
        torch.manual_seed(distributed.process_seed(config.seed, distributed.rank()))

    preview_batch = _preview_batch(dataset, config) if main else None
    probe = KNNProbe(config.probe_data, config.image_size, method.input_mean, method.input_std,
                     config.probe_train_split, config.probe_test_split) if main and config.probe_data else None

    def checkpoint():
        # Collective parts first (every process calls this), then the main process writes.
        distributed.average_buffers(method)
        rng = distributed.all_gather_objects(_rng_state(config.device))
        if main:
            save_torch({"method": method.state_dict(), "step": step, "elapsed": elapsed,
                        "optimizers": {n: o.state_dict() for n, o in optimizers.items()},
                        "grad_scalers": {n: o.grad_scaler.state_dict() for n, o in optimizers.items()
                                         if o.grad_scaler is not None},
                        "torch_rng": rng[0]["torch"], "rng_by_process": rng}, run_dir / CHECKPOINT)

    method.train()
    started = time.perf_counter() - elapsed
    session_start, session_first_step = time.perf_counter(), step
    metrics_out = open(run_dir / "metrics.jsonl", "a") if main else contextlib.nullcontext()

    def run_probe():
        nonlocal started
        probe_started = time.perf_counter()
        score = probe(method.encoder, config.device)
        started += time.perf_counter() - probe_started  # probing is not pretraining time
        metrics_file.write(json.dumps({"step": step, "probe_knn_map": score, "elapsed_s": round(elapsed, 3)}) + "\n")
        metrics_file.flush()
        plot_curves(run_dir)
        bar.write(f"step {step}: probe kNN mAP {100 * score:.1f}%")

    with tqdm(total=config.steps, initial=step, unit="step", disable=not progress,
              dynamic_ncols=True) as bar, metrics_out as metrics_file:
        if probe is not None and step == 0:
            run_probe()  # the curve starts at the initialisation
        for batch in training_batches(dataset, config, step) if step < config.steps else ():
            metrics = distributed.average_metrics(training_step(method, batch, optimizers, config))
            if not all(math.isfinite(value) for value in metrics.values()):
                raise UserError(f"loss became non-finite at step {step + 1} ({metrics}); the last good "
                                f"checkpoint is kept in {run_dir / 'checkpoint.pt'}")
            step += 1
            elapsed = time.perf_counter() - started
            if main:
                images_per_s = ((step - session_first_step) * config.batch_size
                                / (time.perf_counter() - session_start))
                metrics_file.write(json.dumps({"step": step, **metrics, "elapsed_s": round(elapsed, 3)}) + "\n")
                metrics_file.flush()
                bar.set_postfix(loss=f"{metrics['loss']:.4f}", img_s=f"{images_per_s:.1f}")
                bar.update(1)
                if step % config.preview_every == 0 or step == config.steps:
                    _save_preview(method, dataset, preview_batch, run_dir, step)
                if probe is not None and (step % config.probe_every == 0 or step == config.steps):
                    run_probe()
            if step % config.checkpoint_every == 0 or step == config.steps:
                checkpoint()
            if step >= config.steps:
                break
    distributed.average_buffers(method)
    if main:
        plot_curves(run_dir)
        _save_encoder(method, config, run_dir, elapsed, step)
    distributed.barrier()  # the run folder is complete for every process (a suite transfers it next)
    return run_dir


def _preview_batch(dataset, config):
    """A fixed batch (keys from an epoch no training step reaches) shows progress on the same holes."""
    preview_keys = [(2**31 - 1, i % len(dataset)) for i in range(PREVIEW_IMAGES)]
    preview_items = [dataset[k] for k in preview_keys]
    return {key: torch.stack([item[key] for item in preview_items]).to(config.device)
            for key in preview_items[0]}


def _rng_state(device):
    """The generators dropout and other in-step draws use: torch's CPU one and the device's."""
    cuda = torch.device(device).type == "cuda"
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if cuda else None}


def _restore_rng(state, config):
    saved = state.get("rng_by_process") or [{"torch": state["torch_rng"], "cuda": None}]
    processes, rank = distributed.world_size(), distributed.rank()
    if len(saved) != processes:
        distributed.warn_main(f"resuming with {processes} process(es) a run checkpointed with {len(saved)}: "
                              f"the batches are the same, the dropout draws are not")
    if rank < len(saved):
        torch.set_rng_state(saved[rank]["torch"].cpu())  # map_location may have moved it
        if saved[rank]["cuda"] is not None and torch.device(config.device).type == "cuda":
            torch.cuda.set_rng_state(saved[rank]["cuda"].cpu(), config.device)
    else:
        torch.manual_seed(distributed.process_seed(config.seed, rank) + state["step"])


def _truncate_metrics(path, step):
    """Drop metric lines past the checkpoint: those steps run again after a resume."""
    if path.exists():
        lines = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in lines))


def pretraining_label(config, method):
    """A table row's name: the method, its mask and overlap band when it has holes, its backbone."""
    if not method.uses_masks:
        return label_with_arch(config.method, method.encoder_arch)
    band = f", overlap {config.overlap} px x{config.overlap_weight:g}" if config.overlap else ""
    return label_with_arch(f"{config.method} ({config.mask}{band})", method.encoder_arch)


def _save_encoder(method, config, run_dir, elapsed, step):
    state = {key: value.detach().cpu() for key, value in method.encoder.state_dict().items()}
    save_torch(state, run_dir / "encoder.pt")
    loss_terms = {}
    if method.uses_masks:
        loss_terms = {"mask": config.mask, "overlap": config.overlap, "overlap_weight": config.overlap_weight}
    save_json({"method": config.method, "label": pretraining_label(config, method), "arch": method.encoder_arch,
               "image_size": config.image_size, **loss_terms,
               "input_mean": method.input_mean, "input_std": method.input_std,
               "steps": step, "pretrain_seconds": round(elapsed, 1), "seed": config.seed,
               "data_root": config.data_root, "split": config.split}, run_dir / "encoder.json")
