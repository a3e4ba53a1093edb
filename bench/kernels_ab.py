#!/usr/bin/env python3
"""What each CPU kernel of uer.kernels pays: training steps of one model in several versions, all
with the same weights and batches, alternating step by step in one process (so a drift in the
machine's speed hits every version alike): every kernel, every kernel but one (for each), and
PyTorch's stock ops alone. Reported: each version's median step time and its ratio to the
version with every kernel; a kernel pays what leaving it out costs.

    python3 bench/kernels_ab.py --recipes tiny small --targets bert mlm lm --steps 12 [--bf16]

(The first step of a version with CompiledOutputLoss compiles it: the warm-up steps hold that.)
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import refuse_emulated_bf16, table  # noqa: E402
from train_speed import VOCAB, batches, build_dataset, model_config  # noqa: E402


def versions() -> dict[str, dict]:
    from uer.kernels import replacements

    every = replacements("auto", torch.device("cpu"), False)
    out = {"every kernel": every}
    for stock, kernel in every.items():
        out[f"without {kernel.__name__}"] = {k: v for k, v in every.items() if k is not stock}
    out["stock ops only"] = {}
    return out


def step(model, optimizer, batch: dict, bf16: bool = False) -> None:
    batch = model.prepare({k: v for k, v in batch.items() if k != "tokens"})
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(batch)
    loss = sum(out[k][0] / out[k][2].clamp(min=1) for k in out)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipes", nargs="+", default=["tiny"], choices=["tiny", "small"])
    p.add_argument("--targets", nargs="+", default=["bert", "mlm", "lm"], choices=["bert", "mlm", "lm"])
    p.add_argument("--steps", type=int, default=12, help="Timed steps of each version.")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--seq_length", type=int, default=128)
    p.add_argument("--bf16", action="store_true", help="Under bf16 autocast, as pretrain.py --bf16.")
    args = p.parse_args(argv)
    if args.bf16:
        refuse_emulated_bf16(p)

    from uer.data.dataset import Dataset
    from uer.kernels import swap
    from uer.model import build_model
    from uer.train.optim import build_optimizer
    from uer.utils import retain_freed_memory, set_seed
    from uer.vocab import load_vocab

    retain_freed_memory()  # as pretrain.py
    vocab = load_vocab(VOCAB, None)
    special = vocab.special_ids()
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for target in args.targets:
            ds = Dataset(build_dataset(target, args.seq_length, work))
            data = batches(ds, special, args.batch_size, args.warmup + args.steps, 7, True)
            for recipe in args.recipes:
                set_seed(7)
                base = build_model(model_config(recipe, target, len(vocab))).train()
                runs = {}
                for name, kernels in versions().items():
                    model = copy.deepcopy(base)
                    swap(model, kernels)
                    runs[name] = (model, build_optimizer(model, 1e-4, 0.01), [])
                for i, batch in enumerate(data):
                    for name, (model, optimizer, times) in runs.items():
                        torch.manual_seed(i)
                        t = time.perf_counter()
                        step(model, optimizer, dict(batch), args.bf16)
                        if i >= args.warmup:
                            times.append(time.perf_counter() - t)
                ref = statistics.median(runs["every kernel"][2])
                for name, (_, _, times) in runs.items():
                    t = statistics.median(times)
                    rows.append([recipe, target, name, f"{t * 1000:.0f}", f"{t / ref:.3f}x"])
                    print(" | ".join(rows[-1]), flush=True)
    print(f"\nbatch {args.batch_size} x seq {args.seq_length}, {'bf16 autocast' if args.bf16 else 'fp32'}, "
          f"{torch.get_num_threads()} threads, "
          f"{args.steps} timed steps of each version, alternating; median step")
    print(table(["recipe", "target", "version", "step ms", "time vs every kernel"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
