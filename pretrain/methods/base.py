"""What a pretext method provides to the training loop, and two helpers for writing one."""
import torch.nn.functional as F
from torch import nn

from runtime import distributed


class PretextMethod(nn.Module):
    """One self-supervised pretext task built around a backbone.

    A subclass sets `name` and `description`, builds its networks in `__init__(config, dataset_mean,
    dataset_std)`, and provides:

    * `encoder`                 the module that transfer tasks load (saved as encoder.pt);
    * `encoder_arch`            what that module is ("alexnet" loads into torchvision's AlexNet features);
    * `input_mean`, `input_std` per-channel normalisation of its inputs (lists of 3 floats), which
                                transfer must use too;
    * `mask_sampler`            callable(rng) -> bool hole (H, W), or None if the task needs no holes;
    * `uses_masks`              class attribute: True if it reads --mask/--mask-dir (set before building);
    * `uses_labels`             class attribute: True if it needs batch["label"]: the data root is then an
                                image folder with one sub-folder per class, listed in config.classes;
    * `configure_optimizers()`  -> {name: optimizer};
    * `train_step(batch, optimizers)` -> {metric: float}, with "loss" first; it runs backward and steps;
    * `preview(batch)`          -> list of image batches (normalised) shown as rows of the preview grid.

    Default hyper-parameters live in the method: `configure_optimizers` uses `config.lr` when given
    and the method's own default otherwise. Random draws inside `train_step` should use torch's RNG:
    it is seeded from --seed and saved in checkpoints, so runs repeat and resume exactly.
    """

    name = ""
    description = ""
    mask_sampler = None
    uses_masks = False
    uses_labels = False


def take_step(optimizer, loss):
    """One optimisation step on `loss`: backward, gradients averaged over processes, step.

    Data parallelism lives here rather than in a DistributedDataParallel wrapper: a method runs
    its own forwards and optimiser steps inside `train_step` (the GAN steps two optimisers and calls
    its discriminator three times), which does not fit DDP's one-forward-one-backward model. Each
    process holds an equal share of the global batch and its loss is the mean over that share, so
    the mean of the processes' gradients is the gradient of the global batch's mean loss: every
    method trains data-parallel under torchrun without knowing it. One coalesced all_reduce per
    optimiser step; nothing at all on one process.

    With --precision fp16 the training loop gives the optimiser a `grad_scaler` attribute
    (a torch.amp.GradScaler): the loss is scaled before backward and the step skipped on overflow.
    """
    optimizer.zero_grad(set_to_none=True)
    scaler = getattr(optimizer, "grad_scaler", None)
    (loss if scaler is None else scaler.scale(loss)).backward()
    distributed.average_gradients([p for group in optimizer.param_groups for p in group["params"]])
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()


def classification_metrics(logits, labels):
    """(softmax cross-entropy, accuracy) of class `logits` against integer `labels`."""
    return F.cross_entropy(logits, labels), (logits.argmax(1) == labels).float().mean()
