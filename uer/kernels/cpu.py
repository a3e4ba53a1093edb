"""The CPU's fp32 training kernels, each equal to the stock op of uer.model.ops that it replaces
(tests/test_kernels.py) and kept because it pays at least 3 % of a BERT-tiny or -small step (the
figures are in docs/performance.md):
  CpuDropout    the keep mask from 16-bit random numbers (bernoulli_ costs three times as much),
                and residual + dropout in one pass;
  CpuAttention  attention with that dropout, reading the heads in place from the projections.
uer.kernels.use_kernels puts them in a model; each falls back to the stock op where it does not
apply (not training, no dropout)."""
from __future__ import annotations

import math

import numpy as np
import torch

from uer.model import ops

_RANDOM_LEVELS = 1 << 15


def cpu_threshold(p: float, training: bool) -> int | None:
    """The drop threshold (a unit drops with probability threshold / 2**15) for dropout p, or
    None where the kernel does not run: not training, p = 0, or p so close to 1 that every unit
    drops."""
    threshold = round(p * _RANDOM_LEVELS)
    return threshold if training and p != 0.0 and threshold < _RANDOM_LEVELS else None


def keep_scale(threshold: int) -> float:
    """The factor of the kept units, 1 / (1 - p'), so that the expectation is exact."""
    return _RANDOM_LEVELS / (_RANDOM_LEVELS - threshold)


def _masked_scale(x: torch.Tensor, keep: torch.Tensor, scale: float,
                  residual: torch.Tensor | None = None) -> torch.Tensor:
    """(residual +) x * keep * scale for a keep mask of 0s and 1s, in one pass: 3-4x faster on CPU
    than torch.where(keep, x, 0).mul_(scale) with a bool mask, and equal to it except that a
    dropped inf or nan gives nan, not 0."""
    return torch.addcmul(x.new_zeros(()) if residual is None else residual, x, keep, value=scale)


class _CpuDropout(torch.autograd.Function):
    """Inverted dropout whose keep mask comes from 16-bit random numbers, four to a 64-bit draw of
    numpy's SFC64 generator, seeded by one draw from torch's default generator (so torch.manual_seed
    and the saved RNG state decide every mask, as they do F.dropout's). On CPU, F.dropout's
    bernoulli_ costs three times as much, and torch's own random_ four times as much as SFC64. A unit
    is dropped with probability p' = round(p * 2**15) / 2**15 (p to within 2e-5: a draw below
    -2**15 + 2 * round(p * 2**15)) and a kept one is scaled by 1 / (1 - p'), so the expectation is
    exact. With a residual, returns residual + dropout(x) in the same pass."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, threshold: int, residual: torch.Tensor | None = None) -> torch.Tensor:
        keep = keep_mask(x.shape, threshold)
        ctx.scale = keep_scale(threshold)
        ctx.save_for_backward(keep)
        return _masked_scale(x, keep, ctx.scale, residual)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return _masked_scale(grad, keep, ctx.scale), None, grad if ctx.needs_input_grad[2] else None


def keep_mask(shape, threshold: int) -> torch.Tensor:
    """_CpuDropout's keep mask: an fp32 tensor of 0s (probability threshold / 2**15) and 1s. The
    comparison writes fp32 directly (faster than writing bools), and fp32 spares every use of the
    mask the conversion that a multiply by a bool or uint8 mask makes first (a pass of its own)."""
    n = math.prod(shape)
    seed = int(torch.empty((), dtype=torch.int64).random_())
    bits = torch.from_numpy(np.random.SFC64(seed).random_raw((n + 3) // 4).view(np.int16)[:n])
    return torch.ge(bits.view(shape), 2 * threshold - _RANDOM_LEVELS, out=torch.empty(shape))


class CpuDropout(ops.Dropout):
    """ops.Dropout with _CpuDropout's mask (a unit drops with probability round(p * 2**15) / 2**15,
    within 2e-5 of p), in fp32 and under bf16 autocast alike."""

    def forward(self, x, residual=None):
        threshold = cpu_threshold(self.p, self.training)
        if threshold is None:
            return super().forward(x, residual)
        return _CpuDropout.apply(x, threshold, residual)


def additive_mask(attn_mask, is_causal: bool, Lq: int, Lk: int, device) -> torch.Tensor | None:
    """A boolean mask (True = may attend; or causal) as one to add to the scores (0 or -inf)."""
    if is_causal:
        attn_mask = torch.ones(Lq, Lk, dtype=torch.bool, device=device).tril(Lk - Lq)
    if attn_mask is None:
        return None
    return torch.zeros(attn_mask.shape, device=device).masked_fill_(~attn_mask, float("-inf"))


class _CpuAttention(torch.autograd.Function):
    """softmax(Q K^T / sqrt(d) + mask) with _CpuDropout's dropout, times V, for q [B, Lq, h, d] and
    k, v [B, Lk, h, d] that are views of the projections' outputs: each head's products are one
    batched matmul over B on those strided views, so no head is copied to a contiguous layout
    (torch's matmul copies q, k, v and the output forward, and their gradients backward). Scores
    and probabilities are kept head-major, [h, B, Lq, Lk]. mask: added to the scores, shape
    [B or 1, h or 1, Lq or 1, Lk], or [Lq, Lk]. Returns [B, Lq, h * d]."""

    @staticmethod
    def forward(ctx, q, k, v, mask, threshold: int):
        B, Lq, h, d = q.shape
        scale = 1.0 / math.sqrt(d)
        scores = q.new_empty(h, B, Lq, k.shape[1])
        for i in range(h):
            head_mask = mask if mask is None or mask.dim() < 4 else mask[:, min(i, mask.shape[1] - 1)]
            if head_mask is None:
                torch.baddbmm(scores[i], q[:, :, i], k[:, :, i].transpose(1, 2), beta=0, alpha=scale, out=scores[i])
            else:
                torch.baddbmm(head_mask, q[:, :, i], k[:, :, i].transpose(1, 2), alpha=scale, out=scores[i])
        probs = scores.softmax(-1)
        del scores
        keep = keep_mask(probs.shape, threshold)
        ctx.scale = scale
        dropped = _masked_scale(probs, keep, keep_scale(threshold))
        del keep
        out = q.new_empty(h, B, Lq, d)
        for i in range(h):
            torch.bmm(dropped[i], v[:, :, i], out=out[i])
        ctx.save_for_backward(q, k, v, probs, dropped)
        return out.permute(1, 2, 0, 3).reshape(B, Lq, h * d)

    @staticmethod
    def backward(ctx, grad):
        q, k, v, probs, dropped = ctx.saved_tensors
        B, Lq, h, d = q.shape
        grad = grad.view(B, Lq, h, d)
        grad_dropped, grad_v = torch.empty_like(probs), v.new_empty(h, *v.shape[:2], d)
        for i in range(h):
            torch.bmm(grad[:, :, i], v[:, :, i].transpose(1, 2), out=grad_dropped[i])
            torch.bmm(dropped[i].transpose(1, 2), grad[:, :, i], out=grad_v[i])
        # the softmax backward of G = grad_dropped * keep / (1 - p) is P * G - P * rowsum(P * G),
        # and P * G = grad_dropped * dropped: so the mask is not needed, and it is three passes
        pg = grad_dropped.mul_(dropped)
        grad_scores = pg.addcmul_(probs, pg.sum(-1, keepdim=True), value=-1)
        grad_q, grad_k = q.new_empty(h, B, Lq, d), k.new_empty(h, *k.shape[:2], d)
        for i in range(h):
            torch.baddbmm(grad_q[i], grad_scores[i], k[:, :, i], beta=0, alpha=ctx.scale, out=grad_q[i])
            torch.baddbmm(grad_k[i], grad_scores[i].transpose(1, 2), q[:, :, i], beta=0, alpha=ctx.scale,
                          out=grad_k[i])
        return *(g.permute(1, 2, 0, 3) for g in (grad_q, grad_k, grad_v)), None, None


class CpuAttention(ops.Attention):
    """ops.Attention while training with dropout (where SDPA takes its math path on CPU, with
    copies of every head and bernoulli_'s dropout): in fp32 through _CpuAttention, otherwise (bf16
    autocast) as that math with _CpuDropout on the probabilities."""

    def forward(self, q, k, v, attn_mask=None, is_causal=False):
        threshold = cpu_threshold(self.p, self.training)
        if threshold is None or self.scale is not None or (attn_mask is not None and attn_mask.dtype != torch.bool):
            return super().forward(q, k, v, attn_mask, is_causal)  # T5's scale and position bias: the stock op
        if k.shape[2] != q.shape[2]:  # grouped-query attention: each K/V head for its query heads
            group = q.shape[2] // k.shape[2]
            k, v = k.repeat_interleave(group, 2), v.repeat_interleave(group, 2)
        mask = additive_mask(attn_mask, is_causal, q.shape[1], k.shape[1], q.device)
        if q.dtype == torch.float32 and not torch.is_autocast_enabled("cpu"):
            return _CpuAttention.apply(q, k, v, mask, threshold)
        B, Lq, h, d = q.shape
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        scores = (q * (1.0 / math.sqrt(d))) @ k.transpose(-1, -2)
        if mask is not None:  # added in place (the product is not saved for backward)
            scores.add_(mask.to(scores.dtype))
        probs = _CpuDropout.apply(scores.softmax(-1), threshold, None)
        return (probs @ v).transpose(1, 2).reshape(B, Lq, h * d)
