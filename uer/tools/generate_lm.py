"""Continue each line of --test_path with an lm model (greedy with --top_k 1, else top-k / top-p
sampling), writing one line per prompt to --prediction_path. A causal transformer uses a KV cache."""

import logging

from uer import components
from uer.api import Pretrained, check_files, read_lines
from uer.errors import UerError, run_cli
from uer.options import parse
from uer.utils import atomic_write_text

logger = logging.getLogger(__name__)


def main(argv=None):
    import torch

    from uer.generate import Generator

    components.load()
    args, explicit = parse("generate_lm", argv, __doc__)
    check_files({"--test_path": args.test_path, "--load_model_path": args.load_model_path,
                 "--vocab_path": args.vocab_path}, {"--prediction_path": args.prediction_path})
    prompts = read_lines(args.test_path, "--test_path")
    m = Pretrained.from_args(args, explicit | {"target", "mask"})
    if m.cfg.target != "lm":
        raise UerError(f"--target {m.cfg.target}: generate_lm.py needs an lm model")
    if args.seq_length > m.cfg.max_seq_length:
        raise UerError(f"--seq_length {args.seq_length} is beyond the position table ({m.cfg.max_seq_length})")
    gen = Generator(m.model)
    rng = torch.Generator().manual_seed(args.seed)
    out = []
    for line in prompts:
        prompt = [m.special.cls] + m.tokenizer.encode(line)
        ids = gen.generate(prompt[:args.seq_length - 1], args.seq_length, top_k=args.top_k, top_p=args.top_p,
                           temperature=args.temperature, stop_id=m.special.sep, generator=rng)
        out.append(line + m.decode([i for i in ids[len(prompt):] if i != m.special.sep]) + "\n")
    atomic_write_text(args.prediction_path, "".join(out))
    logger.info(f"Wrote {len(out)} continuations to {args.prediction_path}.")


def cli(argv=None) -> int:
    """scripts/generate_lm.py and the uer-generate console command."""
    return run_cli(main, argv)
