"""Build a vocabulary from a corpus: the reserved tokens, then the corpus tokens by frequency."""

import logging

from uer.errors import run_cli
from uer.options import parse
from uer.tokenizers import build_vocab

logger = logging.getLogger(__name__)


def main(argv=None):
    args, _ = parse("build_vocab", argv, __doc__)
    vocab = build_vocab(args.corpus_path, args.tokenizer, args.min_count, args.workers_num)
    vocab.save(args.vocab_path)
    logger.info(f"Wrote {args.vocab_path}: {len(vocab)} tokens.")


def cli(argv=None) -> int:
    """scripts/build_vocab.py and the uer-build-vocab console command."""
    return run_cli(main, argv)
