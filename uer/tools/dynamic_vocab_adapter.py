"""Adapt a checkpoint to a new vocabulary: every tensor with one row per old-vocabulary token (the
word embedding, the mlm output weight and bias, an lm/bilm output layer, a t5 decoder embedding)
gets one row per new token, copied from the old row where the token existed and drawn from
N(0, 0.02) otherwise. Tensors tied in the old checkpoint stay identical. Other tensors are copied."""

import logging
import os

from uer.errors import UerError, run_cli
from uer.options import parse

logger = logging.getLogger(__name__)

VOCAB_SIZED = ("embedding.word_embedding.weight", "target.mlm_linear_2.weight", "target.mlm_linear_2.bias",
               "target.output_layer.weight", "target.output_layer.bias", "target.embedding.word_embedding.weight")


def adapt(state: dict, old_tokens: list[str], new_tokens: list[str], seed: int = 7) -> dict:
    import torch

    old_index = {t: i for i, t in enumerate(old_tokens)}
    src = torch.tensor([old_index.get(t, -1) for t in new_tokens])
    known = src >= 0
    gen = torch.Generator().manual_seed(seed)
    out, done = {}, []
    for k, v in state.items():
        if k not in VOCAB_SIZED or v.shape[0] != len(old_tokens):
            out[k] = v
            continue
        twin = next((dk for dk, dv in done if dv.shape == v.shape and torch.equal(dv, v)), None)
        if twin is not None:  # a tied copy: the same new tensor
            out[k] = out[twin]
            continue
        new = torch.randn((len(new_tokens),) + tuple(v.shape[1:]), generator=gen, dtype=torch.float64) * 0.02
        new = new.to(v.dtype)
        new[known] = v[src[known]]
        out[k] = new
        done.append((k, v))
    if not done:
        raise UerError(f"no tensor has {len(old_tokens)} rows (the old vocabulary size): wrong --old_vocab_path?")
    return out


def main(argv=None):
    import torch

    from uer.card import read_card, vocab_entry, write_card
    from uer.checkpoint import map_later_names, read_state_dict
    from uer.utils import atomic_path
    from uer.vocab import Vocab

    args, _ = parse("dynamic_vocab_adapter", argv, __doc__)
    from uer.api import check_files

    check_files({"--old_model_path": args.old_model_path, "--old_vocab_path": args.old_vocab_path,
                 "--new_vocab_path": args.new_vocab_path}, {"--new_model_path": args.new_model_path})
    old, new = Vocab.load(args.old_vocab_path), Vocab.load(args.new_vocab_path)
    new.special_ids()  # a model of this vocabulary must be usable: [PAD], [UNK], [CLS], ... are in it
    state = adapt(map_later_names(read_state_dict(args.old_model_path)), old.tokens, new.tokens, args.seed)
    with atomic_path(args.new_model_path) as tmp:
        torch.save(state, tmp)
    card = read_card(args.old_model_path)
    if card is not None:  # the same model with the new vocabulary
        write_card(args.new_model_path, {**card, "vocab": vocab_entry(new)},
                   adapted_from=os.path.abspath(args.old_model_path))
    kept = len(set(old.tokens) & set(new.tokens))
    logger.info(f"Wrote {args.new_model_path}: {len(new)} tokens, {kept} of them carried over from {len(old)}"
                + (", and its model card." if card is not None else "."))


def cli(argv=None) -> int:
    """scripts/dynamic_vocab_adapter.py and the uer-dynamic-vocab-adapter console command."""
    return run_cli(main, argv)
