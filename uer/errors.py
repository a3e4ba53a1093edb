"""User-facing errors: a clear message, no traceback, non-zero exit."""
from __future__ import annotations

import sys
from typing import Callable, Iterable


class UerError(Exception):
    """An error caused by the user's input (options, files, formats), reported without traceback."""


class ConfigError(UerError):
    """Several problems found while validating options; all of them are listed."""

    def __init__(self, problems: Iterable[str], what: str = "options"):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid {what} ({len(self.problems)} problem"
                         f"{'s' if len(self.problems) != 1 else ''}):\n{lines}")


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run a command-line entry point, turning UerError into a one-paragraph message and exit 2.
    uer's messages go to stdout through logging (uer.logs); a command with --log_level sets it."""
    from uer import logs

    logs.setup()
    try:
        return main(argv) or 0
    except UerError as e:
        prog = sys.argv[0].rsplit("/", 1)[-1] if sys.argv and sys.argv[0] else "uer"
        code = getattr(e, "code", 2)  # a requested stop (uer.train.stop.Stopped): 128 + the signal
        print(f"{prog}: {'error: ' if code == 2 else ''}{e}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
