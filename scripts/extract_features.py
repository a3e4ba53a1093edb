#!/usr/bin/env python3
"""Hidden states of the encoder for each line of --input_path ([CLS] text [SEP]), saved with
torch.save as {"hidden": [N, L, H] float tensor (padded), "lengths": [N]}. --pooling first|mean
saves one vector a line instead: {"features": [N, H]}."""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from uer.api import Pretrained, add_inference_options, parse  # noqa: E402
from uer.errors import UerError, run_cli  # noqa: E402
from uer.utils import atomic_path  # noqa: E402


def main(argv=None):
    import torch

    p = argparse.ArgumentParser(description=__doc__)
    add_inference_options(p)
    p.add_argument("--input_path", required=True, help="Text, one item a line.")
    p.add_argument("--output_path", required=True, help="Where the features go (a torch tensor file).")
    p.add_argument("--seq_length", type=int, default=128, help="Longest input in tokens.")
    p.add_argument("--batch_size", type=int, default=64, help="Sentences per forward pass.")
    p.add_argument("--features", choices=["tokens", "first", "mean"], default="tokens",
                   help="tokens: every position; first: the [CLS] vector; mean: the mean over real tokens.")
    args, explicit = parse(p, argv)
    m = Pretrained.from_args(args, explicit)
    if not os.path.isfile(args.input_path):
        raise UerError(f"--input_path {args.input_path}: file not found")
    with open(args.input_path, encoding="utf-8") as f:
        lines = [line.strip() for line in f]
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
    print(f"Wrote features of {len(lines)} lines to {args.output_path}.")


if __name__ == "__main__":
    sys.exit(run_cli(main))
