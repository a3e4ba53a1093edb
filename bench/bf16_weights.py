#!/usr/bin/env python3
"""Issue #33's lever "weights kept in bf16 between optimizer steps": two versions of one model on
the same weights and batches, alternating step by step in one process, both under bf16 autocast
with uer's kernels:

- "autocast": fp32 weights, cast to bf16 by autocast at every micro-step (pretrain.py --bf16);
- "bf16 weights": the matrix weights (every parameter of 2 or more dimensions: the linear layers
  and the embeddings, the output layer's tied one with them) stored in bf16, so autocast casts
  nothing; the optimizer steps fp32 master copies, each micro-step's bf16 gradients are added to
  the masters' fp32 gradients, and the masters are copied back into the bf16 weights after each
  step. Biases and norm weights stay fp32 (the CPU's layer_norm takes fp32 weights under autocast).

Reported: each version's median step time, the ratio, and the losses of the first and last steps
(the two follow the same batches from the same weights, so they stay close).

    python3 bench/bf16_weights.py --recipes tiny small --targets bert mlm lm --steps 12 [--accumulation_steps 4]
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


def loss_of(model, batch: dict) -> torch.Tensor:
    batch = model.prepare({k: v for k, v in batch.items() if k != "tokens"})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch)
    return sum(out[k][0] / out[k][2].clamp(min=1) for k in out)


class Autocast:
    """pretrain.py --bf16: fp32 weights, autocast casts them at every micro-step."""

    def __init__(self, model, build_optimizer):
        self.model, self.optimizer = model, build_optimizer(model, 1e-4, 0.01)

    def step(self, micro: list[dict]) -> float:
        for batch in micro:
            loss = loss_of(self.model, batch)
            (loss / len(micro)).backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.item()


class Bf16Weights:
    """The matrix weights in bf16 between steps, fp32 masters in the optimizer."""

    def __init__(self, model, build_optimizer):
        self.model = model
        self.pairs = []  # (bf16 weight in the model, its fp32 master)
        for p in {id(p): p for p in model.parameters()}.values():
            if p.dim() >= 2:
                master = torch.nn.Parameter(p.detach().clone())
                p.data = p.data.to(torch.bfloat16)
                self.pairs.append((p, master))
        masters = {id(p): m for p, m in self.pairs}
        named = [(n, masters.get(id(p), p)) for n, p in model.named_parameters()]
        # the optimizer sees the masters in place of the bf16 weights, under the same names (so
        # in the same weight-decay groups as build_optimizer makes them)
        self.optimizer = build_optimizer(_Named(named), 1e-4, 0.01)
        self.params = [p for _, p in named]

    def step(self, micro: list[dict]) -> float:
        for batch in micro:
            loss = loss_of(self.model, batch)
            (loss / len(micro)).backward()
            for p, m in self.pairs:
                if p.grad is not None:
                    m.grad = p.grad.float() if m.grad is None else m.grad.add_(p.grad)
                    p.grad = None
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for p, m in self.pairs:
                p.copy_(m)
        return loss.item()


class _Named:
    """What build_optimizer reads of a model: its named parameters."""

    def __init__(self, named):
        self.named = named

    def named_parameters(self):
        return iter(self.named)

    def parameters(self):
        return (p for _, p in self.named)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipes", nargs="+", default=["tiny"], choices=["tiny", "small"])
    p.add_argument("--targets", nargs="+", default=["bert", "mlm", "lm"], choices=["bert", "mlm", "lm"])
    p.add_argument("--steps", type=int, default=12, help="Timed optimizer steps of each version.")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--seq_length", type=int, default=128)
    p.add_argument("--accumulation_steps", type=int, default=1, help="Micro-steps per optimizer step.")
    args = p.parse_args(argv)
    refuse_emulated_bf16(p)  # both versions run under bf16 autocast

    from uer.data.dataset import Dataset
    from uer.kernels import use_kernels
    from uer.model import build_model
    from uer.train.optim import build_optimizer
    from uer.utils import retain_freed_memory, set_seed
    from uer.vocab import load_vocab

    retain_freed_memory()  # as pretrain.py
    vocab = load_vocab(VOCAB, None)
    special = vocab.special_ids()
    rows = []
    k = args.accumulation_steps
    with tempfile.TemporaryDirectory() as work:
        for target in args.targets:
            ds = Dataset(build_dataset(target, args.seq_length, work))
            data = batches(ds, special, args.batch_size, (args.warmup + args.steps) * k, 7, True)
            for recipe in args.recipes:
                set_seed(7)
                base = build_model(model_config(recipe, target, len(vocab))).train()
                runs = {}
                for name, version in (("autocast", Autocast), ("bf16 weights", Bf16Weights)):
                    model = copy.deepcopy(base)
                    use_kernels(model, "auto", torch.device("cpu"))
                    runs[name] = (version(model, build_optimizer), [], [])
                for i in range(args.warmup + args.steps):
                    micro = [dict(b) for b in data[i * k:(i + 1) * k]]
                    for name, (version, times, losses) in runs.items():
                        torch.manual_seed(i)
                        t = time.perf_counter()
                        losses.append(version.step(micro))
                        if i >= args.warmup:
                            times.append(time.perf_counter() - t)
                ref = statistics.median(runs["autocast"][1])
                for name, (_, times, losses) in runs.items():
                    t = statistics.median(times)
                    rows.append([recipe, target, name, f"{t * 1000:.0f}", f"{t / ref:.3f}x",
                                 f"{losses[0]:.3f}", f"{losses[-1]:.3f}"])
                    print(" | ".join(rows[-1]), flush=True)
    print(f"\nbatch {args.batch_size} x seq {args.seq_length}, {k} micro-step(s) a step, bf16 autocast, "
          f"{torch.get_num_threads()} threads, {args.steps} timed steps of each version, alternating; median step")
    print(table(["recipe", "target", "version", "step ms", "time vs autocast", "first loss", "last loss"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
