"""Stopping a run on request: SIGTERM (a cluster preempting the job) or Ctrl-C (SIGINT) is
remembered, the optimizer step under way finishes, a checkpoint with its .state is written at that
step, and the command exits with 128 + the signal's number (143, 130) so a scheduler can tell a
preempted run from a finished or failed one. A second Ctrl-C stops at once."""
from __future__ import annotations

import contextlib
import signal
import threading

import torch
import torch.distributed as dist

from uer.errors import UerError

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(UerError):
    """Raised after the checkpoint of a requested stop is written; `code` is the exit status."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.code = 128 + signum


class StopRequest:
    """Installs the handlers (in the main thread only; elsewhere it never triggers) and answers,
    at the end of each step, whether every rank is to stop now. With several ranks the flags are
    combined by an all-reduce started at one step and read at the next, so no step waits for it and
    all ranks stop after the same step (one step after the earliest signal)."""

    def __init__(self, rank, device: torch.device):
        self.rank, self.device = rank, device
        self.signum = 0
        self._pending = None  # (work, tensor) of the all-reduce in flight
        self._old = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)
        if self._pending is not None:
            with contextlib.suppress(Exception):
                self._pending[0].wait()

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt  # pressed twice: do not wait for the checkpoint
        self.signum = signum

    def now(self) -> int:
        """0, or the signal number every rank stops for after this step."""
        if not self.rank.distributed:
            return self.signum
        decided = 0
        if self._pending is not None:
            work, flag = self._pending
            work.wait()
            decided = int(flag.item())
        flag = torch.tensor([self.signum], dtype=torch.int64, device=self.device)
        self._pending = (dist.all_reduce(flag, op=dist.ReduceOp.MAX, async_op=True), flag)
        return decided


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name
