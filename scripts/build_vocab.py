#!/usr/bin/env python3
"""Build a vocabulary from a corpus: the reserved tokens, then the corpus tokens by frequency."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from uer.errors import run_cli  # noqa: E402
from uer.options import parse  # noqa: E402
from uer.tokenizers import build_vocab  # noqa: E402


def main(argv=None):
    args, _ = parse("build_vocab", argv, __doc__)
    vocab = build_vocab(args.corpus_path, args.tokenizer, args.min_count, args.workers_num)
    vocab.save(args.vocab_path)
    print(f"Wrote {args.vocab_path}: {len(vocab)} tokens.")


if __name__ == "__main__":
    sys.exit(run_cli(main))
