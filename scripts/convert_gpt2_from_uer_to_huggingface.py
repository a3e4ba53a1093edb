#!/usr/bin/env python3
"""Convert a gpt2 checkpoint from uer to HuggingFace transformers (key map: uer/convert.py). See --help."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from uer.convert import convert_cli  # noqa: E402

if __name__ == "__main__":
    sys.exit(convert_cli("gpt2", "from_uer_to_huggingface"))
