"""Decoder slot (inside the mt and t5 targets: keys under `target.decoder.`)."""
from __future__ import annotations

import torch
from torch import nn

from uer.config import ModelConfig
from uer.model.layers import feed_forward, layer_norm, self_attention
from uer.registry import DECODERS, register


class TransformerDecoderLayer(nn.Module):
    """Pre-LN, no dropout (SPEC 3.5): causal self-attention, attention over the encoder output
    (source padding invisible), feed-forward."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.self_attn = self_attention(cfg, 0.0)
        self.context_attn = self_attention(cfg, 0.0)
        self.layer_norm_1 = layer_norm(cfg)
        self.layer_norm_2 = layer_norm(cfg)
        self.layer_norm_3 = layer_norm(cfg)
        self.feed_forward = feed_forward(cfg)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor,
                cache: dict | None = None) -> torch.Tensor:
        """cache (generation): {"self": ..., "memory": ...}, the keys and values of the positions
        decoded so far and of the memory; x then holds only the new positions."""
        mine, theirs = (None, None) if cache is None else (cache.setdefault("self", {}), cache.setdefault("memory", {}))
        h = self.layer_norm_1(x)
        x = x + self.self_attn(h, h, None, True, mine)
        x = x + self.context_attn(self.layer_norm_2(x), memory, memory_mask, cache=theirs)
        return x + self.feed_forward(self.layer_norm_3(x))


@register(DECODERS, "transformer")
class TransformerDecoder(nn.Module):
    """layers_num decoder layers (`transformer_decoder.<i>`); no final LayerNorm."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.transformer_decoder = nn.ModuleList([TransformerDecoderLayer(cfg) for _ in range(cfg.layers_num)])

    def forward(self, emb: torch.Tensor, memory: torch.Tensor, src_seg: torch.Tensor,
                caches: list[dict] | None = None) -> torch.Tensor:
        """caches (generation): one dict per layer (TransformerDecoderLayer.forward)."""
        mask = (src_seg > 0)[:, None, None, :]
        x = emb
        for i, layer in enumerate(self.transformer_decoder):
            x = layer(x, memory, mask, caches[i] if caches is not None else None)
        return x

    @property
    def layers_num(self) -> int:
        return len(self.transformer_decoder)
