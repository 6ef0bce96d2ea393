"""Denoising autoencoder (Vincent et al., ICML 2008) on the context encoder's network: reconstruct
the whole image from a copy in which scattered pixels were dropped. The paper contrasts it with
the context encoder: its corruption is local and low-level, so filling it in needs little of the
semantics that filling a large hole does."""
import torch

from .autoencoder import Autoencoder
from .registry import register

DROP_FRACTION = 0.25  # Vincent et al.'s "masking noise": each pixel dropped independently


@register
class DenoisingAutoencoder(Autoencoder):
    name = "denoising-autoencoder"
    description = "reconstruct the whole image from a copy with 25% of its pixels dropped (Vincent et al. 2008)"

    def corrupt(self, image):
        # A dropped pixel takes the dataset mean, which is 0 after normalisation (as in the
        # context encoder's holes); torch's RNG keeps it reproducible and resumable.
        kept = torch.rand(image.shape[0], 1, *image.shape[2:], device=image.device) >= DROP_FRACTION
        return image * kept
