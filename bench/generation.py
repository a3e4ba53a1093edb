#!/usr/bin/env python3
"""What the KV caches buy in generation: new tokens per second, greedy, one sequence, with the
cache and with a full recompute at every token, side by side in one run, for the decoder-only
models (lm, prefixlm) and the encoder-decoder ones (mt, t5). Random weights (the speed does not
depend on them); the source or prompt has --source_length tokens, --new_tokens are generated.

    python3 bench/generation.py --recipe bert_small --source_length 64 --new_tokens 128
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SEQ2SEQ = {"tgt_embedding": "word_pos", "decoder": "transformer"}
TARGETS = {"lm": {"mask": "causal"}, "prefixlm": {"mask": "causal_with_prefix"}, "mt": SEQ2SEQ, "t5": SEQ2SEQ}


def main() -> None:
    import torch

    from uer.config import ModelConfig, load_recipe
    from uer.generate import Generator, Seq2SeqGenerator
    from uer.model import build_model

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="bert_small")
    ap.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    ap.add_argument("--source_length", type=int, default=64)
    ap.add_argument("--new_tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    recipe = {k: v for k, v in load_recipe(args.recipe).items() if k in ModelConfig.__dataclass_fields__}
    print(f"{platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}, "
          f"recipe {args.recipe}, source {args.source_length} tokens, {args.new_tokens} new tokens")
    print(f"{'target':10s} {'cache tok/s':>12s} {'recompute tok/s':>16s} {'ratio':>6s}")
    source = [101] + [1000 + i for i in range(args.source_length - 2)] + [102]
    for target in args.targets:
        torch.manual_seed(0)
        cfg = ModelConfig(**{**recipe, "vocab_size": 21128, "target": target, "dropout": 0.0, **TARGETS[target]})
        model = build_model(cfg).eval()
        rates = []
        for cache in (True, False):
            if target in ("mt", "t5"):
                gen = Seq2SeqGenerator(model, use_cache=cache)
                run = lambda: gen.generate(source, args.new_tokens + 1, start_id=101, top_k=1)  # noqa: E731
            else:
                gen = Generator(model, use_cache=cache)
                run = lambda: gen.generate(source, len(source) + args.new_tokens, top_k=1)  # noqa: E731
            run()  # warm-up
            t = time.perf_counter()
            run()
            rates.append(args.new_tokens / (time.perf_counter() - t))
        print(f"{target:10s} {rates[0]:12.1f} {rates[1]:16.1f} {rates[0] / rates[1]:5.2f}x", flush=True)


if __name__ == "__main__":
    main()
