"""Training data loader: each rank reads only its contiguous share of the memory-mapped dataset,
visits it in a fresh permutation every epoch, and yields padded batches (numpy -> torch).

The position in the stream is (epoch, batch index); every random draw of a batch (the
permutation, dynamic masks) comes from generators seeded by (seed, rank, epoch[, batch]), so a
batch can be recomputed from its position alone.
"""
from __future__ import annotations

import contextlib

import numpy as np

from uer.data.builders import builder_config_from_header
from uer.data.dataset import Dataset
from uer.data.masking import MaskingConfig
from uer.options import OPTIONS
from uer.registry import INSTANCE_BUILDERS
from uer.vocab import SpecialIds

BATCH_WORKERS = OPTIONS["batch_worker"].choices


def builder_for(dataset: Dataset, special: SpecialIds, masking: MaskingConfig | None = None):
    """The instance builder that reads `dataset` (its target and options from the header)."""
    header = dataset.header
    return INSTANCE_BUILDERS[header["target"]](builder_config_from_header(header, masking), special,
                                               header["vocab_size"])


BUCKET_BATCHES = 64  # optimizer steps per window sorted by length
PREFETCH_BATCHES = 16  # batches ready ahead at most: enough to hide the loader, little memory


def shard(n: int, rank: int, world_size: int) -> range:
    """The contiguous share of rank r: disjoint shares that together cover [0, n)."""
    return range(n * rank // world_size, n * (rank + 1) // world_size)


class BatchLoader:
    def __init__(self, dataset: Dataset, special: SpecialIds, batch_size: int, *, rank: int = 0,
                 world_size: int = 1, seed: int = 7, masking: MaskingConfig | None = None,
                 length_buckets: bool = False, accumulation_steps: int = 1):
        self.ds = dataset
        header = dataset.header
        self.builder = builder_for(dataset, special, masking)
        self.batch_size = batch_size
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.share = shard(len(dataset), rank, world_size)
        if len(self.share) == 0:
            from uer.errors import UerError

            raise UerError(f"dataset {dataset.path} has {len(dataset)} instances, too few for "
                           f"{world_size} processes")
        self.batches_per_epoch = -(-len(self.share) // batch_size)
        tgt_size = header.get("tgt_vocab_size", header["vocab_size"])
        self._id_limits = {"src": header["vocab_size"], "mlm_tgt": header["vocab_size"],
                           "tgt_in": tgt_size, "dec_tgt": tgt_size}
        self.epoch, self.index = 0, 0
        self._order = None
        self.length_buckets = length_buckets
        self.step_size = batch_size * accumulation_steps  # a bucket is cut into whole optimizer steps
        self._lengths = None

    def _epoch_order(self) -> np.ndarray:
        """This epoch's instance order: a permutation of the share; with length buckets, each
        window of BUCKET_BATCHES optimizer steps of it is sorted by length, cut into steps
        (batch_size x accumulation_steps instances), and the steps of the window are shuffled.
        A function of (seed, rank, epoch) only."""
        if self._order is None:
            rng = np.random.default_rng([self.seed, self.rank, self.epoch])
            n = len(self.share)
            index = np.int32 if self.share.stop < 2**31 else np.int64  # 4 bytes an instance
            order = rng.permutation(n).astype(index)
            if self.length_buckets:
                if self._lengths is None:
                    self._lengths = self.builder.lengths(self.ds, self.share.start, self.share.stop)
                unit = self.step_size  # so accumulation gives the same steps as one bigger batch
                window = unit * BUCKET_BATCHES
                # window by window (no temporary of the share's size): sort by length (stable), cut
                # into whole steps, shuffle the steps; a last partial step stays last
                for w in range(0, n, window):
                    part = order[w:w + window]
                    part = part[np.argsort(self._lengths[part], kind="stable")]
                    full = len(part) // unit * unit
                    steps = part[:full].reshape(-1, unit)[rng.permutation(full // unit)]
                    order[w:w + full] = steps.ravel()
                    order[w + full:w + len(part)] = part[full:]
            self._order = self.share.start + order
        return self._order

    def seek(self, batches_consumed: int) -> None:
        """Continue as if `batches_consumed` batches had been taken (the stream is a function of
        its position)."""
        self.epoch, self.index = divmod(batches_consumed, self.batches_per_epoch)
        self._order = None

    def next_arrays(self) -> dict:
        order = self._epoch_order()
        b = self.index
        indices = order[b * self.batch_size:(b + 1) * self.batch_size]
        rng = np.random.default_rng([self.seed, self.rank, self.epoch, b, 1])
        arrays = self._collate(indices, rng)
        self.index += 1
        if self.index >= self.batches_per_epoch:
            self.epoch, self.index, self._order = self.epoch + 1, 0, None
        return arrays

    def ordered(self):
        """One pass over this rank's share in file order (evaluation); draws such as dynamic masks
        are seeded by the batch index, so every pass is the same."""
        for b in range(self.batches_per_epoch):
            indices = np.arange(self.share.start + b * self.batch_size,
                                min(self.share.start + (b + 1) * self.batch_size, self.share.stop))
            rng = np.random.default_rng([self.seed, self.rank, b, 2])
            yield self._tensors(self._collate(indices, rng))

    def _collate(self, indices: np.ndarray, rng: np.random.Generator) -> dict:
        """The builder's batch, with its ids checked: a damaged file must not reach an embedding."""
        from uer.errors import UerError

        bad = None
        try:
            arrays = self.builder.collate(self.ds, indices, rng)
        except IndexError as e:  # an id beyond a lookup table
            bad = str(e)
        else:
            for key, limit in self._id_limits.items():
                if key in arrays and arrays[key].size and (arrays[key].max() >= limit or arrays[key].min() < 0):
                    bad = f"{key} id {int(arrays[key].max())}, outside the vocabulary of {limit} tokens"
        if bad:
            raise UerError(f"dataset {self.ds.path} is corrupted: a batch of instances {int(indices.min())}.."
                           f"{int(indices.max())} holds {bad}; rebuild it with preprocess.py")
        return arrays

    def _tensors(self, arrays: dict) -> dict:
        import torch

        batch = {k: torch.from_numpy(v) for k, v in arrays.items()}
        # real (non-pad) tokens, the decoder's included
        batch["tokens"] = int((arrays["seg"] > 0).sum()) + int(arrays.get("tgt_seg", arrays["seg"][:0]).sum())
        return batch

    def __iter__(self):
        while True:
            yield self._tensors(self.next_arrays())

    def prefetch(self, instances_buffer_size: int, worker: str = "thread"):
        """Iterate with a worker that builds batches ahead (reading, padding, dynamic masking),
        holding at most instances_buffer_size instances and PREFETCH_BATCHES batches; the batches
        are the same, in the same order, as plain iteration. Use it as a context manager: leaving
        it stops the worker. worker: "process" (forked, numpy only: a thread holds the interpreter
        lock while it builds a batch, and a host launching a GPU's kernels waits for it), "thread",
        or "none" (built in the loop). A process falls back to a thread where the platform does
        not fork, and in a daemonic process (which may not have children)."""
        import multiprocessing

        if worker not in BATCH_WORKERS:
            raise ValueError(f"worker must be one of {', '.join(BATCH_WORKERS)}, got {worker!r}")
        if worker == "none":
            return contextlib.closing(iter(self))
        depth = max(2, min(PREFETCH_BATCHES, instances_buffer_size // self.batch_size))
        forks = "fork" in multiprocessing.get_all_start_methods() and not multiprocessing.current_process().daemon
        return (ProcessPrefetcher if worker == "process" and forks else Prefetcher)(self, depth)



class Prefetcher:
    """Batches built ahead by a thread of this process."""

    def __init__(self, loader: BatchLoader, depth: int):
        self._loader = loader
        self._queue, self._stop, self._worker = self._channel(depth)
        self._worker.start()

    def _channel(self, depth: int):
        """The queue of at most depth batches, the stop flag, and the worker (not started yet)."""
        import queue
        import threading

        return (queue.Queue(maxsize=depth), threading.Event(),
                threading.Thread(target=self._produce, name="uer-batch-prefetch", daemon=True))

    def _put(self, item) -> None:
        import queue

        while not self._stop.is_set() and self._consumer_alive():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _consumer_alive(self) -> bool:
        return True

    def _make(self):
        return self._loader._tensors(self._loader.next_arrays())

    def _error(self, e: BaseException) -> BaseException:
        return e

    def _produce(self) -> None:
        try:
            while not self._stop.is_set() and self._consumer_alive():
                self._put(self._make())
        except BaseException as e:  # surfaced in the consumer
            self._put(self._error(e))

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        item = self._queue.get()
        if isinstance(item, BaseException):
            self.close()
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._worker.join()

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ProcessPrefetcher(Prefetcher):
    """Batches built ahead by a forked process (numpy only: it never runs torch), sent back as
    numpy arrays and made tensors here. An error in the worker is raised here; a worker that dies
    is an error that says so."""

    def _channel(self, depth: int):
        import multiprocessing
        import os
        import sys

        fork = multiprocessing.get_context("fork")
        self._consumer = os.getpid()
        for stream in (sys.stdout, sys.stderr):  # the worker would print what is buffered again
            stream.flush()
        return (fork.Queue(maxsize=depth), fork.Event(),
                fork.Process(target=self._produce, name="uer-batch-prefetch", daemon=True))

    def _consumer_alive(self) -> bool:  # in the worker: a consumer killed outright stops it too
        import os

        return os.getppid() == self._consumer

    def _make(self):  # in the worker: numpy arrays (torch stays in the consumer)
        return self._loader.next_arrays()

    def _error(self, e: BaseException) -> BaseException:
        import pickle

        try:
            pickle.loads(pickle.dumps(e))
            return e
        except Exception:
            return RuntimeError(f"the batch loader's worker process failed: {e!r}")

    def _produce(self) -> None:  # in the worker
        import signal

        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the consumer's to handle: it stops this
        super()._produce()
        if self._stop.is_set() or not self._consumer_alive():
            self._queue.cancel_join_thread()  # exit without waiting for batches nobody will take
        # else (an error sent): exit once the queue has passed it on

    def __next__(self) -> dict:
        import queue

        while True:
            try:
                item = self._queue.get(timeout=1.0)
                break
            except queue.Empty:
                if not self._worker.is_alive():
                    self.close()
                    raise RuntimeError(f"the batch loader's worker process died (exit code "
                                       f"{self._worker.exitcode}) with no batch sent") from None
        if isinstance(item, BaseException):
            self.close()
            raise item
        return self._loader._tensors(item)

    def close(self) -> None:
        self._stop.set()
        self._worker.join(timeout=5)
        if self._worker.is_alive():
            self._worker.terminate()
            self._worker.join()
        self._queue.close()
