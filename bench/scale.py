#!/usr/bin/env python3
"""Scale: generate a corpus of --mb MiB (the shared CLUE sample, documents shuffled and repeated),
preprocess it with --processes_num, then start pretraining on the dataset (without length buckets,
so both runs see batches of the same shapes). Reports the time, the
peak resident memory of each command's whole process tree, the dataset size, and the time to the
first training step, next to the same figures for the 2 MB sample (memory flat in corpus size).

    python3 bench/scale.py --mb 1024 --processes 2 --workdir /tmp/uer-scale
"""
import argparse
import json
import os
import random
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, SHARED, python, run_watched, table  # noqa: E402

SOURCE = os.path.join(SHARED, "corpora", "CLUECorpusSmall_bert_sampled.txt")
VOCAB = os.path.join(SHARED, "models", "google_zh_vocab.txt")


def generate(path: str, mib: float, seed: int = 0) -> None:
    """Documents of the shared sample in a fresh random order per pass, until mib MiB are written."""
    docs = [d.strip("\n") + "\n\n" for d in open(SOURCE, encoding="utf-8").read().split("\n\n") if d.strip()]
    rng, written, goal = random.Random(seed), 0, int(mib * 2**20)
    with open(path, "w", encoding="utf-8") as f:
        while written < goal:
            rng.shuffle(docs)
            for d in docs:
                f.write(d)
                written += len(d.encode())
                if written >= goal:
                    break


def measure(corpus: str, work: str, processes: int) -> dict:
    ds = os.path.join(work, "dataset.pt")
    rc, secs, peak, out = run_watched([python(), "preprocess.py", "--corpus_path", corpus, "--vocab_path", VOCAB,
                                       "--dataset_path", ds, "--target", "bert", "--dynamic_masking",
                                       "--processes_num", str(processes)])
    if rc:
        raise SystemExit(out)
    size = os.path.getsize(corpus)
    sys.path.insert(0, ROOT)
    from uer.data.dataset import read_header

    row = {"instances": read_header(ds)["instances"], "corpus_mib": size / 2**20, "preprocess_s": secs, "mib_per_s": size / 2**20 / secs,
           "preprocess_peak_mib": peak / 2**20, "dataset_mib": os.path.getsize(ds) / 2**20}
    rc, secs, peak, out = run_watched(
        [python(), "pretrain.py", "--dataset_path", ds, "--vocab_path", VOCAB, "--config_path",
         os.path.join(ROOT, "models", "bert_tiny_config.json"), "--output_model_path", os.path.join(work, "m.bin"),
         "--total_steps", "1000", "--report_steps", "1", "--batch_size", "32", "--length_buckets", "false"],
        until=" steps|")
    if rc:
        raise SystemExit(out)
    row.update(first_step_s=secs, pretrain_peak_mib=peak / 2**20)
    os.remove(ds)
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mb", type=float, default=1024, help="Size of the generated corpus in MiB.")
    p.add_argument("--processes", type=int, default=2, help="--processes_num of preprocess.")
    p.add_argument("--workdir", default=None, help="Where the corpus and dataset go (default: a temp dir).")
    p.add_argument("--json", default=None, help="Also write the rows to this JSON file.")
    args = p.parse_args(argv)
    work = args.workdir or tempfile.mkdtemp(prefix="uer-scale-")
    os.makedirs(work, exist_ok=True)
    try:
        corpus = os.path.join(work, "corpus.txt")
        generate(corpus, args.mb)
        rows = {"sample": measure(SOURCE, work, args.processes), "generated": measure(corpus, work, args.processes)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    heads = ["corpus", "MiB", "preprocess s", "MiB/s", "preprocess peak MiB", "dataset MiB", "first step s",
             "pretrain peak MiB"]
    print(table(heads, [[name, f"{r['corpus_mib']:.0f}", f"{r['preprocess_s']:.1f}", f"{r['mib_per_s']:.2f}",
                         f"{r['preprocess_peak_mib']:.0f}", f"{r['dataset_mib']:.0f}", f"{r['first_step_s']:.2f}",
                         f"{r['pretrain_peak_mib']:.0f}"] for name, r in rows.items()]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
