"""Speed kernels, put into a model from outside it: the model is built from the stock ops of
uer.model.ops, and use_kernels swaps in the faster modules where they pay. One switch decides,
once, when the model is built for training (--kernels)."""
from __future__ import annotations

import torch
from torch import nn

from uer.model import ops
from uer.options import OPTIONS

KERNELS = OPTIONS["kernels"].choices


def replacements(kernels: str, device: torch.device, compiled: bool) -> dict:
    """stock op class -> its kernel class, for this run: the CPU kernels on a CPU in eager mode
    (torch.compile fuses the stock dropout into the ops around it, where a host-side random draw
    would split its graph), in fp32 and under autocast alike."""
    if kernels not in KERNELS:
        raise ValueError(f"kernels must be one of {', '.join(KERNELS)}, got {kernels!r}")
    if kernels == "stock" or device.type != "cpu" or compiled:
        return {}
    from uer.kernels import cpu

    return {ops.Dropout: cpu.CpuDropout, ops.Attention: cpu.CpuAttention}


def use_kernels(model: nn.Module, kernels: str = "auto", device: torch.device = torch.device("cpu"),
                compiled: bool = False) -> list[str]:
    """Replace, in place, every stock op module of `model` that has a kernel for this run; returns
    the kernel classes' names that went in. Parameters and buffers are untouched."""
    return swap(model, replacements(kernels, device, compiled))


def swap(model: nn.Module, table: dict) -> list[str]:
    """Replace every child module whose class is a key of `table` by an instance of its value
    (same p, same training mode); returns the names of the classes that went in."""
    used = set()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            kernel = table.get(type(child))
            if kernel is not None:
                swapped = kernel(child.p) if hasattr(child, "p") else kernel()
                if getattr(child, "scale", None) is not None:
                    swapped.scale = child.scale
                setattr(parent, name, swapped.train(child.training))
                used.add(kernel.__name__)
    return sorted(used)
