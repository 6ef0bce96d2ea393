"""Rotation prediction (Gidaris, Singh and Komodakis, "Unsupervised Representation Learning by
Predicting Image Rotations", ICLR 2018): tell which of four rotations (0, 90, 180, 270 degrees) an
image was turned by. Recognising "upright" needs the objects in it, not low-level cues."""
import torch
from torch import nn

from bench_runtime.engine import take_step
from ..backbones import feature_shape
from .base import PretextMethod, classification_metrics
from .registry import register

ROTATIONS = 4  # quarter turns: label k means the image was turned by k * 90 degrees
HIDDEN = 256


def rotated_batch(images):
    """(B, C, S, S) images -> ((4B, C, S, S) images, (4B,) labels): all B images turned by 0 quarter
    turns, then all turned by 1, 2 and 3, with label k on the copies turned k times.

    Every image comes in all four rotations in the same batch: Gidaris et al. found this better than
    one random rotation per image, since the four copies differ only in their orientation.
    """
    rotated = torch.cat([torch.rot90(images, k, dims=(-2, -1)) for k in range(ROTATIONS)])
    labels = torch.arange(ROTATIONS, device=images.device).repeat_interleave(len(images))
    return rotated, labels


@register
class RotationPrediction(PretextMethod):
    name = "rotation"
    description = "predict which of four rotations an image was turned by (Gidaris et al. 2018)"

    def __init__(self, config, dataset_mean, dataset_std):
        super().__init__(config, dataset_mean, dataset_std)
        channels, side = feature_shape(self.encoder, config.image_size)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(channels * side * side, HIDDEN), nn.ReLU(inplace=True),
            nn.Dropout(0.5), nn.Linear(HIDDEN, ROTATIONS))

    def forward(self, images):
        """Rotation logits (N, 4)."""
        return self.head(self.encoder(images))

    def configure_optimizers(self):
        return {"network": torch.optim.Adam(self.parameters(), lr=self.config.lr or 1e-3)}

    def train_step(self, batch, optimizers):
        images, labels = rotated_batch(batch["image"])
        loss, accuracy = classification_metrics(self(images), labels)
        take_step(optimizers["network"], loss)
        return {"loss": loss.item(), "accuracy": accuracy.item()}

    @torch.no_grad()
    def preview(self, batch):
        """Rows 1-4: the images turned by 0-3 quarter turns (what the network sees); rows 5-8: each of
        those turned back by the rotation the network predicts, so every image there is upright
        exactly when the prediction is right."""
        images, _ = rotated_batch(batch["image"])
        predicted = self(images).argmax(1)
        undone = torch.stack([torch.rot90(image, -int(k), dims=(-2, -1))
                              for image, k in zip(images, predicted)])
        return [*images.chunk(ROTATIONS), *undone.chunk(ROTATIONS)]
