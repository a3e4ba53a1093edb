#!/usr/bin/env python3
"""What the batch loader costs the training loop: batches taken from BatchLoader.prefetch by a
consumer that is busy between batches (a matrix product standing in for the step), for each
worker kind, and for each checkout given (--roots, e.g. this one and an older one, to compare
implementations). Reported: the consumer's wait for a batch (median and mean, ms) and the
throughput, in runs that alternate between the versions (so a drift in the machine's speed hits
them alike).

    python3 bench/loader_speed.py --roots . /tmp/old --workers process none --rounds 3
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, SHARED, table  # noqa: E402


def job(spec: dict) -> dict:
    """One measurement, in a fresh interpreter that imports uer from spec["root"]."""
    sys.path.insert(0, spec["root"])
    import time

    import torch

    from uer.data.dataset import Dataset
    from uer.data.loader import BatchLoader
    from uer.vocab import Vocab

    torch.set_num_threads(1)
    special = Vocab.load(spec["vocab"]).special_ids()
    loader = BatchLoader(Dataset(spec["dataset"]), special, spec["batch_size"], seed=1,
                         length_buckets=True)
    a = torch.randn(spec["work"], spec["work"])
    waits, real = [], 0
    t0 = None
    with loader.prefetch(25600, spec["worker"]) as batches:
        for i in range(spec["warmup"] + spec["batches"]):
            if i == spec["warmup"]:
                t0 = time.perf_counter()
            t = time.perf_counter()
            batch = next(batches)
            if i >= spec["warmup"]:
                waits.append(time.perf_counter() - t)
                real += batch["tokens"]
            a @ a  # the step
    seconds = time.perf_counter() - t0
    return {"wait_ms_median": 1000 * statistics.median(waits), "wait_ms_mean": 1000 * statistics.mean(waits),
            "batches_per_s": spec["batches"] / seconds, "tokens_per_s": real / seconds}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--roots", nargs="+", default=[ROOT], help="Checkouts of uer to compare.")
    p.add_argument("--workers", nargs="+", default=["process", "none"])
    p.add_argument("--target", default="mlm", choices=["mlm", "bert", "lm"])
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--seq_length", type=int, default=128)
    p.add_argument("--batches", type=int, default=300)
    p.add_argument("--work", type=int, default=384, help="Size of the consumer's matrix product a batch.")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--job", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.job:
        print(json.dumps(job(json.loads(args.job))))
        return
    vocab = f"{SHARED}/models/google_zh_vocab.txt"
    corpus = f"{SHARED}/corpora/CLUECorpusSmall_bert_sampled.txt" if args.target == "bert" else \
        f"{SHARED}/corpora/CLUECorpusSmall_sampled.txt"
    with tempfile.TemporaryDirectory() as tmp:
        dataset = os.path.join(tmp, "d.pt")
        subprocess.run([sys.executable, os.path.join(ROOT, "preprocess.py"), "--corpus_path", corpus, "--vocab_path",
                        vocab, "--dataset_path", dataset, "--target", args.target, "--seq_length",
                        str(args.seq_length), "--dynamic_masking", "--processes_num", "2"],
                       check=True, capture_output=True)
        results: dict[tuple, list[dict]] = {}
        for _ in range(args.rounds):
            for root in args.roots:
                for worker in args.workers:
                    spec = {"root": os.path.abspath(root), "worker": worker, "dataset": dataset, "vocab": vocab,
                            "batch_size": args.batch_size, "batches": args.batches, "warmup": 20, "work": args.work}
                    out = subprocess.run([sys.executable, __file__, "--job", json.dumps(spec)], check=True,
                                         capture_output=True, text=True, cwd=tmp)
                    results.setdefault((root, worker), []).append(json.loads(out.stdout.splitlines()[-1]))
    rows = []
    for (root, worker), runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        rows.append([root, worker, f"{med['wait_ms_median']:.3f}", f"{med['wait_ms_mean']:.3f}",
                     f"{med['batches_per_s']:.1f}", f"{med['tokens_per_s']:,.0f}"])
    print(table(["checkout", "worker", "wait median ms", "wait mean ms", "batches/s", "real tokens/s"], rows))


if __name__ == "__main__":
    main()
