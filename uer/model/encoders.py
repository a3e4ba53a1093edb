"""Encoder slot (keys under `encoder.`)."""
from __future__ import annotations

import torch
from torch import nn

from uer.config import ModelConfig
from uer.model.layers import LayerNorm, TransformerLayer
from uer.model.registry import ENCODERS, register


@register(ENCODERS, "transformer")
class TransformerEncoder(nn.Module):
    """Stack of transformer layers; `fully_visible` ignores padding keys (seg == 0), `causal`
    sees only the past. Pre-LN adds a final `layer_norm`; --parameter_sharing keeps one layer
    (`transformer.*`, no index); factorized embeddings are projected E -> H by `linear`."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.causal = cfg.mask == "causal"
        self.layers_num = cfg.layers_num
        self.parameter_sharing = cfg.parameter_sharing
        if cfg.factorized_embedding_parameterization:
            self.linear = nn.Linear(cfg.emb_size, cfg.hidden_size)

        def layer():
            return TransformerLayer(cfg.hidden_size, cfg.heads_num, cfg.feedforward_size, cfg.hidden_act,
                                    cfg.dropout, cfg.layernorm_positioning, cfg.layernorm,
                                    cfg.layernorm_eps)

        if cfg.parameter_sharing:
            self.transformer = layer()
        else:
            self.transformer = nn.ModuleList([layer() for _ in range(cfg.layers_num)])
        if cfg.layernorm_positioning == "pre":
            self.layer_norm = LayerNorm(cfg.hidden_size, cfg.layernorm_eps, cfg.layernorm)

    def forward(self, emb: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        x = self.linear(emb) if hasattr(self, "linear") else emb
        if self.causal:
            mask = None
        else:
            mask = (seg > 0)[:, None, None, :]  # [B, 1, 1, L]: padding keys are invisible
        for i in range(self.layers_num):
            layer = self.transformer if self.parameter_sharing else self.transformer[i]
            x = layer(x, mask, self.causal)
        if hasattr(self, "layer_norm"):
            x = self.layer_norm(x)
        return x
