"""Mask one random token of each line of --input_path and write the model's top-n predictions for
it (an mlm, bert or albert model). Output lines: text<TAB>masked token<TAB>prediction prediction ..."""

import logging
import random

from uer import components
from uer.api import Pretrained, check_files, read_lines
from uer.errors import UerError, run_cli
from uer.options import parse
from uer.utils import atomic_write_text

logger = logging.getLogger(__name__)


def main(argv=None):
    import torch

    components.load()
    args, explicit = parse("cloze_test", argv, __doc__)
    check_files({"--input_path": args.input_path, "--load_model_path": args.load_model_path,
                 "--vocab_path": args.vocab_path}, {"--output_path": args.output_path})
    lines = read_lines(args.input_path, "--input_path")
    m = Pretrained.from_args(args, explicit | {"target"})
    if m.cfg.target not in ("mlm", "bert", "albert"):
        raise UerError(f"--target {m.cfg.target}: cloze_test.py needs a masked LM (mlm, bert or albert)")
    rng = random.Random(args.seed)
    out = []
    for text in lines:
        ids = m.tokenizer.encode(text)[:args.seq_length - 2]
        if not ids:
            continue
        k = rng.randrange(len(ids))
        original = ids[k]
        src = torch.tensor([[m.special.cls] + ids[:k] + [m.special.mask] + ids[k + 1:] + [m.special.sep]])
        with torch.no_grad():
            scores = m.model.logits({"src": src, "seg": torch.ones_like(src)})["mlm"][0, k + 1]
        best = scores.topk(args.topn).indices.tolist()
        out.append(f"{text}\t{m.vocab.tokens[original]}\t{' '.join(m.vocab.tokens[i] for i in best)}\n")
    atomic_write_text(args.output_path, "".join(out))
    logger.info(f"Wrote {len(out)} cloze predictions to {args.output_path}.")


def cli(argv=None) -> int:
    """scripts/cloze_test.py and the uer-cloze-test console command."""
    return run_cli(main, argv)
