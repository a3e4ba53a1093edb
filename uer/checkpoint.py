"""Model files: flat state dicts with the reference key names, written atomically; strict loading
that names missing, unexpected and mis-shaped keys; the later (mid-2023) key names are mapped on
load. A path ending in .safetensors is written and read with safetensors. Read with
weights_only=True or safetensors: no file can run code. (The training package adds the resume
state beside each checkpoint: uer/train/checkpoint.py.)"""
from __future__ import annotations

import os
import re

import torch
from torch import nn

from uer.errors import UerError
from uer.utils import atomic_path


def save_model(model: nn.Module | None, path: str, card: dict | None = None, state: dict | None = None,
               **extra) -> dict[str, torch.Tensor]:
    """The unwrapped model's state dict (or `state`, one already gathered), written by
    write_state_dict, and its model card (uer.card) with `extra` in it; returns what was written
    (on the CPU)."""
    if state is None:
        module = getattr(model, "module", model)
        state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    write_state_dict(state, path)
    if card is not None:
        from uer.card import write_card

        write_card(path, card, **extra)
    return state


def write_state_dict(state: dict[str, torch.Tensor], path: str) -> None:
    """torch.save, or safetensors for a .safetensors path, via a temporary file renamed when complete."""
    with atomic_path(path) as tmp:
        if path.endswith(".safetensors"):
            from safetensors.torch import save_file

            # tied weights share storage, which safetensors refuses: each key gets its own copy
            save_file({k: v.clone().contiguous() for k, v in state.items()}, tmp, metadata={"format": "pt"})
        else:
            torch.save(state, tmp)


#: later UER key names (SPEC 4.5) -> the reference names used here
LATER_NAMES = [
    (r"^embedding\.word\.embedding\.", "embedding.word_embedding."),
    (r"^embedding\.pos\.embedding\.", "embedding.position_embedding."),
    (r"^embedding\.seg\.embedding\.", "embedding.segment_embedding."),
    (r"^target\.mlm\.linear_(\d)\.", r"target.mlm_linear_\1."),
    (r"^target\.mlm\.layer_norm\.", "target.layer_norm."),
    (r"^target\.lm\.output_layer\.", "target.output_layer."),
]


def map_later_names(state: dict, sentence_pair: str | None = "nsp") -> dict:
    """Rename keys of the later layout; `target.sp.*` becomes nsp_* or sop_* (by the target)."""
    out = {}
    for k, v in state.items():
        for pattern, repl in LATER_NAMES:
            k = re.sub(pattern, repl, k)
        if sentence_pair:
            k = re.sub(r"^target\.sp\.linear_(\d)\.", rf"target.{sentence_pair}_linear_\1.", k)
        out[k] = v
    return out


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise UerError(f"checkpoint not found: {path}")
    try:
        with open(path, "rb") as f:
            head = f.read(16)
        if path.endswith(".safetensors") or (len(head) >= 9 and head[8:9] == b"{"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
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


def load_model(model: nn.Module, path: str, strict: bool = True, any_target: bool = False) -> dict:
    """Load `path` into `model` (reference or later key names). Strict: any missing, unexpected or
    mis-shaped key is an error that lists them all. Not strict: the mismatches are returned and
    the missing parameters keep their N(0, 0.02) init. any_target (continuing a checkpoint of
    another target, e.g. bert as mlm): strict for the embedding and encoder, while the target's
    keys load where they fit and the others are only returned."""
    state = read_state_dict(path)
    own = model.state_dict()
    target = getattr(model, "target", None)
    sp = "sop" if hasattr(target, "sop_linear_1") else "nsp"
    state = map_later_names(state, sp)
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    misshaped = [f"{k}: checkpoint {tuple(state[k].shape)}, model {tuple(own[k].shape)}"
                 for k in own if k in state and state[k].shape != own[k].shape]
    report = {"missing": missing, "unexpected": unexpected, "misshaped": misshaped}
    blocking = [k for k in missing + unexpected + misshaped if not (any_target and k.startswith("target."))]
    if strict and blocking:
        lines = [f"checkpoint {path} does not fit the model built from these options:"]
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if keys:
                shown = keys[:20] + ([f"... and {len(keys) - 20} more"] if len(keys) > 20 else [])
                lines.append(f"  {len(keys)} {title} key(s):")
                lines += [f"    {k}" for k in shown]
        lines.append("Check --config_path, --embedding, --encoder and --target against the "
                     "options the checkpoint was trained with (pretrain.py --strict_load false loads only "
                     "the keys that fit).")
        raise UerError("\n".join(lines))
    fitting = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    if any(hasattr(v, "to_local") for v in own.values()):  # --fsdp: each rank keeps its shard
        from uer.train.sharding import load_full_state

        load_full_state(model, fitting)
    else:
        model.load_state_dict(fitting, strict=False)
    return report
