#!/usr/bin/env python3
"""Convert a t5 model from huggingface to uer (key and config map: uer/convert.py). See --help."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from uer.convert import dir_cli  # noqa: E402

if __name__ == "__main__":
    sys.exit(dir_cli("t5", "from_huggingface_to_uer"))
