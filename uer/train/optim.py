"""AdamW with decoupled weight decay on all but biases and LayerNorm, and the schedule."""
from __future__ import annotations

import inspect
import sys

import torch
from torch import nn


def no_decay(name: str) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    return leaf in ("bias", "gamma", "beta") or "layer_norm" in name


def _skip_dynamo_import() -> None:
    """torch.optim marks some functions "never compile" lazily: the first call imports
    torch._dynamo (a second of start-up on a small machine) only to wrap the function. uer never
    compiles an optimizer, so each such function (an Optimizer method, the functional adam) is
    made its own wrapper. Does nothing once torch._dynamo is loaded, or if torch stops working
    this way."""
    if "torch._dynamo" in sys.modules:
        return
    outer = list(vars(torch.optim.Optimizer).values()) + [getattr(sys.modules.get("torch.optim.adam"), "adam", None)]
    for f in outer:
        cells = [c.cell_contents for c in (getattr(f, "__closure__", None) or ())
                 if not isinstance(c.cell_contents, (int, str, type(None)))]
        for w in [f] + cells:  # the marking wrapper itself, or one held by f
            code = getattr(w, "__code__", None)
            inner = getattr(w, "__wrapped__", None)
            if code is not None and code.co_filename.endswith("_compile.py") and callable(inner) \
                    and getattr(inner, "__dynamo_disable", None) is None:
                setattr(inner, "__dynamo_disable", inner)


_ADAM_STEP = inspect.unwrap(torch.optim.Adam.step)


class AdamW(torch.optim.AdamW):
    """torch's AdamW, with a step that does not import torch._dynamo the first time (torch.optim
    wraps step to mark a graph break for the compiler; uer never compiles the optimizer)."""

    def step(self, closure=None):
        with torch.set_grad_enabled(self.defaults["differentiable"]):
            return _ADAM_STEP(self, closure)


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.999),
                    eps: float = 1e-6) -> torch.optim.Optimizer:
    _skip_dynamo_import()
    decay, plain = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (plain if no_decay(name) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": plain, "weight_decay": 0.0}]
    # the fused kernel (CUDA and CPU) is one pass over each tensor: on CPU 3x as fast as foreach
    fused = all(p.device.type in ("cuda", "cpu") and p.dtype in (torch.float32, torch.float16, torch.bfloat16)
                for p in model.parameters())
    return AdamW(groups, lr=lr, betas=betas, eps=eps, **({"fused": True} if fused else {"foreach": True}))


def clip_in_step(optimizer: torch.optim.Optimizer, parameters, max_norm: float) -> torch.Tensor:
    """Clip the gradients to a global L2 norm of max_norm (0: no clipping) in the fused AdamW's
    step, which must follow, and return their norm. The gradients are not touched here: the step
    divides each one by the optimizer's `grad_scale` as it reads it, so clipping costs no pass over
    them of its own (torch.nn.utils.clip_grad_norm_ multiplies every gradient in place). The
    result equals clip_grad_norm_ followed by the step, up to rounding."""
    if not optimizer.defaults.get("fused"):
        raise ValueError("clip_in_step needs the fused AdamW (a grad_scale of its own)")
    norm = torch.nn.utils.get_total_norm([p.grad for p in parameters if p.grad is not None])
    # clip_grad_norm_ multiplies by min(max_norm / (norm + 1e-6), 1); the step divides by its inverse
    optimizer.grad_scale = torch.clamp((norm + 1e-6) / max_norm, min=1.0) if max_norm else None
    return norm


def lr_multiplier(step: int, total_steps: int, warmup: float) -> float:
    """Multiplier of the peak LR for optimizer step `step` (1-based): linear warm-up over
    warmup * total_steps steps, then linear decay that reaches 0 after the last step.
    The first step never runs at lr 0."""
    w = warmup * total_steps
    if step <= w:
        return step / w
    return max(0.0, (total_steps - step + 1) / (total_steps - w + 1))


def build_scheduler(optimizer, total_steps: int, warmup: float):
    # LambdaLR calls the lambda with the number of scheduler steps taken so far (0 first), which
    # is the index of the optimizer step about to run; our steps are 1-based.
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda k: lr_multiplier(k + 1, total_steps, warmup))
