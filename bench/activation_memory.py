#!/usr/bin/env python3
"""What --activation_checkpointing saves: the activation memory a training step holds between its
forward and backward passes, and its peak, with and without checkpointing, and the step time.

Each measurement runs in a fresh process with glibc's mmap threshold fixed at 64 KiB
(MALLOC_MMAP_THRESHOLD_), so that every tensor of any size is its own mapping, returned when freed:
the process's resident memory then follows the live tensors. "held" is the growth of resident
memory across the forward pass (the loss kept, the graph alive); "peak" the growth of the peak
resident memory (VmHWM, reset before the step) across forward and backward. The model is uer's
real one (embedding, encoder, mlm target on 15 % of the positions), dropout on, in training mode.

    python3 bench/activation_memory.py --recipe bert_base --batch_size 8 --seq_lengths 128 512
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def resident() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def child(recipe: str, batch: int, seq: int, checkpointing: bool) -> dict:
    sys.path.insert(0, ROOT)
    import torch

    from uer.config import ModelConfig, load_recipe
    from uer.model import build_model
    from uer.train.checkpointing import apply_activation_checkpointing

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=21128, target="mlm", **{**load_recipe(recipe), "dropout": 0.1})
    model = build_model(cfg).train()
    if checkpointing:
        apply_activation_checkpointing(model)
    src = torch.randint(106, 21128, (batch, seq))
    pos = torch.rand(batch, seq).argsort(-1)[:, :max(1, round(0.15 * seq))].sort(-1).values
    flat = (pos + torch.arange(batch)[:, None] * seq).reshape(-1)  # the loader's layout: flat positions
    batch_in = {"src": src, "seg": torch.ones_like(src), "mlm_pos": flat, "mlm_tgt": src.reshape(-1)[flat]}
    times = []
    for step in range(3):  # the first step warms up; the last one is measured
        model.zero_grad(set_to_none=True)
        batch_now = model.prepare(dict(batch_in))
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := current resident memory
        before, base_peak = resident(), peak()
        start = time.perf_counter()
        out = model(batch_now)
        loss = sum(v[0] for v in out.values())
        held = resident() - before
        loss.backward()
        times.append(time.perf_counter() - start)
        grown = peak() - base_peak
    return {"held": held, "peak": grown, "step_s": min(times[1:])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipe", default="bert_base")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--seq_lengths", type=int, nargs="+", default=[128, 512])
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        recipe, batch, seq, ckpt = args.child
        print(json.dumps(child(recipe, int(batch), int(seq), ckpt == "1")))
        return
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "PYTHONPATH": ROOT}
    print(f"{args.recipe}, mlm target, batch {args.batch_size}, dropout 0.1, fp32 (MiB; step in s)")
    print(f"{'seq':>5} | {'held plain':>10} {'held ckpt':>10} {'ratio':>6} | {'peak plain':>10} {'peak ckpt':>10} "
          f"{'ratio':>6} | {'step plain':>10} {'step ckpt':>10} {'ratio':>6}")
    for seq in args.seq_lengths:
        r = {}
        for ckpt in ("0", "1"):
            out = subprocess.run([sys.executable, __file__, "--child", args.recipe, str(args.batch_size), str(seq),
                                  ckpt], env=env, capture_output=True, text=True, check=True)
            r[ckpt] = json.loads(out.stdout.strip().splitlines()[-1])
        mib = 2 ** 20
        print(f"{seq:>5} | {r['0']['held'] / mib:>10.0f} {r['1']['held'] / mib:>10.0f} "
              f"{r['1']['held'] / r['0']['held']:>6.2f} | {r['0']['peak'] / mib:>10.0f} {r['1']['peak'] / mib:>10.0f} "
              f"{r['1']['peak'] / r['0']['peak']:>6.2f} | {r['0']['step_s']:>10.2f} {r['1']['step_s']:>10.2f} "
              f"{r['1']['step_s'] / r['0']['step_s']:>6.2f}")


if __name__ == "__main__":
    main()
