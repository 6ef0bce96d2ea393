"""Supervised pretraining: the encoder learns to classify labelled images. With ImageNet as the
data this is the paper's "ImageNet" row; any labelled set gives the same row for its own labels.

Labels come from the data root (bench_data.images.image_labels): an image folder
(root/<class>/<image>) gives one class per image, learnt with softmax cross-entropy; a VOC root
gives its 20 per-class labels, learnt as VOC classification is (sigmoid cross-entropy, classes
present only as difficult objects ignored)."""
import torch
import torch.nn.functional as F
from torch import nn

from bench_runtime.engine import take_step
from ..backbones import feature_shape
from .base import PretextMethod, classification_metrics
from .registry import register

HIDDEN = 1024  # fc6/fc7 width: the pretraining head is dropped after training, only conv1..pool5 transfer


@register
class Supervised(PretextMethod):
    name = "supervised"
    description = "classify labelled images (class folders or VOC labels): the ImageNet row"
    uses_labels = True

    def __init__(self, config, dataset_mean, dataset_std):
        super().__init__(config, dataset_mean, dataset_std)
        channels, side = feature_shape(self.encoder, config.image_size)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.5), nn.Linear(channels * side * side, HIDDEN),
            nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(inplace=True),
            nn.Linear(HIDDEN, len(config.classes)))

    def configure_optimizers(self):
        # AlexNet's recipe: SGD with momentum; 0.01 is its starting rate.
        return {"network": torch.optim.SGD(self.parameters(), lr=self.config.lr or 0.01, momentum=0.9,
                                           weight_decay=5e-4)}

    def train_step(self, batch, optimizers):
        logits, label = self.head(self.encoder(batch["image"])), batch["label"]
        if label.dim() == 1:  # one class per image
            loss, accuracy = classification_metrics(logits, label)
        else:  # VOC: 1 present, -1 absent, 0 difficult (ignored)
            present, scored = (label == 1).float(), (label != 0).float()
            loss = F.binary_cross_entropy_with_logits(logits, present, weight=scored)
            accuracy = (((logits > 0).float() == present).float() * scored).sum() / scored.sum().clamp(min=1)
        take_step(optimizers["network"], loss)
        return {"loss": loss.item(), "accuracy": accuracy.item()}

    @torch.no_grad()
    def preview(self, batch):
        return [batch["image"]]
