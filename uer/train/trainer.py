"""The one training loop, for every target.

Per optimizer step: take `accumulation_steps` micro-batches, count each loss term's predictions
on the host (global-batch normalisation: every term's summed loss is divided by its count over
the whole step), run forward/backward on each, clip, step. Metrics, and whether a gradient norm
was not finite, stay on the device and are read only at report steps (and checkpoints).
Checkpoints go to <output_model_path>-<step>, and the final model to <output_model_path>.
"""
from __future__ import annotations

import copy
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.distributed as dist
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.parallel import DistributedDataParallel as DDP

from uer.config import ModelConfig, TrainConfig
from uer.data.dataset import Dataset
from uer.data.loader import BatchLoader
from uer.data.masking import MaskingConfig
from uer import logs
from uer.errors import UerError
from uer.model import build_model, count_parameters
from uer.train.checkpoint import latest_checkpoint, load_model, load_training_state, prune_checkpoints, \
    read_state_dict, save_model, save_training_state, state_path, state_problems
from uer.train.distributed import Rank, agree, finish, from_torchrun, init, rank_process
from uer.kernels import use_kernels
from uer.train.optim import build_optimizer, build_scheduler
from uer.train.precision import NonFinite, Precision, autocast
from uer.train.sharding import BackgroundSaves, all_finite, gradient_sync, is_distributed_checkpoint, is_sharded, \
    load_distributed, load_optimizer_state, local, model_state, save_distributed, shard
from uer.train.stop import StopRequest, Stopped, signal_name
from uer.train.run import OutputLock, apply_to_optimizer, fingerprint, new_identity, record, resume_changes, \
    same_fingerprint, start_problem
from uer.utils import retain_freed_memory, set_seed
from uer.vocab import SpecialIds

logger = logging.getLogger(__name__)


@dataclass
class Window:
    """Metrics accumulated between two reports (device tensors, host token count)."""
    sums: dict = field(default_factory=dict)
    tokens: int = 0
    start: float = field(default_factory=time.perf_counter)

    def add(self, terms: dict) -> None:
        for name, (loss, correct, count) in terms.items():
            new = torch.stack([loss.detach().float(), correct.float(), count.float()])
            self.sums[name] = self.sums[name] + new if name in self.sums else new

    def read(self, reduce=lambda t: t) -> tuple[dict[str, dict[str, float]], float]:
        """(per-term loss, accuracy and count; real tokens), summed over ranks by `reduce`."""
        names = list(self.sums)
        flat = torch.cat([self.sums[n] for n in names] +
                         [torch.tensor([float(self.tokens)], device=self.sums[names[0]].device)])
        flat = reduce(flat.double()).tolist()
        out = {}
        for i, name in enumerate(names):
            loss, correct, count = flat[3 * i:3 * i + 3]
            out[name] = {"loss": loss / max(count, 1), "acc": correct / max(count, 1), "count": count}
        return out, flat[-1]


def format_report(step: int, total: int, tokens_per_s: float, metrics: dict, lr: float,
                  elapsed: float) -> str:
    loss = sum(m["loss"] for m in metrics.values())
    parts = [f"| {step:8d}/{total:8d} steps", f" {tokens_per_s:10.2f} tokens/s", f" loss {loss:7.3f}"]
    if len(metrics) == 1:
        parts.append(f" acc: {next(iter(metrics.values()))['acc']:.3f}")
    else:
        parts += [f" loss_{k}: {m['loss']:.3f}" for k, m in metrics.items()]
        parts += [f" acc_{k}: {m['acc']:.3f}" for k, m in metrics.items()]
    parts += [f" lr {lr:.3e}", f" elapsed {elapsed:7.1f}s"]
    return "|".join(parts)


def to_device(batch: dict, device: torch.device) -> dict:
    """A host batch on the device; to a GPU through pinned memory, so that the copy is queued
    behind the work already there instead of waiting for it."""
    if device.type == "cuda":
        return {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def evaluate(model, loader: BatchLoader, tcfg: TrainConfig, device: torch.device, rank: Rank = Rank()) -> dict:
    """Loss, accuracy (and perplexity for token-level terms) of each term over one ordered pass of
    the loader's dataset, summed over ranks."""
    model.eval()
    window = Window()
    extra = 0
    if is_sharded(model):  # each forward gathers the shards: every rank runs as many (the shares differ by one)
        most = torch.tensor(loader.batches_per_epoch, device=device)
        dist.all_reduce(most, op=dist.ReduceOp.MAX)
        extra = int(most) - loader.batches_per_epoch
    for batch in loader.ordered():
        batch.pop("tokens")
        batch = to_device(unwrap(model).prepare(batch), device)  # prepare: on the host, no device sync
        with autocast(tcfg.bf16, tcfg.fp16, tcfg.fp16_opt_level, device):
            window.add(model(batch))
    for _ in range(extra):  # not counted
        with autocast(tcfg.bf16, tcfg.fp16, tcfg.fp16_opt_level, device):
            model(batch)
    metrics, _ = window.read(lambda t: _all_reduce(t, rank))
    sentence_level = {term for term, key in model.target.terms.items() if key == "label"}
    for term, m in metrics.items():
        if term not in sentence_level:
            m["ppl"] = math.exp(min(m["loss"], 50.0))
    return metrics


def better(new: dict, old: dict, target) -> bool:
    """A classifier keeps the best accuracy, any other target the lowest total loss."""
    if target.name == "cls":
        return new["cls"]["acc"] > old["cls"]["acc"]
    return sum(m["loss"] for m in new.values()) < sum(m["loss"] for m in old.values())


def format_dev(step: int, metrics: dict) -> str:
    parts = [f"| {step:8d} steps| dev", f" loss {sum(m['loss'] for m in metrics.values()):7.3f}"]
    for k, m in metrics.items():
        parts.append(f" {k}: loss {m['loss']:.3f} acc {m['acc']:.3f}" + (f" ppl {m['ppl']:.2f}" if "ppl" in m else "")
                     + f" ({int(m['count'])})")
    return "|".join(parts)


def _all_reduce(t: torch.Tensor, rank: Rank) -> torch.Tensor:
    if rank.distributed:
        dist.all_reduce(t)
    return t


def train(tcfg: TrainConfig, mcfg: ModelConfig, dataset: Dataset, special: SpecialIds,
          masking: MaskingConfig | None = None, log=None, rank: Rank = Rank(), progress=None,
          worker: str = "process", card: dict | None = None, words=None) -> dict:
    """Train on this rank's part of every step of the global sample order. With several ranks the
    model is wrapped in DDP (or sharded, --fsdp), gradients are synchronised once per optimizer
    step, loss counts and report metrics are summed over all ranks, and only rank 0 logs and saves.
    progress: an object with update(n) (a tqdm bar) told of every step; worker: how batches are
    built ahead (BatchLoader.prefetch); log: a callable for the run's lines instead of the
    "uer.train.trainer" logger (they reach --log_path only if it logs them). Changes nothing else
    in the process: the command line decides the allocator and the worker. card: the model card
    (uer.card) written beside every model file. words: the vocabulary's word boundaries
    (uer.data.words), for dynamic whole word masking."""
    device = torch.device(rank.device)
    if log is None:
        logs.configured()
        log = logger.info
    log = Recorder(log, tcfg, rank) if rank.is_main else Recorder(_silent)
    identity, lock = new_identity(), None
    if rank.is_main:
        lock = OutputLock(tcfg.output_model_path, identity)
    try:
        found = claim_output(tcfg, rank, lock, log)
        return _train(tcfg, mcfg, dataset, special, masking, log, rank, progress, worker, device, found, identity,
                      card, words)
    finally:
        log.close()
        if lock is not None:
            lock.release()


def claim_output(tcfg: TrainConfig, rank: Rank, lock, log) -> tuple[int, str] | None:
    """Rank 0 takes the output path's lock and decides where the run starts: the newest complete
    checkpoint (--resume), or step 0 on a path free of another run's files (or --overwrite). Every
    rank learns the outcome, and all stop with rank 0's reason if it refuses."""
    found, problem = None, None
    if rank.is_main:
        try:
            lock.acquire(log)
            found = latest_checkpoint(tcfg.output_model_path) if tcfg.resume else None
            if found is None:
                problem = start_problem(tcfg.output_model_path, tcfg.overwrite, tcfg.resume, log)
        except UerError as e:
            problem = str(e)
    if rank.distributed:
        shared = [(found, problem)]
        dist.broadcast_object_list(shared, src=0)
        found, problem = shared[0]
    if problem:
        raise UerError(problem if rank.is_main else f"rank 0 refused to start: {problem}")
    return found


def _train(tcfg, mcfg, dataset, special, masking, log, rank, progress, worker, device, found, identity,
           card, words) -> dict:
    start = found[0] if found else 0
    loader = BatchLoader(dataset, special, tcfg.batch_size, rank=rank.rank, world_size=rank.world_size,
                         seed=tcfg.seed, masking=masking, length_buckets=tcfg.length_buckets,
                         accumulation_steps=tcfg.accumulation_steps, words=words)
    loader.seek(start * tcfg.accumulation_steps)
    # the worker starts before the model exists: a forked one shares none of its memory, and
    # builds the first batches while the model is built
    with loader.prefetch(tcfg.instances_buffer_size, worker) as batches, StopRequest(rank, device) as stop:
        precision = Precision(tcfg.bf16, tcfg.fp16, tcfg.fp16_opt_level, device)
        model, forward, kernels = build_for_training(tcfg, mcfg, rank, device, precision, log)
        optimizer = build_optimizer(model, tcfg.learning_rate, tcfg.weight_decay, (tcfg.beta1, tcfg.beta2),
                                    bias_correction=tcfg.adam_bias_correction)
        scheduler = build_scheduler(optimizer, tcfg.total_steps, tcfg.warmup)
        run = record(identity, tcfg, mcfg, rank.world_size)
        if found:
            run = restore(found[1], start, tcfg, mcfg, rank, model, optimizer, scheduler, precision, device, log)
        elif tcfg.resume:
            log(f"--resume: no checkpoint {tcfg.output_model_path}-<step> with its .state file yet; starting "
                "from the beginning.")
        if rank.is_main:
            warn_free_space(tcfg.output_model_path, model, log)
        log(describe(tcfg, mcfg, model, dataset, device, rank, found, kernels))
        target, prepare = unwrap(model).target, unwrap(model).prepare
        dev = DevEvaluation(tcfg, special, masking, rank, device, card, words) if tcfg.dev_dataset_path else None
        saves = BackgroundSaves(rank.is_main) if tcfg.async_checkpoint and is_sharded(model) else None
        window, history, t_start, norm = Window(), [], time.perf_counter(), None
        model.train()
        for step in range(start + 1, tcfg.total_steps + 1):
            micro = [next(batches) for _ in range(tcfg.accumulation_steps)]
            totals = global_counts(target, micro, rank, device)  # each term's predictions in the step
            step_loss = 0.0
            for m, batch in enumerate(micro):
                window.tokens += batch.pop("tokens")
                batch = to_device(prepare(batch), device)
                # gradients are reduced over the ranks once per step (DDP and FSDP)
                with gradient_sync(model, m == len(micro) - 1, rank.distributed):
                    with precision.autocast():
                        out = forward(batch)
                    # DDP and FSDP average gradients over ranks; the sums are normalised by global counts
                    loss = sum(out[k][0] / max(totals[k], 1) for k in out) * rank.world_size
                    precision.backward(loss)
                step_loss = step_loss + loss.detach()
                window.add(out)
            lr = optimizer.param_groups[0]["lr"]  # the rate this step runs with
            norm = precision.step(step, optimizer, model.parameters(), tcfg.max_grad_norm, step_loss)
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if (skipped := precision.skipped_message(step)) is not None:
                log(skipped)
            if progress is not None:
                progress.update(1)

            report = step % tcfg.report_steps == 0 or step == tcfg.total_steps
            evaluate_now = dev is not None and (step % dev.every == 0 or step == tcfg.total_steps)
            checkpoint = step % tcfg.save_checkpoint_steps == 0
            if report or evaluate_now or checkpoint:
                guard(precision, tcfg)  # where the host reads anyway, and before anything is saved
            if report:
                history.append(report_window(step, window, lr, t_start, tcfg, rank, log, norm))
                window = Window()
            if evaluate_now:
                dev.run(step, model, history, log)
                model.train()
            if checkpoint:
                save_checkpoint(step, model, optimizer, scheduler, precision, tcfg, rank, device, run, card, saves)
            if (signum := stop.now()) and step < tcfg.total_steps:
                stop_here(signum, step, checkpoint, model, optimizer, scheduler, precision, tcfg, rank, device,
                          run, log, card, saves)
    if saves is not None:
        saves.wait()  # the last step checkpoint complete before the run ends
    guard(precision, tcfg)
    guard_weights(model, tcfg.total_steps, tcfg)
    final = model_state(model)  # under FSDP a collective: every rank takes part
    if rank.is_main:
        save_model(None, tcfg.output_model_path, card, state=final, step=tcfg.total_steps)
        log(f"Saved the final model to {tcfg.output_model_path}.")
    sys.stdout.flush()
    return {"history": history, "model": unwrap(model)}


def unwrap(model):
    return getattr(model, "module", model)


def build_for_training(tcfg: TrainConfig, mcfg: ModelConfig, rank: Rank, device: torch.device,
                       precision: Precision, log):
    """(the model to save and synchronise, the forward the steps call, the kernels put in): built
    with the same initial weights on every rank, loaded from --pretrained_model_path, in the
    precision's storage dtype, with the kernels the run allows (--kernels), in DDP across ranks,
    compiled with --compile."""
    set_seed(tcfg.seed)  # the same initial weights on every rank
    model = build_model(mcfg)
    if tcfg.pretrained_model_path:
        # the embedding and encoder must fit; a head of another target (bert's NSP continued as
        # mlm) is left out, a new one initialised, and both listed
        report = load_model(model, tcfg.pretrained_model_path, strict=tcfg.strict_load, any_target=True)
        if rank.is_main and any(report.values()):
            log(partial_load_message(tcfg.pretrained_model_path, mcfg.target, report))
    model.to(device)
    for warning in precision.prepare(model):
        log(warning)
    kernels = use_kernels(model, tcfg.kernels, device, tcfg.compile)
    if tcfg.activation_checkpointing:
        from uer.train.checkpointing import apply_activation_checkpointing

        apply_activation_checkpointing(model)
    if tcfg.fsdp:
        shard(model, device, rank.world_size, rank.local_count, tcfg.fsdp_hybrid)
        held, total = sum(local(p).numel() for p in model.parameters()), sum(p.numel() for p in model.parameters())
        log(f"FSDP over {rank.world_size} processes" + (f" (sharded within nodes of {rank.local_count})"
                                                         if tcfg.fsdp_hybrid else "")
            + f": rank 0 holds {held / 1e6:.2f} M of the {total / 1e6:.2f} M parameters, and their gradients and "
              "AdamW moments.")
    elif rank.distributed:
        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    forward = torch.compile(model) if tcfg.compile else model
    if device.type == "cuda":  # see ANY_SHAPE
        forward = _with_sdpa_backends(forward)
    torch.manual_seed(tcfg.seed + rank.rank)  # dropout differs between ranks
    return model, forward, kernels


def partial_load_message(path: str, target: str, report: dict) -> str:
    """What a partial load left out, the new head (the target's parameters the checkpoint lacks)
    named apart from anything else that did not fit."""
    def keys(v):
        return f"{', '.join(v[:6])}{f', ... ({len(v)} in all)' if len(v) > 6 else ''}"

    head = [k for k in report["missing"] if k.startswith("target.")]
    other = [k for k in report["missing"] if not k.startswith("target.")]
    parts = [f"the new {target} head, from N(0, 0.02): {keys(head)}"] if head else []
    parts += [f"{what}: {keys(v)}" for what, v in (("missing outside the head, from N(0, 0.02)", other),
                                                   ("unexpected, not used", report["unexpected"]),
                                                   ("mis-shaped, not used", report["misshaped"])) if v]
    return f"Partial load of {path}; " + "; ".join(parts) + "."


# On a GPU, cuDNN's attention builds an execution plan for every new shape, several milliseconds
# each, and uer's shapes change from batch to batch (length buckets, the last layer's selected
# rows, a growing generation cache); flash and memory-efficient attention take any shape.
ANY_SHAPE = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def _with_sdpa_backends(forward):
    def run(batch):
        with sdpa_kernel(ANY_SHAPE):
            return forward(batch)
    return run


def restore(path: str, step: int, tcfg: TrainConfig, mcfg: ModelConfig, rank: Rank, model, optimizer, scheduler,
            precision: Precision, device: torch.device, log) -> dict:
    """Continue exactly from checkpoint `path` (step `step`) and its training state; returns the
    run's record (its identity, kept by the checkpoints to come)."""
    try:
        state = load_training_state(state_path(path))
    except UerError as e:
        earlier = latest_checkpoint(tcfg.output_model_path, before=step)
        raise UerError(f"--resume: {e}. " + (
            f"The previous complete checkpoint is {earlier[1]} (step {earlier[0]}): move {path} and "
            f"{state_path(path)} aside, and --resume continues from it." if earlier else
            "There is no earlier complete checkpoint; start a new run with --overwrite.")) from None
    run = state["run"]
    if not isinstance(run, dict) or not all(k in run for k in ("id", "host", "started", "shape", "model", "train")):
        raise UerError(f"--resume: {state_path(path)} was written by an earlier version of uer, which did not "
                       "record the run's options, so it cannot be checked; start a new run (--overwrite)")
    refused, applied = resume_changes(run, tcfg, mcfg, rank.world_size)
    which = f"run {run['id']} (started {run['started']} on {run['host']})"
    if refused:
        raise UerError(f"--resume from {path}: {which} had other options, and these cannot change when a run "
                       "continues:\n  " + "\n  ".join(refused) + "\nGive them as the run had them, or start a "
                       "new run (--overwrite, or another --output_model_path).")
    problems = state_problems(state, optimizer, torch.get_rng_state().shape, step)
    if problems:
        raise UerError(f"--resume: {state_path(path)} does not fit this run's model and optimizer:\n  "
                       + "\n  ".join(problems[:20]))
    if is_distributed_checkpoint(path):  # (a sharded run's: weights and optimizer state together)
        load_distributed(path, model, optimizer)
    else:
        load_model(unwrap(model), path)
        # (under FSDP the weights are shards: the file's are the ones loaded)
        weights = read_state_dict(path) if is_sharded(model) else unwrap(model).state_dict()
        if not same_fingerprint(fingerprint(weights), state["weights"]):
            raise UerError(f"--resume: {path} holds other weights than the ones its training state "
                           f"{state_path(path)} was saved with (the pair was mixed up or the model file replaced)")
        load_optimizer_state(model, optimizer, state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    apply_to_optimizer(tcfg, optimizer, scheduler)
    if state["scaler"]:
        precision.scaler.load_state_dict(state["scaler"])
    if len(state["rng"]) == rank.world_size:
        set_rng_state(state["rng"][rank.rank], device)
    else:  # another number of processes: dropout draws anew (they differ between ranks anyway)
        torch.manual_seed(tcfg.seed + rank.rank + 1_000_003 * step)
        applied = applied + [f"random state (dropout): that of {len(state['rng'])} processes -> drawn anew for "
                             f"{rank.world_size}"]
    log(f"Resuming {which} from {path} at step {step}."
        + (f" Options changed since, used from step {step + 1} on: {'; '.join(applied)}." if applied else "")
        + (" The learning rate keeps its place on the schedule." if any(a.startswith("learning_rate:")
                                                                         for a in applied) else ""))
    # the identity stays; the options recorded from here on are the ones now in effect
    return record({k: run[k] for k in ("id", "host", "started")}, tcfg, mcfg, rank.world_size)


def stop_here(signum: int, step: int, saved: bool, model, optimizer, scheduler, precision, tcfg, rank, device,
              run, log, card=None, saves=None) -> None:
    """A requested stop (uer.train.stop): the checkpoint of this step (unless it was just written),
    then Stopped, whose exit status names the signal."""
    guard(precision, tcfg)
    if not saved:
        save_checkpoint(step, model, optimizer, scheduler, precision, tcfg, rank, device, run, card, saves)
    if saves is not None:
        saves.wait()
    if rank.distributed:
        dist.barrier()  # no rank exits before rank 0 has written the checkpoint
    path = f"{tcfg.output_model_path}-{step}"
    log(f"Stopped by {signal_name(signum)} after step {step}: saved {path} and its .state; continue with "
        "--resume.")
    raise Stopped(f"stopped by {signal_name(signum)} after step {step}; {path} holds the run so far "
                  "(continue with --resume)", signum)


def save_checkpoint(step: int, model, optimizer, scheduler, precision: Precision, tcfg: TrainConfig,
                    rank: Rank, device: torch.device, run: dict, card: dict | None = None, saves=None) -> None:
    """<output_model_path>-<step> and its training state (rank 0; every rank sends its RNG); then,
    with --keep_checkpoints N, the older complete checkpoints beyond the newest N are removed.
    saves (--async_checkpoint): the writer that completes it in the background."""
    rngs = gather(rng_state(device), rank)  # a collective: every rank takes part
    guard_weights(model, step, tcfg)
    path = f"{tcfg.output_model_path}-{step}"
    moments = weights = None
    if is_sharded(model) and saves is None:  # a distributed checkpoint: each rank writes its shards
        save_distributed(path, model, optimizer, rank.is_main)
    elif not is_sharded(model):
        weights, moments = model_state(model), optimizer.state_dict()
    state = {"step": step, "optimizer": moments, "scheduler": copy.deepcopy(scheduler.state_dict()),
             "scaler": precision.scaler.state_dict(), "rng": rngs, "run": run,
             "weights": None if weights is None else fingerprint(weights),
             "samples_consumed": step * tcfg.batch_size * tcfg.accumulation_steps * rank.world_size}

    def finish() -> None:  # rank 0, once the model part is complete
        save_training_state(state_path(path), state)
        if tcfg.keep_checkpoints:
            prune_checkpoints(tcfg.output_model_path, tcfg.keep_checkpoints)

    if saves is not None and is_sharded(model):
        saves.save(path, model, optimizer, finish)
        return
    if rank.is_main:
        if weights is not None:
            save_model(None, path, card, state=weights, step=step)
        finish()


def warn_free_space(output: str, model, log) -> None:
    """Free space below one checkpoint (model file and training state: the weights and AdamW's two
    moments) is a warning now rather than a failed write later."""
    need = sum(p.numel() * (p.element_size() + 8) for p in model.parameters())
    free = shutil.disk_usage(os.path.dirname(os.path.abspath(output))).free
    if free < need:
        log(f"Warning: {os.path.dirname(os.path.abspath(output))} has {free / 2**20:.0f} MiB free, less than one "
            f"checkpoint needs (about {need / 2**20:.0f} MiB); checkpoints will fail to be written.")


def describe(tcfg, mcfg, model, dataset, device, rank, found, kernels: list[str]) -> str:
    return (f"Model: {mcfg.embedding} + {mcfg.encoder} + {mcfg.target}, "
            f"{count_parameters(model) / 1e6:.2f} M parameters; dataset {dataset.path}: "
            f"{len(dataset)} instances; device {device}"
            + (f"; {rank.world_size} processes ({tcfg.backend})." if rank.distributed else ".")
            + (f" Kernels: {', '.join(kernels)}." if kernels else "")
            + (f" Resumed from {found[1]} at step {found[0]}." if found else "")
            + (" --compile: the first steps compile the model (a minute or more)." if tcfg.compile else ""))


def global_counts(target, micro: list[dict], rank: Rank, device: torch.device) -> dict[str, int]:
    """Global-batch normalisation: each term's predictions over all micro-batches and all ranks
    (known on the host before the forward)."""
    terms = list(target.terms)
    counts = [target.counts(b) for b in micro]
    local = [sum(c[k] for c in counts) for k in terms]
    if rank.distributed:
        local = _all_reduce(torch.tensor(local, dtype=torch.int64, device=device), rank).tolist()
    return dict(zip(terms, local))


def report_window(step: int, window: Window, lr: float, t_start: float, tcfg: TrainConfig, rank: Rank,
                  log, norm: torch.Tensor | None = None) -> dict:
    metrics, tokens = window.read(lambda t: _all_reduce(t, rank))
    now = time.perf_counter()
    total_loss = sum(m["loss"] for m in metrics.values())
    if not math.isfinite(total_loss):
        raise non_finite(step, f"the loss is {total_loss}", tcfg)
    speed = tokens / max(now - window.start, 1e-9)
    log(format_report(step, tcfg.total_steps, speed, metrics, lr, now - t_start))
    grad_norm = float(norm) if norm is not None else None  # the report step's, before clipping
    log.metrics(step, "train", metrics, speed, lr, grad_norm)
    return {"step": step, "loss": total_loss, "metrics": metrics, "tokens_per_s": speed, "grad_norm": grad_norm}


class DevEvaluation:
    """--dev_dataset_path: evaluated every dev_steps (default: every checkpoint) and at the end;
    --best_model_path keeps the best model so far."""

    def __init__(self, tcfg: TrainConfig, special: SpecialIds, masking, rank: Rank, device: torch.device,
                 card: dict | None = None, words=None):
        self.tcfg, self.rank, self.device, self.best, self.card = tcfg, rank, device, None, card
        self.every = tcfg.dev_steps or tcfg.save_checkpoint_steps
        self.loader = BatchLoader(Dataset(tcfg.dev_dataset_path), special, tcfg.batch_size, rank=rank.rank,
                                  world_size=rank.world_size, seed=tcfg.seed, masking=masking, words=words)

    def run(self, step: int, model, history: list, log) -> None:
        scores = evaluate(unwrap(model), self.loader, self.tcfg, self.device, self.rank)
        log(format_dev(step, scores))
        log.metrics(step, "dev", scores)
        if history and history[-1]["step"] == step:
            history[-1]["dev"] = scores
        else:
            history.append({"step": step, "dev": scores})
        target = unwrap(model).target
        # the scores are summed over the ranks: every rank decides alike (gathering is collective)
        if self.tcfg.best_model_path and (self.best is None or better(scores, self.best, target)):
            self.best = scores
            state = model_state(model)
            if self.rank.is_main:
                save_model(None, self.tcfg.best_model_path, self.card, state=state, step=step)
                log(f"Saved the best model so far (dev) to {self.tcfg.best_model_path}.")


def guard(precision: Precision, tcfg: TrainConfig) -> None:
    try:
        precision.check()
    except NonFinite as e:
        raise non_finite(None, str(e), tcfg) from None


def guard_weights(model, step: int, tcfg: TrainConfig) -> None:
    """Before a save: finite gradients can still make a weight non-finite (a huge learning rate),
    and no checkpoint holding one is written (every rank holds the same weights: all stop)."""
    if not all_finite(model):  # (every rank learns the same verdict)
        raise non_finite(step, "the updated weights hold non-finite values", tcfg, "nothing of this step was saved")


def non_finite(step: int | None, what: str, tcfg: TrainConfig,
               stopped: str = "training stopped before the weights changed") -> UerError:
    """Training stops before anything bad is saved: the last checkpoint written stays the last good one."""
    found = latest_checkpoint(tcfg.output_model_path)
    kept = (f"the last good checkpoint is {found[1]} (step {found[0]}); continue from it with --resume, "
            "after lowering --learning_rate or --max_grad_norm" if found else "no checkpoint was written yet")
    return UerError(f"{'' if step is None else f'step {step}: '}{what}; {stopped}, and {kept}.")


def rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def gather(obj, rank: Rank) -> list:
    if not rank.distributed:
        return [obj]
    out = [None] * rank.world_size
    dist.all_gather_object(out, obj)
    return out


class Recorder:
    """Rank 0's record of a run: its lines (to `console`; --log_path adds a file handler to the
    "uer" logger for the run, which gets what goes through logging), the --metrics_path CSV
    (appended, flushed at every row, so a killed run keeps what it reported) and the
    --tensorboard_dir scalars."""
    FIELDS = ("step", "split", "term", "loss", "acc", "ppl", "count", "tokens_per_s", "lr")

    def __init__(self, console, tcfg: TrainConfig | None = None, rank: Rank = Rank()):
        self.console, self.file, self.csv, self.board = console, None, None, None
        if tcfg is None:
            return
        if tcfg.log_path:
            self.file = logs.add_file(tcfg.log_path, rank.rank, rank.world_size)
        if tcfg.metrics_path:
            new = not os.path.exists(tcfg.metrics_path) or os.path.getsize(tcfg.metrics_path) == 0
            self.csv = open(tcfg.metrics_path, "a", encoding="utf-8")
            if new:
                self.csv.write(",".join(self.FIELDS) + "\n")
        if tcfg.tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter

            self.board = SummaryWriter(tcfg.tensorboard_dir)

    def __call__(self, line: str) -> None:
        self.console(line)

    def metrics(self, step: int, split: str, metrics: dict, speed: float | None = None, lr: float | None = None,
                grad_norm: float | None = None) -> None:
        if self.csv:
            for term, m in metrics.items():
                row = [step, split, term, f"{m['loss']:.6f}", f"{m['acc']:.6f}",
                       f"{m['ppl']:.4f}" if "ppl" in m else "", int(m["count"]),
                       f"{speed:.2f}" if speed is not None else "", f"{lr:.6e}" if lr is not None else ""]
                self.csv.write(",".join(map(str, row)) + "\n")
            self.csv.flush()
        if self.board:
            scalars = {f"{split}/loss": sum(m["loss"] for m in metrics.values())}
            for term, m in metrics.items():
                scalars.update({f"{split}/{what}_{term}": m[what] for what in ("loss", "acc", "ppl") if what in m})
            for name, value in (("lr", lr), ("tokens_per_s", speed), ("grad_norm", grad_norm)):
                if value is not None:
                    scalars[f"{split}/{name}"] = value
            for tag, value in scalars.items():
                self.board.add_scalar(tag, value, step)
            self.board.flush()

    def close(self) -> None:
        if self.file is not None:
            logs.remove(self.file)
        if self.csv is not None:
            self.csv.close()
        if self.board is not None:
            self.board.close()
        self.file = self.csv = self.board = None


def _silent(*_args, **_kw) -> None:
    pass


def pretrain_worker(rank: Rank, tcfg: TrainConfig, mcfg: ModelConfig, dataset_path: str, special: SpecialIds,
                    masking: MaskingConfig | None, process: dict, card: dict | None = None,
                    words=None) -> None:
    """One process of a command-line run: take the process-wide settings the command line chose
    (process: keep_freed_memory, batch_worker, progress_bar, log_level), join the other ranks and
    agree with them on the options, open the dataset (memory-mapped; only this rank's share is
    read), train, leave."""
    logs.setup(process["log_level"], rank.rank, rank.world_size)
    if process["keep_freed_memory"]:
        retain_freed_memory()
    if from_torchrun():  # torchrun's agent is the launcher
        rank_process(rank.rank)
    init(rank, tcfg)
    try:
        dataset, problem = None, None
        try:
            dataset = Dataset(dataset_path)
        except UerError as e:
            problem = str(e)
        described = {k: v for k, v in dataset.header.items() if k not in ("corpus", "vocab_source", "arrays")} \
            if dataset is not None else {}
        tcfg = agree(rank, tcfg, {"model": asdict(mcfg), "dataset": described,
                                  "masking": asdict(masking) if masking else {}}, problem)
        if problem:  # one process: nobody to agree with
            raise UerError(problem)
        if words is not None:
            words.prepare()  # before the batch worker forks, which then shares jieba's dictionary
        with logs.progress_bar(process["progress_bar"] and rank.is_main, tcfg.total_steps) as bar:
            train(tcfg, mcfg, dataset, special, masking, rank=rank, progress=bar, worker=process["batch_worker"],
                  card=card, words=words)
    finally:
        finish(rank)
