#!/usr/bin/env python3
"""The optimizer step alone: uer's AdamW (UER-py's update, the default; and --adam_bias_correction)
against torch's fused AdamW, on the parameters of a BERT recipe with gradients in place. The
versions alternate step by step in one process, so a drift in the machine's speed hits each alike;
reported: each version's median step and its ratio to torch's.

    python3 bench/optimizer_step.py --recipes tiny small --steps 200
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import table  # noqa: E402
from train_speed import model_config  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipes", nargs="+", default=["tiny", "small"], choices=["tiny", "small"])
    p.add_argument("--steps", type=int, default=200, help="Timed steps of each version.")
    p.add_argument("--warmup", type=int, default=5)
    args = p.parse_args(argv)

    from uer.model import build_model
    from uer.train.optim import build_optimizer
    from uer.utils import set_seed

    rows = []
    for recipe in args.recipes:
        set_seed(7)
        base = build_model(model_config(recipe, "mlm", 21128))
        for q in base.parameters():
            q.grad = torch.randn_like(q) * 1e-3
        runs = {}
        for name in ("torch AdamW (fused)", "uer, default (no bias correction)", "uer, --adam_bias_correction"):
            model = copy.deepcopy(base)
            for q, b in zip(model.parameters(), base.parameters()):
                q.grad = b.grad.clone()
            groups = build_optimizer(model, 1e-4, 0.01).param_groups
            if name.startswith("torch"):
                opt = torch.optim.AdamW([{"params": g["params"], "weight_decay": g["weight_decay"]} for g in groups],
                                        lr=1e-4, eps=1e-6, fused=True)
            else:
                opt = build_optimizer(model, 1e-4, 0.01, bias_correction="--adam" in name)
            runs[name] = (opt, [])
        for i in range(args.warmup + args.steps):
            for name, (opt, times) in runs.items():
                t = time.perf_counter()
                opt.step()
                if i >= args.warmup:
                    times.append(time.perf_counter() - t)
        ref = statistics.median(runs["torch AdamW (fused)"][1])
        n = sum(q.numel() for q in base.parameters())
        for name, (_, times) in runs.items():
            t = statistics.median(times)
            rows.append([recipe, f"{n / 1e6:.1f} M", name, f"{t * 1000:.2f}", f"{t / ref:.3f}x"])
            print(" | ".join(rows[-1]), flush=True)
    print(f"\n{torch.get_num_threads()} threads, {args.steps} timed steps of each version, alternating; median step")
    print(table(["recipe", "parameters", "optimizer", "step ms", "time vs torch"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
