"""AdamW (UER-py's update by default) with decoupled weight decay on all but biases and LayerNorm,
and the schedule."""
from __future__ import annotations

import torch
from torch import nn


def no_decay(name: str) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    return leaf in ("bias", "gamma", "beta") or "layer_norm" in name


# Counting each parameter's step from 2**23 makes torch's divisors 1 - beta**t equal to 1 to the
# last bit for any beta <= uer.config.MAX_BETA (beta**t < 1e-36), and a float32 step still
# counts exactly for 2**23 steps.
STEP_OFFSET = 2.0 ** 23


class AdamW(torch.optim.AdamW):
    """torch's AdamW (its fused kernel where the parameters allow), with or without bias correction.

    bias_correction=False is the update of UER-py and Google's BERT (SPEC 2.8), for which the
    manual's learning rates were tuned: m <- b1*m + (1-b1)*g, v <- b2*v + (1-b2)*g^2,
    p <- p - lr*wd*p - lr*m/(sqrt(v) + eps). torch divides m by 1 - b1^t and v by 1 - b2^t; with
    t counted from STEP_OFFSET both are 1, so the same kernel makes the uncorrected update, skipped
    steps included. The offset lives only in the live state: state_dict() holds the true steps,
    so a saved state continues in either mode. (torch decays before the Adam step, UER-py after:
    they differ by lr^2*wd*update.)"""

    def __init__(self, params, bias_correction: bool = True, **kw):
        super().__init__(params, **kw)
        self.bias_correction = bias_correction
        if not bias_correction:
            # the state torch would create at the first step, made now so that it starts at the offset
            zeros = {"state": {i: {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(p),
                                   "exp_avg_sq": torch.zeros_like(p)}
                               for i, p in enumerate(p for g in self.param_groups for p in g["params"])},
                     "param_groups": super().state_dict()["param_groups"]}
            self.load_state_dict(zeros)

    def _shifted(self, state_dict: dict, by: float) -> dict:
        state = {k: dict(v, step=v["step"] + by) if "step" in v else v for k, v in state_dict["state"].items()}
        return {**state_dict, "state": state}

    def state_dict(self) -> dict:
        sd = super().state_dict()
        return sd if self.bias_correction else self._shifted(sd, -STEP_OFFSET)

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict if self.bias_correction else self._shifted(state_dict, STEP_OFFSET))


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.999),
                    eps: float = 1e-6, bias_correction: bool = False) -> AdamW:
    decay, plain = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (plain if no_decay(name) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": plain, "weight_decay": 0.0}]
    # the fused kernel (CUDA and CPU) is one pass over each tensor: on CPU 3x as fast as foreach
    fused = all(p.device.type in ("cuda", "cpu") and p.dtype in (torch.float32, torch.float16, torch.bfloat16)
                for p in model.parameters())
    return AdamW(groups, bias_correction=bias_correction, lr=lr, betas=betas, eps=eps,
                 **({"fused": True} if fused else {"foreach": True}))


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
