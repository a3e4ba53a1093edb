#!/usr/bin/env python3
"""Build a vocabulary from a corpus: the reserved tokens, then the corpus tokens by frequency."""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from uer.errors import run_cli  # noqa: E402
from uer.tokenizers import build_vocab  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--corpus_path", required=True, help="UTF-8 corpus.")
    p.add_argument("--vocab_path", required=True, help="Output vocabulary file.")
    p.add_argument("--workers_num", type=int, default=1, help="Counting processes.")
    p.add_argument("--min_count", type=int, default=1, help="Keep tokens seen at least this often.")
    p.add_argument("--tokenizer", choices=["char", "space"], default="space", help="How to split lines.")
    args = p.parse_args(argv)
    vocab = build_vocab(args.corpus_path, args.tokenizer, args.min_count, args.workers_num)
    vocab.save(args.vocab_path)
    print(f"Wrote {args.vocab_path}: {len(vocab)} tokens.")


if __name__ == "__main__":
    sys.exit(run_cli(main))
