"""Supervised pretraining: the encoder learns to classify images whose class is their folder
(root/<class>/<image>). With ImageNet as the folder this is the paper's "ImageNet" row; any
labelled folder gives the same row for its own labels."""
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..networks import ALEXNET_POOL5_CHANNELS, alexnet_encoder, alexnet_pool5_side, he_init
from . import PretextMethod, register

HIDDEN = 1024  # fc6/fc7 width: the pretraining head is dropped after training, only conv1..pool5 transfer


@register
class Supervised(PretextMethod):
    name = "supervised"
    description = "classify images by their class folder (root/<class>/<image>): the ImageNet row"
    uses_labels = True

    def __init__(self, config, dataset_mean, dataset_std):
        super().__init__()
        if config.arch != "alexnet":
            raise UserError(f"supervised pretraining uses the alexnet network, not --arch {config.arch}")
        self.config = config
        self.encoder = alexnet_encoder()
        he_init(self.encoder, linear_output=False)
        side = alexnet_pool5_side(config.image_size)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.5), nn.Linear(ALEXNET_POOL5_CHANNELS * side * side, HIDDEN),
            nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(inplace=True),
            nn.Linear(HIDDEN, len(config.classes)))
        self.encoder_arch = "alexnet"
        self.input_mean, self.input_std = list(dataset_mean), list(dataset_std)

    def configure_optimizers(self):
        # AlexNet's recipe: SGD with momentum; 0.01 is its starting rate.
        return {"network": torch.optim.SGD(self.parameters(), lr=self.config.lr or 0.01, momentum=0.9,
                                           weight_decay=5e-4)}

    def train_step(self, batch, optimizers):
        logits = self.head(self.encoder(batch["image"]))
        loss = F.cross_entropy(logits, batch["label"])
        optimizer = optimizers["network"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        accuracy = (logits.argmax(1) == batch["label"]).float().mean()
        return {"loss": loss.item(), "accuracy": accuracy.item()}

    @torch.no_grad()
    def preview(self, batch):
        return [batch["image"]]
