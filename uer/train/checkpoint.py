"""Checkpoints: flat state dicts with the reference key names, written atomically; strict loading
that names missing, unexpected and mis-shaped keys; the later (mid-2023) key names are mapped on
load. A path ending in .safetensors is written and read with safetensors.

Beside each intermediate checkpoint <out>-<step> a training-state file <out>-<step>.state holds
what an exact resume needs (optimizer, schedule, scaler, step, every rank's RNG, run shape). It
is written after the model file, so its presence marks a complete checkpoint.
"""
from __future__ import annotations

import glob
import os
import re

import torch
from torch import nn

from uer.errors import UerError
from uer.utils import atomic_path


def save_model(model: nn.Module, path: str) -> None:
    """The unwrapped model's state dict (torch.save, or safetensors for a .safetensors path), via a
    temporary file renamed when complete."""
    module = getattr(model, "module", model)
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    with atomic_path(path) as tmp:
        if path.endswith(".safetensors"):
            from safetensors.torch import save_file

            # tied weights share storage, which safetensors refuses: each key gets its own copy
            save_file({k: v.clone().contiguous() for k, v in state.items()}, tmp)
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


def load_model(model: nn.Module, path: str, strict: bool = True) -> dict:
    """Load `path` into `model` (reference or later key names). Strict: any missing, unexpected or
    mis-shaped key is an error that lists them all. Not strict: the mismatches are returned and
    the missing parameters keep their N(0, 0.02) init."""
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


# -- training state (exact resume) -----------------------------------------------------------------

def state_path(model_path: str) -> str:
    return model_path + ".state"


def save_training_state(path: str, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def latest_checkpoint(output_model_path: str) -> tuple[int, str] | None:
    """(step, model path) of the newest complete intermediate checkpoint, or None."""
    best = None
    for model_path in glob.glob(glob.escape(output_model_path) + "-*"):
        m = re.fullmatch(re.escape(output_model_path) + r"-(\d+)", model_path)
        if m and os.path.isfile(state_path(model_path)):
            step = int(m.group(1))
            if best is None or step > best[0]:
                best = (step, model_path)
    return best


#: what every training state holds (see the trainer's save)
STATE_KEYS = ("step", "optimizer", "scheduler", "scaler", "rng", "run")


def load_training_state(path: str) -> dict:
    """A training state as save_training_state wrote it. Read with weights_only=True: tensors and
    plain values only, so a crafted file cannot run code (it is an error like a damaged one)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # the unpickler's refusal of a foreign object, or a damaged file
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UerError(f"cannot read training state {path}: {type(e).__name__}: {first} "
                       "(it holds something other than tensors and plain values, or it is damaged)") from None
    missing = [k for k in STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise UerError(f"{path} is not a uer training state: it has no {', '.join(missing)}")
    return state


def state_problems(state: dict, optimizer: torch.optim.Optimizer, rng_shape: torch.Size, step: int) -> list[str]:
    """Every way `state` does not fit this run's optimizer, schedule and RNG (empty if it fits):
    each optimizer tensor must have its parameter's shape (or be a scalar), so that moments of
    another model are never taken or crash the kernel."""
    problems = []
    if state["step"] != step:
        problems.append(f"step {state['step']!r}, but the checkpoint's name says {step}")
    saved = state["optimizer"]
    groups = saved.get("param_groups") if isinstance(saved, dict) else None
    if not isinstance(groups, list) or not isinstance(saved.get("state"), dict):
        return problems + ["the optimizer state has no param_groups and state"]
    if [len(g.get("params", ())) for g in groups] != [len(g["params"]) for g in optimizer.param_groups]:
        return problems + [f"optimizer groups of {[len(g.get('params', ())) for g in groups]} parameters, "
                           f"the model's of {[len(g['params']) for g in optimizer.param_groups]}"]
    params = {}  # the saved ids, in order, are the model's parameters in order
    for saved_group, group in zip(groups, optimizer.param_groups):
        params.update(zip(saved_group["params"], group["params"]))
    for pid, entry in saved["state"].items():
        if pid not in params or not isinstance(entry, dict):
            problems.append(f"optimizer state for an unknown parameter {pid!r}")
            continue
        p = params[pid]
        for name, value in entry.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != p.shape:
                problems.append(f"optimizer {name} of parameter {pid}: {tuple(value.shape)}, "
                                f"the model's parameter {tuple(p.shape)}")
    sched = state["scheduler"]
    base_lrs = sched.get("base_lrs") if isinstance(sched, dict) else None
    if not isinstance(base_lrs, list) or len(base_lrs) != len(optimizer.param_groups) \
            or sched.get("last_epoch") != step:
        problems.append(f"the schedule is not one of {len(optimizer.param_groups)} groups at step {step}")
    rngs = state["rng"]
    if not isinstance(rngs, list) or not all(
            isinstance(r, dict) and isinstance(r.get("torch"), torch.Tensor) and r["torch"].shape == rng_shape
            and r["torch"].dtype == torch.uint8 for r in rngs):
        problems.append("the RNG states are not torch generator states")
    if not isinstance(state["run"], dict) or not isinstance(state["scaler"], dict):
        problems.append("the run shape and the loss scaler's state must be dicts")
    return problems
