"""One run per output path, and checkpoints that belong to their run.

A run has an identity (an id, the host, the start time, every option it was started with), which is
written into each training state, so that `--resume` continues only a run of the same options and
says which one. A lock file <output_model_path>.lock holds the host and process id of the live run
on that path; a second run is refused while it lives, and a lock whose process is gone is stale
and taken over. A fresh run does not start on a path that holds another run's files unless told
to (--overwrite).
"""
from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
import re
import socket
import time
import uuid

from uer.errors import UerError
from uer.utils import process_alive


# -- identity ---------------------------------------------------------------------------------------

def new_identity() -> dict:
    return {"id": uuid.uuid4().hex[:12], "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}


#: the data order of the runs this version writes: one global sample order (uer.data.loader)
SAMPLE_ORDER = "global"
#: how the global batch is shared out; any of them may change when a run continues
TOPOLOGY = ("world_size", "batch_size", "accumulation_steps")


def run_shape(tcfg, world_size: int) -> dict:
    """The run's shape: what must not change for a resumed run to continue exactly (all but the
    TOPOLOGY, which may change as long as the global batch stays)."""
    return {"world_size": world_size, "batch_size": tcfg.batch_size,
            "accumulation_steps": tcfg.accumulation_steps,
            "global_batch": tcfg.batch_size * tcfg.accumulation_steps * world_size, "seed": tcfg.seed,
            "total_steps": tcfg.total_steps, "warmup": tcfg.warmup, "dataset_path": os.path.abspath(tcfg.dataset_path),
            "length_buckets": tcfg.length_buckets, "sample_order": SAMPLE_ORDER}


def _global_batch_problem(saved: dict, now: dict) -> str:
    """The refusal of a changed global batch, with the batch sizes that would keep it."""
    g, w = saved["global_batch"], now["world_size"]
    said = (f"global batch (batch_size x accumulation_steps x processes): {g} "
            f"({saved['batch_size']} x {saved['accumulation_steps']} x {saved['world_size']}) -> "
            f"{now['global_batch']} ({now['batch_size']} x {now['accumulation_steps']} x {w})")
    if g % w:
        return said + f"; {w} processes cannot share {g} instances a step evenly: use a number that divides {g}"
    ways = [f"--batch_size {g // w // a}" + (f" --accumulation_steps {a}" if a > 1 else "")
            for a in range(1, g // w + 1) if (g // w) % a == 0][:3]
    return said + f"; with {w} processes keep it with " + " or ".join(ways)


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def record(identity: dict, tcfg, mcfg, world_size: int) -> dict:
    """The run as a training state holds it: plain values only (read with weights_only=True)."""
    return {**identity, "shape": run_shape(tcfg, world_size),
            "model": {k: _plain(v) for k, v in dataclasses.asdict(mcfg).items()},
            "train": {k: _plain(v) for k, v in dataclasses.asdict(tcfg).items()}}


#: training options that must be as the run was started (besides the run shape): the precision
#: changes the optimizer's and scaler's state, the others what the weights were built from or the
#: batches
REFUSED = ("fp16", "fp16_opt_level", "bf16", "pretrained_model_path", "strict_load", "span_masking",
           "span_geo_prob", "span_max_length", "whole_word_masking", "user_dict_path")
#: model options a resumed run may change: the model is built from the command line
MODEL_APPLIED = ("dropout",)


def as_saved(cfg, saved: dict) -> dict:
    """cfg's fields, less those newer than the saved run that are at their default (the run was
    trained as if with that default)."""
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
            if f.name in saved or getattr(cfg, f.name) != f.default}


def resume_changes(saved: dict, tcfg, mcfg, world_size: int) -> tuple[list[str], list[str]]:
    """(refused, applied): every option of this command line that differs from the saved run,
    `name: saved -> now`. Refused ones stop the resume; the rest are used from here on."""
    refused, applied = [], []
    now_shape = run_shape(tcfg, world_size)
    shape = dict(saved["shape"])
    shape.setdefault("global_batch", shape["batch_size"] * shape["accumulation_steps"] * shape["world_size"])
    if shape.get("sample_order") != SAMPLE_ORDER:  # written before the order was global
        applied.append("sample order: each process its own part of the dataset -> one global order (the "
                       "samples from here on are not the ones the earlier version would have given)")
    for k, v in now_shape.items():
        if k == "global_batch" and shape[k] != v:
            refused.append(_global_batch_problem(shape, now_shape))
        elif k != "sample_order" and shape.get(k) != v:
            (applied if k in TOPOLOGY else refused).append(f"{k}: {shape.get(k)} -> {v}")
    for k, v in as_saved(mcfg, saved["model"]).items():
        old = saved["model"].get(k)
        if old != _plain(v):
            (applied if k in MODEL_APPLIED else refused).append(f"{k}: {old} -> {v}")
    for k, v in as_saved(tcfg, saved["train"]).items():
        old = saved["train"].get(k)
        if k in now_shape or k in ("resume", "overwrite") or old == _plain(v):
            continue
        if k == "pretrained_model_path" and old and v and os.path.abspath(old) == os.path.abspath(v):
            continue
        (refused if k in REFUSED else applied).append(f"{k}: {old} -> {v}")
    return refused, applied


def apply_to_optimizer(tcfg, optimizer, scheduler) -> None:
    """After a saved optimizer and schedule are loaded: this command line's rate, decay and betas
    (the schedule keeps its step, so the rate continues on its curve from the new peak)."""
    scheduler.base_lrs = [tcfg.learning_rate for _ in optimizer.param_groups]
    for group, lr, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = lr * factor(scheduler.last_epoch)
        group["initial_lr"] = lr
        group["betas"] = (tcfg.beta1, tcfg.beta2)
        if group["weight_decay"] != 0.0:  # the no-decay group keeps 0
            group["weight_decay"] = tcfg.weight_decay


def fingerprint(state: dict) -> list[float]:
    """Per-tensor sums of a state dict (float64, in key order): ties a model file to its training
    state, so that a checkpoint is resumed only with the weights its state was saved with."""
    return [float(v.double().sum()) for _, v in sorted(state.items())]


def same_fingerprint(a: list, b: list) -> bool:
    return len(a) == len(b) and all(math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-6) for x, y in zip(a, b))


# -- the files of a run -----------------------------------------------------------------------------

def run_files(output: str) -> list[str]:
    """What a run on `output` writes: <out>-<step> checkpoints, their .state files and model cards,
    the final <out>."""
    pattern = re.compile(re.escape(output) + r"-(\d+)(\.state|\.json)?")
    found = [(int(m.group(1)), p) for p in glob.glob(glob.escape(output) + "-*") if (m := pattern.fullmatch(p))]
    return [p for _, p in sorted(found)] + ([output] if os.path.exists(output) else [])


def start_problem(output: str, overwrite: bool, resuming: bool, log) -> str | None:
    """A fresh run (nothing to resume) on a path that holds another run's files: refused, unless
    --overwrite, which deletes that run's checkpoints now (its final model is replaced at the end)."""
    files = run_files(output)
    if not files:
        return None
    shown = ", ".join(files[:4]) + (f" and {len(files) - 4} more" if len(files) > 4 else "")
    if not overwrite:
        what = ("--resume found no complete checkpoint there to continue from" if resuming else
                "continue that run with --resume")
        return (f"--output_model_path {output} already holds another run's files ({shown}): {what}, give "
                "--overwrite to start a new run that replaces them, or choose another output path")
    from uer.train.checkpoint import remove

    removed = [path for path in files if path != output]
    for path in removed:
        remove(path)
    named = [p for p in removed if not p.endswith((".state", ".json"))] or removed  # their files go along
    said = [f"removed the earlier run's checkpoints {', '.join(named)}"] if removed else []
    if output in files:
        said.append(f"its final model {output} is replaced at the end")
    log(f"--overwrite: {'; '.join(said)}.")
    return None


# -- the lock ---------------------------------------------------------------------------------------

def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), so that a reused pid is told
    apart from the process that wrote the lock."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(owner: dict) -> bool:
    pid = owner.get("pid")
    return isinstance(pid, int) and process_alive(pid) and owner.get("process_start") in (None, _process_start(pid))


class OutputLock:
    """<output_model_path>.lock while a run lives: JSON with host, pid, run id and start time."""

    def __init__(self, output: str, identity: dict):
        self.path = output + ".lock"
        self.identity = identity
        self.held = False

    def acquire(self, log) -> None:
        mine = {**self.identity, "pid": os.getpid(), "process_start": _process_start(os.getpid())}
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self.owner()
                if owner is None:  # written this instant, or damaged: look again
                    time.sleep(0.2)
                    owner = self.owner()
                if owner is not None and (owner.get("host") != socket.gethostname() or _alive(owner)):
                    raise UerError(
                        f"--output_model_path {self.path[:-5]} is in use by another run (process "
                        f"{owner.get('pid')} on {owner.get('host')}, run {owner.get('id')}, started "
                        f"{owner.get('started')}; lock file {self.path}): wait for it to end, or choose another "
                        "output path. If that run is no longer alive, delete the lock file.")
                log(f"Took over the stale lock {self.path}" + (
                    f" of process {owner.get('pid')} (run {owner.get('id')}), which is gone." if owner else "."))
                try:
                    os.remove(self.path)
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(mine, f)
            self.held = True
            return
        raise UerError(f"cannot take the lock {self.path}: other runs keep taking it")

    def owner(self) -> dict | None:
        try:
            with open(self.path, encoding="utf-8") as f:
                owner = json.load(f)
            return owner if isinstance(owner, dict) else None
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self.held:
            self.held = False
            owner = self.owner()
            if owner is not None and owner.get("pid") == os.getpid() and owner.get("id") == self.identity["id"]:
                os.remove(self.path)
