"""The pretraining loop: one function from a config to a run folder.

A run folder holds
  config.json       the resolved configuration (and the environment it ran in)
  metrics.jsonl     one JSON line per step
  checkpoint.pt     everything needed to --resume
  encoder.pt        the transferable encoder's state_dict (plain, torchvision key names for AlexNet)
  encoder.json      what transfer needs to use it: arch, input size and normalisation, pretraining time
  previews/         PNG grids (rows: masked input / prediction / original), and preview.png, the latest
"""
import dataclasses
import json
import math
import random
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader
from torchvision.utils import save_image
from tqdm import tqdm

from . import images
from .backbones import label_with_arch
from .data import EpochOrder, PretrainImages, channel_stats, readable_only
from .errors import UserError
from .methods import get_method
from .runfiles import (CHECKPOINT, check_new_run_dir, check_resumable, create_run_dir, environment_info,
                       save_json, save_torch)

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
    overlap: int = 4
    overlap_weight: float = 10.0
    adv_weight: float = 0.001
    preview_every: int = 100
    checkpoint_every: int = 100
    bad_images: str = "fail"
    classes: list | None = None  # class names of labelled data, for methods that use labels
    dataset_mean: list | None = None
    dataset_std: list | None = None


def resolve_device(name):
    """"auto" -> cuda when there is a GPU, else cpu; a CUDA device that is absent is a user error."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for, but no CUDA device is available")
    return name


def seed_everything(seed):
    """Seed every global generator a method might draw from: Python's, NumPy's and torch's.
    (DataLoader workers get their seeds from the loader's own generator; see seed_worker.)"""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def seed_worker(_worker_id):
    """DataLoader worker_init_fn: seed Python and NumPy from the seed torch gave this worker."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


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
            ("--overlap", config.overlap, config.overlap >= 0, "0 or more"),
            ("--overlap-weight", config.overlap_weight, config.overlap_weight >= 0, "0 or more"),
            ("--adv-weight", config.adv_weight, 0 <= config.adv_weight <= 1, "in [0, 1]"),
            ("--preview-every", config.preview_every, config.preview_every >= 1, "at least 1"),
            ("--checkpoint-every", config.checkpoint_every, config.checkpoint_every >= 1, "at least 1")]:
        if not ok:
            raise UserError(f"{name} must be {rule}, got {value}")
    paths = training_images(config)
    if len(paths) < config.batch_size:
        raise UserError(f"only {len(paths)} images in {config.data_root} ({config.split}) for a batch "
                        f"of {config.batch_size}; lower --batch-size")
    if config.load_size is None:
        config.load_size = round(config.image_size * 1.15)
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
    if config.dataset_mean is None:
        config.dataset_mean, config.dataset_std = channel_stats(paths)
    return config, paths


def training_images(config):
    return readable_only(images.list_images(config.data_root, config.split, config.year), config.bad_images,
                         f"{config.data_root} ({config.split})")


def _batches(dataset, config, start_step):
    loader = DataLoader(dataset, batch_size=config.batch_size,
                        sampler=EpochOrder(len(dataset), config.batch_size, config.seed, start_step),
                        num_workers=config.workers, persistent_workers=config.workers > 0,
                        pin_memory=config.device.startswith("cuda"), worker_init_fn=seed_worker,
                        # Its own generator: creating the loader must not advance the global RNG
                        # that dropout draws from, or a resumed run would diverge.
                        generator=torch.Generator().manual_seed(config.seed))
    for batch in loader:
        yield {key: value.to(config.device, non_blocking=True) for key, value in batch.items()}


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
    """Train `config.method` into a new run folder `out` and return it."""
    check_new_run_dir(out, overwrite)
    config, paths = resolve_config(config)
    method, dataset = _build(config, paths)
    run_dir = create_run_dir(out, overwrite)
    save_json({"config": dataclasses.asdict(config), "images": len(paths),
               "environment": environment_info()}, run_dir / "config.json")
    return _train(config, method, dataset, run_dir, progress=progress)


def resume_pretraining(out, steps=None, progress=True):
    """Continue the run in `out` from its checkpoint, to `steps` (default: its configured steps)."""
    run_dir = check_resumable(out)
    config = PretrainConfig(**json.loads((run_dir / "config.json").read_text())["config"])
    if steps is not None:
        config.steps = steps
    method, dataset = _build(config, training_images(config))
    state = torch.load(run_dir / CHECKPOINT, map_location=config.device, weights_only=False)
    return _train(config, method, dataset, run_dir, state, progress)


def _build(config, paths):
    seed_everything(config.seed)
    method = get_method(config.method)(config, config.dataset_mean, config.dataset_std).to(config.device)
    labels = None
    if method.uses_labels:
        labels, classes = images.image_labels(paths, config.data_root, config.split, config.year)
        if classes != config.classes:
            raise UserError(f"the class folders of {config.data_root} changed since the run started")
    dataset = PretrainImages(paths, config.image_size, config.load_size, method.input_mean,
                             method.input_std, method.mask_sampler, config.seed, labels)
    return method, dataset


def _train(config, method, dataset, run_dir, state=None, progress=True):
    optimizers = method.configure_optimizers()
    step, elapsed = 0, 0.0
    if state is not None:
        method.load_state_dict(state["method"])
        for name, optimizer in optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
        torch.set_rng_state(state["torch_rng"])
        step, elapsed = state["step"], state["elapsed"]
        _truncate_metrics(run_dir / "metrics.jsonl", step)

    # A fixed batch (keys from an epoch no training step reaches) shows progress on the same holes.
    preview_keys = [(2**31 - 1, i % len(dataset)) for i in range(PREVIEW_IMAGES)]
    preview_items = [dataset[k] for k in preview_keys]
    preview_batch = {key: torch.stack([item[key] for item in preview_items]).to(config.device)
                     for key in preview_items[0]}

    def checkpoint():
        save_torch({"method": method.state_dict(), "step": step, "elapsed": elapsed,
                    "optimizers": {n: o.state_dict() for n, o in optimizers.items()},
                    "torch_rng": torch.get_rng_state()}, run_dir / CHECKPOINT)

    method.train()
    started = time.perf_counter() - elapsed
    session_start, session_first_step = time.perf_counter(), step
    with tqdm(total=config.steps, initial=step, unit="step", disable=not progress,
              dynamic_ncols=True) as bar, open(run_dir / "metrics.jsonl", "a") as metrics_file:
        for batch in _batches(dataset, config, step) if step < config.steps else ():
            metrics = method.train_step(batch, optimizers)
            if not all(math.isfinite(value) for value in metrics.values()):
                raise UserError(f"loss became non-finite at step {step + 1} ({metrics}); the last good "
                                f"checkpoint is kept in {run_dir / 'checkpoint.pt'}")
            step += 1
            elapsed = time.perf_counter() - started
            images_per_s = ((step - session_first_step) * config.batch_size
                            / (time.perf_counter() - session_start))
            metrics_file.write(json.dumps({"step": step, **metrics, "elapsed_s": round(elapsed, 3)}) + "\n")
            metrics_file.flush()
            bar.set_postfix(loss=f"{metrics['loss']:.4f}", img_s=f"{images_per_s:.1f}")
            bar.update(1)
            if step % config.preview_every == 0 or step == config.steps:
                _save_preview(method, dataset, preview_batch, run_dir, step)
            if step % config.checkpoint_every == 0 or step == config.steps:
                checkpoint()
            if step >= config.steps:
                break
    _save_encoder(method, config, run_dir, elapsed, step)
    return run_dir


def _truncate_metrics(path, step):
    """Drop metric lines past the checkpoint: those steps run again after a resume."""
    if path.exists():
        lines = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in lines))


def _save_encoder(method, config, run_dir, elapsed, step):
    state = {key: value.detach().cpu() for key, value in method.encoder.state_dict().items()}
    save_torch(state, run_dir / "encoder.pt")
    label = label_with_arch(f"{config.method} ({config.mask})" if method.uses_masks else config.method,
                            method.encoder_arch)
    save_json({"method": config.method, "label": label, "arch": method.encoder_arch, "image_size": config.image_size,
               "input_mean": method.input_mean, "input_std": method.input_std,
               "steps": step, "pretrain_seconds": round(elapsed, 1), "seed": config.seed,
               "data_root": config.data_root, "split": config.split}, run_dir / "encoder.json")
