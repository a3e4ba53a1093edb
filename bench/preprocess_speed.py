#!/usr/bin/env python3
"""Preprocess speed: the bert target on the shared 2 MB CLUE sample (the reference's default
options: static masking, dup_factor 5), with 1 and 2 processes, for this tree and optionally an
earlier commit run side by side; the pretraining start-up on that dataset (launch to the first
step's report, BERT-tiny, batch 32); plus the tokenizer alone, HF `tokenizers` fast path against
the reference algorithm in pure Python, on the same text.

    python3 bench/preprocess_speed.py [--baseline REV] [--repeat 3]
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, SHARED, python, run_watched, table  # noqa: E402

CORPUS = os.path.join(SHARED, "corpora", "CLUECorpusSmall_bert_sampled.txt")
VOCAB = os.path.join(SHARED, "models", "google_zh_vocab.txt")


def preprocess(tree: str, processes: int, out: str):
    rc, secs, peak, text = run_watched([python(), os.path.join(tree, "preprocess.py"), "--corpus_path", CORPUS,
                                        "--vocab_path", VOCAB, "--dataset_path", out, "--target", "bert",
                                        "--processes_num", str(processes)], cwd=tree)
    if rc:
        raise SystemExit(text)
    return secs, peak, os.path.getsize(out)


def startup(tree: str, dataset: str, work: str) -> float:
    """Seconds from launching pretrain.py to its first report line (after step 1)."""
    rc, secs, _, text = run_watched(
        [python(), os.path.join(tree, "pretrain.py"), "--dataset_path", dataset, "--vocab_path", VOCAB,
         "--config_path", os.path.join(tree, "models", "bert_tiny_config.json"), "--output_model_path",
         os.path.join(work, "m.bin"), "--total_steps", "1000", "--report_steps", "1", "--batch_size", "32"],
        cwd=tree, until=" steps|")
    if rc:
        raise SystemExit(text)
    return secs


def tokenizer_speed() -> list[list]:
    sys.path.insert(0, ROOT)
    from uer.tokenizers import build_tokenizer
    from uer.vocab import Vocab

    vocab = Vocab.load(VOCAB)
    fast = build_tokenizer("bert", vocab)
    with open(CORPUS, encoding="utf-8") as f:
        lines = [line for line in f.read().split("\n") if line.strip()]
    rows = []
    t = time.perf_counter()
    n = sum(len(ids) for ids in fast.encode_batch(lines))
    fast_s = time.perf_counter() - t
    t = time.perf_counter()
    m = sum(len(fast.encode(line)) for line in lines)  # tokenize(): the reference algorithm
    ref_s = time.perf_counter() - t
    assert n == m
    rows.append(["reference algorithm (pure Python)", f"{m / ref_s / 1e3:,.0f} k", "1.00x"])
    rows.append(["HF tokenizers fast path (uer)", f"{n / fast_s / 1e3:,.0f} k", f"{ref_s / fast_s:.2f}x"])
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", default=None, help="Also run this git revision (a temporary worktree).")
    p.add_argument("--repeat", type=int, default=3, help="Runs per setting; the fastest counts.")
    args = p.parse_args(argv)
    work = tempfile.mkdtemp(prefix="uer-pre-bench-")
    trees = [("this tree", ROOT)]
    try:
        if args.baseline:
            base = os.path.join(work, "baseline")
            subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", base, args.baseline], check=True,
                           capture_output=True)
            trees.insert(0, (f"baseline {args.baseline}", base))
        rows, starts, mb = [], [], os.path.getsize(CORPUS) / 2**20
        for name, tree in trees:
            dataset = os.path.join(work, "d.pt")
            for processes in (2, 1):
                best = min((preprocess(tree, processes, dataset) for _ in range(args.repeat)),
                           key=lambda r: r[0])
                rows.append([name, processes, f"{best[0]:.2f}", f"{mb / best[0]:.2f}", f"{best[2] / 2**20:.1f}",
                             f"{best[1] / 2**20:.0f}"])
            starts.append([name, f"{min(startup(tree, dataset, work) for _ in range(args.repeat)):.2f}"])
        print(f"bert target, {CORPUS} ({mb:.1f} MiB), dup_factor 5, static masking; time includes start-up")
        print(table(["tree", "processes", "seconds", "MiB/s", "dataset MiB", "peak memory MiB (PSS)"], rows))
        print()
        print("pretrain.py on that dataset (BERT-tiny, batch 32): launch to the first step's report")
        print(table(["tree", "seconds"], starts))
        print()
        print(table(["tokenizer", "tokens/s", "speed"], tokenizer_speed()))
    finally:
        if args.baseline:
            subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", os.path.join(work, "baseline")],
                           capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
