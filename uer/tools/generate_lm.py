"""Generate from each line of --test_path with a trained model, one output line per input line in
--prediction_path: greedy with --top_k 1, else top-k / top-p sampling. An lm model continues the
line (the output: the line and its continuation); a prefixlm model reads the line as the prefix,
and mt, t5, gsg and bart models as the source (the output: the generated target alone; t5 fills
the line's [MASK] tokens (each the next sentinel with --sentinel_tokens, for a model pre-trained
so), gsg writes the sentences of its [MASK]s, bart the line rebuilt).
Transformers keep a KV cache."""

import logging

from uer import components
from uer.api import Pretrained, check_files, read_lines
from uer.card import read_card
from uer.errors import UerError, run_cli
from uer.options import parse
from uer.utils import atomic_write_text

logger = logging.getLogger(__name__)

TARGETS = ("lm", "prefixlm", "mt", "t5", "gsg", "bart")


def source_ids(m: Pretrained, line: str, sentinels: tuple[int, ...] = ()) -> list[int]:
    """The line's ids, a literal [MASK] kept as the mask token (t5's input), or, with sentinels
    (a model pre-trained with --sentinel_tokens), the k-th [MASK] as the k-th sentinel."""
    ids: list[int] = []
    for k, part in enumerate(line.split("[MASK]")):
        if k:
            ids.append(sentinels[min(k - 1, len(sentinels) - 1)] if sentinels else m.special.mask)
        ids += m.tokenizer.encode(part)
    return ids


def main(argv=None):
    import torch

    from uer.generate import Generator, Seq2SeqGenerator

    components.load()
    args, explicit = parse("generate_lm", argv, __doc__)
    check_files({"--test_path": args.test_path, "--load_model_path": args.load_model_path,
                 "--vocab_path": args.vocab_path, "--tgt_vocab_path": args.tgt_vocab_path},
                {"--prediction_path": args.prediction_path})
    prompts = read_lines(args.test_path, "--test_path")
    # a model card says which model it is; without one the model is an lm unless told otherwise
    told = explicit if read_card(args.load_model_path) else explicit | {"target", "mask"}
    m = Pretrained.from_args(args, told)
    target = m.cfg.target
    if target not in TARGETS:
        raise UerError(f"--target {target}: generate_lm.py generates from {', '.join(TARGETS)} models")
    seq2seq = m.model.target.has_decoder
    limits = [("--seq_length", args.seq_length)] + ([("--tgt_seq_length", args.tgt_seq_length)] if seq2seq else [])
    for option, n in limits:
        if n > m.cfg.max_seq_length:
            raise UerError(f"{option} {n} is beyond the position table ({m.cfg.max_seq_length})")
    gen = Seq2SeqGenerator(m.model) if seq2seq else Generator(m.model)
    sample = dict(top_k=args.top_k, top_p=args.top_p, temperature=args.temperature,
                  generator=torch.Generator().manual_seed(args.seed))
    sp, tsp = m.special, m.tgt_special
    sentinels = ()
    if args.sentinel_tokens:
        from uer.data.preprocess import sentinel_ids

        if target != "t5":
            raise UerError(f"--sentinel_tokens: the sentinels of T5's span corruption are for t5 models, not {target}")
        sentinels = sentinel_ids(m.vocab)
        if not sentinels:
            raise UerError(f"--sentinel_tokens: the vocabulary {m.vocab.source} has no [unusedN] token")
    out = []
    for line in prompts:
        if seq2seq:
            source = ([sp.cls] + source_ids(m, line, sentinels) + [sp.sep])[:args.seq_length]
            ids = gen.generate(source, args.tgt_seq_length, start_id=tsp.cls, stop_id=tsp.sep, **sample)
            out.append(m.decode([i for i in ids if i != tsp.sep], m.tgt_vocab) + "\n")
            continue
        prompt = [sp.cls] + m.tokenizer.encode(line)
        prompt = prompt[:args.seq_length - 2] + [sp.sep] if target == "prefixlm" else prompt[:args.seq_length - 1]
        ids = gen.generate(prompt, args.seq_length, stop_id=sp.sep, **sample)
        text = m.decode([i for i in ids[len(prompt):] if i != sp.sep])
        out.append((text if target == "prefixlm" else line + text) + "\n")
    atomic_write_text(args.prediction_path, "".join(out))
    logger.info(f"Wrote {len(out)} {'continuations' if target == 'lm' else 'outputs'} to {args.prediction_path}.")


def cli(argv=None) -> int:
    """scripts/generate_lm.py and the uer-generate console command."""
    return run_cli(main, argv)
