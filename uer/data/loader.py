"""Training data loader: one global sample order, whatever the topology, of which each rank
takes its part of every optimizer step, read from the memory-mapped dataset and yielded as padded
batches through torch.utils.data.DataLoader (a worker process builds them ahead).

Epoch e is a permutation of the whole dataset seeded by (seed, e); the epochs one after the other
are a stream, and optimizer step k takes its instances [kG, (k+1)G), G the global batch
(batch_size x accumulation_steps x processes). The random draws of an instance (dynamic masks,
BART's noise) are seeded by (seed, epoch, instance). So a step's instances and their masks do not
depend on how many processes share it, how each cuts its part into micro-batches, or where a run
was resumed: a run continues on another topology with the very samples it would have had, as long
as G stays. (Each rank holds the epoch's order and, with length buckets, every instance's length:
4 + 4 bytes an instance.)
"""
from __future__ import annotations

import numpy as np
import torch.utils.data

from uer.data.builders import builder_config_from_header
from uer.data.dataset import Dataset
from uer.data.masking import MaskingConfig
from uer.errors import UerError
from uer.options import OPTIONS
from uer.registry import INSTANCE_BUILDERS
from uer.utils import exit_with_parent
from uer.vocab import SpecialIds

BATCH_WORKERS = OPTIONS["batch_worker"].choices


def builder_for(dataset: Dataset, special: SpecialIds, masking: MaskingConfig | None = None, words=None):
    """The instance builder that reads `dataset` (its target and options from the header); words:
    the vocabulary's word boundaries, for dynamic whole word masking."""
    header = dataset.header
    return INSTANCE_BUILDERS[header["target"]](builder_config_from_header(header, masking), special,
                                               header["vocab_size"], words=words)


BUCKET_BATCHES = 64  # optimizer steps per window sorted by length
PREFETCH_BATCHES = 16  # batches ready ahead at most: enough to hide the loader, little memory


def shard(n: int, rank: int, world_size: int) -> range:
    """The contiguous share of rank r: disjoint shares that together cover [0, n) (evaluation)."""
    return range(n * rank // world_size, n * (rank + 1) // world_size)


class BatchSampler(torch.utils.data.Sampler):
    """One rank's micro-batches as (epochs, instances), from micro-batch `start` on, forever. Step k
    is the global order's instances [kG, (k+1)G) (see the module's docstring): rank r takes the r-th
    of its `world_size` consecutive parts, cut into `accumulation_steps` micro-batches. With length
    buckets, each window of BUCKET_BATCHES steps of an epoch is sorted by length, cut into steps and
    the steps shuffled. A function of (seed, epoch) only: a resumed run continues with the very
    samples it would have had, on any topology of the same global batch."""

    def __init__(self, n: int, batch_size: int, seed: int, *, rank: int = 0, world_size: int = 1,
                 accumulation_steps: int = 1, lengths=None):
        self.n, self.batch_size, self.seed, self.rank = n, batch_size, seed, rank
        self.accumulation_steps = accumulation_steps
        self.global_batch = batch_size * accumulation_steps * world_size
        self.lengths = lengths      # None: no buckets; else a function giving every instance's length
        self.start = 0
        self._lengths, self._orders = None, {}

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The instances of an epoch in the order training visits them."""
        if epoch in self._orders:
            return self._orders[epoch]
        rng = np.random.default_rng([self.seed, epoch])
        n = self.n
        order = rng.permutation(n).astype(np.int32 if n < 2**31 else np.int64)  # 4 bytes an instance
        if self.lengths is not None:
            if self._lengths is None:
                self._lengths = self.lengths()
            unit = self.global_batch  # a bucket is cut into whole optimizer steps
            window = unit * BUCKET_BATCHES
            # the epoch's first steps start where the stream's do: the instances before that end
            # the last epoch's partial step, unsorted
            first = -epoch * n % unit
            # window by window (no temporary of the dataset's size): sort by length (stable), cut
            # into whole steps, shuffle the steps; a last partial step stays last
            for w in range(min(first, n), n, window):
                part = order[w:w + window]
                part = part[np.argsort(self._lengths[part], kind="stable")]
                full = len(part) // unit * unit
                steps = part[:full].reshape(-1, unit)[rng.permutation(full // unit)]
                order[w:w + full] = steps.ravel()
                order[w + full:w + len(part)] = part[full:]
        if len(self._orders) > 1:  # a batch spans two epochs at most
            del self._orders[min(self._orders)]
        self._orders[epoch] = order
        return order

    def positions(self, j: int) -> range:
        """Where this rank's micro-batch j lies in the global order."""
        k, m = divmod(j, self.accumulation_steps)
        lo = k * self.global_batch + (self.rank * self.accumulation_steps + m) * self.batch_size
        return range(lo, lo + self.batch_size)

    def instances(self, positions: range) -> tuple[np.ndarray, np.ndarray]:
        """(epoch, instance) of each position of the global order."""
        epochs, at = np.divmod(np.arange(positions.start, positions.stop, dtype=np.int64), self.n)
        out = np.empty(len(at), dtype=np.int64)
        for e in np.unique(epochs).tolist():
            here = epochs == e
            out[here] = self.epoch_order(e)[at[here]]
        return epochs, out

    def __iter__(self):
        j = self.start
        while True:
            yield self.instances(self.positions(j))
            j += 1


def instance_rngs(seed: int, epochs: np.ndarray, instances: np.ndarray, purpose: int) -> list[np.random.Generator]:
    """One generator an instance, a stream of its own: counter-based Philox keyed by (seed, epoch),
    its counter starting at (instance, purpose) in the high words (half the cost of a seeded PCG64,
    which hashes its seed)."""
    return [np.random.Generator(np.random.Philox(key=[seed % 2**64, e], counter=[0, 0, i, purpose]))
            for e, i in zip(epochs.tolist(), instances.tolist())]


class BatchLoader:
    def __init__(self, dataset: Dataset, special: SpecialIds, batch_size: int, *, rank: int = 0,
                 world_size: int = 1, seed: int = 7, masking: MaskingConfig | None = None,
                 length_buckets: bool = False, accumulation_steps: int = 1, words=None):
        self.ds = dataset
        header = dataset.header
        self.builder = builder_for(dataset, special, masking, words)
        self.batch_size = batch_size
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.share = shard(len(dataset), rank, world_size)  # (evaluation: each rank one part of the file)
        if len(self.share) == 0:
            raise UerError(f"dataset {dataset.path} has {len(dataset)} instances, too few for "
                           f"{world_size} processes")
        lengths = (lambda: self.builder.lengths(dataset, 0, len(dataset))) if length_buckets else None
        self.sampler = BatchSampler(len(dataset), batch_size, seed, rank=rank, world_size=world_size,
                                    accumulation_steps=accumulation_steps, lengths=lengths)
        self.batches_per_epoch = -(-len(self.share) // batch_size)  # of ordered()
        tgt_size = header.get("tgt_vocab_size", header["vocab_size"])
        self._id_limits = {"src": header["vocab_size"], "mlm_tgt": header["vocab_size"],
                           "tgt_in": tgt_size, "dec_tgt": tgt_size}
        self._stream = None

    def seek(self, batches_consumed: int) -> None:
        """Continue as if this rank had taken `batches_consumed` micro-batches (the stream is a
        function of its position)."""
        self.sampler.start, self._stream = batches_consumed, None

    def batch(self, epochs: np.ndarray, indices: np.ndarray) -> dict:
        """The arrays of these instances of these epochs; each one's draws (dynamic masks) seeded
        by (seed, epoch, instance), whatever batch it is in."""
        return self._collate(indices, instance_rngs(self.seed, epochs, indices, 1))

    def next_arrays(self) -> dict:
        """The next batch, built here (no worker)."""
        if self._stream is None:
            self._stream = iter(self.sampler)
        key = next(self._stream)
        self.sampler.start += 1  # where a later prefetch or stream goes on from
        return self.batch(*key)

    def ordered(self):
        """One pass over this rank's share in file order (evaluation); draws such as dynamic masks
        are seeded by the instance, so every pass, on any number of processes, is the same."""
        for b in range(self.batches_per_epoch):
            indices = np.arange(self.share.start + b * self.batch_size,
                                min(self.share.start + (b + 1) * self.batch_size, self.share.stop))
            yield tensors(self._collate(indices, instance_rngs(self.seed, np.zeros_like(indices), indices, 2)))

    def _collate(self, indices: np.ndarray, rngs: list) -> dict:
        """The builder's batch (rngs: one generator an instance), with its ids checked: a damaged
        file must not reach an embedding."""
        bad = None
        try:
            arrays = self.builder.collate(self.ds, indices, rngs)
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

    def __iter__(self):
        while True:
            yield tensors(self.next_arrays())

    def prefetch(self, instances_buffer_size: int, worker: str = "process"):
        """The batches from the current position on, through a torch DataLoader: with worker
        "process", a forked worker builds them ahead (reading, padding, dynamic masking), at most
        instances_buffer_size instances and PREFETCH_BATCHES batches; "none": built in the loop
        (also where the platform does not fork, and in a daemonic process, which may not have
        children). The batches are those of plain iteration, in the same order. Use it as a
        context manager: leaving it stops the worker. (A GPU's batches are pinned by the training
        loop: pinning here would need tensors from the worker, see _as_numpy.)"""
        import multiprocessing

        if worker not in BATCH_WORKERS:
            raise ValueError(f"worker must be one of {', '.join(BATCH_WORKERS)}, got {worker!r}")
        forks = "fork" in multiprocessing.get_all_start_methods() and not multiprocessing.current_process().daemon
        workers = 1 if worker == "process" and forks else 0
        depth = max(2, min(PREFETCH_BATCHES, instances_buffer_size // self.batch_size))
        loader = torch.utils.data.DataLoader(
            _BatchAtPosition(self), batch_size=None, sampler=self.sampler, num_workers=workers,
            prefetch_factor=depth if workers else None, multiprocessing_context="fork" if workers else None,
            worker_init_fn=_worker_init if workers else None, collate_fn=_as_numpy)
        return Batches(loader)


def tensors(arrays: dict) -> dict:
    """The batch as tensors, and "tokens": its real (non-pad) tokens, the decoder's included."""
    batch = {k: torch.from_numpy(v) for k, v in arrays.items()}
    batch["tokens"] = int((arrays["seg"] > 0).sum()) + int(arrays.get("tgt_seg", arrays["seg"][:0]).sum())
    return batch


class _BatchAtPosition(torch.utils.data.Dataset):
    """The map-style dataset the DataLoader reads: a sampler key -> that batch. A dataset error is
    handed back as a value, so the consumer raises it with its own message."""

    def __init__(self, loader: BatchLoader):
        self.loader = loader

    def __getitem__(self, key) -> dict | UerError:
        try:
            return self.loader.batch(*key)
        except UerError as e:
            return e


def _as_numpy(item):
    """The worker sends numpy arrays (pickled through a pipe): the consumer makes them tensors,
    which costs it less than receiving each tensor as a shared-memory file (bench/loader_speed.py)."""
    return item


def _worker_init(_: int) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the training loop's to handle: it stops this
    # a SIGKILLed trainer leaves this worker blocked on a full pipe for ever (seen): it ends instead
    exit_with_parent()


class Batches:
    """An iterator over a DataLoader's batches that raises a worker's dataset error, and a context
    manager that stops the worker on leaving."""

    def __init__(self, loader: torch.utils.data.DataLoader):
        self._it = iter(loader)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        item = next(self._it)
        if isinstance(item, UerError):
            self.close()
            raise item
        return tensors(item)

    def close(self) -> None:
        self._it = None  # the DataLoader's iterator stops its workers when it goes

    def __enter__(self) -> "Batches":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
