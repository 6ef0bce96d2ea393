"""The paper's networks (docs/protocol.md, "Networks"): the AlexNet feature-learning context encoder, the
inpainting generator (4000-d bottleneck) and the DCGAN discriminator."""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from bench_runtime.errors import UserError
from bench_runtime.options import check_ranges, option

ALEXNET_POOL5_CHANNELS = 256
ALEXNET_POOL5_STRIDE = 32  # conv1's 4 x three 2x max-pools
DECODER_CHANNELS = 256  # the context encoder's decoder starts from AlexNet's pool5 width


def alexnet_encoder():
    """torchvision's AlexNet conv1..pool5, randomly initialised.

    Using torchvision's module itself keeps the saved encoder loadable into
    `torchvision.models.alexnet().features` (channel widths 64-192-384-256-256, not Caffe's 96-256-...).
    """
    return torchvision.models.alexnet(weights=None).features


def alexnet_pool5_side(image_size):
    """Side of pool5 for a square input, from the AlexNet arithmetic (6 at 227 px, 3 at 128 px)."""
    side = (image_size + 2 * 2 - 11) // 4 + 1  # conv1: 11x11, stride 4, padding 2
    for _ in range(3):                          # three 3x3 stride-2 max-pools
        side = (side - 3) // 2 + 1
    return side


def feature_shape(encoder, image_size):
    """(channels, side) of the encoder's feature map for a square `image_size` input."""
    was_training = encoder.training
    encoder.eval()  # BatchNorm cannot run a batch of one in training mode
    try:
        with torch.no_grad():
            features = encoder(torch.zeros(1, 3, image_size, image_size,
                                           device=next(encoder.parameters()).device))
    except RuntimeError as exc:
        raise UserError(f"--image-size {image_size} is too small for this backbone ({exc})") from None
    finally:
        encoder.train(was_training)
    if features.shape[-1] < 1:
        raise UserError(f"--image-size {image_size} is too small for this backbone")
    return features.shape[1], features.shape[-1]


class ChannelwiseFC(nn.Module):
    """For each channel, a full (n*n -> n*n) linear map inside that channel; nothing across channels.

    m * n^4 weights instead of the (m*n^2)^2 of a full FC layer (paper §3.1).
    """

    def __init__(self, channels, side):
        super().__init__()
        area = side * side
        self.side = side
        # He-normal over the n^2 inputs of each output (a ReLU follows).
        self.weight = nn.Parameter(torch.randn(channels, area, area) * math.sqrt(2.0 / area))
        self.bias = nn.Parameter(torch.zeros(channels, area))

    def forward(self, x):
        batch, channels, height, width = x.shape
        flat = x.reshape(batch, channels, height * width).transpose(0, 1)  # (m, B, n^2)
        out = torch.bmm(flat, self.weight).transpose(0, 1) + self.bias     # (B, m, n^2)
        return out.reshape(batch, channels, height, width)


class UpConvolution(nn.ConvTranspose2d):
    """A transposed convolution that runs 1x1 inputs in fp32 under CPU autocast: there oneDNN's
    bf16 weight gradient has non-finite entries for a 1x1 input (torch 2.14; 5-30% of random
    trials), which poisons the weights. Only inputs under 95 px give the decoder 1x1 maps."""

    def forward(self, x):
        if x.shape[-2:] == (1, 1) and x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float())
        return super().forward(x)


def _upconv(in_ch, out_ch):
    # kernel 5, stride 2, padding 2: out = 2 * in - 1 (6 -> 11 -> 21 -> 41 -> 81 -> 161 at 227 px).
    return UpConvolution(in_ch, out_ch, kernel_size=5, stride=2, padding=2)


@dataclass
class FeatureNetworkOptions:
    """Options of the feature-learning network (FeatureContextEncoder), for the methods built on it."""
    dropout: float = option(0.5, "dropout after the channel-wise fully-connected layer (the paper: 0.5)")
    output_scale: float = option(1.0, "factor on the last up-convolution's initial weights: below 1 starts the "
                                 "predictions near the mean colour instead of far off it")

    def __post_init__(self):
        check_ranges([("--dropout", self.dropout, 0 <= self.dropout < 1, "in [0, 1)"),
                      ("--output-scale", self.output_scale, self.output_scale >= 0, "0 or more")])


class FeatureContextEncoder(nn.Module):
    """Encoder -> channel-wise FC (+dropout) -> 1x1 channel mixing to 256 -> up-convolutions,
    resized to the input size. Predicts every pixel; the loss picks the hole.

    `encoder` is a backbone (pretrain.backbones): the paper's AlexNet, whose pool5 (6x6 at 227 px)
    gets five 5x5 stride-2 up-convolutions (6 -> 11 -> 21 -> 41 -> 81 -> 161), or any other, for
    which the 1x1 convolution maps its channels to 256 and there is one up-convolution per factor 2
    of its output stride (five for AlexNet's and a ResNet's 32)."""

    def __init__(self, encoder, image_size, dropout=0.5, output_scale=1.0):
        super().__init__()
        channels, side = feature_shape(encoder, image_size)
        self.image_size = image_size
        self.encoder = encoder
        self.bottleneck = nn.Sequential(
            ChannelwiseFC(channels, side), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Conv2d(channels, DECODER_CHANNELS, kernel_size=1), nn.ReLU(inplace=True))
        doublings = round(math.log2(getattr(encoder, "stride", ALEXNET_POOL5_STRIDE)))
        widths = [DECODER_CHANNELS, *([128, 64, 64, 32] + [32] * doublings)[:doublings - 1], 3]
        layers = []
        for in_ch, out_ch in zip(widths[:-1], widths[1:]):
            layers += [_upconv(in_ch, out_ch), nn.ReLU(inplace=True)]
        self.decoder = nn.Sequential(*layers[:-1])  # no ReLU after the last up-convolution
        he_init(self.bottleneck, linear_output=False)
        he_init(self.decoder)
        with torch.no_grad():
            self.decoder[-1].weight.mul_(output_scale)

    def forward(self, x):
        out = self.decoder(self.bottleneck(self.encoder(x)))
        return F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)


class WholeInputConv(nn.Conv2d):
    """A convolution whose kernel covers its whole input (no padding), so it has one output pixel:
    computed as one matmul. oneDNN runs this shape as a convolution at a few percent of the
    matmul peak; for the inpainting bottleneck (512@4x4 -> 4000) the matmul is several times
    faster. Other input sizes take the convolution path."""

    def forward(self, x):
        if x.shape[-2:] != self.kernel_size or self.padding != (0, 0) or self.groups != 1:
            return super().forward(x)
        return F.linear(x.flatten(1), self.weight.flatten(1), self.bias).view(len(x), self.out_channels, 1, 1)


class PointInputUpConv(nn.ConvTranspose2d):
    """A transposed convolution of a 1x1 input (no padding): its output is the kernel weighted by
    the input channels, one matmul (the inpainting decoder's 4000 -> 512@4x4)."""

    def forward(self, x):
        if x.shape[-2:] != (1, 1) or self.padding != (0, 0) or self.groups != 1 or self.output_padding != (0, 0):
            return super().forward(x)
        out = F.linear(x.flatten(1), self.weight.flatten(1).t()).view(len(x), self.out_channels, *self.kernel_size)
        return out if self.bias is None else out + self.bias.view(1, -1, 1, 1)


class SubPixelUpConv(nn.ConvTranspose2d):
    """A 4x4, stride-2, padding-1 transposed convolution computed in its sub-pixel form: one 3x3
    convolution to 4x the output channels, then a pixel shuffle. Same parameters, same output
    (up to the order of floating-point sums); oneDNN's plain convolutions are faster on a CPU
    than its transposed ones, whose backward pass especially is slow.

    Output row 2m + a (a = 0, 1) of the transposed convolution takes input rows m - 1 + t through
    kernel row TAPS[a][t] (4: no tap), and the same for columns."""
    TAPS = ((3, 1, 4), (4, 2, 0))

    def __init__(self, in_channels, out_channels, bias=False):
        super().__init__(in_channels, out_channels, kernel_size=4, stride=2, padding=1, bias=bias)

    def subpixel_weight(self):
        """(4 * out, in, 3, 3): the weight of the 3x3 convolution; channel 4c + 2a + b is output
        channel c at row phase a, column phase b (the order pixel_shuffle reads)."""
        padded = F.pad(self.weight, (0, 1, 0, 1))  # index 4: a zero row and column
        taps = torch.tensor(self.TAPS, device=self.weight.device)
        gathered = padded[:, :, taps[:, None, :, None], taps[None, :, None, :]]  # (in, out, 2, 2, 3, 3)
        return gathered.permute(1, 2, 3, 0, 4, 5).reshape(4 * self.out_channels, self.in_channels, 3, 3)

    def forward(self, x):
        bias = None if self.bias is None else self.bias.repeat_interleave(4)
        return F.pixel_shuffle(F.conv2d(x, self.subpixel_weight(), bias, padding=1), 2)


def _doublings(start, stop, what):
    count = math.log2(stop / start)
    if count < 1 or count != int(count):
        raise UserError(f"{what} must be a power of two times {start}, got {stop}")
    return int(count)


class InpaintingGenerator(nn.Module):
    """Paper §3b: 128 px in; five 4x4 stride-2 convs to 512@4x4, a 4000-d bottleneck, and
    up-convolutions back to `output_size` (64 = the centre patch, 128 = the whole image)."""

    def __init__(self, image_size=128, output_size=64, bottleneck=4000):
        super().__init__()
        if image_size != 128:
            raise UserError(f"the inpainting network takes 128 px inputs, got --image-size {image_size}")
        widths = [3, 64, 64, 128, 256, 512]
        layers = []
        for index, (in_ch, out_ch) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Conv2d(in_ch, out_ch, 4, 2, 1, bias=False))
            if index > 0:
                layers.append(nn.BatchNorm2d(out_ch))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
        layers += [WholeInputConv(512, bottleneck, 4, bias=False), nn.BatchNorm2d(bottleneck),
                   nn.LeakyReLU(0.2, inplace=True)]
        self.encoder = nn.Sequential(*layers)

        ups = _doublings(4, output_size, "the inpainting output size")
        widths = [512, 256, 128, 64] + [64] * max(0, ups - 4)
        widths = widths[:ups] + [3]
        layers = [PointInputUpConv(bottleneck, 512, 4, bias=False), nn.BatchNorm2d(512), nn.ReLU(True)]
        for in_ch, out_ch in zip(widths[:-1], widths[1:]):
            layers.append(nn.ConvTranspose2d(in_ch, out_ch, 4, 2, 1, bias=False))
            layers += [nn.BatchNorm2d(out_ch), nn.ReLU(True)] if out_ch != 3 else [nn.Tanh()]
        self.decoder = nn.Sequential(*layers)
        dcgan_init(self)

    def forward(self, x):
        return self.decoder(self.encoder(x))


class Discriminator(nn.Module):
    """DCGAN discriminator: 4x4 stride-2 convs (64, 128, 256, 512, BN on all but the first) down to
    at most 4x4, then one valid conv to a single logit. Any input size (64 px for the centre patch)."""

    def __init__(self, input_size=64):
        super().__init__()
        layers, in_ch, out_ch, side = [], 3, 64, input_size
        while side > 4:
            layers.append(nn.Conv2d(in_ch, out_ch, 4, 2, 1, bias=False))
            if in_ch != 3:
                layers.append(nn.BatchNorm2d(out_ch))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            in_ch, out_ch, side = out_ch, min(out_ch * 2, 512), side // 2
        layers.append(WholeInputConv(in_ch, 1, side, bias=False))
        self.net = nn.Sequential(*layers)
        dcgan_init(self)

    def forward(self, x):
        """Logits (sigmoid is folded into the loss for numerical stability)."""
        return self.net(x).flatten(1).mean(1)


def he_init(module, linear_output=True):
    """He-normal weights, zero biases, for every (transposed) convolution of `module`.

    The paper says only "random Gaussian" for AlexNet. PyTorch's default init shrinks the signal
    through the 13 layers of the feature network so much that its output barely depends on its
    input (std across images ~1e-5 at start), and it then learns very slowly; He init keeps the
    activations' scale. A stride-s transposed conv feeds each output from in*k*k/s^2 weights;
    with `linear_output` the last layer (no ReLU after it) gets gain 1.
    """
    layers = [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    for layer in layers:
        fan_in = layer.in_channels * layer.kernel_size[0] * layer.kernel_size[1]
        if isinstance(layer, nn.ConvTranspose2d):
            fan_in /= layer.stride[0] * layer.stride[1]
        gain = 1.0 if linear_output and layer is layers[-1] else 2.0
        nn.init.normal_(layer.weight, 0.0, math.sqrt(gain / fan_in))
        nn.init.zeros_(layer.bias)


def dcgan_init(module):
    """Weights N(0, 0.02); BatchNorm gamma N(1, 0.02), beta 0 (the released code's init)."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(layer.weight, 0.0, 0.02)
        elif isinstance(layer, nn.BatchNorm2d):
            nn.init.normal_(layer.weight, 1.0, 0.02)
            nn.init.zeros_(layer.bias)
