"""Masked autoencoder (He, Chen, Xie, Li, Dollár and Girshick, "Masked Autoencoders Are Scalable
Vision Learners", CVPR 2022): a vision transformer sees a random quarter of an image's patches, a
light transformer decoder predicts the pixels of the others.

The encoder runs on the visible patches only (the paper's speed-up: 4x fewer tokens at ratio
0.75); the decoder gets them back in place among mask tokens, with fixed 2-d sine-cosine
positions, and predicts every patch; the loss is the mean squared error on the masked patches
only, against each patch's pixels normalised by its own mean and variance (the paper's better
target). Views: random resized crop of 20-100% of the area and flip, nothing else (the paper's).
Built from timm's parts: the backbone's VisionTransformer (patch embedding, position embedding,
blocks) and timm's Block for the decoder.
"""
from dataclasses import dataclass

import torch
from timm.layers import build_sincos2d_pos_embed
from timm.models.vision_transformer import Block
from torch import nn

from bench_data.views import ViewAugmentation
from bench_runtime.engine import take_step
from bench_runtime.errors import UserError
from bench_runtime.options import check_ranges, option
from ..backbones import TimmBackbone
from ..patches import masked_patch_loss, normalised_patches, patchify, random_masking, unpatchify
from .base import PretextMethod
from .registry import register


@dataclass
class MAEOptions:
    mask_ratio: float = option(0.75, "share of the patches hidden from the encoder")
    decoder_depth: int = option(2, "transformer blocks of the decoder: 2 for a CPU; the paper's 8 (ViT-L) "
                                "probes linearly better, fine-tuning hardly changes (its Table 1a)")
    decoder_width: int = option(128, "token width of the decoder (the paper's 512)")
    norm_pix_loss: bool = option(True, "targets: each patch's pixels normalised by its own mean and variance")

    def __post_init__(self):
        check_ranges([("--mask-ratio", self.mask_ratio, 0 < self.mask_ratio < 1, "in (0, 1)"),
                      ("--decoder-depth", self.decoder_depth, self.decoder_depth >= 1, "at least 1"),
                      ("--decoder-width", self.decoder_width, self.decoder_width % 8 == 0 and self.decoder_width > 0,
                       "a positive multiple of 8 (4 heads, sine-cosine positions)")])


class VisibleEncoder(nn.Module):
    """The backbone's ViT on the visible patches of each image: patch and position embedding of
    all, the visible ones picked, then its blocks and norm. Returns (B, prefix + K, C)."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, images, visible):
        vit = self.backbone.model
        tokens = vit._pos_embed(vit.patch_embed(images))  # class/register tokens first
        prefix, patches = tokens[:, :vit.num_prefix_tokens], tokens[:, vit.num_prefix_tokens:]
        patches = patches.gather(1, visible[..., None].expand(-1, -1, patches.shape[-1]))
        return vit.norm(vit.blocks(vit.norm_pre(torch.cat([prefix, patches], 1))))


class Decoder(nn.Module):
    """Encoded visible tokens back in place among mask tokens, fixed sine-cosine positions,
    `depth` timm Blocks, then each patch's pixels."""

    def __init__(self, encoder_width, prefix, grid, patch_values, width, depth, heads=4):
        super().__init__()
        self.prefix = prefix
        self.embed = nn.Linear(encoder_width, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.register_buffer("position", build_sincos2d_pos_embed([grid, grid], width)[None], persistent=False)
        self.blocks = nn.Sequential(*[Block(width, heads, mlp_ratio=4, qkv_bias=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(width)
        self.predict = nn.Linear(width, patch_values)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, encoded, visible):
        tokens = self.embed(encoded)
        prefix, kept = tokens[:, :self.prefix], tokens[:, self.prefix:]
        count, width = len(tokens), tokens.shape[-1]
        every = self.mask_token.to(kept.dtype).expand(count, self.position.shape[1], width)
        every = every.scatter(1, visible[..., None].expand(-1, -1, width), kept) + self.position
        out = self.blocks(torch.cat([prefix, every], 1))
        return self.predict(self.norm(out))[:, self.prefix:]


@register
class MaskedAutoencoder(PretextMethod):
    name = "mae"
    description = "a ViT predicts the pixels of 75% hidden patches from the rest (He et al. 2022)"
    Options = MAEOptions

    def __init__(self, config, dataset_mean, dataset_std):
        super().__init__(config, dataset_mean, dataset_std)
        backbone = self.new_encoder()
        if not (isinstance(backbone, TimmBackbone) and backbone.is_vit):
            raise UserError(f"--method mae needs a vision transformer, not --arch {config.arch} "
                            f"(e.g. --arch timm:vit_tiny_patch16_224,patch_size=8,img_size={config.image_size})")
        self.patch = backbone.stride
        if config.image_size % self.patch:
            raise UserError(f"--image-size {config.image_size} is not a whole number of {self.patch} px patches")
        grid = config.image_size // self.patch
        self.visible_encoder = VisibleEncoder(backbone)
        self.decoder = Decoder(backbone.channels, backbone.model.num_prefix_tokens, grid, self.patch ** 2 * 3,
                               self.options.decoder_width, self.options.decoder_depth)
        self.views = ViewAugmentation(crop_scale=(0.2, 1.0))

    @property
    def encoder(self):
        return self.visible_encoder.backbone

    def reconstruct(self, images, generator=None):
        """(predicted patches, targets, masked) for one random masking of `images`."""
        visible, masked = random_masking(len(images), (images.shape[-1] // self.patch) ** 2,
                                         self.options.mask_ratio, images.device, generator)
        predicted = self.decoder(self.visible_encoder(images, visible), visible).float()
        target = patchify(images.float(), self.patch)
        return predicted, normalised_patches(target) if self.options.norm_pix_loss else target, masked

    def configure_optimizers(self):
        # The paper's AdamW: base rate 1.5e-4 per 256 images, betas (0.9, 0.95), weight decay 0.05.
        lr = self.config.lr or 1.5e-4 * self.config.batch_size / 256
        return {"network": torch.optim.AdamW(self.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.05)}

    def train_step(self, batch, optimizers):
        predicted, target, masked = self.reconstruct(self.normalised(self.views(self.pixels(batch["image"]))))
        loss = masked_patch_loss(predicted, target, masked)
        take_step(optimizers["network"], loss)
        return {"loss": loss.item()}

    @torch.no_grad()
    def preview(self, batch):
        """Rows: what the encoder sees (hidden patches blank), the reconstruction (predicted
        patches, brought back to each true patch's mean and variance when the targets are
        normalised, pasted among the visible ones) and the image."""
        images = batch["image"].float()
        predicted, _, masked = self.reconstruct(images, torch.Generator(images.device).manual_seed(0))
        patches = patchify(images, self.patch)
        if self.options.norm_pix_loss:
            mean, var = patches.mean(-1, keepdim=True), patches.var(-1, keepdim=True)
            predicted = predicted * (var + 1e-6).sqrt() + mean
        hidden = masked[..., None]
        side = images.shape[-1]
        return [unpatchify(patches.masked_fill(hidden, 0), self.patch, side),
                unpatchify(torch.where(hidden, predicted, patches), self.patch, side), images]
