"""On a GPU (CUDA): the manual's pretrain command with --gpu_ranks 0 in fp32, --bf16 and --fp16, a
checkpoint the CPU reads back, and the same training on the GPU as on the CPU. Skipped where CUDA
is not available (CI has no GPU); run on a lent GPU with `python3 -m pytest -q tests/test_cuda.py`."""
import os

import pytest
import torch

from conftest import ROOT, TINY, ZH_VOCAB, pretrain_args, reported_losses, run_script
from uer.config import ModelConfig, TrainConfig, build_model_config, load_recipe
from uer.data.dataset import Dataset
from uer.model import build_model
from uer.train.checkpoint import load_model
from uer.train.distributed import Rank
from uer.train.trainer import train
from uer.vocab import Vocab

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("precision", [[], ["--bf16"], ["--fp16"]], ids=["fp32", "bf16", "fp16"])
def test_pretrain_on_one_gpu_learns_and_saves_a_cpu_checkpoint(tmp_path, eight, precision):
    out = tmp_path / "m.bin"
    args = pretrain_args(eight, out, "--gpu_ranks", "0", "--total_steps", "40", "--report_steps", "10",
                         "--save_checkpoint_steps", "20", "--learning_rate", "1e-3", "--batch_size", "8",
                         *precision)
    proc = run_script(*args, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "device cuda:0" in proc.stdout
    losses = reported_losses(proc.stdout)
    assert len(losses) == 4 and losses[-1] < 0.7 * losses[0], proc.stdout  # 8 instances: it memorises them
    assert (tmp_path / "m.bin-20").exists()
    # the final model loads, strictly, on the CPU, with finite weights
    model = build_model(build_model_config(load_recipe(os.path.join(ROOT, "models", "bert_tiny_config.json")),
                                           {"target": "mlm"}, {"target"}, 21128))
    load_model(model, str(out))
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())


def test_the_gpu_trains_as_the_cpu_does(tmp_path, eight):
    """fp32, no dropout, the same seed and batches: the same losses and weights within rounding."""
    mcfg = ModelConfig(vocab_size=21128, target="mlm", **TINY)
    special = Vocab.load(ZH_VOCAB).special_ids()
    results = {}
    for device in ("cpu", "cuda:0"):
        tcfg = TrainConfig(dataset_path=eight, output_model_path=str(tmp_path / device / "m.bin"), total_steps=5,
                           report_steps=1, batch_size=4, learning_rate=1e-3, seed=3)
        (tmp_path / device).mkdir()
        results[device] = train(tcfg, mcfg, Dataset(eight), special, log=lambda *_: None, rank=Rank(device=device))
    cpu, gpu = results["cpu"], results["cuda:0"]
    assert [h["loss"] for h in gpu["history"]] == pytest.approx([h["loss"] for h in cpu["history"]], rel=1e-4)
    gpu_state = {k: v.cpu() for k, v in gpu["model"].state_dict().items()}
    for k, v in cpu["model"].state_dict().items():
        torch.testing.assert_close(gpu_state[k], v, rtol=1e-3, atol=2e-4, msg=k)
    # the GPU's checkpoint loads on the CPU into a model that gives the same weights
    back = build_model(mcfg)
    load_model(back, str(tmp_path / "cuda:0" / "m.bin"))
    for k, v in back.state_dict().items():
        torch.testing.assert_close(v, gpu_state[k], rtol=0, atol=0, msg=k)
