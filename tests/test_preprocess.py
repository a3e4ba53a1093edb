import filecmp
import os
import random
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import BERT_CORPUS, DOC_CORPUS, MINI_BERT, ROOT, ZH_VOCAB, assert_clean_error, run_script
from uer.data.builders import BuilderConfig, trim_pair
from uer.data.dataset import Dataset
from uer.data.loader import BatchLoader, builder_for
from uer.data.preprocess import PreprocessJob, build_dataset
from uer.errors import UerError
from uer.vocab import Vocab


def job(corpus, out, target="bert", processes=1, vocab=None, **builder):
    builder.setdefault("seq_length", 64)
    return PreprocessJob(corpus_path=corpus, dataset_path=str(out), target=target, tokenizer="bert",
                         vocab=vocab or Vocab.load(ZH_VOCAB), spm_model_path=None,
                         builder=BuilderConfig(**builder), processes_num=processes, seed=3)


@pytest.mark.parametrize("target,corpus,extra", [
    ("bert", BERT_CORPUS, {}),
    ("mlm", DOC_CORPUS, {"full_sentences": True}),
    ("bert", BERT_CORPUS, {"dynamic_masking": True, "docs_buffer_size": 300}),
    ("bart", BERT_CORPUS, {"docs_buffer_size": 300}),  # its random noise too (as gsg's gap sentences)
])
def test_same_dataset_for_any_process_count(tmp_path, zh_vocab, target, corpus, extra):
    a, b = tmp_path / "p1.pt", tmp_path / "p3.pt"
    build_dataset(job(corpus, a, target, 1, zh_vocab, dup_factor=2, **extra))
    build_dataset(job(corpus, b, target, 3, zh_vocab, dup_factor=2, **extra))
    assert filecmp.cmp(a, b, shallow=False)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_bert_instances_layout(tmp_path, zh_vocab):
    out = tmp_path / "d.pt"
    build_dataset(job(BERT_CORPUS, out, "bert", 2, zh_vocab, dup_factor=1, dynamic_masking=True))
    ds = Dataset(str(out))
    sp = zh_vocab.special_ids()
    labels = np.asarray(ds.arrays["label"])
    # half of the multi-sentence chunks, and every one-sentence chunk, get a random next sentence
    assert 0.5 < labels.mean() < 0.8
    builder = builder_for(ds, sp)
    for i in range(0, len(ds), 97):
        stored = builder.stored(ds, i)
        t, split = stored["tokens"], stored["seg_split"]
        assert len(t) <= 64 and t[0] == sp.cls and t[split - 1] == sp.sep and t[-1] == sp.sep
        assert (t[1:split - 1] != sp.sep).all() and (t[split:-1] != sp.sep).all()
    # every document contributes; the last document (no trailing blank line) is not lost
    assert ds.header["corpus"]["documents"] == 2500


def test_no_token_lost_mlm(tmp_path, zh_vocab):
    """Without masking and full_sentences, the instances concatenate back to the corpus."""
    out = tmp_path / "m.pt"
    build_dataset(job(DOC_CORPUS, out, "mlm", 2, zh_vocab, dynamic_masking=True))
    ds = Dataset(str(out))
    from uer.tokenizers import build_tokenizer

    tok = build_tokenizer("bert", zh_vocab)
    with open(DOC_CORPUS, encoding="utf-8") as f:
        docs = [l for l in f.read().split("\n") if l.strip()]
    sp = zh_vocab.special_ids()
    expected = np.concatenate([[sp.cls] + ids + [sp.sep] for ids in tok.encode_batch(docs)])
    assert np.array_equal(np.asarray(ds.arrays["store"]), expected)
    builder = builder_for(ds, sp)
    assert np.array_equal(np.concatenate([builder.stored(ds, i)["tokens"] for i in range(len(ds))]), expected)


def test_last_line_without_newline_and_crlf(tmp_path, zh_vocab):
    corpus = tmp_path / "c.txt"
    corpus.write_bytes("第一句。\r\n第二句。\r\n\r\n第三句。\r\n最后一句".encode())
    out = tmp_path / "d.pt"
    build_dataset(job(str(corpus), out, "bert", 1, zh_vocab, dup_factor=1, dynamic_masking=True))
    ds = Dataset(str(out))
    assert ds.header["corpus"]["documents"] == 2 and ds.header["corpus"]["sentences"] == 4
    last = zh_vocab.get("后")
    assert last in set(np.asarray(ds.arrays["store"]).tolist())


def test_trim_pair_closed_form():
    rnd = random.Random(0)
    for la, lb, m in [(10, 3, 8), (3, 10, 8), (5, 5, 7), (100000, 2, 61), (4, 4, 8)]:
        fa, ra, fb, rb = trim_pair(la, lb, m, rnd)
        assert la - ra + lb - rb == min(m, la + lb) and 0 <= fa <= ra <= la and 0 <= fb <= rb <= lb
        # one token at a time from the longer side (B on a tie): the two end within one token
        if la + lb > m:
            assert abs((la - ra) - (lb - rb)) <= 1 or ra == 0 or rb == 0
    # each dropped token leaves from the front with p = 1/2
    fronts = [trim_pair(200, 0, 100, rnd)[0] for _ in range(2000)]
    assert abs(np.mean(fronts) - 50) < 1.0


@pytest.mark.e2e
def test_manual_command_and_format_errors(tmp_path):
    # a one-document-a-line corpus given to the bert target
    proc = run_script("preprocess.py", "--corpus_path", DOC_CORPUS, "--vocab_path", ZH_VOCAB,
                      "--dataset_path", str(tmp_path / "x.pt"), "--target", "bert")
    assert_clean_error(proc, "no blank line separates documents", DOC_CORPUS)
    assert not (tmp_path / "x.pt").exists()
    # invalid UTF-8 on line 3, named with its line number
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xe4\xb8\x80\n\n\xe4\xba\x8c\xff\n")
    proc = run_script("preprocess.py", "--corpus_path", str(bad), "--vocab_path", ZH_VOCAB,
                      "--dataset_path", str(tmp_path / "y.pt"))
    assert_clean_error(proc, f"{bad} line 3", "UTF-8")
    # empty corpus, missing vocab, unknown target: each named
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    proc = run_script("preprocess.py", "--corpus_path", str(empty), "--vocab_path", ZH_VOCAB,
                      "--dataset_path", str(tmp_path / "z.pt"))
    assert_clean_error(proc, "holds no text")
    proc = run_script("preprocess.py", "--corpus_path", MINI_BERT, "--vocab_path", "nope.txt",
                      "--seq_length", "4")
    assert_clean_error(proc, "--vocab_path nope.txt: file not found", "--seq_length must be at least 8")


@pytest.mark.e2e
def test_existing_dataset_survives_a_failed_run(tmp_path, zh_vocab):
    out = tmp_path / "d.pt"
    build_dataset(job(MINI_BERT, out, "bert", 1, zh_vocab, dup_factor=1))
    before = out.read_bytes()
    proc = run_script("preprocess.py", "--corpus_path", DOC_CORPUS, "--vocab_path", ZH_VOCAB,
                      "--dataset_path", str(out), "--target", "bert")
    assert proc.returncode != 0 and out.read_bytes() == before


def test_loader_batches(tmp_path, zh_vocab):
    out = tmp_path / "d.pt"
    build_dataset(job(MINI_BERT, out, "bert", 1, zh_vocab, dup_factor=1, dynamic_masking=True))
    ds = Dataset(str(out))
    loader = BatchLoader(ds, zh_vocab.special_ids(), batch_size=4, seed=1)
    a = loader.next_arrays()
    B, L = a["src"].shape
    assert B == 4 and (a["seg"][:, 0] == 1).all() and a["label"].shape == (4,)
    assert len(a["mlm_pos"]) == len(a["mlm_tgt"]) > 0 and a["mlm_pos"].max() < B * L
    # shares of two ranks are disjoint and cover the dataset
    r0 = BatchLoader(ds, zh_vocab.special_ids(), 4, rank=0, world_size=2).share
    r1 = BatchLoader(ds, zh_vocab.special_ids(), 4, rank=1, world_size=2).share
    assert r0.stop == r1.start and r0.start == 0 and r1.stop == len(ds)
    # the first len(ds) samples of the stream are epoch 0, every instance once; then epoch 1
    loader = BatchLoader(ds, zh_vocab.special_ids(), batch_size=4, seed=1)
    keys = [key for _, key in zip(range(-(-2 * len(ds) // 4)), loader.sampler)]
    epochs, instances = (np.concatenate(k) for k in zip(*keys))
    assert (epochs[:len(ds)] == 0).all() and sorted(instances[:len(ds)]) == list(range(len(ds)))
    assert (epochs[len(ds):2 * len(ds)] == 1).all() and sorted(instances[len(ds):2 * len(ds)]) == list(range(len(ds)))


def _workers() -> list:
    import multiprocessing

    return multiprocessing.active_children()


@pytest.mark.parametrize("worker", ["process", "none"])
def test_prefetch_yields_the_same_batches(tmp_path, zh_vocab, worker):
    """Through the DataLoader, from any position: the batches of plain iteration, in its order."""
    out = tmp_path / "d.pt"
    build_dataset(job(MINI_BERT, out, "bert", 1, zh_vocab, dup_factor=1, dynamic_masking=True))
    ds = Dataset(str(out))
    for start in (0, 7):
        plain = BatchLoader(ds, zh_vocab.special_ids(), batch_size=3, seed=5)
        plain.seek(start)
        plain = iter(plain)
        loader = BatchLoader(ds, zh_vocab.special_ids(), batch_size=3, seed=5)
        loader.seek(start)
        with loader.prefetch(12, worker) as ahead:
            assert len(_workers()) == (1 if worker == "process" and sys.platform == "linux" else 0)
            for _ in range(40):  # several epochs
                a, b = next(plain), next(ahead)
                assert a.keys() == b.keys() and all(
                    torch.equal(a[k], b[k]) if hasattr(a[k], "shape") else a[k] == b[k] for k in a)
        assert _workers() == []  # leaving the block stops the worker


def test_a_daemonic_process_builds_its_batches_itself(tmp_path, zh_vocab):
    """A daemonic process may not have children: there the loop builds the batches."""
    import multiprocessing

    out = tmp_path / "d.pt"
    build_dataset(job(MINI_BERT, out, "bert", 1, zh_vocab, dup_factor=1))
    loader = BatchLoader(Dataset(str(out)), zh_vocab.special_ids(), batch_size=3)
    ctx = multiprocessing.get_context("fork")
    seen = ctx.Queue()

    def consume():
        with loader.prefetch(12, "process") as ahead:
            seen.put((len(_workers()), next(ahead)["src"].shape[0]))

    child = ctx.Process(target=consume, daemon=True)
    child.start()
    assert seen.get(timeout=60) == (0, 3)
    child.join(timeout=60)


@pytest.mark.e2e
def test_the_worker_reports_errors_and_deaths_and_ends_with_its_consumer(tmp_path, zh_vocab):
    out = tmp_path / "d.pt"
    build_dataset(job(MINI_BERT, out, "bert", 1, zh_vocab, dup_factor=1))
    # a damaged dataset found in the worker is the consumer's error, with its own message (every
    # time: the worker must not take it along when it stops)
    loader = BatchLoader(Dataset(str(out)), zh_vocab.special_ids(), batch_size=3)
    loader._id_limits = {"src": 1}  # as if every id lay outside the vocabulary
    for _ in range(5):
        with loader.prefetch(6, "process") as ahead, pytest.raises(UerError, match=r"is corrupted: a batch "):
            next(ahead)
    # a bug in the worker is raised here, as the error it was
    loader = BatchLoader(Dataset(str(out)), zh_vocab.special_ids(), batch_size=3)
    loader.builder = None
    with loader.prefetch(6, "process") as ahead, pytest.raises(AttributeError, match="collate"):
        next(ahead)
    # a worker that dies is an error that says so (not a wait for ever)
    loader = BatchLoader(Dataset(str(out)), zh_vocab.special_ids(), batch_size=3)
    loader.batch = lambda *key: os._exit(3)
    with loader.prefetch(6, "process") as ahead, pytest.raises(RuntimeError, match=r"exited unexpectedly"):
        next(ahead)
    # a consumer killed outright (no close) leaves no worker behind
    code = ("import multiprocessing, os, sys; sys.path.insert(0, sys.argv[1])\n"
            "from uer.data.dataset import Dataset\nfrom uer.data.loader import BatchLoader\n"
            "from uer.vocab import Vocab\n"
            "ahead = BatchLoader(Dataset(sys.argv[2]), Vocab.load(sys.argv[3]).special_ids(), 3).prefetch(6)\n"
            "next(ahead); print(multiprocessing.active_children()[0].pid, flush=True); os.kill(os.getpid(), 9)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, ROOT, str(out), ZH_VOCAB], stdout=subprocess.PIPE, text=True)
    worker = int(proc.stdout.readline())
    proc.wait(timeout=60)
    deadline = time.monotonic() + 60  # the worker looks for its consumer every few seconds
    while _running(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = _running(worker)
    if left:
        os.kill(worker, 9)
    assert not left


def _running(pid: int) -> bool:
    """Whether process pid runs (a zombie, finished but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_length_buckets_cut_padding_and_keep_every_instance(tmp_path, zh_vocab):
    out = tmp_path / "d.pt"
    build_dataset(job(BERT_CORPUS, out, "bert", 1, zh_vocab, dup_factor=1, dynamic_masking=True, seq_length=128))
    ds = Dataset(str(out))
    sp = zh_vocab.special_ids()
    padded = {}
    for buckets in (False, True):
        loader = BatchLoader(ds, sp, 16, seed=3, length_buckets=buckets)
        epoch = loader.batches_per_epoch
        real, total = 0, 0
        for _ in range(epoch):
            src = loader.next_arrays()["src"]
            real, total = real + int((src != sp.pad).sum()), total + src.size
        order = BatchLoader(ds, sp, 16, seed=3, length_buckets=buckets).sampler.epoch_order(0)
        assert sorted(order.tolist()) == list(range(len(ds)))  # every instance once per epoch
        padded[buckets] = 1 - real / total
        # the stream is a function of its position (exact resume)
        again = BatchLoader(ds, sp, 16, seed=3, length_buckets=buckets)
        again.seek(epoch + 5)
        first = BatchLoader(ds, sp, 16, seed=3, length_buckets=buckets)
        for _ in range(epoch + 5):
            first.next_arrays()
        assert np.array_equal(again.next_arrays()["src"], first.next_arrays()["src"])
    assert padded[True] < padded[False] / 3, padded
