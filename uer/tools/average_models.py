"""Element-wise mean of several checkpoints with the same keys and shapes (e.g. the last few
<output_model_path>-<step> files), written atomically."""

import logging
import os

from uer.errors import UerError, run_cli
from uer.options import parse

logger = logging.getLogger(__name__)


def main(argv=None):
    import torch

    from uer.card import read_card, write_card
    from uer.checkpoint import read_state_dict
    from uer.config import output_problems
    from uer.errors import ConfigError
    from uer.utils import atomic_path

    args, _ = parse("average_models", argv, __doc__)
    problems = output_problems(args.output_model_path, "--output_model_path",
                               {f"--model_list_path[{i}]": p for i, p in enumerate(args.model_list_path)})
    if problems:
        raise ConfigError(problems)
    total, first = None, None
    for path in args.model_list_path:
        state = read_state_dict(path)
        if total is None:
            total, first = {k: v.double().clone() for k, v in state.items()}, path
            continue
        if state.keys() != total.keys():
            diff = sorted(set(state) ^ set(total))[:5]
            raise UerError(f"{path} and {first} have different keys (e.g. {', '.join(diff)})")
        for k, v in state.items():
            if v.shape != total[k].shape:
                raise UerError(f"{k}: {tuple(v.shape)} in {path}, {tuple(total[k].shape)} in {first}")
            total[k] += v.double()
    dtypes = {k: v.dtype for k, v in read_state_dict(first).items()}
    mean = {k: (v / len(args.model_list_path)).to(dtypes[k]) for k, v in total.items()}
    with atomic_path(args.output_model_path) as tmp:
        torch.save(mean, tmp)
    card = read_card(first)  # the checkpoints share their keys and shapes: the same model
    if card is not None:
        write_card(args.output_model_path, card, averaged_from=[os.path.abspath(p) for p in args.model_list_path])
    logger.info(f"Wrote the mean of {len(args.model_list_path)} checkpoints to {args.output_model_path}"
                + (" and its model card." if card is not None else "."))


def cli(argv=None) -> int:
    """scripts/average_models.py and the uer-average-models console command."""
    return run_cli(main, argv)
