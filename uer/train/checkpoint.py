"""Checkpoints: flat state dicts with the reference key names, written atomically; strict loading
that names missing, unexpected and mis-shaped keys."""
from __future__ import annotations

import os

import torch
from torch import nn

from uer.errors import UerError
from uer.utils import atomic_path


def save_model(model: nn.Module, path: str) -> None:
    """torch.save of the unwrapped model's state dict, via a temporary file renamed when complete."""
    module = getattr(model, "module", model)
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise UerError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several kinds for a damaged or foreign file
        raise UerError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UerError(f"{path} does not hold a state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_model(model: nn.Module, path: str, strict: bool = True) -> dict:
    """Load `path` into `model`. Strict: any missing, unexpected or mis-shaped key is an error that
    lists them all. Not strict: the mismatches are returned (missing ones keep their init)."""
    state = read_state_dict(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    misshaped = [f"{k}: checkpoint {tuple(state[k].shape)}, model {tuple(own[k].shape)}"
                 for k in own if k in state and state[k].shape != own[k].shape]
    report = {"missing": missing, "unexpected": unexpected, "misshaped": misshaped}
    if strict and (missing or unexpected or misshaped):
        lines = [f"checkpoint {path} does not fit the model built from these options:"]
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if keys:
                shown = keys[:20] + ([f"... and {len(keys) - 20} more"] if len(keys) > 20 else [])
                lines.append(f"  {len(keys)} {title} key(s):")
                lines += [f"    {k}" for k in shown]
        lines.append("Check --config_path, --embedding, --encoder and --target against the "
                     "options the checkpoint was trained with.")
        raise UerError("\n".join(lines))
    fitting = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    model.load_state_dict(fitting, strict=False)
    return report
