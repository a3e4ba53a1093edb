"""Elastic, fault-tolerant launch (#30 item 5): under torchrun --max-restarts, a rank killed with
SIGKILL makes the group restart, and the restarted run continues by itself from the newest complete
checkpoint (--resume implied), ending with the parameters of a run that was never killed."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, TINY, free_port, pretrain_args
from uer.train.checkpoint import read_state_dict

pytestmark = pytest.mark.e2e

STEPS = ["--total_steps", "20", "--save_checkpoint_steps", "10", "--report_steps", "10", "--backend", "gloo",
         "--dist_timeout", "120"]


def torchrun(dataset, out, *extra):
    """A tiny model (small checkpoints: the steps and restarts are what is tested)."""
    recipe = os.path.join(os.path.dirname(str(out)), "tiny.json")
    with open(recipe, "w", encoding="utf-8") as f:
        json.dump(TINY, f)
    port = free_port()
    return subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--max-restarts", "1",
         "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
         *pretrain_args(dataset, out, *STEPS, "--config_path", recipe, *extra)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def workers(agent: int) -> dict[int, int]:
    """rank -> pid of the agent's worker processes."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)
        except (OSError, ValueError):
            continue
        if ppid == agent and b"RANK" in env:
            found[int(env[b"RANK"])] = int(pid)
    return found


@pytest.mark.parametrize("extra", [[], pytest.param(["--fsdp"], marks=pytest.mark.slow)])
def test_a_killed_rank_restarts_the_group_which_continues(tmp_path, eight, extra):
    whole = torchrun(eight, tmp_path / "whole.bin", *extra)
    out, err = whole.communicate(timeout=600)
    assert whole.returncode == 0, err
    agent = torchrun(eight, tmp_path / "killed.bin", *extra)
    first = tmp_path / "killed.bin-10.state"
    deadline = time.time() + 300
    while not first.exists() and agent.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    victims = workers(agent.pid)
    assert 1 in victims and agent.poll() is None, "the run ended before a rank could be killed"
    os.kill(victims[1], signal.SIGKILL)
    out, err = agent.communicate(timeout=600)
    assert agent.returncode == 0, err
    assert "torchrun restart 1: continuing from the newest complete checkpoint (--resume implied)" in out + err
    assert "Resuming run" in out and "Saved the final model" in out
    a, b = read_state_dict(str(tmp_path / "whole.bin")), read_state_dict(str(tmp_path / "killed.bin"))
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)
