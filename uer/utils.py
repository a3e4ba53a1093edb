"""Small helpers shared by every room: atomic file writes, seeding."""
from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import sys
import tempfile

from uer.errors import UerError


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _owned_prefix(prefix: str, directory: str) -> str:
    """A temporary name prefix that records this host and process, `<prefix><host>-<pid>-`. Entries
    of `directory` with `prefix` left by a process of this host that no longer runs (a killed run)
    are removed first: nothing else can finish them. (Other hosts' entries are left alone: on a
    shared file system their processes may still be running.)"""
    host = socket.gethostname().replace("-", "_")
    mine = f"{prefix}{host}-"
    for name in os.listdir(directory):
        pid = name[len(mine):].split("-", 1)[0] if name.startswith(mine) else ""
        if pid.isdigit() and not process_alive(int(pid)):
            stale = os.path.join(directory, name)
            if os.path.isdir(stale):
                shutil.rmtree(stale, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(stale)
    return f"{mine}{os.getpid()}-"


def owned_temp_dir(prefix: str, directory: str) -> str:
    """tempfile.mkdtemp in `directory`, named as _owned_prefix says (stale ones removed first)."""
    return tempfile.mkdtemp(prefix=_owned_prefix(prefix, directory), dir=directory)


@contextlib.contextmanager
def atomic_path(path: str):
    """Yield a temporary path beside `path`; on success fsync it and rename it over `path`.
    On failure the temporary file is removed and `path` is left as it was."""
    directory = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_owned_prefix("." + os.path.basename(path) + ".", directory),
                               suffix=".tmp", dir=directory)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
    try:
        try:
            yield tmp
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
            free = shutil.disk_usage(directory).free / 2**20
            raise UerError(f"could not write {path}: {e} ({free:,.0f} MiB free on its disk); "
                           f"{'the earlier ' + path if os.path.exists(path) else 'nothing'} is left "
                           "as it was") from None
        os.replace(tmp, path)
        with contextlib.suppress(OSError):  # persist the rename itself
            dfd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def set_seed(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)


def retain_freed_memory() -> bool:
    """Let glibc keep the memory a training step frees for the next step to reuse.

    By default glibc serves every block of 32 MiB or more (and smaller ones early on) with a
    fresh mmap and unmaps it on free, so each step's large activations (a [4096, 2048] feed-forward
    output is 32 MiB, a [608, 21128] score matrix 49 MiB) come back as new pages that the kernel
    faults in and zeroes: ~140-220 k page faults a step on BERT-small here. With mmap off and no
    trimming, the heap grows to one step's peak (and what torch's 64-byte aligned blocks leave
    between them) and stays there. The trim threshold is -1 (never), not the largest int: a
    threshold of 2 GiB returned BERT-tiny lm's batch-128 scores to the kernel every step. Returns
    whether it applied (glibc only; elsewhere nothing changes)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))  # None (no ldconfig): the process's own symbols
        libc.gnu_get_libc_version  # glibc: other C libraries have no mallopt of this meaning
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, -1))


def exit_with_parent(message: str | None = None, code: int = 3) -> None:
    """End this process (os._exit, from a watching thread) once its parent is gone: a process
    whose parent was killed (SIGKILL) is otherwise left running or stuck for ever."""
    import threading
    import time

    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        if message:
            print(message.format(parent=parent), file=sys.stderr, flush=True)
        os._exit(code)

    threading.Thread(target=watch, daemon=True, name="uer-parent-watch").start()


def write_json(value, path: str) -> None:
    """`value` as indented JSON, written atomically (atomic_path)."""
    import json

    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(value, f, indent=2)
            f.write("\n")


def read_json(path: str, what: str):
    """The JSON value in the file `path`; invalid JSON is a UerError naming `what` and the file."""
    import json

    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except ValueError as e:
        raise UerError(f"{what} {path} is not valid JSON: {e}") from None


def cpu_has_native_bf16() -> bool:
    """Whether this CPU runs bf16 natively (uer.train.precision.cpu_has_native_bf16)."""
    from uer.train.precision import cpu_has_native_bf16 as native

    return native()
