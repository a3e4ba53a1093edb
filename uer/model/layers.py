"""Building blocks shared by the slots. Parameter names follow the reference checkpoints."""
from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel


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


def fp32_cpu(x: torch.Tensor) -> bool:
    """Whether x takes the fp32 CPU kernels of this package (fp32 on CPU, no autocast)."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")


def _masked_scale(x: torch.Tensor, keep: torch.Tensor, scale: float,
                  residual: torch.Tensor | None = None) -> torch.Tensor:
    """(residual +) x * keep * scale for a keep mask of 0s and 1s, in one pass: 3-4x faster on CPU
    than torch.where(keep, x, 0).mul_(scale) with a bool mask, and equal to it except that a
    dropped inf or nan gives nan, not 0."""
    return torch.addcmul(x.new_zeros(()) if residual is None else residual, x, keep, value=scale)


_RANDOM_LEVELS = 1 << 15


def cpu_threshold(p: float, training: bool) -> int | None:
    """The CPU dropout's drop threshold (a unit drops with probability threshold / 2**15) for
    dropout p, or None where it does not run: not training, p = 0, p so close to 1 that every
    unit drops, or under torch.compile (which fuses F.dropout into the kernels around it, where the
    host-side draw would split the graph)."""
    threshold = round(p * _RANDOM_LEVELS)
    usable = training and p != 0.0 and threshold < _RANDOM_LEVELS and not torch.compiler.is_compiling()
    return threshold if usable else None


def keep_scale(threshold: int) -> float:
    """The factor of the kept units, 1 / (1 - p'), so that the expectation is exact."""
    return _RANDOM_LEVELS / (_RANDOM_LEVELS - threshold)


def dropout(x: torch.Tensor, p: float, training: bool, residual: torch.Tensor | None = None) -> torch.Tensor:
    """F.dropout, with the cheaper keep mask of _CpuDropout on CPU; with a residual, residual +
    dropout(x) (on CPU in one pass)."""
    threshold = cpu_threshold(p, training)
    if threshold is not None and x.device.type == "cpu":
        return _CpuDropout.apply(x, threshold, residual)
    if training and p != 0.0:
        x = F.dropout(x, p, True)
    return x if residual is None else residual + x


class Dropout(nn.Module):
    """nn.Dropout through `dropout` (no parameters, so no checkpoint keys); called with a
    residual, residual + dropout(x)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        return dropout(x, self.p, self.training, residual)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def activation(name: str):
    if name == "gelu":
        return F.gelu
    if name == "gelu_fast":
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "relu":
        return F.relu
    raise ValueError(f"unknown activation {name}")


class MultiHeadedAttention(nn.Module):
    """Q, K, V projections (linear_layers.0/1/2), scaled_dot_product_attention, final_linear."""

    def __init__(self, hidden_size: int, heads_num: int, dropout: float):
        super().__init__()
        self.heads_num = heads_num
        self.per_head = hidden_size // heads_num
        self.dropout = dropout
        self.linear_layers = nn.ModuleList([nn.Linear(hidden_size, hidden_size) for _ in range(3)])
        self.final_linear = nn.Linear(hidden_size, hidden_size)

    def _project(self, x: torch.Tensor, first: int, n: int) -> torch.Tensor:
        """linear_layers[first : first + n] applied to x as one GEMM: [B, L, n, heads, d]."""
        layers = self.linear_layers[first:first + n]
        y = F.linear(x, torch.cat([m.weight for m in layers]), torch.cat([m.bias for m in layers])) if n > 1 \
            else layers[0](x)
        return y.view(*x.shape[:2], n, self.heads_num, self.per_head)

    def forward(self, query: torch.Tensor, key_value: torch.Tensor,
                attn_mask: torch.Tensor | None = None, is_causal: bool = False,
                cache: dict | None = None, keep: torch.Tensor | None = None) -> torch.Tensor:
        """cache (self-attention while generating): the keys and values of earlier positions,
        extended in place; the new queries see them all and, causally, each other. keep: only
        these rows of the flattened [B * Lq] output are projected and returned ([len(keep), H])."""
        B, Lq, H = query.shape
        Lk = key_value.shape[1]

        threshold = cpu_threshold(self.dropout, self.training)
        # SDPA runs its math path on CPU whenever dropout is on: _CpuAttention is the same, with
        # cheaper dropout and no copies of the heads (it reads them from the projections in place)
        cpu_math = threshold is not None and fp32_cpu(query)
        # the projections that read the same input are one GEMM over their weights side by side
        # (the checkpoint keeps them apart): Q, K and V in self-attention, K and V otherwise. One
        # wider product, and fewer ops for the host to launch (on a GPU, the host bounds the step)
        if query is key_value:
            qkv = self._project(query, 0, 3)  # [B, L, 3, heads, d]
            q, k, v = qkv.unbind(2)
        else:
            q = self._project(query, 0, 1).squeeze(2)
            k, v = self._project(key_value, 1, 2).unbind(2)
        if cache is not None:
            if "k" in cache:
                past = cache["k"].shape[1]
                k, v = torch.cat([cache["k"], k], 1), torch.cat([cache["v"], v], 1)
                if is_causal:  # new position i sees the past and new positions <= i
                    attn_mask = torch.ones(Lq, past + Lq, dtype=torch.bool, device=q.device).tril(past)
                    is_causal = False
            cache["k"], cache["v"] = k, v
            Lk = k.shape[1]
        if cpu_math:  # [B, L, heads, d] views; self-attention's projection is handed over whole
            projected = (qkv, None, None) if query is key_value and cache is None else (q, k, v)
            out = _CpuAttention.apply(*projected, additive_mask(attn_mask, is_causal, Lq, Lk, query.device), threshold)
        else:
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, heads, L, d]
            if not self.training or self.dropout == 0 or query.device.type != "cpu":
                with sdpa_backends(query):
                    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal,
                                                         dropout_p=self.dropout if self.training else 0.0)
            else:  # reduced precision, or p = 1
                out = attention_with_dropout(q, k, v, attn_mask, is_causal, self.dropout)
            out = out.transpose(1, 2).reshape(B, Lq, H)
        if keep is not None:
            out = out.reshape(B * Lq, H).index_select(0, keep)
        return self.final_linear(out)


# On a GPU, cuDNN's attention builds an execution plan for every new shape, several milliseconds
# each, and uer's shapes change from batch to batch: length buckets, the last layer's queries at
# the masked positions only, the keys that grow while generating (BERT-base bert with length
# buckets, batch 32, on an H200: 285 ms a step with cuDNN's attention, 49 ms without it). Flash
# and memory-efficient attention take any shape as it comes.
_ANY_SHAPE = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def sdpa_backends(x: torch.Tensor):
    """scaled_dot_product_attention's backends for x's device: on CUDA, all but cuDNN's."""
    return sdpa_kernel(_ANY_SHAPE) if x.is_cuda else contextlib.nullcontext()


def attention_with_dropout(q, k, v, attn_mask, is_causal: bool, p: float) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d) + mask) with `dropout`, times V (boolean masks: True = may attend)."""
    scores = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.transpose(-1, -2)
    mask = additive_mask(attn_mask, is_causal, q.shape[-2], k.shape[-2], q.device)
    if mask is not None:  # added in place (the product is not saved for backward)
        scores.add_(mask.to(scores.dtype))
    return dropout(scores.softmax(-1), p, True) @ v


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
    [B or 1, h or 1, Lq or 1, Lk], or [Lq, Lk]. Returns [B, Lq, h * d]. With k and v None, q is
    [B, L, 3, h, d] (the output of one GEMM for Q, K and V), and its gradient comes back whole."""

    @staticmethod
    def forward(ctx, q, k, v, mask, threshold: int):
        ctx.fused = k is None
        if ctx.fused:
            q, k, v = q.unbind(2)
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
        grads = [g.permute(1, 2, 0, 3) for g in (grad_q, grad_k, grad_v)]
        if ctx.fused:
            whole = q.new_empty(B, Lq, 3, h, d)
            for i, g in enumerate(grads):
                whole[:, :, i] = g
            return whole, None, None, None, None
        return *grads, None, None


def reference_attention(q, k, v, attn_mask=None, is_causal=False):
    """softmax(Q K^T / sqrt(d)) V with boolean masks (True = may attend); for tests."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if is_causal:
        L, S = q.shape[-2], k.shape[-2]
        attn_mask = torch.ones(L, S, dtype=torch.bool, device=q.device).tril()
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    return scores.softmax(-1) @ v


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
