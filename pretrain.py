#!/usr/bin/env python3
"""Pre-train a model on a dataset built by preprocess.py. See --help."""
import sys

from uer.cli import pretrain_main

if __name__ == "__main__":
    sys.exit(pretrain_main())
