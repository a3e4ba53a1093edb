#!/usr/bin/env python3
"""The uer-cloze-test command from a checkout (the code: uer/tools/cloze_test.py). See --help."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from uer.tools.cloze_test import cli  # noqa: E402

if __name__ == "__main__":
    sys.exit(cli())
