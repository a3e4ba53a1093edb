"""Processes and devices: which ranks run here, on which device, and how they meet.

Three ways to run, all on torch.distributed (DDP) when there is more than one process:
  * one process: no --gpu_ranks (CPU) or --gpu_ranks N with --world_size 1 (GPU N);
  * the manual's launcher: --world_size W --gpu_ranks r1 r2 ... starts one process per rank listed
    for this node; local process i uses GPU i of the visible ones (CUDA_VISIBLE_DEVICES), or the CPU
    with --backend gloo on a machine without CUDA; they meet at --master_ip;
  * torchrun (or any launcher that sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT): one
    process each, rank and world size from the environment.
"""
from __future__ import annotations

import datetime
import faulthandler
import logging
import os
import socket
import sys
import time
from dataclasses import dataclass, fields, replace

import torch
import torch.distributed as dist

from uer.config import TrainConfig
from uer.errors import UerError
from uer.utils import exit_with_parent


@dataclass(frozen=True)
class Rank:
    rank: int = 0
    world_size: int = 1
    local_index: int = 0        # position among this node's processes
    local_count: int = 1
    device: str = "cpu"
    init_method: str | None = None  # None: one process, no process group

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_torchrun() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"))


def elastic_restart() -> int:
    """How many times torchrun (--max-restarts) has restarted this group of workers: 0 on the
    first attempt or without torchrun."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) if from_torchrun() else 0


def _uses_cuda(cfg: TrainConfig) -> bool:
    """One process with --gpu_ranks N is GPU N; several are GPU processes unless gloo runs them
    on a machine without CUDA."""
    return bool(cfg.gpu_ranks) and (cfg.world_size == 1 or cfg.backend == "nccl" or torch.cuda.is_available())


def launch_problems(cfg: TrainConfig) -> list[str]:
    """Every misconfiguration that would otherwise make a process fail late or hang."""
    p = []
    torchrun = from_torchrun()
    world = int(os.environ["WORLD_SIZE"]) if torchrun else cfg.world_size
    if world > 1 and cfg.backend == "nccl" and not torch.cuda.is_available():
        p.append(f"--backend nccl (the default) needs CUDA, which is not available here: add --backend gloo to "
                 f"run the {world} processes on the CPU, or leave out --world_size and --gpu_ranks to train in "
                 "one process")
    if not torchrun:
        if cfg.world_size > 1 and not cfg.gpu_ranks:
            p.append(f"--world_size {cfg.world_size} needs --gpu_ranks: the global ranks of the processes "
                     "to start on this node")
        if cfg.world_size == 1 and len(cfg.gpu_ranks) > 1:
            p.append(f"--gpu_ranks lists {len(cfg.gpu_ranks)} ranks but --world_size is 1: set --world_size "
                     "to the total number of processes")
        if _uses_cuda(cfg):
            visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if not torch.cuda.is_available():
                if cfg.world_size == 1:  # (several processes: the nccl message says what works)
                    p.append(f"--gpu_ranks {cfg.gpu_ranks[0]} asks for GPU {cfg.gpu_ranks[0]}, but CUDA is not "
                             "available here; leave out --gpu_ranks to train on the CPU")
            elif cfg.world_size == 1 and cfg.gpu_ranks[0] >= visible:
                p.append(f"--gpu_ranks {cfg.gpu_ranks[0]}: only {visible} GPU(s) are visible")
            elif cfg.world_size > 1 and len(cfg.gpu_ranks) > visible:
                p.append(f"--gpu_ranks starts {len(cfg.gpu_ranks)} processes on this node, one per GPU, but "
                         f"only {visible} GPU(s) are visible (CUDA_VISIBLE_DEVICES)")
    if cfg.fp16 and cfg.fp16_opt_level != "O0" and not any(r.device.startswith("cuda") for r in local_ranks(cfg)):
        p.append("--fp16 needs a GPU (--gpu_ranks); on the CPU use --bf16")
    if cfg.fsdp and world == 1:
        p.append("--fsdp shards the model over several processes, and this run has one: leave --fsdp out (a "
                 "checkpoint of a sharded run continues in one process as it is)")
    if cfg.fsdp_hybrid and not cfg.fsdp:
        p.append("--fsdp_hybrid is a way of --fsdp: give both")
    if cfg.async_checkpoint and not cfg.fsdp:
        p.append("--async_checkpoint writes the distributed checkpoints of --fsdp: give both")
    if cfg.fsdp and cfg.fp16 and cfg.fp16_opt_level != "O0":
        p.append("--fsdp with --fp16: not available (the loss scaler would judge each shard's gradients apart); "
                 "use --bf16, which needs no loss scale")
    if cfg.fsdp_hybrid and world > 1:
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", 1)) if torchrun else len(cfg.gpu_ranks)
        if per_node < 1 or world % per_node:
            p.append(f"--fsdp_hybrid shards within a node: the {world} processes must be whole nodes of "
                     f"{per_node} (the processes of this node)")
    return p


def local_ranks(cfg: TrainConfig) -> list[Rank]:
    """The processes to run on this node (one for torchrun: this process)."""
    if from_torchrun():
        local = int(os.environ["LOCAL_RANK"])
        cuda = torch.cuda.is_available() and (cfg.backend == "nccl" or bool(cfg.gpu_ranks))
        world = int(os.environ["WORLD_SIZE"])
        return [Rank(int(os.environ["RANK"]), world, local, int(os.environ.get("LOCAL_WORLD_SIZE", 1)),
                     f"cuda:{local}" if cuda else "cpu", "env://" if world > 1 else None)]
    if cfg.world_size == 1:
        return [Rank(device=f"cuda:{cfg.gpu_ranks[0]}" if cfg.gpu_ranks else "cpu")]
    cuda = _uses_cuda(cfg)
    n = len(cfg.gpu_ranks)
    return [Rank(r, cfg.world_size, i, n, f"cuda:{i}" if cuda else "cpu", cfg.master_ip)
            for i, r in enumerate(cfg.gpu_ranks)]


def init(rank: Rank, cfg: TrainConfig) -> None:
    """Join the process group (nothing for one process); a peer that never comes is a timeout
    error that says what was waited for."""
    if rank.device.startswith("cuda"):
        torch.cuda.set_device(torch.device(rank.device))
    elif rank.local_count > 1:  # CPU processes share the cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // rank.local_count))
    if not rank.distributed:
        return
    if rank.init_method.startswith("tcp://"):  # (torchrun's agent holds its own store)
        meeting_point(rank, cfg.dist_timeout)
    timeout = datetime.timedelta(seconds=cfg.dist_timeout)
    try:
        if rank.init_method == "env://" and (attempt := elastic_restart()):
            # torchrun's store keeps the earlier attempt's keys (the dead peers' addresses): this
            # attempt's group meets under keys of its own
            store, _, _ = next(dist.rendezvous("env://", rank=rank.rank, world_size=rank.world_size, timeout=timeout))
            dist.init_process_group(cfg.backend, store=dist.PrefixStore(f"uer/attempt_{attempt}", store),
                                    world_size=rank.world_size, rank=rank.rank, timeout=timeout)
        else:
            dist.init_process_group(cfg.backend, init_method=rank.init_method, world_size=rank.world_size,
                                    rank=rank.rank, timeout=timeout)
        dist.barrier()
    except Exception as e:  # DistStoreError, RuntimeError, ... depending on what failed
        raise UerError(f"rank {rank.rank}: the {rank.world_size} processes did not all meet at "
                       f"{rank.init_method if rank.init_method != 'env://' else 'MASTER_ADDR:MASTER_PORT'} "
                       f"within --dist_timeout {cfg.dist_timeout}s ({type(e).__name__}: "
                       f"{str(e).splitlines()[0] if str(e) else ''}). Start every node with the same "
                       "--world_size and --master_ip, and ranks that together cover 0..world_size-1.") from None


# Options only rank 0 acts on (it reports, saves, writes the logs): the manual gives them on Node-0
# only, so every rank takes rank 0's; the dev set is evaluated by all, on rank 0's settings.
FROM_RANK_0 = ("report_steps", "save_checkpoint_steps", "keep_checkpoints", "log_path", "metrics_path",
               "dev_dataset_path", "dev_steps", "best_model_path", "output_model_path", "resume", "overwrite")
# Options that may differ between processes: where this node's files are, how it runs here.
LOCAL = ("dataset_path", "pretrained_model_path", "strict_load", "instances_buffer_size", "kernels",
         "gpu_ranks", "master_ip", "backend", "dist_timeout")


def _by_rank(values: list) -> str:
    groups: dict[str, list[int]] = {}
    for r, v in enumerate(values):
        groups.setdefault(repr(v), []).append(r)
    return "; ".join(f"{'rank' if len(rs) == 1 else 'ranks'} {', '.join(map(str, rs))}: {v}"
                     for v, rs in groups.items())


def agree(rank: Rank, tcfg: TrainConfig, facts: dict[str, dict], problem: str | None = None) -> TrainConfig:
    """Right after the rendezvous: every rank takes rank 0's FROM_RANK_0 options, and compares the
    ones that must be equal (every other option but LOCAL, and facts: the model, the dataset, ...)
    and whether each could open its files (problem). Any difference or problem stops every rank
    with one message that lists them all, before any collective could mismatch."""
    if not rank.distributed:
        return tcfg
    compared = {f"--{f.name}": getattr(tcfg, f.name) for f in fields(tcfg) if f.name not in FROM_RANK_0 + LOCAL}
    compared.update({f"{name} {key}": v for name, values in facts.items() for key, v in values.items()})
    everyone = [None] * rank.world_size
    dist.all_gather_object(everyone, ({k: getattr(tcfg, k) for k in FROM_RANK_0}, compared, problem))
    found = [f"rank {r}: {p}" for r, (_, _, p) in enumerate(everyone) if p]
    for what in compared:
        values = [c.get(what) for _, c, _ in everyone]
        if len({repr(v) for v in values}) > 1:
            found.append(f"{what}: {_by_rank(values)}")
    tcfg = replace(tcfg, **everyone[0][0])
    if not found:  # rank 0's files must be there for every rank (the dev set is read by all)
        missing = tcfg.dev_dataset_path if tcfg.dev_dataset_path and not os.path.isfile(tcfg.dev_dataset_path) \
            else None
        gone = [None] * rank.world_size
        dist.all_gather_object(gone, missing)
        found = [f"rank {r}: --dev_dataset_path {m} (rank 0's) is not a file here" for r, m in enumerate(gone) if m]
    if found:
        raise UerError(f"the {rank.world_size} processes cannot train together (start every node with the same "
                       "options and files; the report, checkpoint, log and dev options are taken from rank 0):\n  "
                       + "\n  ".join(found))
    return tcfg


def meeting_point(rank: Rank, seconds: int) -> None:
    """Before torch's rendezvous, in plain words: rank 0 says that it waits and for whom, and a
    port in use is an error at once; another rank waits, once, up to the timeout, for rank 0's
    port to answer (torch's client would retry after its timeout and log C++ stack traces)."""
    host, port = rank.init_method[len("tcp://"):].rsplit(":", 1)
    if rank.is_main:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("", int(port)))
            except OSError as e:
                raise UerError(f"rank 0: cannot listen at {rank.init_method}: port {port} is in use "
                               f"({e.strerror}); give --master_ip another port") from None
        logging.getLogger(__name__).info(f"Rank 0 waits up to {seconds}s (--dist_timeout) for the "
                                         f"{rank.world_size} processes to meet at {rank.init_method}.")
        return
    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=min(2.0, seconds)).close()
            return
        except OSError:
            if time.monotonic() >= deadline:
                raise UerError(f"rank {rank.rank}: nothing answered at {rank.init_method} within --dist_timeout "
                               f"{seconds}s: start rank 0 (Node-0) with the same --master_ip, and check that this "
                               "machine can reach it") from None
            time.sleep(0.5)


def finish(rank: Rank) -> None:
    if rank.distributed and dist.is_initialized():
        dist.destroy_process_group()


def rank_process(rank: int) -> None:
    """First thing in a rank's process that a launcher started (uer's or torchrun). It stops when
    the launcher dies: after a SIGKILL of the launcher nothing else would stop the ranks, which
    trained on and wrote checkpoints. (A process started from a shell is never watched: a run
    under nohup outlives its shell.) And a crash in native code (SIGABRT, SIGSEGV, ...) prints the
    Python stack of each of its threads to stderr, where a bare "Aborted" said nothing of where."""
    faulthandler.enable(all_threads=True)
    exit_with_parent(f"rank {rank}: its launcher (process {{parent}}) is gone; stopping.")


def _worker(index: int, ranks: list[Rank], fn, args) -> None:
    from uer.errors import UerError

    rank_process(ranks[index].rank)
    try:
        fn(ranks[index], *args)
    except UerError as e:
        if hasattr(e, "code"):  # a requested stop, its checkpoint written (uer.train.stop)
            raise SystemExit(e.code)
        print(f"error (rank {ranks[index].rank}): {e}", file=sys.stderr, flush=True)
        raise SystemExit(2)


def _ended(e) -> str:
    """How a rank's process ended, for the launcher's error."""
    if e.signal_name is None:
        return f"stopped with exit code {e.exit_code}; its message is above"
    if e.signal_name == "SIGKILL":
        return "was killed by SIGKILL (out of memory? the kernel's OOM killer sends it)"
    crash = e.signal_name in ("SIGABRT", "SIGSEGV", "SIGBUS", "SIGFPE", "SIGILL")  # faulthandler's
    return f"was killed by {e.signal_name}" + ("; the Python stack of each of its threads is above" if crash else "")


def run_ranks(cfg: TrainConfig, fn, *args) -> None:
    """Run fn(rank, *args) in every process of this node: in this process when there is one,
    else in spawned processes (the model is built inside each)."""
    ranks = local_ranks(cfg)
    if len(ranks) == 1:
        fn(ranks[0], *args)
        return
    import signal

    import torch.multiprocessing as mp

    from uer.train.stop import Stopped

    context = mp.spawn(_worker, args=(ranks, fn, args), nprocs=len(ranks), join=False)

    def forward(signum, frame):  # SIGTERM to the launcher: every rank stops after a checkpoint
        for p in context.processes:
            if p.is_alive():
                os.kill(p.pid, signum)

    # Ctrl-C reaches every process of the terminal's group: the ranks act on it, the launcher waits
    old = {signal.SIGTERM: signal.signal(signal.SIGTERM, forward),
           signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN)}
    try:
        while not context.join():
            pass
    except mp.ProcessExitedException as e:
        if e.exit_code in (128 + signal.SIGTERM, 128 + signal.SIGINT):
            for p in context.processes:
                p.join()
            raise Stopped(f"stopped by {signal.Signals(e.exit_code - 128).name}; the checkpoint of the step "
                          "the ranks stopped after is written (continue with --resume)", e.exit_code - 128) from None
        raise UerError(f"process {e.error_index} (rank {ranks[e.error_index].rank}) {_ended(e)}") from None
    except mp.ProcessRaisedException as e:
        raise UerError(f"a training process failed:\n{e}") from None
    finally:
        for signum, handler in old.items():
            signal.signal(signum, handler)
