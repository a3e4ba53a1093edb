import math
import multiprocessing.util
import os
import socket
import subprocess
import sys

import pytest

# pytest-xdist shares the cores among its workers: each worker, and every process it starts (they
# inherit the variable), takes its share of threads. Two workers' 2-thread OpenMP pools on 2 cores
# spin on each other: two small ELMo runs side by side took 83 s at 2 threads each, 31 s at 1.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1 and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // _WORKERS))

import torch  # noqa: E402  (after OMP_NUM_THREADS)

if _WORKERS > 1:
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

from uer.data.builders import BuilderConfig
from uer.data.dataset import Dataset
from uer.data.preprocess import PreprocessJob, build_dataset
from uer.vocab import Vocab

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.normpath(os.path.join(ROOT, "..", "shared"))
ZH_VOCAB = os.path.join(SHARED, "models", "google_zh_vocab.txt")
EN_VOCAB = os.path.join(SHARED, "models", "google_uncased_en_vocab.txt")
SPM_MODEL = os.path.join(SHARED, "models", "cluecorpussmall_spm.model")
BERT_CORPUS = os.path.join(SHARED, "corpora", "CLUECorpusSmall_bert_sampled.txt")
DOC_CORPUS = os.path.join(SHARED, "corpora", "CLUECorpusSmall_sampled.txt")
MINI_BERT = os.path.join(SHARED, "corpora", "literature_mini_bert.txt")
MINI_DOC = os.path.join(SHARED, "corpora", "literature_mini.txt")
# a 2-layer, 32-wide transformer without dropout: the smallest model the tests train
TINY = {"emb_size": 32, "hidden_size": 32, "feedforward_size": 64, "heads_num": 4, "layers_num": 2, "dropout": 0.0}


def pytest_collection_modifyitems(items):
    """The end-to-end tests first (a stable sort): the long ones start early, and the two worker
    processes (pytest-xdist) end together on the short unit tests."""
    items.sort(key=lambda item: item.get_closest_marker("e2e") is None)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    """A unit test runs in this process: one that starts Python in a child process (a command,
    a script, a launcher) is an end-to-end test and must say so with @pytest.mark.e2e, so that
    `-m "not e2e"` stays the fast in-process run. Fixtures may still build their data that way."""
    if item.get_closest_marker("e2e") is not None:
        yield
        return
    real = subprocess.Popen.__init__

    def guarded(self, args, *a, **kw):
        first = args if isinstance(args, str) else (list(args) or [""])[0]
        if os.path.basename(str(first)).startswith(("python", "uer-", "torchrun")):
            raise AssertionError(f"{item.nodeid} starts {first} in a child process: mark it "
                                 "@pytest.mark.e2e (an end-to-end test)")
        real(self, args, *a, **kw)

    def spawned(path, args, passfds):  # multiprocessing's spawn (torch.multiprocessing.spawn)
        if any("spawn_main" in str(a) for a in args):  # not its resource tracker
            raise AssertionError(f"{item.nodeid} spawns Python processes: mark it @pytest.mark.e2e "
                                 "(an end-to-end test)")
        return spawn(path, args, passfds)

    subprocess.Popen.__init__, spawn = guarded, multiprocessing.util.spawnv_passfds
    multiprocessing.util.spawnv_passfds = spawned
    try:
        yield
    finally:
        subprocess.Popen.__init__, multiprocessing.util.spawnv_passfds = real, spawn


def perturb(model, seed=0, scale=0.05):
    """Random values added everywhere (LayerNorm and biases included), so that no weight mapping
    hides behind 1s and 0s; the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model.eval()


def reported_losses(stdout: str) -> list[float]:
    """The total loss of every report line a training run printed."""
    return [float(line.split(" loss ")[1].split("|")[0]) for line in stdout.splitlines() if " steps|" in line]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for --master_ip)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_script(*args, cwd=ROOT, timeout=600):
    """Run a repo script as a user would; returns the CompletedProcess."""
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def assert_clean_error(proc, *needles):
    """Non-zero exit, a message on stderr naming the problem, and no traceback."""
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    for n in needles:
        assert n in proc.stderr, f"{n!r} not in:\n{proc.stderr}"


def layer_keys(prefix, H, F_):
    """SPEC 4.1: the keys and shapes of one transformer layer under `prefix`."""
    s = {}
    for j in range(3):
        s[f"{prefix}self_attn.linear_layers.{j}.weight"] = [H, H]
        s[f"{prefix}self_attn.linear_layers.{j}.bias"] = [H]
    s.update({f"{prefix}self_attn.final_linear.weight": [H, H], f"{prefix}self_attn.final_linear.bias": [H],
              f"{prefix}layer_norm_1.gamma": [H], f"{prefix}layer_norm_1.beta": [H],
              f"{prefix}feed_forward.linear_1.weight": [F_, H], f"{prefix}feed_forward.linear_1.bias": [F_],
              f"{prefix}feed_forward.linear_2.weight": [H, F_], f"{prefix}feed_forward.linear_2.bias": [H],
              f"{prefix}layer_norm_2.gamma": [H], f"{prefix}layer_norm_2.beta": [H]})
    return s


@pytest.fixture(scope="session")
def zh_vocab():
    return Vocab.load(ZH_VOCAB)


@pytest.fixture(scope="session")
def bert_dataset(tmp_path_factory):
    """The manual's first preprocess command, on the real corpus."""
    out = tmp_path_factory.mktemp("ds") / "dataset.pt"
    proc = run_script("preprocess.py", "--corpus_path", BERT_CORPUS, "--vocab_path", ZH_VOCAB,
                      "--dataset_path", str(out), "--processes_num", "2", "--target", "bert")
    assert proc.returncode == 0, proc.stderr
    return str(out)


TINY_RECIPE = '{"emb_size": 32, "hidden_size": 32, "feedforward_size": 64, "heads_num": 4, "layers_num": 2, ' \
              '"dropout": 0.1}'


@pytest.fixture(scope="session")
def tiny_mlm(tmp_path_factory):
    """A directory with tiny.json (a 2-layer recipe, dropout on) and d.pt (a dynamic-masking mlm
    dataset of the real corpus, seq 32): the runs of the resume and stop tests."""
    d = tmp_path_factory.mktemp("tiny_mlm")
    (d / "tiny.json").write_text(TINY_RECIPE)
    proc = run_script("preprocess.py", "--corpus_path", DOC_CORPUS, "--vocab_path", ZH_VOCAB, "--dataset_path",
                      str(d / "d.pt"), "--target", "mlm", "--dynamic_masking", "--seq_length", "32")
    assert proc.returncode == 0, proc.stderr
    return d


@pytest.fixture(scope="session")
def eight(tmp_path_factory):
    """A dataset of exactly 8 instances with static masks: every global batch of 8 is all of it."""
    d = tmp_path_factory.mktemp("eight")
    with open(DOC_CORPUS, encoding="utf-8") as f:
        lines = [next(f)[:40] + "\n" for _ in range(8)]
    (d / "c.txt").write_text("".join(lines), encoding="utf-8")
    vocab = Vocab.load(ZH_VOCAB)
    build_dataset(PreprocessJob(corpus_path=str(d / "c.txt"), dataset_path=str(d / "d.pt"), target="mlm",
                                tokenizer="bert", vocab=vocab, spm_model_path=None,
                                builder=BuilderConfig(seq_length=64, dup_factor=1)))
    assert len(Dataset(str(d / "d.pt"))) == 8
    return str(d / "d.pt")


def pretrain_args(dataset, out, *extra):
    """pretrain.py on `dataset`: BERT-tiny, mlm, 4 steps of batch 4, a report and a checkpoint every 2."""
    return [os.path.join(ROOT, "pretrain.py"), "--dataset_path", dataset, "--vocab_path", ZH_VOCAB,
            "--config_path", os.path.join(ROOT, "models", "bert_tiny_config.json"), "--target", "mlm",
            "--output_model_path", str(out), "--total_steps", "4", "--report_steps", "2", "--batch_size", "4",
            "--save_checkpoint_steps", "2", *extra]


def reference_attention(q, k, v, attn_mask=None, is_causal=False):
    """softmax(Q K^T / sqrt(d)) V with boolean masks (True = may attend); for tests."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if is_causal:
        L, S = q.shape[-2], k.shape[-2]
        attn_mask = torch.ones(L, S, dtype=torch.bool, device=q.device).tril()
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    return scores.softmax(-1) @ v
