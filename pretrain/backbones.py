"""Backbones: the networks pretext methods train and transfer tasks load ("arch").

"alexnet"      the paper's: torchvision's AlexNet conv1..pool5, He-initialised (see he_init).
"timm:<name>"  any timm model by name (timm:resnet18, timm:resnet50, ...), cut after its last
               stage (timm's features_only): its channels and output stride come from timm.
Both return one (B, C, h, w) feature map; feature_shape() says C and h for an input size.
"""
import torch
from torch import nn

from runtime.errors import UserError
from .networks import ALEXNET_POOL5_CHANNELS, alexnet_encoder, feature_shape, he_init  # noqa: F401

TIMM_PREFIX = "timm:"


class TimmBackbone(nn.Module):
    """A timm model's last feature stage, as one feature map."""

    def __init__(self, name):
        super().__init__()
        import timm  # only timm backbones need it
        try:
            self.model = timm.create_model(name, pretrained=False, features_only=True, out_indices=(-1,))
        except (RuntimeError, ValueError) as exc:
            raise UserError(f"--arch {TIMM_PREFIX}{name}: timm cannot build it ({exc})") from None
        self.name = name
        self.channels = self.model.feature_info.channels()[-1]
        self.stride = self.model.feature_info.reduction()[-1]

    def forward(self, x):
        return self.model(x)[-1]


def is_backbone_arch(arch):
    return arch == "alexnet" or arch.startswith(TIMM_PREFIX)


def label_with_arch(label, arch):
    """A table row's label, naming the backbone when it is not the paper's: "rotation [timm:resnet18]"."""
    return f"{label} [{arch}]" if arch.startswith(TIMM_PREFIX) else label


def build_backbone(arch):
    """A freshly initialised backbone for `arch` ("alexnet" or "timm:<name>")."""
    if arch == "alexnet":
        encoder = alexnet_encoder()
        he_init(encoder, linear_output=False)  # a ReLU follows conv5 inside the features
        return encoder
    if arch.startswith(TIMM_PREFIX):
        return TimmBackbone(arch.removeprefix(TIMM_PREFIX))
    raise UserError(f"unknown --arch {arch!r}; use alexnet or timm:<model name> (e.g. timm:resnet18)")


def frozen_features(encoder, images, batch_size=64):
    """The encoder's output on `images` in eval mode without gradients, in batches; the encoder's
    train/eval mode is restored. What a frozen-feature probe or a fresh head sees."""
    was_training = encoder.training
    encoder.eval()
    with torch.no_grad():
        features = torch.cat([encoder(batch) for batch in images.split(batch_size)])
    encoder.train(was_training)
    return features


def backbone_channels(encoder):
    return getattr(encoder, "channels", ALEXNET_POOL5_CHANNELS)
