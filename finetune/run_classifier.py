#!/usr/bin/env python3
"""Fine-tune a pre-trained model as a classifier on TSV files. See --help."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from uer.finetune import run_classifier_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_classifier_main())
