"""Shared by the benchmarks: run a command while sampling the resident memory of its whole process
tree (the command and every process it starts), and print markdown tables."""
from __future__ import annotations

import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.normpath(os.path.join(ROOT, "..", "shared"))


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(ppid, []).append(int(name))
    return tree


def tree_rss(pid: int) -> int:
    """Memory of pid and all its descendants: the sum of their proportional set sizes (PSS: a page
    shared by n processes, such as a memory-mapped file or a page inherited by fork, counts 1/n
    in each), so the sum is what the tree as a whole holds in RAM."""
    tree, total, todo = _children(), 0, [pid]
    while todo:
        p = todo.pop()
        todo += tree.get(p, [])
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("Pss:")) * 1024
        except OSError:
            pass
    return total


def run_watched(cmd: list[str], interval: float = 0.1, cwd: str = ROOT, env=None, until: str | None = None):
    """Run cmd; returns (returncode, seconds, peak tree RSS in bytes, stdout+stderr). With `until`, the
    command is stopped as soon as that text appears in its output (and the time is taken then)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    fd = p.stdout.fileno()
    os.set_blocking(fd, False)
    out, peak = b"", 0

    def drain():
        nonlocal out
        while True:
            try:
                chunk = os.read(fd, 1 << 16)
            except BlockingIOError:
                return
            if not chunk:
                return
            out += chunk

    while True:
        peak = max(peak, tree_rss(p.pid))
        drain()
        if until and until.encode() in out:
            seconds = time.perf_counter() - t0
            p.kill()
            p.wait()
            return 0, seconds, peak, out.decode(errors="replace")
        if p.poll() is not None:
            seconds = time.perf_counter() - t0
            os.set_blocking(fd, True)
            out += p.stdout.read()
            return p.returncode, seconds, peak, out.decode(errors="replace")
        time.sleep(interval)


def table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def python() -> str:
    return sys.executable


def refuse_emulated_bf16(parser, device: str = "cpu") -> None:
    """A bf16 benchmark on a CPU without native bf16 measures torch's emulation, not uer, for hours
    (docs/performance.md, 2026-12-07), so the command stops at once and says why (exit code 2)."""
    if device != "cpu":
        return
    from uer.train import precision  # looked up at call time: tests stand in for the CPU check

    if not precision.cpu_has_native_bf16():
        parser.error("--bf16: this CPU has no native bf16 (AVX-512 BF16 or AMX; lscpu shows neither "
                     "avx512_bf16 nor amx_bf16), so torch emulates it, far slower than fp32, and the "
                     "figures would measure that emulation; run the bf16 rows on a CPU that has it "
                     "(uer.utils.cpu_has_native_bf16() prints True) or on a GPU (--device cuda)")
