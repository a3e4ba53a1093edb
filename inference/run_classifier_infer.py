#!/usr/bin/env python3
"""Predict labels with a fine-tuned classifier. See --help."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from uer.errors import run_cli  # noqa: E402
from uer.finetune import run_classifier_infer  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_cli(run_classifier_infer))
