"""Autoencoder baseline of the paper's Table 2: the context encoder's network reconstructing its
whole, unmasked input with an L2 loss."""
import torch
import torch.nn.functional as F

from dataclasses import dataclass

from bench_runtime.engine import take_step
from bench_runtime.options import option
from ..losses import visible_statistics
from ..networks import FeatureContextEncoder, FeatureNetworkOptions
from .base import PretextMethod
from .registry import register


@dataclass
class AutoencoderOptions(FeatureNetworkOptions):
    target: str = option("pixels", "what the network reconstructs: the pixels, or the pixels standardised by the "
                         "mean and std of each image's input (its uncorrupted pixels), per channel, as the context "
                         "encoder's --target context-normalised", choices=("pixels", "input-normalised"))


@register
class Autoencoder(PretextMethod):
    name = "autoencoder"
    description = "reconstruct the whole unmasked image through the context encoder's network"
    Options = AutoencoderOptions

    def __init__(self, config, dataset_mean, dataset_std):
        super().__init__(config, dataset_mean, dataset_std)
        self.generator = FeatureContextEncoder(self.new_encoder(), config.image_size, self.options.dropout,
                                               self.options.output_scale)

    @property
    def encoder(self):
        return self.generator.encoder

    def configure_optimizers(self):
        return {"generator": torch.optim.Adam(self.generator.parameters(), lr=self.config.lr or 1e-3)}

    def corrupt(self, image):
        """The network's input made from the clean image: the image itself for a plain autoencoder."""
        return image

    def statistics(self, image, corrupted):
        """(mean, std) that targets are standardised by: those of the uncorrupted input pixels
        (for a plain autoencoder, the whole image); (0, 1) for --target pixels."""
        if self.options.target == "pixels":
            return 0.0, 1.0
        visible = (corrupted == image).all(1, keepdim=True).float()
        return visible_statistics(image, visible)

    def train_step(self, batch, optimizers):
        image = batch["image"]
        corrupted = self.corrupt(image)
        mean, std = self.statistics(image, corrupted)
        loss = F.mse_loss(self.generator(corrupted), (image - mean) / std)
        take_step(optimizers["generator"], loss)
        return {"loss": loss.item()}

    @torch.no_grad()
    def preview(self, batch):
        image = batch["image"]
        corrupted = self.corrupt(image)
        mean, std = self.statistics(image, corrupted)
        rows = [self.generator(corrupted) * std + mean, image]
        return rows if corrupted is image else [corrupted, *rows]
