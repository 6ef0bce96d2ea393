"""The inpainting network's training step, lever by lever: `bench speed --levers`.

Each row is the model-only training step of the context encoder with the 128 px inpainting network
(central holes, L2 loss, fp32) on one fixed random batch, from the same initial weights, with one
set of speed levers:
  convolutions   every layer a plain nn.Conv2d / nn.ConvTranspose2d: the network before this lever set
  matmul         the 4000-d bottleneck's two layers (and the discriminator's last) as matmuls
                 (WholeInputConv, PointInputUpConv): the default
  channels-last  NHWC activations and weights
  sub-pixel      the 4x4 stride-2 up-convolutions as a 3x3 convolution and a pixel shuffle
  compile        torch.compile of each sub-network (Inductor also fuses BatchNorm and activations)
  1 thread       torch.set_num_threads(1) (the other rows use every core of the affinity mask)
It reports images/s, the ratio to the `convolutions` row and the loss after the timed steps. A
lever changes the speed, not the computation, but Adam turns rounding differences into
lr-sized steps, so after a few steps the losses differ by as much as seeds make them differ: the
`convolutions` and default rows are repeated with other seeds to show that spread.
"""
import contextlib
import time

import numpy as np
import torch
from torch import nn

from bench_data.masks import central_mask
from pretrain.networks import PointInputUpConv, SubPixelUpConv, WholeInputConv
from pretrain.runs import build_method, fixed_batch_step, resolve_pretraining
from pretrain.train import PretrainConfig
from bench_runtime import speedups
from bench_runtime.device import seed_everything
from bench_runtime.progress import progress_bar

LEVERS = {  # name: (matmul bottleneck, sub-pixel up-convolutions, channels_last, compile, threads: None = all)
    "convolutions": (False, False, False, False, None),
    "matmul": (True, False, False, False, None),
    "matmul + channels-last": (True, False, True, False, None),
    "matmul + sub-pixel": (True, True, False, False, None),
    "matmul + compile": (True, False, False, True, None),
    "matmul, 1 thread": (True, False, False, False, 1),
}
DEFAULT = "matmul"


def set_layer_forms(module, matmul, subpixel):
    """Switch the layers of `module` (built with the default forms) between forms that share
    their parameters, so the class is all that changes: the bottleneck's matmul forms back to
    plain (transposed) convolutions unless `matmul`; the 4x4 stride-2 up-convolutions to the
    sub-pixel form if `subpixel`."""
    for layer in module.modules():
        if not matmul and type(layer) is WholeInputConv:
            layer.__class__ = nn.Conv2d
        elif not matmul and type(layer) is PointInputUpConv:
            layer.__class__ = nn.ConvTranspose2d
        elif subpixel and type(layer) is nn.ConvTranspose2d and layer.stride == (2, 2) and layer.kernel_size == (4, 4):
            layer.__class__ = SubPixelUpConv


@contextlib.contextmanager
def _threads(count):
    before = torch.get_num_threads()
    torch.set_num_threads(count or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def measure_lever(name, batch_size=64, warmup=2, steps=5, seed=0):
    """One row: the inpainting step with lever set `name` (a key of LEVERS)."""
    matmul, subpixel, channels_last, compiled, threads = LEVERS[name]
    config = PretrainConfig(method="context-encoder", arch="inpaint", mask="central", image_size=128,
                            batch_size=batch_size, steps=warmup + steps, seed=seed, device="cpu",
                            dataset_mean=[0.5] * 3, dataset_std=[0.25] * 3)
    context = resolve_pretraining(config, paths=[])  # synthetic batches: no images to read
    seed_everything(seed)
    method = build_method(context.recorded(config))
    set_layer_forms(method, matmul, subpixel)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    method = method.to(memory_format=memory_format)
    if compiled:
        speedups.compile_children(method)
    # The same batch for every lever and seed.
    step = fixed_batch_step(method, config, context, central_mask(128), seed=1234, memory_format=memory_format)
    with _threads(threads):
        for _ in range(warmup):
            step()
        started = time.perf_counter()
        for _ in range(steps):
            loss = step()["loss"]
        seconds = (time.perf_counter() - started) / steps
    return {"lever": name, "seed": seed, "batch_size": batch_size, "threads": threads or torch.get_num_threads(),
            "img_s": batch_size / seconds, "final_loss": float(loss)}


def measure_levers(names=tuple(LEVERS), batch_size=64, warmup=2, steps=5, noise_seeds=(1, 2), progress=True):
    """Every lever set in `names` with seed 0, then the `convolutions` and default sets again with
    each of `noise_seeds`, for the spread of the loss over seeds; each row gets its speed ratio
    to the `convolutions` row of seed 0."""
    runs = [(name, 0) for name in names] + [(name, seed) for seed in noise_seeds for name in ("convolutions", DEFAULT)]
    rows = [measure_lever(name, batch_size, warmup, steps, seed)
            for name, seed in progress_bar(runs, desc="levers", unit="row", disable=not progress)]
    base = next((row["img_s"] for row in rows if row["lever"] == "convolutions" and row["seed"] == 0), None)
    for row in rows:
        row["over_convolutions"] = row["img_s"] / base if base else None
    return rows


def loss_over_seeds(rows, name):
    """(mean, standard deviation, seeds) of the final loss of lever set `name` over its rows' seeds."""
    losses = np.array([row["final_loss"] for row in rows if row["lever"] == name])
    return losses.mean(), losses.std(ddof=1) if len(losses) > 1 else float("nan"), len(losses)
