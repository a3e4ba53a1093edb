#!/usr/bin/env python3
"""The uer-build-vocab command from a checkout (the code: uer/tools/build_vocab.py). See --help."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from uer.tools.build_vocab import cli  # noqa: E402

if __name__ == "__main__":
    sys.exit(cli())
