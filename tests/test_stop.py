"""Preemption and disk space (issue #26 item 5): SIGTERM or Ctrl-C saves a checkpoint with its
.state at the current step and exits with 128 + the signal; --resume then ends with the same
parameters as a run never stopped (one and two processes, real signals). --keep_checkpoints N
keeps the newest N complete step checkpoints."""
import os
import signal
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, ZH_VOCAB, free_port
from uer.train.checkpoint import latest_checkpoint, prune_checkpoints, read_state_dict
from uer.train.distributed import Rank
from uer.train.stop import StopRequest


def test_prune_keeps_the_newest_complete_checkpoints(tmp_path):
    out = tmp_path / "m.bin"
    for step in (2, 4, 6, 8):
        (tmp_path / f"m.bin-{step}").write_bytes(b"m")
        (tmp_path / f"m.bin-{step}.state").write_bytes(b"s")
    (tmp_path / "m.bin-10").write_bytes(b"half written: no .state")
    (tmp_path / "m.bin-best").write_bytes(b"not a step checkpoint")
    removed = prune_checkpoints(str(out), 2)
    assert removed == [str(tmp_path / "m.bin-2"), str(tmp_path / "m.bin-4")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin-10", "m.bin-6", "m.bin-6.state", "m.bin-8",
                                                         "m.bin-8.state", "m.bin-best"]
    assert prune_checkpoints(str(out), 5) == []


def test_a_signal_is_remembered_until_the_step_ends():
    before = signal.getsignal(signal.SIGTERM)
    with StopRequest(Rank(), torch.device("cpu")) as stop:
        assert stop.now() == 0
        os.kill(os.getpid(), signal.SIGTERM)  # the process goes on
        assert stop.now() == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before
    with StopRequest(Rank(), torch.device("cpu")) as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.now() == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):  # Ctrl-C twice: now
            os.kill(os.getpid(), signal.SIGINT)


@pytest.fixture(scope="module")
def data(tiny_mlm):
    return tiny_mlm


def args(d, out, world=1, *extra):
    dist = [] if world == 1 else ["--world_size", str(world), "--gpu_ranks", *map(str, range(world)), "--backend",
                                  "gloo", "--master_ip", f"tcp://127.0.0.1:{free_port()}"]
    return [sys.executable, os.path.join(ROOT, "pretrain.py"), "--dataset_path", str(d / "d.pt"), "--vocab_path",
            ZH_VOCAB, "--config_path", str(d / "tiny.json"), "--target", "mlm", "--output_model_path", str(out),
            "--total_steps", "120", "--save_checkpoint_steps", "1000", "--report_steps", "1", "--batch_size", "8",
            "--learning_rate", "1e-3", "--progress_bar", "false", *dist, *extra]


def same_model(a, b):
    sa, sb = read_state_dict(str(a)), read_state_dict(str(b))
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.e2e
# (SIGTERM in one process is slow only: Ctrl-C takes the one-process path, SIGTERM the signal's)
@pytest.mark.parametrize("how,world", [pytest.param("SIGTERM", 1, marks=pytest.mark.slow), ("Ctrl-C", 1),
                                       ("SIGTERM", 2)])
def test_a_stopped_run_saves_and_resumes_exactly(tmp_path, data, how, world):
    full = tmp_path / "full" / "m.bin"
    proc = subprocess.run(args(data, full, world), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "stopped" / "m.bin"
    # a session of its own: Ctrl-C is a SIGINT to the terminal's whole process group (the ranks,
    # the batch worker, the launcher), SIGTERM goes to the command's process alone
    p = subprocess.Popen(args(data, out, world, "--resume"), cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seen = []
    for line in p.stdout:  # wait for step 3 to be reported
        seen.append(line)
        report = line[line.find("|"):]  # after the "[rank 0/2] " of a distributed run
        if "steps|" in report and report[1:].split("/")[0].strip() == "3":
            break
    assert p.poll() is None, "".join(seen)
    if how == "SIGTERM":
        p.send_signal(signal.SIGTERM)
    else:
        os.killpg(p.pid, signal.SIGINT)
    rest, err = p.communicate(timeout=300)
    signum = signal.SIGTERM if how == "SIGTERM" else signal.SIGINT
    assert p.returncode == 128 + signum, err
    found = latest_checkpoint(str(out))
    assert found is not None and 3 <= found[0] < 120, (found, err)
    assert f"Stopped by {signal.Signals(signum).name} after step {found[0]}" in rest, rest
    assert not out.exists()  # no final model: the run is not finished
    proc = subprocess.run(args(data, out, world, "--resume"), cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert f"at step {found[0]}" in proc.stdout
    assert same_model(full, out)


@pytest.mark.e2e
def test_keep_checkpoints(tmp_path, data):
    out = tmp_path / "m.bin"
    a = args(data, out, 1, "--keep_checkpoints", "2")
    a[a.index("--total_steps") + 1], a[a.index("--save_checkpoint_steps") + 1] = "7", "2"
    proc = subprocess.run(a, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
        "m.bin", "m.bin-4", "m.bin-4.json", "m.bin-4.state", "m.bin-6", "m.bin-6.json", "m.bin-6.state", "m.bin.json"]
    bad = subprocess.run(args(data, out, 1, "--keep_checkpoints", "-1", "--overwrite"), cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--keep_checkpoints must be >= 0" in bad.stderr
