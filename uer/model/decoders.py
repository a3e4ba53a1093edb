"""Decoder slot (inside the mt, t5, gsg and bart targets: keys under `target.decoder.`)."""
from __future__ import annotations

import torch
from torch import nn

from uer.config import ModelConfig
from uer.model.layers import biased_mask, feed_forward, layer_norm, relative_position_bias, self_attention
from uer.model.ops import Dropout
from uer.registry import DECODERS, register


class TransformerDecoderLayer(nn.Module):
    """Pre-LN, no dropout (SPEC 3.5, the reference mt/t5 decoder): x + SelfAttn(LN1(x)),
    x + CrossAttn(LN2(x), memory), x + FFN(LN3(x)). Post-LN (--decoder_layernorm_positioning post,
    BART's): LN1(x + Drop(SelfAttn(x))), LN2(x + Drop(CrossAttn(x, memory))), LN3(x + Drop(FFN(x))),
    with --dropout as BART trains. Self-attention is causal; source padding is invisible."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.pre = cfg.decoder_layernorm_positioning == "pre"
        p = 0.0 if self.pre else cfg.dropout
        self.self_attn = self_attention(cfg, p)
        self.context_attn = self_attention(cfg, p)
        self.layer_norm_1 = layer_norm(cfg)
        self.layer_norm_2 = layer_norm(cfg)
        self.layer_norm_3 = layer_norm(cfg)
        self.feed_forward = feed_forward(cfg)
        self.dropouts = nn.ModuleList([Dropout(p) for _ in range(3)])

    def forward(self, x: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor,
                cache: dict | None = None, self_mask: torch.Tensor | None = None) -> torch.Tensor:
        """cache (generation): {"self": ..., "memory": ...}, the keys and values of the positions
        decoded so far and of the memory; x then holds only the new positions. self_mask: the
        self-attention's float mask (the position bias, causal), instead of the causal mask."""
        mine, theirs = (None, None) if cache is None else (cache.setdefault("self", {}), cache.setdefault("memory", {}))
        causal = self_mask is None
        if self.pre:
            h = self.layer_norm_1(x)
            x = x + self.self_attn(h, h, self_mask, causal, mine)
            x = x + self.context_attn(self.layer_norm_2(x), memory, memory_mask, cache=theirs)
            return x + self.feed_forward(self.layer_norm_3(x))
        drop_1, drop_2, drop_3 = self.dropouts
        x = self.layer_norm_1(drop_1(self.self_attn(x, x, self_mask, causal, mine), x))
        x = self.layer_norm_2(drop_2(self.context_attn(x, memory, memory_mask, cache=theirs), x))
        return self.layer_norm_3(drop_3(self.feed_forward(x), x))


@register(DECODERS, "transformer")
class TransformerDecoder(nn.Module):
    """layers_num decoder layers (`transformer_decoder.<i>`); a final `layer_norm` with
    --decoder_final_layernorm (T5's), none by default; with --relative_position_embedding one
    causal `relative_position_bias` for every layer's self-attention (T5's)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.transformer_decoder = nn.ModuleList([TransformerDecoderLayer(cfg) for _ in range(cfg.layers_num)])
        self.relative_position_bias = relative_position_bias(cfg, bidirectional=False)
        if cfg.decoder_final_layernorm:
            self.layer_norm = layer_norm(cfg)

    def forward(self, emb: torch.Tensor, memory: torch.Tensor, src_seg: torch.Tensor,
                caches: list[dict] | None = None) -> torch.Tensor:
        """caches (generation): one dict per layer (TransformerDecoderLayer.forward)."""
        mask = (src_seg > 0)[:, None, None, :]
        x, self_mask = emb, None
        if self.relative_position_bias is not None:
            first = caches[0].get("self", {}) if caches is not None else {}
            past, T = first["k"].shape[1] if "k" in first else 0, x.shape[1]
            causal = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(past)
            self_mask = biased_mask(self.relative_position_bias(past, T, past + T, x.device), causal)
        for i, layer in enumerate(self.transformer_decoder):
            x = layer(x, memory, mask, caches[i] if caches is not None else None, self_mask)
        return self.layer_norm(x) if hasattr(self, "layer_norm") else x

    @property
    def layers_num(self) -> int:
        return len(self.transformer_decoder)
