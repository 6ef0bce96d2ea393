"""A test plug-in (`--plugin tests/deterministic_methods.py`): the context encoder with its
dropout switched off, so that its training depends on nothing random but the data and masks.
One process and several under torchrun then train the same global batches to the same weights."""
from torch import nn

from pretrain.methods import register
from pretrain.methods.context_encoder import ContextEncoder


@register
class ContextEncoderWithoutDropout(ContextEncoder):
    name = "context-encoder-no-dropout"
    description = "the context encoder without dropout (a test plug-in)"

    def __init__(self, config, dataset_mean, dataset_std):
        super().__init__(config, dataset_mean, dataset_std)
        for module in self.modules():
            if isinstance(module, nn.Dropout):
                module.p = 0.0
