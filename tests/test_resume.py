"""Checkpoints that last (issues #6, #8): exact resume with dropout on, a run killed at a random
moment and resumed, saves that never leave a complete-looking partial file, safetensors output, and
the later (SPEC 4.5) key names."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import MINI_BERT, ROOT, TINY_RECIPE, ZH_VOCAB, assert_clean_error, free_port, run_script
from uer.config import ModelConfig
from uer.model import build_model
from uer.train.checkpoint import latest_checkpoint, load_model, read_state_dict, save_model



@pytest.fixture(scope="module")
def setup(tiny_mlm):
    return tiny_mlm


def args(d, out, steps=8, *extra):
    return [os.path.join(ROOT, "pretrain.py"), "--dataset_path", str(d / "d.pt"), "--vocab_path", ZH_VOCAB,
            "--config_path", str(d / "tiny.json"), "--target", "mlm", "--output_model_path", str(out),
            "--total_steps", str(steps), "--save_checkpoint_steps", "2", "--report_steps", "1",
            "--batch_size", "8", "--learning_rate", "1e-3", "--accumulation_steps", "2", *extra]


def assert_same_model(a, b):
    sa, sb = read_state_dict(str(a)), read_state_dict(str(b))
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.e2e
@pytest.mark.parametrize("world", [1, 2])
def test_resume_after_step_k_equals_an_uninterrupted_run(tmp_path, setup, world):
    dist = [] if world == 1 else ["--world_size", "2", "--gpu_ranks", "0", "1", "--backend", "gloo"]

    def run(out):
        extra = dist + (["--master_ip", f"tcp://127.0.0.1:{free_port()}"] if dist else [])
        return run_script(*args(setup, out, 8, *extra, "--resume"), timeout=300)

    full = tmp_path / "full" / "m.bin"
    proc = run(full)
    assert proc.returncode == 0, proc.stderr
    assert "starting from the beginning" in proc.stdout
    # a second run that had stopped after step 4: only the checkpoints up to 4 exist
    part = tmp_path / "part" / "m.bin"
    part.parent.mkdir()
    for name in ("m.bin-2", "m.bin-2.state", "m.bin-4", "m.bin-4.state"):
        shutil.copy(full.parent / name, part.parent / name)
    proc = run(part)
    assert proc.returncode == 0, proc.stderr
    assert "Resumed from" in proc.stdout and "at step 4" in proc.stdout
    steps = [line.split("|")[1].split("/")[0].strip() for line in proc.stdout.splitlines() if "steps|" in line]
    assert steps == ["5", "6", "7", "8"]
    assert_same_model(full, part)


@pytest.mark.e2e
def test_killed_at_a_random_moment_then_resumed(tmp_path, setup):
    """SIGKILL while training (perhaps while a checkpoint is written), resume: the same final model."""
    full = tmp_path / "full" / "m.bin"
    proc = run_script(*args(setup, full, 12), timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "killed" / "m.bin"
    import random

    delay = random.Random(int(os.environ.get("UER_KILL_SEED", "12"))).uniform(0.0, 1.0)  # seeded: reproducible
    p = subprocess.Popen([sys.executable, *args(setup, out, 12, "--resume")], cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and latest_checkpoint(str(out)) is None and p.poll() is None:
        time.sleep(0.01)
    time.sleep(delay)
    assert p.poll() is None, "the run ended before it was killed: the test would test nothing"
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL
    for f in out.parent.glob("m.bin*"):  # whatever is there and looks complete is loadable
        if f.name.endswith(".json"):
            json.loads(f.read_text())  # a model card: written whole or not at all
        elif not f.name.startswith(".") and not f.name.endswith((".state", ".lock")):
            read_state_dict(str(f))
    proc = run_script(*args(setup, out, 12, "--resume"), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert_same_model(full, out)


@pytest.mark.e2e
def test_resume_refuses_a_different_run(tmp_path, setup):
    out = tmp_path / "m.bin"
    assert run_script(*args(setup, out, 4), timeout=300).returncode == 0
    proc = run_script(*args(setup, out, 4, "--resume", "--batch_size", "4"), timeout=300)
    assert_clean_error(proc, "cannot change when a run continues", "global batch", "16 (8 x 2 x 1) -> 8 (4 x 2 x 1)",
                       "keep it with --batch_size 16 or --batch_size 8 --accumulation_steps 2")


def test_an_interrupted_save_leaves_the_previous_file(tmp_path, monkeypatch):
    model = build_model(ModelConfig(vocab_size=50, emb_size=8, hidden_size=8, feedforward_size=16, heads_num=2,
                                    layers_num=1))
    path = tmp_path / "m.bin"
    save_model(model, str(path))
    before = path.read_bytes()

    def crash(*a, **k):
        raise KeyboardInterrupt  # the process dies in the middle of writing

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_model(model, str(path))
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["m.bin"]


def test_safetensors_output_and_later_key_names(tmp_path):
    cfg = ModelConfig(vocab_size=50, emb_size=8, hidden_size=8, feedforward_size=16, heads_num=2, layers_num=1,
                      tie_weights=True)
    model = build_model(cfg)
    save_model(model, str(tmp_path / "m.safetensors"))
    again = build_model(cfg)
    load_model(again, str(tmp_path / "m.safetensors"))
    for (k, v), w in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(v, w), k
    assert again.target.mlm_linear_2.weight is again.embedding.word_embedding.weight  # still tied
    # the later layout (SPEC 4.5), with a DDP prefix
    later = {}
    for k, v in model.state_dict().items():
        k = (k.replace("embedding.word_embedding.", "embedding.word.embedding.")
             .replace("embedding.position_embedding.", "embedding.pos.embedding.")
             .replace("embedding.segment_embedding.", "embedding.seg.embedding.")
             .replace("target.mlm_linear_", "target.mlm.linear_").replace("target.layer_norm.", "target.mlm.layer_norm.")
             .replace("target.nsp_linear_", "target.sp.linear_"))
        later["module." + k] = v.clone()
    torch.save(later, tmp_path / "later.bin")
    third = build_model(cfg)
    load_model(third, str(tmp_path / "later.bin"))
    for (k, v), w in zip(model.state_dict().items(), third.state_dict().values()):
        assert torch.equal(v, w), k


def test_partial_load_initialises_what_is_missing(tmp_path):
    cfg = ModelConfig(vocab_size=50, emb_size=8, hidden_size=8, feedforward_size=16, heads_num=2, layers_num=1,
                      target="mlm")
    save_model(build_model(cfg), str(tmp_path / "mlm.bin"))
    torch.manual_seed(0)
    bert = build_model(cfg.replace(target="bert"))
    report = load_model(bert, str(tmp_path / "mlm.bin"), strict=False)
    assert sorted(report["missing"]) == sorted(k for k in bert.state_dict() if "nsp" in k)
    w = bert.target.nsp_linear_1.weight
    assert 0.01 < w.std().item() < 0.03 and abs(w.mean().item()) < 0.01  # N(0, 0.02), not torch's default


@pytest.mark.e2e
def test_a_checkpoint_of_another_target_continues(tmp_path, setup):
    """A bert checkpoint (the zoo's carry the NSP head) continued as mlm, RoBERTa-style, and as
    albert: the embedding and encoder load strictly, the target's keys where they fit (the MLM
    head), and the rest is listed in one line. An encoder that does not fit is still refused,
    and the message names --strict_load false."""
    from uer.data.builders import BuilderConfig
    from uer.data.preprocess import PreprocessJob, build_dataset
    from uer.vocab import Vocab

    cfg = ModelConfig(vocab_size=21128, target="bert", **json.loads(TINY_RECIPE))
    bert = build_model(cfg)
    save_model(bert, str(tmp_path / "bert.bin"))
    build_dataset(PreprocessJob(corpus_path=MINI_BERT, dataset_path=str(tmp_path / "albert.pt"), target="albert",
                                tokenizer="bert", vocab=Vocab.load(ZH_VOCAB), spm_model_path=None,
                                builder=BuilderConfig(seq_length=32)))
    mlm = args(setup, tmp_path / "mlm.bin", 1, "--pretrained_model_path", str(tmp_path / "bert.bin"))
    albert = [*args(setup, tmp_path / "albert.bin", 1, "--pretrained_model_path", str(tmp_path / "bert.bin")),
              "--target", "albert", "--dataset_path", str(tmp_path / "albert.pt")]
    for command, left in ((mlm, "unexpected, not used: target.nsp_linear_1.weight"),
                          (albert, "the new albert head, from N(0, 0.02): target.sop_")):
        proc = run_script(*command, timeout=300)
        assert proc.returncode == 0, proc.stderr
        line = next(line for line in proc.stdout.splitlines() if line.startswith("Partial load"))
        assert left in line and "target.mlm" not in line and "encoder." not in line, line
    trained, start = read_state_dict(str(tmp_path / "mlm.bin")), bert.state_dict()
    assert not torch.equal(trained["target.mlm_linear_2.weight"], start["target.mlm_linear_2.weight"])  # trained on
    torch.testing.assert_close(trained["target.mlm_linear_2.weight"], start["target.mlm_linear_2.weight"],
                               atol=5e-3, rtol=0)  # one step away from the checkpoint's head, not a new one
    wider = tmp_path / "wider.json"
    wider.write_text(json.dumps({**json.loads(TINY_RECIPE), "feedforward_size": 128}))
    assert_clean_error(run_script(*mlm, "--config_path", str(wider), "--overwrite", timeout=300),
                       "mis-shaped key(s)", "encoder.transformer.0.feed_forward.linear_1.weight",
                       "--strict_load false")
    proc = run_script(*mlm, "--config_path", str(wider), "--strict_load", "false", "--overwrite", timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Partial load" in proc.stdout and "mis-shaped" in proc.stdout


class _Payload:
    """Unpickling this runs a shell command (what a crafted .state file would do)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.e2e
def test_a_training_state_cannot_run_code(tmp_path, setup):
    """An empty <out>-99999 and a .state that unpickles to a command, newer than the real
    checkpoints: --resume refuses the file by name and runs nothing."""
    out = tmp_path / "m.bin"
    assert run_script(*args(setup, out, 2), timeout=300).returncode == 0
    marker = tmp_path / "ran"
    (tmp_path / "m.bin-99999").write_bytes(b"")
    torch.save({"step": 99999, "optimizer": _Payload(marker)}, tmp_path / "m.bin-99999.state")
    proc = run_script(*args(setup, out, 4, "--resume"), timeout=300)
    assert_clean_error(proc, "cannot read training state", "m.bin-99999.state")
    assert not marker.exists()


@pytest.mark.e2e
def test_a_training_state_of_another_model_is_refused(tmp_path, setup):
    """The model file of this run beside the .state of a run with a wider (or narrower) feed-forward:
    a clear error naming the mis-shaped moments, never taken silently and never a crash."""
    recipes = {64: setup / "tiny.json", 128: tmp_path / "wide.json"}
    recipes[128].write_text(json.dumps({**json.loads(TINY_RECIPE), "feedforward_size": 128}))
    for ff, recipe in recipes.items():
        run = args(setup, tmp_path / str(ff) / "m.bin", 2)
        run[run.index("--config_path") + 1] = str(recipe)
        assert run_script(*run, timeout=300).returncode == 0
        shutil.copy(tmp_path / str(ff) / "m.bin-2.state", tmp_path / f"{ff}.state")
    # the wider state beside the narrower model: the run's record says so first
    ff, other = 64, 128
    shutil.copy(tmp_path / f"{other}.state", tmp_path / str(ff) / "m.bin-2.state")
    run = args(setup, tmp_path / str(ff) / "m.bin", 2, "--resume")
    run[run.index("--config_path") + 1] = str(recipes[ff])
    assert_clean_error(run_script(*run, timeout=300), f"feedforward_size: {other} -> {ff}")
    # the narrower one beside the wider model, its record lying about its options: its moments are
    # checked against the model
    ff, other = 128, 64
    forged = torch.load(tmp_path / f"{other}.state", weights_only=True)
    forged["run"]["model"]["feedforward_size"] = ff
    torch.save(forged, tmp_path / str(ff) / "m.bin-2.state")
    run = args(setup, tmp_path / str(ff) / "m.bin", 2, "--resume")
    run[run.index("--config_path") + 1] = str(recipes[ff])
    assert_clean_error(run_script(*run, timeout=300), "m.bin-2.state does not fit",
                       f"({other}, 32), the model's parameter ({ff}, 32)")
