"""What the fine-tuning tasks share: their config, normalisation, and the SGD training loop."""
import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from data.pixels import channel_stats, load_rgb, normalized_tensor, resize_shorter_side
from data.sampling import EpochOrder
from data.voc import drop_unreadable, image_paths
from runtime import distributed, speedups
from runtime.device import check_scaling_options, resolve_device, seed_everything, seed_worker
from runtime.errors import UserError
from runtime.runfiles import CHECKPOINT, save_torch
from .encoders import load_encoder, standardize_units


@dataclass
class TransferConfig:
    task: str = "seg"
    protocol: str = "finetune"
    init: str = "random"
    data_root: str = ""
    year: str | None = None
    train_split: str = "train"
    test_split: str = "val"
    image_size: int | None = None   # None: the encoder's pretraining size (encoder.json), else 96
    image_size_from: str | None = None  # set by run_task: "option", "encoder.json" or "default"
    batch_size: int = 16
    lr: float | None = None
    steps: int = 300
    fc_width: int = 1024
    proposals: str = "selective-search"
    rescale: bool = False
    checkpoint_every: int = 100
    bad_images: str = "fail"
    seed: int = 0
    device: str = "auto"
    workers: int = 1
    precision: str = "fp32"     # autocast dtype of training forwards: fp32 | bf16 | fp16
    compile: bool = False       # torch.compile the model
    sync_bn: bool = False       # SyncBatchNorm across processes under torchrun (CUDA)


@dataclass
class TaskSetup:
    device: str
    encoder: torch.nn.Module
    init_info: dict
    train_set: Any
    test_set: Any
    mean: list
    std: list
    calibration_images: torch.Tensor  # centre crops of training images, for data-dependent inits


def set_up_task(config, dataset_class):
    """What every task starts from: device, seeded RNG, the --init encoder, the train and test
    datasets, the input normalisation (the encoder's own, or the training images' statistics
    for random init), and 64 centre crops of training images for the data-dependent inits.
    Krähenbühl's init (--init random-kraehenbuehl) standardises every unit of the encoder on them;
    config.rescale scales each encoder layer by one factor (see standardize_units)."""
    device = resolve_device(config.device)
    check_scaling_options(dataclasses.replace(config, device=device))
    device = distributed.setup(device)
    seed_everything(config.seed)
    encoder, init_info = load_encoder(config.init)
    train_set = dataset_class(config.data_root, config.train_split, config.year)
    test_set = dataset_class(config.data_root, config.test_split, config.year)
    for dataset, split in ((train_set, config.train_split), (test_set, config.test_split)):
        drop_unreadable(dataset, config.bad_images, f"{dataset.voc_dir.name} {split}")
    if init_info.get("input_mean") is not None:
        mean, std = init_info["input_mean"], init_info["input_std"]
    else:
        mean, std = channel_stats(image_paths(train_set))
    crops = _centre_crops(image_paths(train_set), config.image_size, mean, std)
    if init_info.get("data_init"):
        standardize_units(list(encoder), crops)
    if config.rescale:
        if init_info["arch"] != "alexnet":
            raise UserError(f"--rescale is for AlexNet encoders; {init_info['arch']} has BatchNorm, which "
                            f"normalises its activations already")
        standardize_units(list(encoder), crops, per_layer=True)
        label = init_info.get("label", init_info["method"])
        init_info = {**init_info, "label": f"{label} + rescaled"}
    return TaskSetup(device, encoder, init_info, train_set, test_set, mean, std, crops)


def _centre_crops(paths, size, mean, std, count=64):
    """Centre `size` crops of an evenly spaced sample of images, normalised, as one batch."""
    centre = Crops(size, mean, std, (1, 1), flip=False, centre=True)
    return torch.stack([centre(load_rgb(path)) for path in paths[::max(1, len(paths) // count)][:count]])


class Crops:
    """Rescale the shorter side to `size` x U(scale range), take `count` random `size` crops
    (random flips); a count of 1 with scale (1, 1) and flip=False is the centre view."""

    def __init__(self, size, mean, std, scale, count=1, flip=True, seed=0, centre=False):
        self.size, self.scale, self.count, self.flip, self.centre = size, scale, count, flip, centre
        self.mean, self.std = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
        self.rng = np.random.default_rng(seed)

    def __call__(self, image):
        shorter = round(self.size * self.rng.uniform(*self.scale))
        array = normalized_tensor(resize_shorter_side(image, shorter), self.mean, self.std)
        crops = []
        for _ in range(self.count):
            if self.centre:
                top, left = (array.shape[1] - self.size) // 2, (array.shape[2] - self.size) // 2
            else:
                top = int(self.rng.integers(0, array.shape[1] - self.size + 1))
                left = int(self.rng.integers(0, array.shape[2] - self.size + 1))
            crop = array[:, top:top + self.size, left:left + self.size]
            crops.append(crop.flip(-1) if self.flip and self.rng.random() < 0.5 else crop)
        return torch.stack(crops) if self.count > 1 else crops[0]


def loader_options(config, device):
    """DataLoader settings every loader of a task shares: worker processes kept across epochs,
    pinned memory for non-blocking copies to a GPU."""
    return {"num_workers": config.workers, "persistent_workers": config.workers > 0,
            "pin_memory": str(device).startswith("cuda"), "worker_init_fn": seed_worker}


def seeded_batches(dataset, augmenter, config, collate_fn=None, device="cpu"):
    """A function of the start step giving shuffled batches from that step on, forever: this
    process's share of each global batch of config.batch_size under torchrun."""
    processes = distributed.world_size()

    def batches_from(step):
        return iter(DataLoader(
            SeededItems(dataset, augmenter, config.seed), batch_size=config.batch_size // processes,
            sampler=EpochOrder(len(dataset), config.batch_size, config.seed, step, distributed.rank(), processes),
            collate_fn=collate_fn, **loader_options(config, device),
            # Its own generator: making the loader must not draw from the RNG that dropout uses.
            generator=torch.Generator().manual_seed(config.seed)))
    return batches_from


def evaluation_items(dataset, augmenter, config, device, batch_size=None, collate_fn=None):
    """Batches of this process's shard of `dataset` (all of it on one process), in order, each item
    augmented from a generator seeded by (seed, index): the same views whichever process scores it."""
    keys = [(EVAL_EPOCH, index) for index in distributed.shard(len(dataset))]
    return DataLoader(SeededItems(dataset, augmenter, config.seed), batch_size=batch_size or config.batch_size,
                      sampler=keys, collate_fn=collate_fn, **loader_options(config, device))


def fit(model, loss_fn, batches_from, config, lr, weight_decay, desc, run_dir, progress=True):
    """SGD with momentum 0.9 and polynomial decay (power 0.9) over `config.steps` steps.

    Every config.checkpoint_every steps, and at the end, the training state is written to
    run_dir/checkpoint.pt; when that file is already there (an interrupted run), training
    continues from it and ends with the weights an uninterrupted run would have.

    Under torchrun the model trains wrapped in DistributedDataParallel (each process a share of
    the global batch, gradients averaged), with --sync-bn its BatchNorms synchronised; forwards
    and losses run under autocast in config.precision. Returns `model` (unwrapped), in eval mode.
    """
    device = next(model.parameters()).device
    main = distributed.is_main()
    progress = progress and main
    if config.sync_bn and distributed.active():
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if speedups.use_channels_last(device):
        model = model.to(memory_format=torch.channels_last)
    if config.compile:
        model.compile()
    model.train()
    trained = model
    if distributed.active():
        trained = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr,
                                momentum=0.9, weight_decay=weight_decay)
    scaler = speedups.grad_scaler(config.precision, device)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: (1 - step / config.steps) ** 0.9)
    path, step = Path(run_dir) / CHECKPOINT, 0
    if path.is_file():
        state = torch.load(path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        if scaler is not None and "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        rng = state.get("rng_by_process") or [state["torch_rng"]]
        if len(rng) != distributed.world_size():
            distributed.warn_main(f"resuming with {distributed.world_size()} process(es) a run checkpointed "
                                  f"with {len(rng)}: the batches are the same, the dropout draws are not")
        torch.set_rng_state(rng[min(distributed.rank(), len(rng) - 1)].cpu())
        step = state["step"]
    elif distributed.rank() > 0:
        torch.manual_seed(distributed.process_seed(config.seed, distributed.rank()))  # its own dropout draws

    def checkpoint():
        rng = distributed.all_gather_objects(torch.get_rng_state())
        if main:
            save_torch({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "schedule": schedule.state_dict(), "torch_rng": rng[0], "rng_by_process": rng,
                        "step": step, **({"scaler": scaler.state_dict()} if scaler is not None else {})}, path)

    started, first_step = time.perf_counter(), step
    with tqdm(total=config.steps, initial=step, desc=desc, unit="step", disable=not progress,
              dynamic_ncols=True) as bar:
        for batch in batches_from(step) if step < config.steps else ():
            with speedups.autocast(config.precision, device):
                loss = loss_fn(trained, batch)
            # Each process checks the mean over the global batch, so all stop together.
            loss_value = distributed.average_metrics({"loss": loss.item()})["loss"]
            if not math.isfinite(loss_value):
                raise UserError(f"{desc}: loss became {loss_value} at step {step + 1}; lower --lr")
            optimizer.zero_grad(set_to_none=True)
            if scaler is None:
                loss.backward()
                optimizer.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            schedule.step()
            step += 1
            rate = (step - first_step) * config.batch_size / (time.perf_counter() - started)
            bar.set_postfix(loss=f"{loss_value:.4f}", img_s=f"{rate:.1f}")
            bar.update(1)
            if step % config.checkpoint_every == 0 or step == config.steps:
                checkpoint()
            if step >= config.steps:
                break
    distributed.average_buffers(model)  # without --sync-bn each process kept its own statistics
    model.eval()
    return model
