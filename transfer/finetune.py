"""What the fine-tuning tasks share: their config, normalisation, and the SGD training loop."""
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from pretrain.data import channel_stats, load_rgb, normalized_tensor
from pretrain.errors import UserError
from pretrain.train import resolve_device
from .encoders import load_encoder, rescale_to_data


@dataclass
class TransferConfig:
    task: str = "seg"
    protocol: str = "finetune"
    init: str = "random"
    data_root: str = ""
    year: str | None = None
    train_split: str = "train"
    test_split: str = "val"
    image_size: int = 96
    batch_size: int = 16
    lr: float | None = None
    steps: int = 300
    fc_width: int = 1024
    proposals: str = "selective-search"
    rescale: bool = False
    seed: int = 0
    device: str = "auto"
    workers: int = 1


@dataclass
class TaskSetup:
    device: str
    encoder: torch.nn.Module
    init_info: dict
    train_set: Any
    test_set: Any
    mean: list
    std: list


def set_up_task(config, dataset_class):
    """What every task starts from: device, seeded RNG, the --init encoder, the train and test
    datasets, the input normalisation (the encoder's own, or the training images' statistics
    for random init), and with config.rescale the encoder rescaled to the training images."""
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    encoder, init_info = load_encoder(config.init)
    train_set = dataset_class(config.data_root, config.train_split, config.year)
    test_set = dataset_class(config.data_root, config.test_split, config.year)
    if init_info.get("input_mean") is not None:
        mean, std = init_info["input_mean"], init_info["input_std"]
    else:
        mean, std = channel_stats(_image_paths(train_set))
    if config.rescale:
        rescale_to_data(encoder, _centre_crops(_image_paths(train_set), config.image_size, mean, std))
        label = init_info.get("label", init_info["method"])
        init_info = {**init_info, "label": f"{label} + rescaled"}
    return TaskSetup(device, encoder, init_info, train_set, test_set, mean, std)


def _image_paths(dataset):
    return [dataset.voc_dir / "JPEGImages" / f"{i}.jpg" for i in dataset.ids]


def _centre_crops(paths, size, mean, std, count=64):
    """Centre `size` crops of an evenly spaced sample of images, normalised, as one batch."""
    mean, std = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    crops = []
    for path in paths[::max(1, len(paths) // count)][:count]:
        image = np.asarray(load_rgb(path, size))
        top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
        crops.append(normalized_tensor(image[top:top + size, left:left + size], mean, std))
    return torch.stack(crops)


def endless_batches(dataset, config, collate_fn=None):
    """Shuffled batches forever, in an order fixed by the seed."""
    if len(dataset) < config.batch_size:
        raise UserError(f"only {len(dataset)} training images for a batch of {config.batch_size}; "
                        f"lower --batch-size")
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True, drop_last=True,
                        num_workers=config.workers, persistent_workers=config.workers > 0,
                        collate_fn=collate_fn, generator=torch.Generator().manual_seed(config.seed))
    while True:
        yield from loader


def fit(model, loss_fn, batches, config, lr, weight_decay, desc, progress=True):
    """SGD with momentum 0.9 and polynomial decay (power 0.9) over `config.steps` steps."""
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr,
                                momentum=0.9, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: (1 - step / config.steps) ** 0.9)
    started = time.perf_counter()
    with tqdm(total=config.steps, desc=desc, unit="step", disable=not progress,
              dynamic_ncols=True) as bar:
        for step, batch in zip(range(1, config.steps + 1), batches):
            loss = loss_fn(model, batch)
            if not math.isfinite(loss.item()):
                raise UserError(f"{desc}: loss became {loss.item()} at step {step}; lower --lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            rate = step * config.batch_size / (time.perf_counter() - started)
            bar.set_postfix(loss=f"{loss.item():.4f}", img_s=f"{rate:.1f}")
            bar.update(1)
    model.eval()
    return model
