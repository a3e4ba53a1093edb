import json
import os
import shutil
import tempfile

import pytest
import torch

from conftest import BERT_CORPUS, DOC_CORPUS, MINI_BERT, ROOT, ZH_VOCAB, assert_clean_error, free_port, \
    pretrain_args, reported_losses, run_script
from uer.config import ModelConfig, TrainConfig
from uer.data.builders import BuilderConfig
from uer.data.dataset import Dataset
from uer.data.preprocess import PreprocessJob, build_dataset
from uer.train.optim import build_optimizer, lr_multiplier
from uer.train.trainer import train

TINY = dict(emb_size=64, hidden_size=64, feedforward_size=128, heads_num=4, layers_num=2)


def make_dataset(tmp_path, vocab, corpus=BERT_CORPUS, target="bert", **kw):
    out = tmp_path / f"{target}.pt"
    build_dataset(PreprocessJob(corpus_path=corpus, dataset_path=str(out), target=target, tokenizer="bert",
                                vocab=vocab, spm_model_path=None, builder=BuilderConfig(seq_length=64, **kw),
                                processes_num=2))
    return Dataset(str(out))


def run(tmp_path, ds, vocab, model_kw=None, **kw):
    mcfg = ModelConfig(vocab_size=len(vocab), target=ds.header["target"], **{**TINY, **(model_kw or {})})
    out = tempfile.mkdtemp(dir=tmp_path, prefix="out")  # each run its own output path
    tcfg = TrainConfig(dataset_path=ds.path, output_model_path=os.path.join(out, "m.bin"),
                       **{"total_steps": 30, "report_steps": 1, "batch_size": 16, "learning_rate": 3e-3,
                          "save_checkpoint_steps": 1000, **kw})
    return train(tcfg, mcfg, ds, vocab.special_ids(), log=lambda *_: None)


@pytest.mark.parametrize("target,corpus", [("bert", BERT_CORPUS), ("mlm", DOC_CORPUS)])
def test_loss_decreases_on_real_corpus(tmp_path, zh_vocab, target, corpus):
    ds = make_dataset(tmp_path, zh_vocab, corpus, target, dup_factor=1, dynamic_masking=True)
    hist = run(tmp_path, ds, zh_vocab, bf16=False)["history"]
    losses = [h["loss"] for h in hist]
    assert len(losses) == 30
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 1.0, losses


def test_accumulation_equals_bigger_batch(tmp_path, zh_vocab):
    """Global-batch normalisation: 2 micro-batches of 4 give the update of one batch of 8."""
    ds = make_dataset(tmp_path, zh_vocab, MINI_BERT, dup_factor=1)  # static masks
    a = run(tmp_path, ds, zh_vocab, {"dropout": 0.0}, total_steps=2, batch_size=8)["model"]
    b = run(tmp_path, ds, zh_vocab, {"dropout": 0.0}, total_steps=2, batch_size=4,
            accumulation_steps=2)["model"]
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(v, w, rtol=1e-4, atol=1e-5, msg=k)


def test_schedule_counts_optimizer_steps():
    T = 100
    assert lr_multiplier(1, T, 0.1) == pytest.approx(0.1)  # the first step does not run at lr 0
    assert lr_multiplier(10, T, 0.1) == 1.0
    assert lr_multiplier(55, T, 0.1) == pytest.approx(46 / 91)
    assert 0 < lr_multiplier(T, T, 0.1) < 0.02 and lr_multiplier(T + 1, T, 0.1) == 0
    assert lr_multiplier(1, T, 0.0) > 0.98


def test_weight_decay_groups():
    from uer.model import build_model

    model = build_model(ModelConfig(vocab_size=50, **TINY))
    opt = build_optimizer(model, 1e-3, 0.01)
    decay_ids = {id(p) for p in opt.param_groups[0]["params"]}
    for name, p in model.named_parameters():
        expect = not (name.endswith(("bias", "gamma", "beta")))
        assert (id(p) in decay_ids) == expect, name
    assert opt.param_groups[0]["weight_decay"] == 0.01 and opt.param_groups[1]["weight_decay"] == 0.0


def by_hand(params, grads_per_step, lr, wd, betas, eps, bias_correction):
    """AdamW written out (SPEC 2.8, HF's pre-2020 AdamW; correct_bias as asked): m and v, then the
    decoupled decay and the step. A None gradient list is a step the scaler skipped."""
    b1, b2 = betas
    p = [x.detach().double().clone() for x in params]
    m, v, t = [torch.zeros_like(x) for x in p], [torch.zeros_like(x) for x in p], 0
    for grads in grads_per_step:
        if grads is None:
            continue
        t += 1
        for i, g in enumerate(grads):
            g = g.double()
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            mh, vh = (m[i] / (1 - b1 ** t), v[i] / (1 - b2 ** t)) if bias_correction else (m[i], v[i])
            p[i] = p[i] - lr * wd[i] * p[i] - lr * mh / (vh.sqrt() + eps)
    return p


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))])
@pytest.mark.parametrize("bias_correction", [False, True])
def test_adamw_makes_the_update_written_out_by_hand(bias_correction, device):
    """Six steps of uer's AdamW (the fused kernel), one of them skipped by the loss scaler, against
    the update by hand, in both modes: the default without bias correction, whose first step
    moves each weight by about 3.16 lr (0.1 / sqrt(0.001)), and torch's corrected one (about lr)."""
    torch.manual_seed(0)
    w, b = torch.nn.Parameter(torch.randn(64, 32, device=device)), torch.nn.Parameter(torch.randn(32, device=device))
    start = [w.detach().clone(), b.detach().clone()]
    opt = build_optimizer(torch.nn.ModuleDict({"l": torch.nn.Linear(1, 1)}), 1e-2, 0.1)  # the default mode
    assert opt.bias_correction is False
    opt = type(opt)([{"params": [w], "weight_decay": 0.1}, {"params": [b], "weight_decay": 0.0}],
                    bias_correction=bias_correction, lr=1e-2, betas=(0.9, 0.98), eps=1e-6, fused=True)
    scaler = torch.amp.GradScaler(device, init_scale=1.0)
    steps = []
    for k in range(6):
        grads = [torch.randn(64, 32, device=device) * 0.01, torch.randn(32, device=device) * 0.01]
        if k == 2:
            grads[0][3, 4] = float("inf")  # the scaler finds it and the kernel skips the step
        scaler.scale((w * grads[0]).sum() + (b * grads[1]).sum()).backward()  # scale 1: the grads are `grads`
        scaler.step(opt)
        scaler.update(1.0)
        opt.zero_grad()
        steps.append(None if k == 2 else grads)
    want = by_hand(start, steps, 1e-2, [0.1, 0.0], (0.9, 0.98), 1e-6, bias_correction)
    torch.testing.assert_close(w.detach().double(), want[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b.detach().double(), want[1], rtol=1e-5, atol=1e-6)
    first = by_hand(start, steps[:1], 1e-2, [0.0, 0.0], (0.9, 0.98), 1e-6, bias_correction)[1] - start[1].double()
    assert first.abs().median() == pytest.approx(1e-2 * (1 if bias_correction else 0.1 / 0.02 ** 0.5), rel=0.05)
    assert [int(s["step"]) for s in opt.state_dict()["state"].values()] == [5, 5]  # the true steps


def test_a_saved_optimizer_continues_in_either_mode():
    """state_dict holds the true step counts (the offset that drops the bias correction lives in the
    live state only): saved after 3 steps and loaded into a new optimizer, the default continues
    exactly as without the break, and a bias-corrected optimizer continues at step 4."""
    def grads(k):
        return torch.Generator().manual_seed(k)

    def make(p, bias_correction=False):
        return type(build_optimizer(torch.nn.Linear(1, 1), 1e-3, 0.0))(
            [p], bias_correction=bias_correction, lr=1e-3, weight_decay=0.01, eps=1e-6, fused=True)

    torch.manual_seed(0)
    p0 = torch.randn(100)
    unbroken, resumed = torch.nn.Parameter(p0.clone()), torch.nn.Parameter(p0.clone())
    a = make(unbroken)
    for k in range(6):
        unbroken.grad = torch.randn(100, generator=grads(k))
        a.step()
    b = make(resumed)
    for k in range(3):
        resumed.grad = torch.randn(100, generator=grads(k))
        b.step()
    saved = b.state_dict()
    assert int(saved["state"][0]["step"]) == 3
    b = make(resumed)
    b.load_state_dict(saved)
    for k in range(3, 6):
        resumed.grad = torch.randn(100, generator=grads(k))
        b.step()
    assert torch.equal(unbroken, resumed)
    c = make(torch.nn.Parameter(p0.clone()), bias_correction=True)
    c.load_state_dict(saved)
    assert int(c.state_dict()["state"][0]["step"]) == 3 and int(next(iter(c.state.values()))["step"]) == 3


def test_the_bias_corrected_adamw_is_torch_fused_adamw():
    """--adam_bias_correction steps exactly as torch's fused AdamW."""
    from uer.model import build_model

    def trained(make):
        torch.manual_seed(0)
        model = build_model(ModelConfig(vocab_size=50, **TINY))
        opt = make(model)
        for step in range(3):
            batch = {"src": torch.randint(1, 50, (2, 6)), "seg": torch.ones(2, 6, dtype=torch.long),
                     "mlm_pos": torch.tensor([1, 7]), "mlm_tgt": torch.tensor([3, 4]), "label": torch.tensor([0, 1])}
            out = model(batch)
            sum(v[0] for v in out.values()).backward()
            opt.step()
            opt.zero_grad()
        return model.state_dict(), opt.state_dict()

    ours = trained(lambda m: build_optimizer(m, 1e-3, 0.01, bias_correction=True))

    def reference(m):
        groups = build_optimizer(m, 1e-3, 0.01).param_groups
        return torch.optim.AdamW([{"params": g["params"], "weight_decay": g["weight_decay"]} for g in groups],
                                 lr=1e-3, eps=1e-6, fused=True)

    theirs = trained(reference)
    for k in ours[0]:
        assert torch.equal(ours[0][k], theirs[0][k]), k
    assert ours[1]["state"][0]["exp_avg"].equal(theirs[1]["state"][0]["exp_avg"])


def test_betas_are_bounded_where_the_uncorrected_update_needs_it():
    from uer.config import train_problems

    assert "--beta2 must be in [0, 0.99999] without --adam_bias_correction, got 0.999999" in train_problems(
        TrainConfig(dataset_path="d", output_model_path="o", beta2=0.999999))
    assert not [p for p in train_problems(TrainConfig(dataset_path="d", output_model_path="o", beta2=0.999999,
                                                      adam_bias_correction=True)) if "beta" in p]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))])
def test_the_precision_step_is_clip_grad_norm_then_the_step(device):
    """Precision.step (fp32: GradScaler at a fixed scale of 1, clip_grad_norm_, the scaler's step)
    gives what clip_grad_norm_ and the optimizer's step give: over steps whose gradients are over
    the limit, under it, and not clipped (max_norm 0), so that Adam's moments carry each step's
    clipping into the next."""
    import copy
    import math

    from uer.train.precision import Precision

    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4)).to(device)
    b = copy.deepcopy(a)
    opt_a, opt_b = build_optimizer(a, 1e-2, 0.01), build_optimizer(b, 1e-2, 0.01)
    precision = Precision(False, False, "O1", torch.device(device))
    for step, (scale, max_norm) in enumerate([(100.0, 1.0), (0.01, 1.0), (100.0, 0.5), (50.0, 0.0), (3.0, 1.0)], 1):
        x = torch.randn(5, 8, device=device)
        (a(x).square().sum() * scale).backward()
        loss = b(x).square().sum() * scale
        precision.backward(loss)
        torch.nn.utils.clip_grad_norm_(a.parameters(), max_norm or math.inf)
        opt_a.step()
        precision.step(step, opt_b, b.parameters(), max_norm, loss)
        for (k, p), q in zip(a.named_parameters(), b.parameters()):
            torch.testing.assert_close(q, p, msg=k)
        opt_a.zero_grad()
        opt_b.zero_grad()
    precision.check()  # every step was finite


def test_training_clips_the_gradients(tmp_path, zh_vocab):
    """The training loop clips: a tiny --max_grad_norm moves the weights otherwise than none."""
    ds = make_dataset(tmp_path, zh_vocab, MINI_BERT, dup_factor=1)
    models = [run(tmp_path, ds, zh_vocab, {"dropout": 0.0}, total_steps=3, batch_size=8, max_grad_norm=c)["model"]
              for c in (0.0, 1e-3)]
    moved = [(x - y).abs().max().item() for x, y in zip(*(m.state_dict().values() for m in models))]
    assert max(moved) > 1e-4


@pytest.mark.parametrize("native", [False, True])
def test_bf16_on_a_cpu_that_emulates_it_warns(tmp_path, zh_vocab, monkeypatch, native):
    """--bf16 on a CPU without native bf16 (emulated: many times slower than fp32) says so, once."""
    import uer.train.precision as precision

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    ds = make_dataset(tmp_path, zh_vocab)
    lines = []
    run_kw = dict(total_steps=1, report_steps=1, batch_size=4, bf16=True)
    mcfg = ModelConfig(vocab_size=len(zh_vocab), target="bert", **TINY)
    out = tempfile.mkdtemp(dir=tmp_path, prefix="out")  # each run its own output path
    tcfg = TrainConfig(dataset_path=ds.path, output_model_path=os.path.join(out, "m.bin"), **run_kw)
    train(tcfg, mcfg, ds, zh_vocab.special_ids(), log=lines.append)
    warned = [line for line in lines if "without native bf16" in line]
    assert len(warned) == (0 if native else 1), lines
    assert any(line.startswith("|") for line in lines)  # and it trains


@pytest.mark.e2e
def test_manual_first_example_end_to_end(tmp_path, bert_dataset):
    """The manual's first pretrain command as written (data paths pointing at real files)."""
    os.makedirs(tmp_path / "models")
    shutil.copy(os.path.join(ROOT, "models", "bert_tiny_config.json"), tmp_path / "models")
    shutil.copy(bert_dataset, tmp_path / "dataset.pt")
    proc = run_script(os.path.join(ROOT, "pretrain.py"), "--dataset_path", "dataset.pt", "--vocab_path", ZH_VOCAB,
                      "--output_model_path", "models/output_model.bin",
                      "--config_path", "models/bert_tiny_config.json", "--embedding", "word_pos_seg",
                      "--encoder", "transformer", "--mask", "fully_visible", "--target", "bert",
                      "--total_steps", "10", "--save_checkpoint_steps", "5", "--report_steps", "5",
                      cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    reports = [l for l in proc.stdout.splitlines() if l.startswith("|")]
    assert len(reports) == 2
    for field in ("loss", "loss_mlm:", "loss_nsp:", "acc_mlm:", "acc_nsp:", "tokens/s"):
        assert all(field in r for r in reports), field
    for name in ("output_model.bin-5", "output_model.bin-10", "output_model.bin"):
        assert (tmp_path / "models" / name).is_file(), name
    state = torch.load(tmp_path / "models" / "output_model.bin")
    assert len(state) == 5 + 3 * 16 + 10
    assert list(state["encoder.transformer.2.feed_forward.linear_1.weight"].shape) == [1536, 384]
    assert list(state["target.mlm_linear_2.weight"].shape) == [21128, 384]
    # continue from the saved model (strict load)
    proc = run_script(os.path.join(ROOT, "pretrain.py"), "--dataset_path", "dataset.pt", "--vocab_path", ZH_VOCAB,
                      "--pretrained_model_path", "models/output_model.bin", "--output_model_path",
                      "models/more.bin", "--config_path", "models/bert_tiny_config.json",
                      "--total_steps", "1", "--report_steps", "1", "--batch_size", "4", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    # a checkpoint of another size is refused, naming the mis-shaped keys
    small = tmp_path / "models" / "small.json"
    small.write_text(json.dumps({**TINY}))
    proc = run_script(os.path.join(ROOT, "pretrain.py"), "--dataset_path", "dataset.pt", "--vocab_path", ZH_VOCAB,
                      "--pretrained_model_path", "models/output_model.bin", "--output_model_path",
                      "models/x.bin", "--config_path", str(small), "--total_steps", "1", cwd=tmp_path)
    assert_clean_error(proc, "the model card models/output_model.bin.json and this command line disagree on 5",
                       "hidden_size: 384 in the card, 64 here")
    os.remove(tmp_path / "models" / "output_model.bin.json")  # a model without its card: the keys tell
    proc = run_script(*proc.args[1:], cwd=tmp_path)
    assert_clean_error(proc, "mis-shaped key(s)", "embedding.word_embedding.weight: checkpoint (21128, 384)")


@pytest.mark.e2e
def test_the_default_adamw_learns_faster_early_than_the_bias_corrected_one(tmp_path, bert_dataset):
    """The manual's advice for a new model (BERT-tiny, --learning_rate 1e-4, warm-up 0.1) on the
    shared corpus: with UER-py's update (the default) the MLM loss after 20 steps is well below
    that of --adam_bias_correction, whose early steps are 3-5x smaller (issue #34: 0.4 nats behind
    UER-py at step 150)."""
    mlm = {}
    for mode in ([], ["--adam_bias_correction"]):
        proc = run_script(os.path.join(ROOT, "pretrain.py"), "--dataset_path", bert_dataset, "--vocab_path", ZH_VOCAB,
                          "--config_path", os.path.join(ROOT, "models", "bert_tiny_config.json"), "--target", "bert",
                          "--output_model_path", str(tmp_path / f"m{len(mode)}.bin"), "--total_steps", "20",
                          "--report_steps", "10", "--batch_size", "8", "--learning_rate", "1e-4",
                          "--save_checkpoint_steps", "1000", *mode)
        assert proc.returncode == 0, proc.stderr
        last = [line for line in proc.stdout.splitlines() if " steps|" in line][-1]
        mlm[bool(mode)] = float(last.split("loss_mlm:")[1].split("|")[0])
    assert mlm[False] < mlm[True] - 0.3, mlm


@pytest.mark.e2e
def test_pretrain_errors_are_clear(tmp_path, zh_vocab, bert_dataset):
    common = ["--vocab_path", ZH_VOCAB, "--output_model_path", str(tmp_path / "m.bin"),
              "--config_path", os.path.join(ROOT, "models", "bert_tiny_config.json"), "--total_steps", "1"]
    # a dataset built for another target
    proc = run_script("pretrain.py", "--dataset_path", bert_dataset, "--target", "mlm", *common)
    assert_clean_error(proc, "was built for target 'bert', not 'mlm'")
    # a missing vocabulary
    proc = run_script("pretrain.py", "--dataset_path", bert_dataset, "--vocab_path", "missing.txt",
                      "--output_model_path", str(tmp_path / "m.bin"))
    assert_clean_error(proc, "vocabulary file not found: missing.txt")
    # a recipe with a typo'd field
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"hiden_size": 64, "emb_size": 64}))
    proc = run_script("pretrain.py", "--dataset_path", bert_dataset, "--vocab_path", ZH_VOCAB,
                      "--output_model_path", str(tmp_path / "m.bin"), "--config_path", str(bad))
    assert_clean_error(proc, "unknown field 'hiden_size'", "did you mean 'hidden_size'")
    # several problems at once are listed together
    proc = run_script("pretrain.py", "--dataset_path", bert_dataset, *common, "--batch_size", "0",
                      "--warmup", "2", "--master_ip", "localhost:1")
    assert_clean_error(proc, "3 problems", "--batch_size must be at least 1", "--warmup", "--master_ip")
    # a dataset built with another vocabulary
    other = tmp_path / "v.txt"
    other.write_text(open(ZH_VOCAB, encoding="utf-8").read() + "extra\n", encoding="utf-8")
    proc = run_script("pretrain.py", "--dataset_path", bert_dataset, "--vocab_path", str(other),
                      *common[2:])
    assert_clean_error(proc, "built with another vocabulary")
    # not a dataset at all, and a truncated one
    (tmp_path / "junk.pt").write_bytes(b"\x80\x04junk")
    proc = run_script("pretrain.py", "--dataset_path", str(tmp_path / "junk.pt"), *common)
    assert_clean_error(proc, "is not a uer dataset")
    data = open(bert_dataset, "rb").read()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    proc = run_script("pretrain.py", "--dataset_path", str(tmp_path / "cut.pt"), *common)
    assert_clean_error(proc, "truncated")


@pytest.mark.e2e
@pytest.mark.parametrize("world", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_compile_trains_as_eager_does(tmp_path, eight, world):
    """--compile with two micro-batches a step (and, slow, in two processes under DDP, gloo): the
    same losses and the same saved weights as the eager run of one process with the same global
    batch (all 8 instances; no dropout), and a checkpoint with the model's own key names. (Two
    processes compile side by side: twice the time of one on a 2-core machine.)"""
    from uer.train.checkpoint import read_state_dict

    runs = {}
    recipe = tmp_path / "one_layer.json"  # what inductor compiles grows with the layers: one is enough here
    recipe.write_text(json.dumps({"emb_size": 64, "hidden_size": 64, "feedforward_size": 128, "heads_num": 4,
                                  "layers_num": 1}))
    compiled = ["--compile", "--batch_size", str(4 // world), "--accumulation_steps", "2"]
    if world == 2:
        compiled += ["--world_size", "2", "--gpu_ranks", "0", "1", "--backend", "gloo",
                     "--master_ip", f"tcp://127.0.0.1:{free_port()}"]
    for name, extra in (("eager", ["--batch_size", "8"]), ("compiled", compiled)):
        proc = run_script(*pretrain_args(eight, tmp_path / f"{name}.bin", "--dropout", "0", "--learning_rate", "1e-3",
                                         "--report_steps", "1", "--config_path", str(recipe), *extra), timeout=600)
        assert proc.returncode == 0, proc.stderr
        runs[name] = (reported_losses(proc.stdout), read_state_dict(str(tmp_path / f"{name}.bin")))
    (eager_losses, eager_state), (losses, state) = runs["eager"], runs["compiled"]
    assert len(losses) == 4 and losses == pytest.approx(eager_losses, rel=1e-4)
    assert state.keys() == eager_state.keys()
    for k, v in eager_state.items():
        torch.testing.assert_close(state[k], v, rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.e2e
def test_freed_memory_is_kept_for_reuse_above_two_gib():
    """--keep_freed_memory (the default): a block freed at the top of the heap stays there however
    big it is, so the next step's blocks of that size are not faulted in again. (A trim threshold
    of 2 GiB, the most mallopt's int takes as a size, gave BERT-tiny lm at batch 128 1.35 M page
    faults a step and 1.6x its step time; -1 turns trimming off.)"""
    import subprocess
    import sys

    code = ("import ctypes, resource\n"
            "from uer.utils import retain_freed_memory\n"
            "assert retain_freed_memory()\n"
            "libc = ctypes.CDLL(None)\n"
            "libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]\n"
            "libc.free.argtypes = [ctypes.c_void_p]\n"
            "libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]\n"
            "size = 5 * 2**29\n"  # 2.5 GiB: freed, it is the top of the heap
            "p = libc.malloc(size); libc.memset(p, 1, size); libc.free(p)\n"
            "faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
            "before = faults(); p = libc.malloc(size); libc.memset(p, 1, size)\n"
            "print(faults() - before)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    pages = 5 * 2**29 // 4096
    assert int(out.stdout.split()[-1]) < pages // 100, f"{out.stdout.strip()} page faults for {pages} pages"
