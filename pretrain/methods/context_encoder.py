"""Context encoder (Pathak et al., CVPR 2016): predict dropped pixels from their surroundings."""
import dataclasses
from dataclasses import dataclass

import torch

from bench_runtime.engine import take_step
from bench_runtime.errors import UserError
from bench_runtime.options import check_ranges, option
from .. import losses
from ..backbones import is_backbone_arch
from ..networks import Discriminator, FeatureContextEncoder, FeatureNetworkOptions, InpaintingGenerator
from .base import PretextMethod
from .registry import register

LOSSES = ("l2", "l2+adv")
OPTIMIZERS = ("adam", "sgd")
TARGETS = ("pixels", "context-normalised")


@dataclass
class ContextEncoderOptions(FeatureNetworkOptions):
    loss: str = option("l2", "l2: masked L2; l2+adv: 0.999 L2 + 0.001 adversarial (DCGAN discriminator)",
                       choices=LOSSES)
    overlap: int | None = option(None, "width in px of the band around the hole that is predicted too, at "
                                 "--overlap-weight (default: 0 for the feature networks, the paper's L2 over the "
                                 "dropped pixels only; 4 for --arch inpaint, as the released inpainting code)")
    overlap_weight: float = option(10.0, "L2 weight of the overlap band relative to the hole")
    adv_weight: float = option(0.001, "weight of the adversarial term with --loss l2+adv")
    optimizer: str = option("adam", "the generator's optimiser (sgd: momentum 0.9; give --lr)", choices=OPTIMIZERS)
    target: str = option("pixels", "what the network predicts in the holes: the pixels, or the pixels standardised "
                         "by the mean and std of each image's visible context, per channel (so it cannot score by "
                         "the image's mean colour alone; fills are mapped back with the same context statistics)",
                         choices=TARGETS)

    def __post_init__(self):
        super().__post_init__()
        check_ranges([("--overlap", self.overlap, self.overlap is None or self.overlap >= 0, "0 or more"),
                      ("--overlap-weight", self.overlap_weight, self.overlap_weight >= 0, "0 or more"),
                      ("--adv-weight", self.adv_weight, 0 <= self.adv_weight <= 1, "in [0, 1]")])


def default_overlap(arch):
    """The overlap band's default width: the inpainting network's 4 px (released code); none for
    the feature networks, whose L2 covers only the dropped pixels (the paper's Eq. 1). There the
    band would lie on visible pixels and make most of the loss copying the input (86% of the L2
    weight at 128 px with random-region holes)."""
    return 4 if arch == "inpaint" else 0


@register
class ContextEncoder(PretextMethod):
    name = "context-encoder"
    description = "inpaint dropped regions from their context (Pathak et al. 2016)"
    uses_masks = True
    Options = ContextEncoderOptions

    @classmethod
    def resolve_options(cls, config):
        options = super().resolve_options(config)
        if options.overlap is None:
            options = dataclasses.replace(options, overlap=default_overlap(config.arch))
        return options

    def __init__(self, config, dataset_mean, dataset_std):
        if config.arch != "inpaint" and not is_backbone_arch(config.arch):
            raise UserError(f"unknown --arch {config.arch!r}; choose alexnet, inpaint or timm:<model name>")
        super().__init__(config, dataset_mean, dataset_std)
        side = config.image_size
        self.hole_band = self.options.overlap

        # The inpainting network outputs only the centre quarter for central holes (§3b).
        self.patch = None
        if config.arch == "inpaint":
            if config.mask == "central":
                start = (side - side // 2) // 2
                self.patch = slice(start, start + side // 2)
            self.generator = InpaintingGenerator(side, side // 2 if self.patch else side)
            # tanh outputs: pixels in [-1, 1] as in the released code.
            self.input_mean, self.input_std = [0.5] * 3, [0.5] * 3
            self.mean.fill_(0.5), self.std.fill_(0.5)
        else:
            self.generator = FeatureContextEncoder(self.new_encoder(), side, self.options.dropout,
                                                   self.options.output_scale)
        # Dropped pixels hold the dataset mean (in the network's input space).
        fill = (torch.tensor(dataset_mean) - torch.tensor(self.input_mean)) / torch.tensor(self.input_std)
        self.register_buffer("fill", fill.view(1, 3, 1, 1))
        self.adversarial = self.options.loss == "l2+adv"
        self.context_normalised = self.options.target == "context-normalised"
        if self.context_normalised and self.patch is not None:
            raise UserError("--target context-normalised needs a network that predicts the whole image "
                            "(not --arch inpaint with central holes)")
        if self.adversarial:
            self.discriminator = Discriminator(side // 2 if self.patch else side)

    @property
    def encoder(self):
        return self.generator.encoder

    def label_details(self, config):
        band = f", overlap {self.hole_band} px x{self.options.overlap_weight:g}" if self.hole_band else ""
        return f"{config.mask}{band}"

    def default_lr(self):
        # Reported for the released code: 1e-3 for central holes, 1e-4 for random regions;
        # the inpainting GAN uses 2e-3 for the generator (10x the discriminator's 2e-4).
        if self.config.arch == "inpaint":
            return 2e-3
        return 1e-3 if self.config.mask == "central" else 1e-4

    def configure_optimizers(self):
        lr = self.config.lr or self.default_lr()
        betas = (0.5, 0.999) if (self.adversarial or self.config.arch == "inpaint") else (0.9, 0.999)
        if self.options.optimizer == "sgd":
            generator = torch.optim.SGD(self.generator.parameters(), lr=lr, momentum=0.9)
        else:
            generator = torch.optim.Adam(self.generator.parameters(), lr=lr, betas=betas)
        optimizers = {"generator": generator}
        if self.adversarial:
            optimizers["discriminator"] = torch.optim.Adam(
                self.discriminator.parameters(), lr=lr / 10, betas=betas)
        return optimizers

    def fill_holes(self, image, hole):
        """The network's input: `image` with the dataset mean colour in its holes."""
        return image * (1 - hole) + self.fill * hole

    def loss_weights(self, hole):
        """Per-pixel L2 weights: the hole, and the overlap band around it at overlap_weight x."""
        return losses.reconstruction_weights(hole, self.hole_band, self.options.overlap_weight)

    def _predict(self, masked):
        """Prediction in the image frame; outside the predicted patch it is the masked input."""
        out = self.generator(masked)
        if self.patch is None:
            return out
        frame = masked.clone()
        frame[..., self.patch, self.patch] = out
        return frame

    def _in_pixels(self, prediction, image, hole):
        """`prediction` as pixels (the network's input space), and the L2 target it is scored against."""
        if not self.context_normalised:
            return prediction, image
        mean, std = losses.visible_statistics(image, 1 - hole)
        return prediction * std + mean, (image - mean) / std

    def _discriminator_view(self, images):
        # It sees only the predicted patch for central holes, the whole image otherwise.
        return images if self.patch is None else images[..., self.patch, self.patch]

    def train_step(self, batch, optimizers):
        image, hole = batch["image"], batch["hole"]
        masked = self.fill_holes(image, hole)
        output = self._predict(masked)
        prediction, target = self._in_pixels(output, image, hole)
        l2 = losses.masked_l2(output, target, self.loss_weights(hole))
        metrics = {}
        if not self.adversarial:
            loss = l2
        else:
            # The released code shows the discriminator the raw predicted patch for central holes,
            # and the completed image (context + prediction in the holes) otherwise.
            fake = prediction if self.patch is not None else image * (1 - hole) + prediction * hole
            d_loss = losses.discriminator_loss(
                self.discriminator(self._discriminator_view(image)),
                self.discriminator(self._discriminator_view(fake.detach())))
            take_step(optimizers["discriminator"], d_loss)
            adv = losses.adversarial_generator_loss(self.discriminator(self._discriminator_view(fake)))
            loss = losses.joint_loss(l2, adv, self.options.adv_weight)
            metrics = {"adv": adv.item(), "d_loss": d_loss.item()}
        take_step(optimizers["generator"], loss)
        return {"loss": loss.item(), "l2": l2.item(), **metrics}

    @torch.no_grad()
    def complete(self, image, hole):
        """`image` with its holes filled by the network (normalised like its input)."""
        prediction = self._in_pixels(self._predict(self.fill_holes(image, hole)), image, hole)[0]
        return image * (1 - hole) + prediction * hole

    @torch.no_grad()
    def preview(self, batch):
        image, hole = batch["image"], batch["hole"]
        return [self.fill_holes(image, hole), self.complete(image, hole), image]
