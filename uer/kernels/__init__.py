"""Speed kernels, put into a model from outside it: the model is built from the stock ops of
uer.model.ops, and use_kernels swaps in the faster modules where they pay. One switch decides,
once, when the model is built for training (--kernels)."""
from __future__ import annotations

import torch
from torch import nn

from uer.model import ops

KERNELS = ("auto", "stock")


def replacements(kernels: str, device: torch.device, reduced_precision: bool, compiled: bool) -> dict:
    """stock op class -> its kernel class, for this run. The CPU kernels pay only in fp32 on a CPU
    (under autocast the matmul units decide, and torch.compile fuses the stock dropout into the
    ops around it, where a host-side random draw would split its graph)."""
    if kernels not in KERNELS:
        raise ValueError(f"kernels must be one of {', '.join(KERNELS)}, got {kernels!r}")
    if kernels == "stock" or device.type != "cpu" or reduced_precision or compiled:
        return {}
    from uer.kernels import cpu

    return {ops.Dropout: cpu.CpuDropout, ops.Attention: cpu.CpuAttention, ops.OutputLoss: cpu.FusedOutputLoss}


def use_kernels(model: nn.Module, kernels: str = "auto", device: torch.device = torch.device("cpu"),
                reduced_precision: bool = False, compiled: bool = False) -> list[str]:
    """Replace, in place, every stock op module of `model` that has a kernel for this run; returns
    the kernel classes' names that went in. Parameters and buffers are untouched."""
    table = replacements(kernels, device, reduced_precision, compiled)
    used = set()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            kernel = table.get(type(child))
            if kernel is not None:
                swapped = kernel(child.p) if hasattr(child, "p") else kernel()
                setattr(parent, name, swapped.train(child.training))
                used.add(kernel.__name__)
    return sorted(used)
