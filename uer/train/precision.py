"""A run's precision policy in one place: the autocast dtype, the loss scale, fp16 O3 weights,
the RNNs' fallback where the CPU has no bf16 kernels, and what a non-finite step does.

Every step goes through torch's GradScaler (public API). With --fp16 its scale is dynamic: a step
whose gradients overflow is skipped and the scale lowered, and MAX_SKIPPED_STEPS skips in a row
stop the run. Otherwise the scale is 1, and after a step with a non-finite loss or gradient norm
it becomes NaN: every later gradient is then non-finite too, so the scaler skips that step and
every one after it on the device, without the host waiting on a step. check() reads the flag
where the host reads anyway (reports, evaluations, checkpoints), before anything is saved."""
from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from uer.errors import UerError

MAX_SKIPPED_STEPS = 50  # fp16: a scale divided by 2**50 is no longer an overflow


def cpu_has_native_bf16() -> bool:
    """Whether this CPU runs bf16 natively (AVX-512 BF16 / AMX, as oneDNN reports it). Without it,
    CPU bf16 is emulated (slower than fp32) and oneDNN has no bf16 LSTM kernel."""
    supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return supported is None or bool(supported())


def autocast(bf16: bool, fp16: bool, fp16_opt_level: str, device: torch.device):
    """The autocast context of these precision options (none for fp32 or --fp16_opt_level O0)."""
    dtype = torch.bfloat16 if bf16 else torch.float16 if fp16 and fp16_opt_level != "O0" else None
    return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()


class NonFinite(UerError):
    """A step whose loss or gradient norm was not finite."""


class Precision:
    def __init__(self, bf16: bool, fp16: bool, fp16_opt_level: str, device: torch.device):
        self.device = device
        self.fp16 = fp16 and fp16_opt_level != "O0"
        self.o3 = self.fp16 and fp16_opt_level == "O3"
        self.bf16, self.fp16_opt_level = bf16, fp16_opt_level
        # fp32 / bf16: a fixed scale of 1 (growth never comes: the interval is ~2**31 steps)
        fixed = {} if self.fp16 else {"init_scale": 1.0, "growth_interval": 2 ** 31 - 1}
        self.scaler = torch.amp.GradScaler(device.type, **fixed)
        self.first_bad = torch.zeros((), dtype=torch.int64, device=device)  # 0: none yet
        self.bad_value = torch.zeros((), device=device)
        self.bad_loss = torch.zeros((), dtype=torch.bool, device=device)  # the loss, not the norm
        self.skipped = 0  # fp16 steps skipped in a row

    def autocast(self):
        return autocast(self.bf16, self.fp16, self.fp16_opt_level, self.device)

    def prepare(self, model: nn.Module) -> list[str]:
        """The model in this policy's storage precision; returns warnings for the log."""
        warnings = []
        if self.o3:
            model.half()
        if self.bf16 and self.device.type == "cpu" and not cpu_has_native_bf16():
            warnings.append("warning: --bf16 on a CPU without native bf16 (AVX-512 BF16 or AMX): autocast "
                            "emulates it, which is many times slower than fp32 here; leave --bf16 out on "
                            "this CPU.")
            for m in model.modules():  # oneDNN cannot create a bf16 RNN there: the RNNs run in fp32
                if isinstance(m, nn.RNNBase):
                    m.forward = _fp32_rnn(m.forward)
        return warnings

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def step(self, step: int, optimizer: torch.optim.Optimizer, parameters, max_norm: float,
             loss: torch.Tensor) -> torch.Tensor:
        """Clip to max_norm (0: no clipping) and step, unless the step is not finite (see above).
        Returns the gradient norm before clipping (on the device: read it only when reporting)."""
        self.scaler.unscale_(optimizer)
        norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm or math.inf)
        if hasattr(norm, "full_tensor"):  # --fsdp: the norm over every shard, the same on all ranks
            norm = norm.full_tensor()
        self.scaler.step(optimizer)
        if self.fp16:
            scale = self.scaler.get_scale()  # a host read per step, as GradScaler's own loop has
            self.scaler.update()
            self.skipped = self.skipped + 1 if self.scaler.get_scale() < scale else 0
            if self.skipped >= MAX_SKIPPED_STEPS:
                raise NonFinite(f"step {step}: {self.skipped} steps in a row had non-finite gradients")
            return norm
        loss_bad = torch.isfinite(norm) & ~torch.isfinite(loss.detach())  # the norm is named first
        value = torch.where(loss_bad, loss.detach().float(), norm.float())
        new = (self.first_bad == 0) & ~torch.isfinite(value)
        self.first_bad = torch.where(new, step, self.first_bad)
        self.bad_value = torch.where(new, value, self.bad_value)
        self.bad_loss = torch.where(new, loss_bad, self.bad_loss)
        self.scaler.update(torch.where(self.first_bad > 0, math.nan, 1.0).to(self.device))
        return norm

    def skipped_message(self, step: int) -> str | None:
        """The log line for an fp16 step the scaler skipped, if this one was."""
        if self.fp16 and self.skipped:
            return f"step {step}: non-finite gradients; the step is skipped and the loss scale lowered."
        return None

    def check(self) -> None:
        """Raise NonFinite naming the first non-finite step (one host read)."""
        step = int(self.first_bad)
        if step:
            what = "loss" if bool(self.bad_loss) else "gradient norm"
            raise NonFinite(f"step {step}: the {what} is {float(self.bad_value)}")


def _fp32_rnn(forward):
    def run(x, hx=None):
        with torch.autocast("cpu", enabled=False):
            return forward(x.float(), hx)
    return run
