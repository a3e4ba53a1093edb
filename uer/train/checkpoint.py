"""Training checkpoints: the model file (uer.checkpoint) and beside each intermediate checkpoint <out>-<step> a training-state file <out>-<step>.state holds
what an exact resume needs (optimizer, schedule, scaler, step, every rank's RNG, run shape). It
is written after the model file, so its presence marks a complete checkpoint.
"""
from __future__ import annotations

import glob
import os
import re
import shutil

import torch

from uer.checkpoint import load_model, map_later_names, read_state_dict, save_model  # noqa: F401
from uer.errors import UerError
from uer.utils import atomic_path


# -- training state (exact resume) -----------------------------------------------------------------

def state_path(model_path: str) -> str:
    return model_path + ".state"


def save_training_state(path: str, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def remove(path: str) -> None:
    """A checkpoint's model: a file, or the directory of a distributed checkpoint (--fsdp)."""
    if os.path.isdir(path):
        shutil.rmtree(path)
    else:
        os.remove(path)


def complete_checkpoints(output_model_path: str) -> list[tuple[int, str]]:
    """(step, model path) of every complete intermediate checkpoint (with its .state), oldest first;
    the model path is a file, or a distributed checkpoint's directory."""
    found = []
    for model_path in glob.glob(glob.escape(output_model_path) + "-*"):
        m = re.fullmatch(re.escape(output_model_path) + r"-(\d+)", model_path)
        if m and os.path.isfile(state_path(model_path)):
            found.append((int(m.group(1)), model_path))
    return sorted(found)


def latest_checkpoint(output_model_path: str, before: int | None = None) -> tuple[int, str] | None:
    """(step, model path) of the newest complete intermediate checkpoint (before step `before`), or None."""
    earlier = [c for c in complete_checkpoints(output_model_path) if before is None or c[0] < before]
    return earlier[-1] if earlier else None


def prune_checkpoints(output_model_path: str, keep: int) -> list[str]:
    """Remove the complete step checkpoints older than the newest `keep` (the .state first, so a
    half-removed one is never taken as complete); returns the model paths removed. Called after a
    checkpoint is complete, so the newest one is never the one at risk."""
    from uer.card import card_path

    removed = []
    for _, model_path in complete_checkpoints(output_model_path)[:-keep]:
        os.remove(state_path(model_path))
        remove(model_path)
        if os.path.exists(card_path(model_path)):
            os.remove(card_path(model_path))
        removed.append(model_path)
    return removed


#: what every training state holds (see the trainer's save)
STATE_KEYS = ("step", "optimizer", "scheduler", "scaler", "rng", "run", "weights")


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
    if state["optimizer"] is None and state["weights"] is None:  # a distributed checkpoint holds both
        return problems + _rest_problems(state, optimizer, rng_shape, step, weights=False)
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
    return problems + _rest_problems(state, optimizer, rng_shape, step)


def _rest_problems(state: dict, optimizer, rng_shape, step: int, weights: bool = True) -> list[str]:
    problems = []
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
        problems.append("the run's record and the loss scaler's state must be dicts")
    if weights and (not isinstance(state["weights"], list) or not all(isinstance(w, float) for w in state["weights"])):
        problems.append("the weights' fingerprint must be a list of numbers")
    return problems
