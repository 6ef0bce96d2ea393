"""What the fine-tuning tasks share: their set-up (encoder, data, normalisation), batches, and
`fit`, their SGD schedule on the training engine. Their config is transfer.config.TransferConfig."""
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from bench_data.check import checked_dataset
from bench_data.pixels import centre_crop, channel_stats, load_rgb, normalized_tensor, resize_shorter_side
from bench_data.sampling import EVAL_EPOCH, SeededItems, epoch_batches, loader_options
from bench_data.voc import drop_unreadable, image_paths
from bench_runtime import distributed
from bench_runtime.device import check_scaling_options, seed_everything
from bench_runtime.engine import Engine, prepare_model, take_step
from bench_runtime.errors import UserError
from bench_runtime.plots import plot_losses
from .encoders import load_encoder, standardize_units


@dataclass
class TaskSetup:
    encoder: torch.nn.Module
    init_info: dict
    train_set: Any
    test_set: Any
    mean: list
    std: list
    calibration_images: torch.Tensor  # centre crops of training images, for data-dependent inits


def set_up_task(config, context, dataset_class):
    """What every fine-tuning task starts from: seeded RNG, the --init encoder, the train and test
    datasets, the input normalisation (the encoder's own, or the training images' statistics
    for random init), and 64 centre crops of training images for the data-dependent inits.
    Krähenbühl's init (--init random-kraehenbuehl) standardises every unit of the encoder on them;
    config.rescale scales each encoder layer by one factor (see standardize_units)."""
    check_scaling_options(config, context.device)
    seed_everything(config.seed)
    encoder, init_info = load_encoder(config.init)
    # Both splits are checked before any training, so a bad test file cannot end a run after it.
    train_set, test_set = (checked_dataset(dataset_class, config.data_root, split, config.year,
                                           config.bad_annotations)
                           for split in (config.train_split, config.test_split))
    for dataset, split in ((train_set, config.train_split), (test_set, config.test_split)):
        drop_unreadable(dataset, config.bad_images, f"{dataset.voc_dir.name} {split}")
    if init_info.get("input_mean") is not None:
        mean, std = init_info["input_mean"], init_info["input_std"]
    else:
        mean, std = channel_stats(image_paths(train_set))
    crops = _centre_crops(image_paths(train_set), context.image_size, mean, std)
    init_info = data_dependent_init(encoder, init_info, crops, config.rescale)
    return TaskSetup(encoder, init_info, train_set, test_set, mean, std, crops)


def data_dependent_init(encoder, init_info, crops, rescale):
    """Krähenbühl's init of `encoder` on `crops` (training images) when its --init asks for it,
    then with `rescale` one scale factor per layer; returns init_info, relabelled when rescaled."""
    if init_info.get("data_init"):
        standardize_units(list(encoder), crops)
    if rescale:
        if init_info["arch"] != "alexnet":
            raise UserError(f"--rescale is for AlexNet encoders; {init_info['arch']} has BatchNorm, which "
                            f"normalises its activations already")
        standardize_units(list(encoder), crops, per_layer=True)
        label = init_info.get("label", init_info["method"])
        init_info = {**init_info, "label": f"{label} + rescaled"}
    return init_info


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
                crop = centre_crop(array, self.size)
            else:
                top = int(self.rng.integers(0, array.shape[1] - self.size + 1))
                left = int(self.rng.integers(0, array.shape[2] - self.size + 1))
                crop = array[:, top:top + self.size, left:left + self.size]
            crops.append(crop.flip(-1) if self.flip and self.rng.random() < 0.5 else crop)
        return torch.stack(crops) if self.count > 1 else crops[0]


def seeded_batches(dataset, augmenter, config, collate_fn=None, device="cpu"):
    """A function of the start step giving shuffled batches from that step on, forever: this
    process's share of each global batch of config.batch_size under torchrun."""
    return lambda step: iter(epoch_batches(SeededItems(dataset, augmenter, config.seed), config.batch_size,
                                           config.seed, step, config.workers, device, collate_fn))


def evaluation_items(dataset, augmenter, config, device, batch_size=None, collate_fn=None):
    """Batches of this process's shard of `dataset` (all of it on one process), in order, each item
    augmented from a generator seeded by (seed, index): the same views whichever process scores it."""
    keys = [(EVAL_EPOCH, index) for index in distributed.shard(len(dataset))]
    return DataLoader(SeededItems(dataset, augmenter, config.seed), batch_size=batch_size or config.batch_size,
                      sampler=keys, collate_fn=collate_fn, **loader_options(config.workers, device))


def fit(model, loss_fn, batches_from, config, lr, weight_decay, desc, run_dir, progress=True):
    """SGD with momentum 0.9 and polynomial decay (power 0.9) over `config.steps` steps, through the
    training engine (bench_runtime.engine): checkpoints in run_dir and exact resume, data parallelism
    under torchrun, autocast in config.precision, --sync-bn and --compile. `loss_fn(model, batch)`
    is the task's loss on one batch. Returns `model`, in eval mode."""
    model = prepare_model(model, next(model.parameters()).device, config.compile, config.sync_bn)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr,
                                momentum=0.9, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=config.steps, power=0.9)
    engine = Engine(model, {"sgd": optimizer}, run_dir, steps=config.steps, batch_size=config.batch_size,
                    seed=config.seed, device=next(model.parameters()).device, precision=config.precision,
                    checkpoint_every=config.checkpoint_every, schedules={"sgd": schedule}, desc=desc,
                    progress=progress)

    def train_step(trained, batch):
        loss = loss_fn(trained, batch)
        take_step(optimizer, loss)
        return {"loss": loss.item()}

    engine.run(train_step, batches_from)
    if distributed.is_main():
        plot_losses(run_dir, desc)
    model.eval()
    return model
