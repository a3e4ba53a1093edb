"""Building blocks shared by the slots. Parameter names follow the reference checkpoints."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from uer.model.ops import Attention, Dropout


class LayerNorm(nn.Module):
    """LayerNorm with parameters named gamma/beta (the checkpoint layout).

    kind "torch": F.layer_norm (biased variance, eps inside the square root).
    kind "uer":   the reference formula gamma * (x - mean) / (std + eps) + beta with the unbiased std.
    """

    def __init__(self, size: int, eps: float = 1e-6, kind: str = "torch"):
        super().__init__()
        self.size, self.eps, self.kind = size, eps, kind
        self.gamma = nn.Parameter(torch.ones(size))
        self.beta = nn.Parameter(torch.zeros(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "uer":
            mean = x.mean(-1, keepdim=True)
            std = x.std(-1, keepdim=True)
            return self.gamma * (x - mean) / (std + self.eps) + self.beta
        return F.layer_norm(x, (self.size,), self.gamma, self.beta, self.eps)


def activation(name: str):
    if name == "gelu":
        return F.gelu
    if name == "gelu_fast":
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "relu":
        return F.relu
    raise ValueError(f"unknown activation {name}")


class MultiHeadedAttention(nn.Module):
    """Q, K, V projections (linear_layers.0/1/2), attention (ops.Attention), final_linear."""

    def __init__(self, hidden_size: int, heads_num: int, dropout: float):
        super().__init__()
        self.heads_num = heads_num
        self.per_head = hidden_size // heads_num
        self.linear_layers = nn.ModuleList([nn.Linear(hidden_size, hidden_size) for _ in range(3)])
        self.attention = Attention(dropout)
        self.final_linear = nn.Linear(hidden_size, hidden_size)

    def _project(self, x: torch.Tensor, first: int, n: int) -> list[torch.Tensor]:
        """linear_layers[first : first + n] applied to x as one GEMM (fewer, wider products; the
        checkpoint keeps the layers apart): n tensors [B, L, heads, d]."""
        layers = self.linear_layers[first:first + n]
        weight = torch.cat([m.weight for m in layers]) if n > 1 else layers[0].weight
        bias = torch.cat([m.bias for m in layers]) if n > 1 else layers[0].bias
        return F.linear(x, weight, bias).view(*x.shape[:2], n, self.heads_num, self.per_head).unbind(2)

    def forward(self, query: torch.Tensor, key_value: torch.Tensor,
                attn_mask: torch.Tensor | None = None, is_causal: bool = False,
                cache: dict | None = None, keep: torch.Tensor | None = None) -> torch.Tensor:
        """cache (self-attention while generating): the keys and values of earlier positions,
        extended in place; the new queries see them all and, causally, each other. keep: only
        these rows of the flattened [B * Lq] output are projected and returned ([len(keep), H])."""
        if query is key_value:
            q, k, v = self._project(query, 0, 3)
        else:
            (q,), (k, v) = self._project(query, 0, 1), self._project(key_value, 1, 2)
        if cache is not None:
            if "k" in cache:
                past = cache["k"].shape[1]
                k, v = torch.cat([cache["k"], k], 1), torch.cat([cache["v"], v], 1)
                if is_causal:  # new position i sees the past and new positions <= i
                    attn_mask = torch.ones(q.shape[1], past + q.shape[1], dtype=torch.bool,
                                           device=q.device).tril(past)
                    is_causal = False
            cache["k"], cache["v"] = k, v
        out = self.attention(q, k, v, attn_mask, is_causal)  # [B, Lq, H]
        if keep is not None:
            out = out.reshape(-1, out.shape[-1]).index_select(0, keep)
        return self.final_linear(out)


class PositionwiseFeedForward(nn.Module):
    def __init__(self, hidden_size: int, feedforward_size: int, hidden_act: str):
        super().__init__()
        self.linear_1 = nn.Linear(hidden_size, feedforward_size)
        self.linear_2 = nn.Linear(feedforward_size, hidden_size)
        self.act = activation(hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


class TransformerLayer(nn.Module):
    """Post-LN (BERT): LN(x + Drop(Attn(x))), LN(h + Drop(FFN(h))).
    Pre-LN (GPT-2): x + Drop(Attn(LN(x))), h + Drop(FFN(LN(h)))."""

    def __init__(self, hidden_size: int, heads_num: int, feedforward_size: int, hidden_act: str,
                 dropout: float, layernorm_positioning: str, ln_kind: str, ln_eps: float):
        super().__init__()
        self.pre = layernorm_positioning == "pre"
        self.self_attn = MultiHeadedAttention(hidden_size, heads_num, dropout)
        self.layer_norm_1 = LayerNorm(hidden_size, ln_eps, ln_kind)
        self.feed_forward = PositionwiseFeedForward(hidden_size, feedforward_size, hidden_act)
        self.layer_norm_2 = LayerNorm(hidden_size, ln_eps, ln_kind)
        self.dropout_1 = Dropout(dropout)
        self.dropout_2 = Dropout(dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None, is_causal: bool,
                cache: dict | None = None, rows: tuple | None = None) -> torch.Tensor:
        """rows (query [B, Q], keep [U], flat [U]; not causal): the output only at the flat
        positions, [U, H]. Keys and values still come from every position; the queries are
        those of `query`, and everything after attention runs on the U rows alone."""
        h = self.layer_norm_1(x) if self.pre else x  # what attention reads
        query, residual, keep = h, x, None
        if rows is not None:
            query_pos, keep, flat = rows
            H = x.shape[-1]
            query = h.reshape(-1, H).index_select(0, query_pos.reshape(-1)).view(*query_pos.shape, H)
            residual = x.reshape(-1, H).index_select(0, flat)
        attended = self.self_attn(query, h, attn_mask, is_causal, cache, keep=keep)
        if self.pre:
            x = self.dropout_1(attended, residual)
            return self.dropout_2(self.feed_forward(self.layer_norm_2(x)), x)
        x = self.layer_norm_1(self.dropout_1(attended, residual))
        return self.layer_norm_2(self.dropout_2(self.feed_forward(x), x))
