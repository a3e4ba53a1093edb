#!/usr/bin/env python3
"""The uer-generate command from a checkout (the code: uer/tools/generate_lm.py). See --help."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from uer.tools.generate_lm import cli  # noqa: E402

if __name__ == "__main__":
    sys.exit(cli())
