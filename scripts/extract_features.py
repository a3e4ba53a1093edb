#!/usr/bin/env python3
"""The uer-extract-features command from a checkout (the code: uer/tools/extract_features.py). See --help."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from uer.tools.extract_features import cli  # noqa: E402

if __name__ == "__main__":
    sys.exit(cli())
