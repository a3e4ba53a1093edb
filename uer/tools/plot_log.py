"""Draw the loss and accuracy curves of a --metrics_path CSV (train and dev, every term) into a PNG."""

import csv
import logging
import os

from uer.errors import UerError, run_cli
from uer.options import parse

logger = logging.getLogger(__name__)


def main(argv=None):
    args, _ = parse("plot_log", argv, __doc__)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UerError("plot_log.py needs matplotlib: pip install 'uer[plot]' (or pip install matplotlib)") from None
    if not os.path.isfile(args.metrics_path):
        raise UerError(f"--metrics_path {args.metrics_path}: file not found")
    series: dict = {}
    with open(args.metrics_path, encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"step", "split", "term", "loss", "acc"} <= set(reader.fieldnames):
            raise UerError(f"{args.metrics_path}: not a metrics CSV (expected the columns step, split, term, loss, acc)")
        for n, row in enumerate(reader, start=2):
            try:
                key = (row["split"], row["term"])
                s = series.setdefault(key, {"step": [], "loss": [], "acc": []})
                s["step"].append(int(row["step"]))
                s["loss"].append(float(row["loss"]))
                s["acc"].append(float(row["acc"]))
            except (TypeError, ValueError) as e:
                raise UerError(f"{args.metrics_path} line {n}: {e}") from None
    if not series:
        raise UerError(f"{args.metrics_path}: no rows yet")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for (split, term), s in sorted(series.items()):
        style = "-" if split == "train" else "o--"
        for ax, what in zip(axes, ("loss", "acc")):
            ax.plot(s["step"], s[what], style, label=f"{split} {term}")
    for ax, what in zip(axes, ("loss", "accuracy")):
        ax.set_xlabel("step")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(args.output_path, dpi=100)
    logger.info(f"Wrote {args.output_path} ({len(series)} curves).")


def cli(argv=None) -> int:
    """scripts/plot_log.py and the uer-plot-log console command."""
    return run_cli(main, argv)
