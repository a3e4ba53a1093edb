"""uer's messages go through Python's logging: a logger per module under "uer"
(`logging.getLogger(__name__)`), one console handler on stdout that writes above a progress bar while
one is shown, `--log_level`, `--log_path` (a file handler), and the rank in every line of a
distributed run. A program that embeds uer configures the "uer" logger as it likes instead."""
from __future__ import annotations

import contextlib
import logging
import sys

ROOT = "uer"
LEVELS = ("debug", "info", "warning", "error")
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class Console(logging.Handler):
    """stdout as it is at each line (so a replaced sys.stdout is honoured), or tqdm.write while a
    bar is shown, so that report lines stay above it."""

    bar = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            if Console.bar is not None:
                Console.bar.write(line, file=sys.stdout)
            else:
                sys.stdout.write(line + "\n")
                sys.stdout.flush()
        except Exception:  # logging's rule: a failing handler reports and goes on
            self.handleError(record)


def setup(level: str = "info", rank: int | None = None, world_size: int = 1) -> logging.Logger:
    """The "uer" logger: `level`, one console handler, lines prefixed with the rank when there
    are several processes."""
    logger = logging.getLogger(ROOT)
    logger.setLevel(level.upper())
    logger.propagate = False
    for h in [h for h in logger.handlers if isinstance(h, Console)]:
        logger.removeHandler(h)
    console = Console()
    console.setFormatter(logging.Formatter(prefix(rank, world_size) + "%(message)s"))
    logger.addHandler(console)
    return logger


def prefix(rank: int | None, world_size: int) -> str:
    """What starts every line of a process of a distributed run."""
    return f"[rank {rank}/{world_size}] " if rank is not None and world_size > 1 else ""


def configured() -> None:
    """The console handler, unless the program configured logging itself (uer used as a library
    by a program that did not: its lines would otherwise be lost)."""
    if not logging.getLogger(ROOT).handlers and not logging.getLogger().handlers:
        setup()


def add_file(path: str, rank: int | None = None, world_size: int = 1) -> logging.Handler:
    """--log_path: every line of the "uer" logger appended to `path`, with time, level and module."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(prefix(rank, world_size) + FILE_FORMAT, "%Y-%m-%d %H:%M:%S"))
    logging.getLogger(ROOT).addHandler(handler)
    return handler


def remove(handler: logging.Handler) -> None:
    logging.getLogger(ROOT).removeHandler(handler)
    handler.close()


@contextlib.contextmanager
def progress_bar(wanted: bool, total_steps: int):
    """A bar of the training steps for a person watching (stderr a terminal), with the console's
    lines written above it; else None."""
    if not (wanted and sys.stderr.isatty()):
        yield None
        return
    from tqdm import tqdm

    bar = Console.bar = tqdm(total=total_steps, unit="step", dynamic_ncols=True, leave=False)
    try:
        yield bar
    finally:
        Console.bar = None
        bar.close()
