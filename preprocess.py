#!/usr/bin/env python3
"""Turn a text corpus into a dataset for one pre-training target. See --help."""
import sys

from uer.cli import preprocess_main

if __name__ == "__main__":
    sys.exit(preprocess_main())
