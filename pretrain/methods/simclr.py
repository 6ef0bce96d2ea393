"""SimCLR (Chen, Kornblith, Norouzi and Hinton, "A Simple Framework for Contrastive Learning of
Visual Representations", ICML 2020): two random views of each image must find each other among
the views of every other image of the (global) batch.

Why SimCLR rather than MoCo v2 or BYOL for batches of 64-256 on a few CPU cores: one network, one
optimiser, one forward pass per view and no state beyond the weights. MoCo's key queue and BYOL's
target network run a second encoder every step (a third more compute) and add a momentum copy
and a queue to every checkpoint; their edge is at batches too small for enough negatives, and
SimCLR at 256 already comes within a few points of its 4096 (its Fig. 9, long training).

Temperature 0.2: SimCLR's best is 0.1 at batch 4096 and 0.5 on CIFAR-10 at batch 512-1024;
smaller batches have fewer negatives and want the softer end, and 0.2 is what solo-learn settles
on for its small-batch (256) CIFAR and ImageNet-100 runs.

Views as the paper's (Appendix A): crop of 8-100% of the area, flip, colour jitter with
probability 0.8 at strength s = 0.5 (0.4 brightness, contrast, saturation, 0.1 hue; the CIFAR
setting), grey with probability 0.2, and blur with probability 0.5 from 96 px up only: SimCLR
drops it for 32 px CIFAR images, where a 10% kernel wipes out what little detail there is.
"""
import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bench_data.views import ViewAugmentation
from bench_runtime import distributed
from bench_runtime.engine import take_step
from bench_runtime.options import check_ranges, option
from ..backbones import backbone_channels
from .base import PretextMethod
from .registry import register

HIDDEN = 512
BLUR_FROM = 96  # px: smaller images get no blur


@dataclass
class SimCLROptions:
    temperature: float = option(0.2, "softmax temperature of the NT-Xent loss")
    projection_dim: int = option(128, "width of the projection the loss compares (the paper's 128)")
    head_norm: str = option("batch", "BatchNorm in the projection head (the paper's) or none; under torchrun "
                            "each process normalises its own share unless --sync-bn", choices=("batch", "none"))
    blur: float | None = option(None, "probability of Gaussian blur (default: 0.5 from 96 px up, else 0)")

    def __post_init__(self):
        check_ranges([("--temperature", self.temperature, self.temperature > 0, "positive"),
                      ("--projection-dim", self.projection_dim, self.projection_dim >= 1, "at least 1"),
                      ("--blur", self.blur, self.blur is None or 0 <= self.blur <= 1, "in [0, 1]")])


def nt_xent(z1, z2, temperature):
    """SimCLR's NT-Xent loss of this process's projections of two views ((B, D) each): every view
    is an anchor whose positive is the other view of its image, among the views of the batches of
    all processes (gathered with gradients); the mean over this process's 2B anchors. Averaged
    over processes that is the loss of the global batch, and its gradient the one-process one
    (see bench_runtime.distributed.all_gather_with_gradients): no rescaling by the process count."""
    local = F.normalize(torch.cat([z1, z2]), dim=1)
    candidates = distributed.all_gather_with_gradients(local)
    count = len(local)
    own = torch.arange(count, device=local.device) + count * (distributed.rank() if distributed.active() else 0)
    logits = local @ candidates.T / temperature
    logits = logits.masked_fill(F.one_hot(own, len(candidates)).bool(), float("-inf"))  # not itself
    positive = own + torch.where(own % count < len(z1), len(z1), -len(z1))
    return F.cross_entropy(logits, positive)


@register
class SimCLR(PretextMethod):
    name = "simclr"
    description = "find the other random view of each image among the batch's (Chen et al. 2020)"
    Options = SimCLROptions

    @classmethod
    def resolve_options(cls, config):
        options = super().resolve_options(config)
        if options.blur is None:
            options = dataclasses.replace(options, blur=0.5 if config.image_size >= BLUR_FROM else 0.0)
        return options

    def __init__(self, config, dataset_mean, dataset_std):
        super().__init__(config, dataset_mean, dataset_std)
        norm = nn.BatchNorm1d(HIDDEN) if self.options.head_norm == "batch" else nn.Identity()
        self.projector = nn.Sequential(nn.Flatten(), nn.Linear(backbone_channels(self.encoder), HIDDEN), norm,
                                       nn.ReLU(inplace=True), nn.Linear(HIDDEN, self.options.projection_dim))
        self.views = ViewAugmentation(crop_scale=(0.08, 1.0), jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.8,
                                      grayscale_p=0.2, blur_p=self.options.blur)

    def two_views(self, images, generator=None):
        """Two random views of each normalised image, normalised."""
        pixels = self.pixels(images)
        return [self.normalised(self.views(pixels, generator)) for _ in range(2)]

    def project(self, images):
        """(N, projection_dim): the projections of globally average-pooled features."""
        return self.projector(F.adaptive_avg_pool2d(self.encoder(images), 1))

    def contrastive_loss(self, first, second):
        """NT-Xent of two batches of views of the same images (one forward pass for both)."""
        z1, z2 = self.project(torch.cat([first, second])).float().chunk(2)
        return nt_xent(z1, z2, self.options.temperature)

    def configure_optimizers(self):
        # LARS pays off at SimCLR's batch 4096; at 64-256 plain Adam is the usual small-scale choice.
        return {"network": torch.optim.Adam(self.parameters(), lr=self.config.lr or 1e-3, weight_decay=1e-6)}

    def train_step(self, batch, optimizers):
        loss = self.contrastive_loss(*self.two_views(batch["image"]))
        take_step(optimizers["network"], loss)
        return {"loss": loss.item()}

    @torch.no_grad()
    def preview(self, batch):
        """Rows: the first views, the second views, and for each first view the second view it
        finds most similar (its own image's when the representation works)."""
        first, second = self.two_views(batch["image"], torch.Generator(batch["image"].device).manual_seed(0))
        z1, z2 = (F.normalize(self.project(v), dim=1) for v in (first, second))
        return [first, second, second[(z1 @ z2.T).argmax(1)]]
