#!/usr/bin/env python3
"""The uer-plot-log command from a checkout (the code: uer/tools/plot_log.py). See --help."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from uer.tools.plot_log import cli  # noqa: E402

if __name__ == "__main__":
    sys.exit(cli())
