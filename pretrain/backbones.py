"""Backbones: the networks pretext methods train and transfer tasks load ("arch").

"alexnet"      the paper's: torchvision's AlexNet conv1..pool5, He-initialised (see he_init);
               with encoder_norm "batch" each convolution is followed by BatchNorm while it
               pretrains, folded into the convolution when the encoder is saved (plain_encoder).
"timm:<name>"  any timm model by name (timm:resnet18, timm:resnet50, ...), cut after its last
               stage (timm's features_only): its channels and output stride come from timm.
               Keyword arguments of timm.create_model may follow the name, comma-separated
               (timm:vit_tiny_patch16_224,patch_size=8,img_size=64): the arch string alone
               rebuilds the network, so transfer loads it from encoder.json.
               A vision transformer keeps its whole body (final norm included) and returns its
               patch tokens as a map: class and register tokens dropped, the rest reshaped to
               (B, C, H/patch, W/patch) (timm's forward_intermediates). It takes any input size
               (position embeddings resampled, inputs padded to whole patches), as detection
               and segmentation need.
All return one (B, C, h, w) feature map; feature_shape() says C and h for an input size.
"""
import ast
import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from bench_runtime.errors import UserError
from .networks import ALEXNET_POOL5_CHANNELS, alexnet_encoder, feature_shape, he_init  # noqa: F401

TIMM_PREFIX = "timm:"
ENCODER_NORMS = ("none", "batch")


class ConvBatchNorm(nn.Sequential):
    """A convolution and the BatchNorm after it: an encoder layer that pretrains normalised and
    is saved as the one convolution it folds into."""


class TimmBackbone(nn.Module):
    """A timm model's last feature stage, as one feature map; `spec` is "name[,key=value...]"."""

    def __init__(self, spec):
        super().__init__()
        import timm  # only timm backbones need it
        name, kwargs = timm_model_args(spec)
        self.name, self.is_vit = spec, _is_vision_transformer(name)
        try:
            if self.is_vit:  # the whole body: pretext methods (MAE) run its parts on their own
                self.model = timm.create_model(name, pretrained=False, num_classes=0, dynamic_img_size=True,
                                               dynamic_img_pad=True, **kwargs)
            else:
                self.model = timm.create_model(name, pretrained=False, features_only=True, out_indices=(-1,), **kwargs)
        except (RuntimeError, ValueError, TypeError) as exc:
            raise UserError(f"--arch {TIMM_PREFIX}{spec}: timm cannot build it ({exc})") from None
        if self.is_vit:
            self.channels, self.stride = self.model.embed_dim, self.model.patch_embed.patch_size[0]
        else:
            self.channels = self.model.feature_info.channels()[-1]
            self.stride = self.model.feature_info.reduction()[-1]

    def forward(self, x):
        if self.is_vit:
            return self.model.forward_intermediates(x, indices=1, norm=True, output_fmt="NCHW",
                                                    intermediates_only=True)[-1]
        return self.model(x)[-1]


def timm_model_args(spec):
    """"name,key=value,..." -> (name, {key: value}); values are Python literals (8, 0.1, True) or
    else strings."""
    name, *pairs = spec.split(",")
    kwargs = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not equals or not key.isidentifier():
            raise UserError(f"--arch {TIMM_PREFIX}{spec}: {pair!r} is not key=value")
        try:
            kwargs[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            kwargs[key] = value
    return name, kwargs


def _is_vision_transformer(name):
    """True for the models of timm's VisionTransformer class (vit_*, deit_*, ...)."""
    from timm.models import is_model, model_entrypoint
    if not is_model(name):
        return False  # timm's own error says so
    return model_entrypoint(name).__module__ in ("timm.models.vision_transformer", "timm.models.deit")


def is_backbone_arch(arch):
    return arch == "alexnet" or arch.startswith(TIMM_PREFIX)


def label_with_arch(label, arch):
    """A table row's label, naming the backbone when it is not the paper's: "rotation [timm:resnet18]"."""
    return f"{label} [{arch}]" if arch.startswith(TIMM_PREFIX) else label


def build_backbone(arch, norm="none"):
    """A freshly initialised backbone for `arch` ("alexnet" or "timm:<name>"); norm "batch" puts
    BatchNorm after each AlexNet convolution (timm models bring their own normalisation)."""
    if arch == "alexnet":
        encoder = alexnet_encoder()
        he_init(encoder, linear_output=False)  # a ReLU follows conv5 inside the features
        if norm == "batch":
            for index, layer in enumerate(encoder):
                if isinstance(layer, nn.Conv2d):
                    encoder[index] = ConvBatchNorm(layer, nn.BatchNorm2d(layer.out_channels))
        return encoder
    if norm != "none":
        raise UserError(f"--encoder-norm {norm} applies to --arch alexnet only; {arch} has its own normalisation")
    if arch.startswith(TIMM_PREFIX):
        return TimmBackbone(arch.removeprefix(TIMM_PREFIX))
    raise UserError(f"unknown --arch {arch!r}; use alexnet or timm:<model name> (e.g. timm:resnet18)")


def plain_encoder(encoder):
    """`encoder` as its plain architecture: a copy with every ConvBatchNorm folded into its
    convolution with BatchNorm's running statistics (what eval mode computes), so that an AlexNet
    pretrained with BatchNorm saves as, and loads into, torchvision's AlexNet features. An encoder
    without ConvBatchNorm is returned as it is."""
    if not any(isinstance(m, ConvBatchNorm) for m in encoder.modules()):
        return encoder
    plain = copy.deepcopy(encoder).eval()
    for index, layer in enumerate(plain):
        if isinstance(layer, ConvBatchNorm):
            plain[index] = fuse_conv_bn_eval(*layer)
    return plain.train(encoder.training)


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
