"""--activation_checkpointing: each transformer layer (encoder and decoder) keeps only its input
for the backward pass and runs its forward again there, instead of keeping every intermediate
activation. Applied from outside the model, by torch.utils.checkpoint (non-reentrant, the random
state of dropout saved and restored, so the gradients are those of the plain run); the state-dict
keys do not change."""
from __future__ import annotations

import functools

from torch import nn
from torch.utils.checkpoint import checkpoint

from uer.model.decoders import TransformerDecoderLayer
from uer.model.layers import TransformerLayer

LAYERS = (TransformerLayer, TransformerDecoderLayer)


def _checkpointed(forward, *args, **kwargs):
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


def apply_activation_checkpointing(model: nn.Module) -> int:
    """Checkpoint every transformer layer of `model` in place; returns how many were wrapped (a
    shared ALBERT layer counts once and is checkpointed at each of its applications)."""
    n = 0
    for module in model.modules():
        if isinstance(module, LAYERS) and "forward" not in vars(module):
            module.forward = functools.partial(_checkpointed, module.forward)
            n += 1
    return n
