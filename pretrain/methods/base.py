"""What a pretext method provides to the training loop."""
from torch import nn


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
    * `configure_optimizers()`  -> {name: optimizer};
    * `train_step(batch, optimizers)` -> {metric: float}, with "loss" first; it runs backward and steps;
    * `preview(batch)`          -> list of image batches (normalised) shown as rows of the preview grid.
    """

    name = ""
    description = ""
    mask_sampler = None
    uses_masks = False
