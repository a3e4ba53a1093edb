"""Building blocks shared by the slots. Parameter names follow the reference checkpoints."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from uer.config import ModelConfig
from uer.model.ops import Attention, Dropout


class LayerNorm(nn.Module):
    """A normalisation with parameters named gamma/beta (the checkpoint layout).

    kind "torch": F.layer_norm (biased variance, eps inside the square root).
    kind "uer":   the reference formula gamma * (x - mean) / (std + eps) + beta with the unbiased std.
    kind "rms":   RMSNorm, gamma * x / sqrt(mean(x^2) + eps) (LLaMA, T5); no beta.
    bias False: no beta either (--remove_transformer_bias).
    """

    def __init__(self, size: int, eps: float = 1e-6, kind: str = "torch", bias: bool = True):
        super().__init__()
        self.size, self.eps, self.kind = size, eps, kind
        self.gamma = nn.Parameter(torch.ones(size))
        self.beta = nn.Parameter(torch.zeros(size)) if bias and kind != "rms" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "rms":
            return F.rms_norm(x, (self.size,), self.gamma, self.eps)
        if self.kind == "uer":
            mean = x.mean(-1, keepdim=True)
            std = x.std(-1, keepdim=True)
            out = self.gamma * (x - mean) / (std + self.eps)
            return out if self.beta is None else out + self.beta
        return F.layer_norm(x, (self.size,), self.gamma, self.beta, self.eps)


def activation(name: str):
    if name == "gelu":
        return F.gelu
    if name == "gelu_fast":
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "relu":
        return F.relu
    if name == "silu":
        return F.silu
    raise ValueError(f"unknown activation {name}")


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoPE) of q or k [B, L, heads, d] at the given positions ([L] or
    [B, L]): feature pairs (i, i + d/2) rotated by the angle position * base^(-2i/d), the layout
    of transformers' LLaMA (so its q/k weights need no permutation). No parameters, no buffers:
    the angles are computed in fp32 for the positions at hand."""

    def __init__(self, head_dim: int, base: float):
        super().__init__()
        self.head_dim, self.base = head_dim, base

    def angles(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin) [(B,) L, 1, d] for these positions, computed in fp32, given in `dtype`."""
        d = self.head_dim
        inv_freq = 1.0 / (self.base ** (torch.arange(0, d, 2, device=positions.device).float() / d))
        angles = positions.float()[..., None] * inv_freq  # [(B,) L, d/2]
        angles = torch.cat([angles, angles], -1).unsqueeze(-2)
        return angles.cos().to(dtype), angles.sin().to(dtype)

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None,
                cos_sin: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """x rotated at `positions`, or by the angles already computed (cos_sin)."""
        cos, sin = cos_sin if cos_sin is not None else self.angles(positions, x.dtype)
        x1, x2 = x[..., :self.head_dim // 2], x[..., self.head_dim // 2:]
        return x * cos + torch.cat([-x2, x1], -1) * sin

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, base={self.base}"


class MultiHeadedAttention(nn.Module):
    """Q, K, V projections (linear_layers.0/1/2), attention (ops.Attention), final_linear.
    kv_heads < heads_num: grouped-query attention, K and V have kv_heads heads, each shared by
    heads_num / kv_heads query heads. rope_base: RoPE on the queries and keys (self-attention)."""

    def __init__(self, hidden_size: int, heads_num: int, dropout: float, kv_heads: int | None = None,
                 bias: bool = True, rope_base: float | None = None, scale: float | None = None):
        super().__init__()
        self.heads_num = heads_num
        self.kv_heads = kv_heads or heads_num
        self.per_head = hidden_size // heads_num
        kv_size = self.kv_heads * self.per_head
        self.linear_layers = nn.ModuleList([nn.Linear(hidden_size, size, bias=bias)
                                            for size in (hidden_size, kv_size, kv_size)])
        self.rotary = RotaryEmbedding(self.per_head, rope_base) if rope_base else None
        self.attention = Attention(dropout, scale)
        self.final_linear = nn.Linear(hidden_size, hidden_size, bias=bias)

    def _project(self, x: torch.Tensor, first: int, n: int) -> list[torch.Tensor]:
        """linear_layers[first : first + n] applied to x as one GEMM (fewer, wider products; the
        checkpoint keeps the layers apart): n tensors [B, L, heads, d]."""
        layers = self.linear_layers[first:first + n]
        weight = torch.cat([m.weight for m in layers]) if n > 1 else layers[0].weight
        bias = None if layers[0].bias is None else torch.cat([m.bias for m in layers]) if n > 1 else layers[0].bias
        out = F.linear(x, weight, bias).split([m.out_features for m in layers], -1)
        return [t.view(*x.shape[:2], -1, self.per_head) for t in out]

    def forward(self, query: torch.Tensor, key_value: torch.Tensor,
                attn_mask: torch.Tensor | None = None, is_causal: bool = False,
                cache: dict | None = None, keep: torch.Tensor | None = None,
                q_positions: torch.Tensor | None = None) -> torch.Tensor:
        """cache (while generating): in self-attention, the keys and values of earlier positions,
        extended in place, the new queries seeing them all and, causally, each other; in attention
        over an encoder's output, that output's keys and values, projected once. keep: only
        these rows of the flattened [B * Lq] output are projected and returned ([len(keep), H]).
        q_positions: the queries' positions ([B, Lq]) for RoPE when they are not 0..Lq-1 (or the
        positions after the cache's)."""
        if query is key_value:
            q, k, v = self._project(query, 0, 3)
        elif cache is not None and "k" in cache:  # the same memory at every step
            (q,), k, v, cache = self._project(query, 0, 1), cache["k"], cache["v"], None
        else:
            (q,), (k, v) = self._project(query, 0, 1), self._project(key_value, 1, 2)
        past = cache["k"].shape[1] if cache is not None and "k" in cache else 0
        if self.rotary is not None:  # one set of angles when the queries are the new keys' positions
            k_angles = self.rotary.angles(torch.arange(past, past + k.shape[1], device=k.device), k.dtype)
            same = q_positions is None and q.shape[1] == k.shape[1]
            q = self.rotary(q, q_positions if q_positions is not None else
                            torch.arange(past, past + q.shape[1], device=q.device), k_angles if same else None)
            k = self.rotary(k, cos_sin=k_angles)
        if cache is not None:
            if past:
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
    """linear_2(act(linear_1(x)))."""

    def __init__(self, hidden_size: int, feedforward_size: int, hidden_act: str, bias: bool = True):
        super().__init__()
        self.linear_1 = nn.Linear(hidden_size, feedforward_size, bias=bias)
        self.linear_2 = nn.Linear(feedforward_size, hidden_size, bias=bias)
        self.act = activation(hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


class GatedFeedForward(nn.Module):
    """linear_2(act(linear_gate(x)) * linear_1(x)): SwiGLU with silu, GeGLU with gelu."""

    def __init__(self, hidden_size: int, feedforward_size: int, hidden_act: str, bias: bool = True):
        super().__init__()
        self.linear_gate = nn.Linear(hidden_size, feedforward_size, bias=bias)
        self.linear_1 = nn.Linear(hidden_size, feedforward_size, bias=bias)
        self.linear_2 = nn.Linear(feedforward_size, hidden_size, bias=bias)
        self.act = activation(hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_gate(x)) * self.linear_1(x))


FEED_FORWARDS = {"dense": PositionwiseFeedForward, "gated": GatedFeedForward}


def feed_forward(cfg: ModelConfig) -> nn.Module:
    return FEED_FORWARDS[cfg.feed_forward](cfg.hidden_size, cfg.feedforward_size, cfg.hidden_act,
                                           bias=not cfg.remove_transformer_bias)


def layer_norm(cfg: ModelConfig) -> LayerNorm:
    """A transformer layer's normalisation (no beta with --remove_transformer_bias)."""
    return LayerNorm(cfg.hidden_size, cfg.layernorm_eps, cfg.layernorm, bias=not cfg.remove_transformer_bias)


def self_attention(cfg: ModelConfig, dropout: float, rope: bool = False) -> MultiHeadedAttention:
    return MultiHeadedAttention(cfg.hidden_size, cfg.heads_num, dropout, cfg.local_kv_heads_num,
                                bias=not cfg.remove_transformer_bias,
                                rope_base=cfg.rope_base if rope and cfg.rotary_position_embedding else None,
                                scale=1.0 if cfg.remove_attention_scale else None)


class RelativePositionBias(nn.Module):
    """T5's relative position bias: `weight` [buckets, heads], a learned scalar per head for each
    bucket of the distance key - query: distances below half the buckets have one each, the longer
    ones share log-spaced buckets up to max_distance, and, bidirectional (an encoder), each sign has
    half of the buckets. Computed once a forward, added to every layer's scores (T5 shares it)."""

    def __init__(self, heads: int, buckets: int, max_distance: int, bidirectional: bool):
        super().__init__()
        self.buckets, self.max_distance, self.bidirectional = buckets, max_distance, bidirectional
        self.weight = nn.Parameter(torch.zeros(buckets, heads))

    def bucket(self, relative: torch.Tensor) -> torch.Tensor:
        n, out = self.buckets, torch.zeros_like(relative)
        if self.bidirectional:
            n //= 2
            out = out + (relative > 0).long() * n
            distance = relative.abs()
        else:
            distance = (-relative).clamp(min=0)  # a causal query sees no key after it
        exact = n // 2
        far = exact + (torch.log(distance.clamp(min=1).float() / exact) / math.log(self.max_distance / exact)
                       * (n - exact)).long()
        return out + torch.where(distance < exact, distance, far.clamp(max=n - 1))

    def forward(self, q_start: int, q_len: int, k_len: int, device) -> torch.Tensor:
        """[1, heads, q_len, k_len] for queries at q_start.. and keys at 0..k_len-1."""
        q = torch.arange(q_start, q_start + q_len, device=device)
        k = torch.arange(k_len, device=device)
        return F.embedding(self.bucket(k[None, :] - q[:, None]), self.weight).permute(2, 0, 1).unsqueeze(0)

    def extra_repr(self) -> str:
        return f"buckets={self.buckets}, max_distance={self.max_distance}, bidirectional={self.bidirectional}"


def relative_position_bias(cfg: ModelConfig, bidirectional: bool) -> RelativePositionBias | None:
    if not cfg.relative_position_embedding:
        return None
    return RelativePositionBias(cfg.heads_num, cfg.relative_attention_buckets_num,
                                cfg.relative_attention_max_distance, bidirectional)


def biased_mask(bias: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """A float attention mask: the position bias where `keep` (boolean, True = may attend,
    broadcasting to it) allows, -inf elsewhere."""
    return bias if keep is None else torch.where(keep, bias, float("-inf"))


class TransformerLayer(nn.Module):
    """Post-LN (BERT): LN(x + Drop(Attn(x))), LN(h + Drop(FFN(h))).
    Pre-LN (GPT-2, LLaMA): x + Drop(Attn(LN(x))), h + Drop(FFN(LN(h)))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.pre = cfg.layernorm_positioning == "pre"
        self.self_attn = self_attention(cfg, cfg.dropout, rope=True)
        self.layer_norm_1 = layer_norm(cfg)
        self.feed_forward = feed_forward(cfg)
        self.layer_norm_2 = layer_norm(cfg)
        self.dropout_1 = Dropout(cfg.dropout)
        self.dropout_2 = Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None, is_causal: bool,
                cache: dict | None = None, rows: tuple | None = None) -> torch.Tensor:
        """rows (query [B, Q], keep [U], flat [U]; not causal): the output only at the flat
        positions, [U, H]. Keys and values still come from every position; the queries are
        those of `query`, and everything after attention runs on the U rows alone."""
        h = self.layer_norm_1(x) if self.pre else x  # what attention reads
        query, residual, keep, q_positions = h, x, None, None
        if rows is not None:
            query_pos, keep, flat = rows
            H = x.shape[-1]
            query = h.reshape(-1, H).index_select(0, query_pos.reshape(-1)).view(*query_pos.shape, H)
            residual = x.reshape(-1, H).index_select(0, flat)
            q_positions = query_pos % x.shape[1]
        attended = self.self_attn(query, h, attn_mask, is_causal, cache, keep=keep, q_positions=q_positions)
        if self.pre:
            x = self.dropout_1(attended, residual)
            return self.dropout_2(self.feed_forward(self.layer_norm_2(x)), x)
        x = self.layer_norm_1(self.dropout_1(attended, residual))
        return self.layer_norm_2(self.dropout_2(self.feed_forward(x), x))
