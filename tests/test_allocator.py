"""The training loop keeps the memory a step frees for the next step (uer.utils.retain_freed_memory):
with glibc's defaults every large block is a fresh mmap whose pages the kernel faults in and zeroes
again on every step. Measured in fresh processes, since the setting is process-wide."""
import json
import sys

import pytest

from conftest import MINI_BERT, ROOT, ZH_VOCAB, run_script

# Allocate, touch and free a 64 MiB block 20 times; report the page faults of the last 8 (glibc's
# 64-byte-aligned allocation settles on reusing freed blocks after about 9 rounds).
PROBE = """
import json, resource, sys
sys.path.insert(0, {root!r})
import torch
{setup}
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def cycle():
    torch.empty(16 * 2**20).fill_(1.0)
for _ in range(12):
    cycle()
before = faults()
for _ in range(8):
    cycle()
print("FAULTS", json.dumps((faults() - before) / 8))
"""

PAGES = 64 * 2**20 // 4096  # a 64 MiB block in 4 KiB pages


def probe(tmp_path, setup: str) -> float:
    script = tmp_path / "probe.py"
    script.write_text(PROBE.format(root=ROOT, setup=setup))
    proc = run_script(str(script), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.split("FAULTS ")[-1])


pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")


def test_default_allocator_faults_large_blocks_in_every_time(tmp_path):
    """The control: without the setting, each cycle faults in the whole block again."""
    assert probe(tmp_path, "") > 0.9 * PAGES


def test_retain_freed_memory_reuses_pages(tmp_path):
    setup = "from uer.utils import retain_freed_memory\nassert retain_freed_memory()"
    assert probe(tmp_path, setup) < 0.02 * PAGES


def test_training_applies_it(tmp_path):
    """A real (two-step) pretraining run in the process leaves the setting on."""
    ds = tmp_path / "ds.pt"
    setup = f"""
from uer.cli import pretrain_main, preprocess_main
assert preprocess_main(["--corpus_path", {MINI_BERT!r}, "--vocab_path", {ZH_VOCAB!r},
                        "--dataset_path", {str(ds)!r}, "--seq_length", "64", "--dup_factor", "1"]) == 0
assert pretrain_main(["--dataset_path", {str(ds)!r}, "--vocab_path", {ZH_VOCAB!r},
                      "--output_model_path", {str(tmp_path / "m.bin")!r}, "--total_steps", "2",
                      "--report_steps", "1", "--batch_size", "4", "--config_path",
                      {ROOT + "/models/bert_tiny_config.json"!r}]) == 0
"""
    assert probe(tmp_path, setup) < 0.02 * PAGES
