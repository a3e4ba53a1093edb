"""Several processes on the CPU (gloo): the same result as one process with the same global batch,
identical ranks, metrics summed over ranks, two "nodes" on one machine, torchrun, and clear errors
for every misconfiguration, a missing peer included."""
import json
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, TINY, ZH_VOCAB, assert_clean_error, free_port, pretrain_args, run_script
from uer.config import ModelConfig, TrainConfig
from uer.data.dataset import Dataset
from uer.errors import UerError
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
    assert all(line.startswith("[rank 0/2] ") for line in outs[0][0].splitlines()), outs[0][0]  # whose line
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
        proc = run("--world_size", "8", "--gpu_ranks", *map(str, range(8)))
        assert_clean_error(proc, "--backend nccl (the default) needs CUDA", "add --backend gloo")
        assert "problem)" in proc.stderr  # one problem: no contradicting second hint
        for backend in ("nccl", "gloo"):  # one process: --gpu_ranks 3 is GPU 3 whatever the backend
            assert_clean_error(run("--gpu_ranks", "3", "--backend", backend),
                               "--gpu_ranks 3 asks for GPU 3, but CUDA is not available here")
        assert_clean_error(run("--fp16"), "--fp16 needs a GPU")
        from uer.train.distributed import launch_problems  # --fp16_opt_level O0: fp32, as --help says
        assert not launch_problems(TrainConfig(dataset_path="d", output_model_path="o", fp16=True,
                                               fp16_opt_level="O0"))
    assert_clean_error(run("--fsdp", "--fsdp_hybrid"), "--fsdp shards the model over several processes, and this "
                       "run has one")
    assert_clean_error(run("--fsdp_hybrid"), "--fsdp_hybrid is a way of --fsdp")
    assert_clean_error(run("--world_size", "3", "--gpu_ranks", "0", "1", "--backend", "gloo", "--fsdp",
                           "--fsdp_hybrid"), "the 3 processes must be whole nodes of 2")
    from uer.train.distributed import launch_problems
    assert any("--fsdp with --fp16: not available" in q for q in launch_problems(TrainConfig(
        dataset_path="d", output_model_path="o", fp16=True, fsdp=True, world_size=2, gpu_ranks=(0, 1))))
    assert not (tmp_path / "m.bin").exists()


def _crash(rank: Rank, how: str) -> None:
    if rank.rank == 1:
        _die_in_native_code(how)


def _die_in_native_code(how: str) -> None:
    if how == "abort":
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file where dumps are enabled
        os.abort()  # where a C++ std::terminate ends
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_rank_killed_by_a_signal_says_which_and_a_crash_where(tmp_path, capfd):
    cfg = TrainConfig(dataset_path="d", output_model_path=str(tmp_path / "m.bin"), world_size=2, gpu_ranks=(0, 1),
                      backend="gloo")
    with pytest.raises(UerError, match=r"process 1 \(rank 1\) was killed by SIGABRT; the Python stack of each "
                                       "of its threads is above"):
        run_ranks(cfg, _crash, "abort")
    err = capfd.readouterr().err
    assert "Fatal Python error: Aborted" in err and "in _die_in_native_code" in err, err
    with pytest.raises(UerError, match=r"rank 1\) was killed by SIGKILL \(out of memory\? the kernel's OOM"):
        run_ranks(cfg, _crash, "kill")


def test_a_peer_that_never_comes_is_a_timeout(tmp_path, eight):
    proc = run_script(*pretrain_args(eight, tmp_path / "m.bin", "--world_size", "2", "--gpu_ranks",
                                      "0", "--backend", "gloo", "--master_ip", f"tcp://127.0.0.1:{free_port()}",
                                      "--dist_timeout", "3"), timeout=120)
    assert_clean_error(proc, "did not all meet", "within --dist_timeout 3s")



def nodes(eight, out, layout, extras):
    """The manual's multi-node launch on one machine: one pretrain.py command per node in `layout`
    (the global ranks of each), node i given extras[i]; returns each command's (rc, stdout, stderr)."""
    master = f"tcp://127.0.0.1:{free_port()}"
    recipe = os.path.join(os.path.dirname(out), "tiny.json")
    with open(recipe, "w") as f:
        json.dump(TINY, f)
    procs = [subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "pretrain.py"), "--dataset_path", eight, "--vocab_path", ZH_VOCAB,
         "--config_path", recipe, "--target", "mlm", "--output_model_path", str(out), "--total_steps", "6",
         "--batch_size", "2", "--world_size", str(sum(len(r) for r in layout)), "--gpu_ranks", *map(str, ranks),
         "--backend", "gloo", "--master_ip", master, "--dist_timeout", "120", *extra],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for ranks, extra in zip(layout, extras)]
    outs = [p.communicate(timeout=300) for p in procs]
    return [(p.returncode, *o) for p, o in zip(procs, outs)]


# (two one-process nodes are slow only: the three-process layout has a one-process node too)
@pytest.mark.parametrize("layout", [pytest.param(((0,), (1,)), marks=pytest.mark.slow), ((0,), (1, 2))],
                         ids=["2 processes", "3 processes"])
def test_options_given_on_node_0_only_are_taken_by_every_rank(tmp_path, eight, layout):
    """The manual: the report and checkpoint intervals (and the dev set) need only be given on
    Node-0. The run ends with the same weights as one where every node had them."""
    node0 = ["--report_steps", "2", "--save_checkpoint_steps", "3", "--dev_dataset_path", eight, "--dev_steps", "3"]
    every = nodes(eight, tmp_path / "every.bin", layout, [node0] * len(layout))
    only = nodes(eight, tmp_path / "only.bin", layout, [node0] + [[]] * (len(layout) - 1))
    for runs in (every, only):
        assert [rc for rc, _, _ in runs] == [0] * len(layout), runs
    lines = [line for line in only[0][1].splitlines() if " steps|" in line]
    assert [line.split("|")[1].split("/")[0].strip() for line in lines if "dev|" not in line] == ["2", "4", "6"]
    assert [line.split("|")[1].split(" steps")[0].strip() for line in lines if "dev|" in line] == ["3", "6"]
    assert (tmp_path / "only.bin-3").exists() and (tmp_path / "only.bin-6").exists()
    a, b = torch.load(tmp_path / "every.bin"), torch.load(tmp_path / "only.bin")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_options_that_must_agree_stop_every_rank_with_one_message(tmp_path, eight):
    wider = tmp_path / "wider.json"
    wider.write_text(json.dumps({**TINY, "hidden_size": 64, "emb_size": 64}))
    runs = nodes(eight, tmp_path / "m.bin", ((0,), (1,)), [["--total_steps", "4"], ["--config_path", str(wider)]])
    for rc, out, err in runs:
        assert rc != 0 and "Traceback" not in err, err
        assert "cannot train together" in err, err
        assert "--total_steps: rank 0: 4; rank 1: 6" in err, err
        assert "model hidden_size: rank 0: 32; rank 1: 64" in err, err
    assert not list(tmp_path.glob("m.bin*"))


def test_peers_say_what_they_wait_for(tmp_path, eight):
    """Rank 0 says once whom it waits for; a rank whose master never comes says so in one line
    (no C++ stack trace, no retry after the timeout); a port in use is named as such."""
    def node(rank, master, *extra):
        return run_script(*pretrain_args(eight, tmp_path / f"n{rank}.bin", "--world_size", "2", "--gpu_ranks",
                                         str(rank), "--backend", "gloo", "--master_ip", master, "--dist_timeout",
                                         "3", *extra), timeout=120)

    proc = node(1, f"tcp://127.0.0.1:{free_port()}")
    assert_clean_error(proc, "rank 1: nothing answered at tcp://127.0.0.1:", "within --dist_timeout 3s")
    assert "frame #" not in proc.stderr and "retrying" not in proc.stderr and len(proc.stderr.splitlines()) == 1
    proc = node(0, f"tcp://127.0.0.1:{free_port()}")
    assert proc.stdout.count("Rank 0 waits up to 3s (--dist_timeout) for the 2 processes to meet at") == 1
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = node(0, f"tcp://127.0.0.1:{port}")
    assert_clean_error(proc, f"port {port} is in use", "give --master_ip another port")
