"""Several processes on the CPU (gloo): the same result as one process with the same global batch,
identical ranks, metrics summed over ranks, two "nodes" on one machine, torchrun, and clear errors
for every misconfiguration, a missing peer included."""
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, TINY, ZH_VOCAB, assert_clean_error, free_port, pretrain_args, run_script
from uer.config import ModelConfig, TrainConfig
from uer.data.dataset import Dataset
from uer.train.distributed import Rank, finish, init, run_ranks
from uer.train.trainer import train
from uer.vocab import Vocab

pytestmark = pytest.mark.e2e  # every test here runs uer in child processes


def _worker(rank: Rank, tcfg, mcfg, path, out_dir):
    init(rank, tcfg)
    try:
        vocab = Vocab.load(ZH_VOCAB)
        result = train(tcfg, mcfg, Dataset(path), vocab.special_ids(), log=lambda *_: None, rank=rank)
        torch.save({"state": result["model"].state_dict(), "history": result["history"]},
                   os.path.join(out_dir, f"rank{rank.rank}.pt"))
    finally:
        finish(rank)


@pytest.mark.parametrize("batch,accumulation", [(4, 1), (2, 2)])
def test_two_processes_equal_one_with_the_same_global_batch(tmp_path, eight, batch, accumulation):
    """2 ranks x batch x accumulation = 8 = one process with a batch of 8 (no_sync on the first
    micro-steps, one gradient all-reduce at the last)."""
    mcfg = ModelConfig(vocab_size=21128, target="mlm", **TINY)
    common = dict(dataset_path=eight, total_steps=3, report_steps=1, learning_rate=1e-3, seed=5)
    one = TrainConfig(output_model_path=str(tmp_path / "one" / "m.bin"), batch_size=8, **common)
    two = TrainConfig(output_model_path=str(tmp_path / "two" / "m.bin"), batch_size=batch,
                      accumulation_steps=accumulation, world_size=2,
                      gpu_ranks=(0, 1), backend="gloo", master_ip=f"tcp://127.0.0.1:{free_port()}", **common)
    for cfg, sub in ((one, "one"), (two, "two")):
        (tmp_path / sub).mkdir()
        run_ranks(cfg, _worker, cfg, mcfg, eight, str(tmp_path / sub))
    a = torch.load(tmp_path / "one" / "rank0.pt")
    b0, b1 = (torch.load(tmp_path / "two" / f"rank{r}.pt") for r in (0, 1))
    for k, v in a["state"].items():
        torch.testing.assert_close(b0["state"][k], v, rtol=1e-5, atol=1e-6, msg=k)
        assert torch.equal(b0["state"][k], b1["state"][k]), k  # the ranks never drift apart
    # the reported metrics are summed over the ranks: the same counts and losses as one process
    for h1, h2 in zip(a["history"], b0["history"]):
        assert h1["metrics"]["mlm"]["count"] == h2["metrics"]["mlm"]["count"]
        assert h1["loss"] == pytest.approx(h2["loss"], rel=1e-5)
    assert (tmp_path / "two" / "m.bin").exists()


def test_two_nodes_on_one_machine(tmp_path, eight):
    master = f"tcp://127.0.0.1:{free_port()}"
    procs = [subprocess.Popen([sys.executable, *pretrain_args(
        eight, tmp_path / f"node{r}.bin", "--world_size", "2", "--gpu_ranks", str(r),
        "--backend", "gloo", "--master_ip", master, "--dist_timeout", "120")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert "2 processes (gloo)" in outs[0][0] and "steps|" in outs[0][0]
    assert "steps|" not in outs[1][0]  # only rank 0 reports ...
    assert (tmp_path / "node0.bin").exists() and (tmp_path / "node0.bin-2").exists()
    assert not list(tmp_path.glob("node1.bin*"))  # ... and saves


def test_torchrun(tmp_path, eight):
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(free_port()),
                           *pretrain_args(eight, tmp_path / "m.bin", "--backend", "gloo")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "2 processes (gloo)" in proc.stdout and (tmp_path / "m.bin").exists()


def test_misconfigurations_are_clear_errors(tmp_path, eight):
    def run(*extra):
        return run_script(*pretrain_args(eight, tmp_path / "m.bin", *extra), timeout=120)

    assert_clean_error(run("--world_size", "2", "--gpu_ranks", "0", "2", "--backend", "gloo"),
                       "--gpu_ranks [2] lie outside [0, world_size=2)")
    assert_clean_error(run("--world_size", "2", "--gpu_ranks", "1", "1", "--backend", "gloo"),
                       "--gpu_ranks has duplicates")
    assert_clean_error(run("--world_size", "2", "--backend", "gloo"), "needs --gpu_ranks")
    assert_clean_error(run("--gpu_ranks", "0", "1"), "--world_size is 1")
    assert_clean_error(run("--world_size", "2", "--gpu_ranks", "0", "--master_ip", "127.0.0.1:80"),
                       "--master_ip must look like tcp://host:port")
    if not torch.cuda.is_available():
        assert_clean_error(run("--world_size", "2", "--gpu_ranks", "0", "1"), "--backend nccl needs CUDA")
        assert_clean_error(run("--fp16"), "--fp16 needs a GPU")
    assert not (tmp_path / "m.bin").exists()


def test_a_peer_that_never_comes_is_a_timeout(tmp_path, eight):
    proc = run_script(*pretrain_args(eight, tmp_path / "m.bin", "--world_size", "2", "--gpu_ranks",
                                      "0", "--backend", "gloo", "--master_ip", f"tcp://127.0.0.1:{free_port()}",
                                      "--dist_timeout", "3"), timeout=120)
    assert_clean_error(proc, "did not all meet", "within --dist_timeout 3s")
