"""One run per output path (issue #32, cases 3, 5, 6 and 7): a run's identity in its training
states, --resume continues only its own run and applies or refuses changed options, a fresh run
does not take over a used path unless --overwrite, a lock keeps two live runs apart (stale locks
are taken over), and the ranks end when their launcher is killed."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from conftest import ZH_VOCAB, assert_clean_error, free_port, run_script
from test_resume import args, assert_same_model
from uer.errors import UerError
from uer.train.checkpoint import load_training_state
from uer.train.run import OutputLock, new_identity


@pytest.fixture(scope="module")
def setup(tiny_mlm):
    return tiny_mlm


def files_of(directory):
    return {p: open(os.path.join(directory, p), "rb").read() for p in sorted(os.listdir(directory))}


def reported_lrs(stdout):
    return {int(m.group(1)): float(m.group(2)) for m in re.finditer(r"\|\s*(\d+)/\s*\d+ steps\|.*?\| lr ([0-9.e+-]+)",
                                                                    stdout)}


@pytest.mark.e2e
def test_a_fresh_run_on_a_used_path_is_refused_unless_told_to_overwrite(tmp_path, setup):
    out = tmp_path / "m.bin"
    assert run_script(*args(setup, out, 4), timeout=300).returncode == 0
    before = files_of(tmp_path)
    first_id = load_training_state(str(out) + "-4.state")["run"]["id"]
    proc = run_script(*args(setup, out, 4, "--learning_rate", "5e-4"), timeout=300)
    assert_clean_error(proc, "already holds another run's files", f"{out}-2", "--overwrite", "--resume")
    assert files_of(tmp_path) == before  # nothing the first run wrote is touched
    # --resume with nothing to continue is a fresh start too
    (tmp_path / "m.bin-2.state").unlink()
    (tmp_path / "m.bin-4.state").unlink()
    proc = run_script(*args(setup, out, 4, "--resume"), timeout=300)
    assert_clean_error(proc, "found no complete checkpoint there to continue from", "--overwrite")
    proc = run_script(*args(setup, out, 4, "--overwrite"), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"--overwrite: removed the earlier run's checkpoints {out}-2, {out}-4; its final model {out} is replaced" in proc.stdout
    assert load_training_state(str(out) + "-4.state")["run"]["id"] != first_id
    assert not os.path.exists(str(out) + ".lock")  # released at the end


@pytest.fixture(scope="module")
def halfway(setup, tmp_path_factory):
    """An uninterrupted 8-step run, and the checkpoints of its first 4 steps."""
    d = tmp_path_factory.mktemp("halfway")
    full = d / "full" / "m.bin"
    proc = run_script(*args(setup, full, 8), timeout=300)
    assert proc.returncode == 0, proc.stderr
    return full, proc.stdout


def copy_half(full, to):
    to.mkdir()
    for name in ("m.bin-2", "m.bin-2.state", "m.bin-4", "m.bin-4.state"):
        shutil.copy(full.parent / name, to / name)
    return to / "m.bin"


@pytest.mark.e2e
def test_resume_says_which_run_and_refuses_other_model_options(tmp_path, setup, halfway):
    full, _ = halfway
    run_id = load_training_state(str(full) + "-4.state")["run"]["id"]
    part = copy_half(full, tmp_path / "part")
    proc = run_script(*args(setup, part, 8, "--resume", "--layernorm_positioning", "pre", "--seed", "3"),
                      timeout=300)
    assert_clean_error(proc, f"run {run_id}", "layernorm_positioning: post -> pre", "seed: 7 -> 3")
    proc = run_script(*args(setup, part, 8, "--resume"), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"Resuming run {run_id} (started " in proc.stdout and "at step 4" in proc.stdout
    changed = proc.stdout.split("used from step 5 on: ")[1].split("\n")[0]
    assert changed == f"output_model_path: {full} -> {part}.", changed  # moved, nothing else
    assert_same_model(full, part)
    assert load_training_state(str(part) + "-8.state")["run"]["id"] == run_id  # the identity goes on


@pytest.mark.e2e
def test_a_changed_learning_rate_is_applied_with_the_schedule_continued(tmp_path, setup, halfway):
    full, full_stdout = halfway
    part = copy_half(full, tmp_path / "part")
    proc = run_script(*args(setup, part, 8, "--resume", "--learning_rate", "5e-4", "--report_steps", "2"),
                      timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "learning_rate: 0.001 -> 0.0005" in proc.stdout and "report_steps: 1 -> 2" in proc.stdout
    before, after = reported_lrs(full_stdout), reported_lrs(proc.stdout)
    assert sorted(after) == [6, 8]  # the new report interval is used too
    for step in after:  # the same point of the schedule, from half the peak
        assert after[step] == pytest.approx(before[step] / 2, rel=1e-3), (step, before, after)
    saved = load_training_state(str(part) + "-8.state")
    assert saved["run"]["train"]["learning_rate"] == 5e-4
    assert saved["optimizer"]["param_groups"][0]["initial_lr"] == 5e-4


@pytest.mark.e2e
def test_a_model_file_swapped_under_its_state_is_refused(tmp_path, setup, halfway):
    full, _ = halfway
    part = copy_half(full, tmp_path / "part")
    shutil.copy(tmp_path / "part" / "m.bin-2", tmp_path / "part" / "m.bin-4")
    proc = run_script(*args(setup, part, 8, "--resume"), timeout=300)
    assert_clean_error(proc, f"{part}-4 holds other weights than the ones its training state")


@pytest.mark.e2e
def test_the_lock_refuses_a_live_run_and_takes_over_a_stale_one(tmp_path):
    out = str(tmp_path / "m.bin")
    lines = []
    # a live process on this host holds it: refused, naming the process
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with open(out + ".lock", "w") as f:
            json.dump({"id": "abc", "host": socket.gethostname(), "pid": live.pid, "started": "then"}, f)
        with pytest.raises(UerError, match=f"in use by another run \\(process {live.pid} on"):
            OutputLock(out, new_identity()).acquire(lines.append)
    finally:
        live.kill()
        live.wait()
    # the same process id, now gone: stale, taken over
    lock = OutputLock(out, new_identity())
    lock.acquire(lines.append)
    assert f"Took over the stale lock {out}.lock of process {live.pid}" in lines[-1]
    assert json.load(open(out + ".lock"))["pid"] == os.getpid()
    lock.release()
    assert not os.path.exists(out + ".lock")
    # another host's lock cannot be checked: refused, with what to do if that run is dead
    with open(out + ".lock", "w") as f:
        json.dump({"id": "abc", "host": "elsewhere.example", "pid": 1, "started": "then"}, f)
    with pytest.raises(UerError, match="on elsewhere.example.*delete the lock file"):
        OutputLock(out, new_identity()).acquire(lines.append)


@pytest.mark.e2e
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the batch worker through /proc")
def test_two_runs_on_one_output_path(tmp_path, setup):
    """The second is refused while the first lives; after the first is killed, --resume takes over its
    stale lock and continues it."""
    out = tmp_path / "m.bin"
    first = subprocess.Popen([sys.executable, *args(setup, out, 100000)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):  # wait for its first checkpoint (never a fixed time: CI may be slow)
            if os.path.exists(str(out) + "-2.state") or first.poll() is not None:
                break
            time.sleep(0.2)
        assert first.poll() is None, first.communicate()
        before = open(str(out) + "-2", "rb").read()
        proc = run_script(*args(setup, out, 4), timeout=300)
        assert_clean_error(proc, "is in use by another run", f"process {first.pid}")
        assert first.poll() is None  # the first run goes on
        worker = [p for p in children(first.pid) if alive(p)]
        assert worker, "the run's batch worker"
    finally:
        first.kill()
        first.wait()
    assert open(str(out) + "-2", "rb").read() == before
    # its batch worker ends too (it used to stay blocked on a full pipe for ever)
    assert gone(worker), "the batch worker outlived its run"
    proc = run_script(*args(setup, out, 4, "--resume"), timeout=300)
    # the killed run had total_steps 100000: continuing it with 4 is refused, but only after the lock
    assert "Took over the stale lock" in proc.stdout, proc.stdout + proc.stderr
    assert_clean_error(proc, "total_steps: 100000 -> 4")


def children(pid):
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


def alive(pid):
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def gone(pids):
    for _ in range(600):  # they look for their parent twice a second (no fixed time: CI may be slow)
        if not any(alive(p) for p in pids):
            return True
        time.sleep(0.2)
    return False


@pytest.mark.e2e
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the ranks through /proc")
def test_the_ranks_end_when_their_launcher_is_killed(tmp_path, setup):
    out, ranks, workers = tmp_path / "m.bin", [], []
    launcher = subprocess.Popen([sys.executable, *args(setup, out, 100000), "--world_size", "2", "--gpu_ranks",
                                 "0", "1", "--backend", "gloo", "--master_ip", f"tcp://127.0.0.1:{free_port()}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(900):  # until the ranks train: their first checkpoint
            if os.path.exists(str(out) + "-2.state") or launcher.poll() is not None:
                break
            time.sleep(0.2)
        assert launcher.poll() is None, launcher.communicate()[1]
        ranks = [p for p in children(launcher.pid) if "spawn" in open(f"/proc/{p}/cmdline").read()]
        assert len(ranks) == 2, ranks
        workers = [w for p in ranks for w in children(p)]  # their batch workers
        launcher.kill()
        launcher.wait()
        assert gone(ranks), "the ranks outlived their launcher"
        assert gone(workers), "the batch workers outlived their ranks"
    finally:
        launcher.kill()
        for p in ranks + workers:
            if alive(p):
                os.kill(p, signal.SIGKILL)


def test_free_space_below_one_checkpoint_is_a_warning_at_start(tmp_path, setup, monkeypatch):
    import shutil as real_shutil

    import uer.train.trainer as trainer
    from uer.config import ModelConfig, TrainConfig
    from uer.data.dataset import Dataset
    from uer.vocab import Vocab

    usage = real_shutil.disk_usage(tmp_path)
    monkeypatch.setattr(trainer.shutil, "disk_usage", lambda _: usage._replace(free=1 << 20))  # 1 MiB free
    vocab = Vocab.load(ZH_VOCAB)
    tcfg = TrainConfig(dataset_path=str(setup / "d.pt"), output_model_path=str(tmp_path / "m.bin"), total_steps=1,
                       batch_size=4)
    mcfg = ModelConfig(vocab_size=len(vocab), target="mlm", emb_size=32, hidden_size=32, feedforward_size=64,
                       heads_num=4, layers_num=2)
    lines = []
    trainer.train(tcfg, mcfg, Dataset(tcfg.dataset_path), vocab.special_ids(), log=lines.append, worker="none")
    warning = next(line for line in lines if line.startswith("Warning: "))
    assert f"{tmp_path} has 1 MiB free, less than one checkpoint needs" in warning, warning
