"""The model's seam for speed kernels: the three operations whose fastest form depends on the
hardware, each a parameter-free module that runs the stock PyTorch op. uer.kernels replaces
these modules in a model built for training where a faster kernel pays; nothing else in the
model knows about devices, CPU features, autocast or compilation, and the state dict is the same."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Dropout(nn.Module):
    """F.dropout; called with a residual, residual + dropout(x)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        x = F.dropout(x, self.p, self.training)
        return x if residual is None else residual + x

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Attention(nn.Module):
    """softmax(Q K^T / sqrt(d) + mask) V, with dropout p on the probabilities while training, for
    q [B, Lq, heads, d] and k, v [B, Lk, kv_heads, d] (kv_heads dividing heads: each K/V head
    serves heads / kv_heads consecutive query heads); a boolean mask (True = may attend)
    broadcasts to [B, heads, Lq, Lk], a float one is added to the scores. scale: the factor of
    the scores (None: 1/sqrt(d)). Returns [B, Lq, heads * d]."""

    def __init__(self, p: float, scale: float | None = None):
        super().__init__()
        self.p, self.scale = p, scale

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None,
                is_causal: bool = False) -> torch.Tensor:
        B, Lq, h, d = q.shape
        if attn_mask is not None and attn_mask.dtype != torch.bool:
            attn_mask = attn_mask.to(q.dtype)  # SDPA takes a float mask of the queries' dtype (autocast)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             attn_mask=attn_mask, is_causal=is_causal,
                                             dropout_p=self.p if self.training else 0.0,
                                             enable_gqa=k.shape[2] != h, scale=self.scale)
        return out.transpose(1, 2).reshape(B, Lq, h * d)

    def extra_repr(self) -> str:
        return f"p={self.p}" + ("" if self.scale is None else f", scale={self.scale}")


def token_terms(logits: torch.Tensor, labels: torch.Tensor):
    """(summed cross-entropy, correct, count) over rows whose label is not -100."""
    scores = logits.float()
    loss = F.cross_entropy(scores, labels, ignore_index=-100, reduction="sum")
    valid = labels != -100
    # the argmax of the fp32 copy: on the CPU a bf16 argmax takes 4x as long (24 ms against 6 for
    # BERT-tiny's [608, 21128] logits, 4 % of its bf16 step)
    return loss, ((scores.argmax(-1) == labels) & valid).sum(), valid.sum()


class OutputLoss(nn.Module):
    """token_terms(layer(x), labels): a token-level term's output layer and its loss, as one
    operation (a kernel may fuse them)."""

    def forward(self, layer: nn.Linear, x: torch.Tensor, labels: torch.Tensor):
        return token_terms(layer(x), labels)
