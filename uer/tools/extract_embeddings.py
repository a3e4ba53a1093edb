"""Write the word embedding table of a checkpoint as word2vec text: a header "V dim", then
"token v1 ... vdim" for every vocabulary entry."""

import logging

from uer.errors import UerError, run_cli
from uer.options import parse
from uer.utils import atomic_write_text

logger = logging.getLogger(__name__)


def main(argv=None):
    from uer.checkpoint import map_later_names, read_state_dict
    from uer.vocab import load_vocab

    from uer.card import apply_defaults, read_card

    args, explicit = parse("extract_embeddings", argv, __doc__)
    apply_defaults(args, explicit, read_card(args.load_model_path))  # the vocabulary it was trained with
    vocab = load_vocab(args.vocab_path, args.spm_model_path)
    state = map_later_names(read_state_dict(args.load_model_path))
    table = state.get("embedding.word_embedding.weight")
    if table is None:
        raise UerError(f"{args.load_model_path} has no embedding.word_embedding.weight")
    if table.shape[0] != len(vocab):
        raise UerError(f"the embedding has {table.shape[0]} rows, the vocabulary {len(vocab)} tokens")
    rows = [f"{len(vocab)} {table.shape[1]}\n"]
    for token, vec in zip(vocab.tokens, table.float().tolist()):
        rows.append(token + " " + " ".join(f"{x:.6g}" for x in vec) + "\n")
    atomic_write_text(args.word_embedding_path, "".join(rows))
    logger.info(f"Wrote {len(vocab)} vectors of size {table.shape[1]} to {args.word_embedding_path}.")


def cli(argv=None) -> int:
    """scripts/extract_embeddings.py and the uer-extract-embeddings console command."""
    return run_cli(main, argv)
