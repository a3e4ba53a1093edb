"""Hidden states of the encoder for each line of --input_path ([CLS] text [SEP]), saved with
torch.save as {"hidden": [N, L, H] float tensor (padded), "lengths": [N]}. --pooling first|mean
saves one vector a line instead: {"features": [N, H]}."""

import logging

from uer import components
from uer.api import Pretrained, check_files, read_lines
from uer.errors import run_cli
from uer.options import parse
from uer.utils import atomic_path

logger = logging.getLogger(__name__)


def main(argv=None):
    import torch

    components.load()
    args, explicit = parse("extract_features", argv, __doc__)
    check_files({"--input_path": args.input_path, "--load_model_path": args.load_model_path,
                 "--vocab_path": args.vocab_path}, {"--output_path": args.output_path})
    lines = read_lines(args.input_path, "--input_path")
    m = Pretrained.from_args(args, explicit)
    parts, lengths = [], []
    for i in range(0, len(lines), args.batch_size):
        hidden, seg = m.hidden_states(lines[i:i + args.batch_size], args.seq_length)
        real = (seg > 0).float()[..., None]
        if args.features == "first":
            parts.append(hidden[:, 0].float().cpu())
        elif args.features == "mean":
            parts.append(((hidden * real).sum(1) / real.sum(1)).float().cpu())
        else:
            parts.extend(h.float().cpu() for h in hidden)
            lengths.extend((seg > 0).sum(1).tolist())
    if args.features == "tokens":
        width = max(h.shape[0] for h in parts)
        hidden = torch.zeros(len(parts), width, parts[0].shape[-1])
        for b, h in enumerate(parts):
            hidden[b, :h.shape[0]] = h
        result = {"hidden": hidden, "lengths": torch.tensor(lengths)}
    else:
        result = {"features": torch.cat(parts)}
    with atomic_path(args.output_path) as tmp:
        torch.save(result, tmp)
    logger.info(f"Wrote features of {len(lines)} lines to {args.output_path}.")


def cli(argv=None) -> int:
    """scripts/extract_features.py and the uer-extract-features console command."""
    return run_cli(main, argv)
