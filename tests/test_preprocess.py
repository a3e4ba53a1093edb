import filecmp
import os
import random
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import BERT_CORPUS, DOC_CORPUS, MINI_BERT, ROOT, ZH_VOCAB, assert_clean_error, run_script
from uer.data.builders import BuilderConfig, trim_pair
from uer.data.dataset import Dataset
from uer.data.loader import BatchLoader, Prefetcher, ProcessPrefetcher, builder_for
from uer.data.preprocess import PreprocessJob, build_dataset
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
    # one epoch visits every instance of the share once
    loader = BatchLoader(ds, zh_vocab.special_ids(), batch_size=4, seed=1)
    seen = []
    for _ in range(loader.batches_per_epoch):
        order = loader._epoch_order()
        seen.extend(order[loader.index * 4:(loader.index + 1) * 4])
        loader.next_arrays()
    assert sorted(seen) == list(range(len(ds)))


@pytest.mark.parametrize("kind", [Prefetcher, ProcessPrefetcher], ids=["thread", "process"])
def test_prefetch_yields_the_same_batches(tmp_path, zh_vocab, kind):
    out = tmp_path / "d.pt"
    build_dataset(job(MINI_BERT, out, "bert", 1, zh_vocab, dup_factor=1, dynamic_masking=True))
    ds = Dataset(str(out))
    plain = iter(BatchLoader(ds, zh_vocab.special_ids(), batch_size=3, seed=5))
    with kind(BatchLoader(ds, zh_vocab.special_ids(), batch_size=3, seed=5), 4) as ahead:
        for _ in range(40):  # several epochs
            a, b = next(plain), next(ahead)
            assert a.keys() == b.keys() and all(
                (a[k] == b[k]).all() if hasattr(a[k], "shape") else a[k] == b[k] for k in a)
    assert not ahead._worker.is_alive()  # leaving the block stops the worker
    ahead.close()


def test_the_prefetch_worker_is_a_process_where_the_platform_forks(tmp_path, zh_vocab):
    out = tmp_path / "d.pt"
    build_dataset(job(MINI_BERT, out, "bert", 1, zh_vocab, dup_factor=1))
    loader = BatchLoader(Dataset(str(out)), zh_vocab.special_ids(), batch_size=3)
    with loader.prefetch(12, "process") as ahead:
        assert isinstance(ahead, ProcessPrefetcher) == (sys.platform == "linux")
    # a daemonic process may not have children: there the worker is a thread
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    kinds = ctx.Queue()

    def kind():
        with loader.prefetch(12, "process") as ahead:
            kinds.put((type(ahead).__name__, next(ahead)["src"].shape[0]))

    child = ctx.Process(target=kind, daemon=True)
    child.start()
    assert kinds.get(timeout=60) == ("Prefetcher", 3)
    child.join(timeout=60)


def test_the_prefetch_process_reports_errors_and_deaths_and_ends_with_its_consumer(tmp_path, zh_vocab):
    out = tmp_path / "d.pt"
    build_dataset(job(MINI_BERT, out, "bert", 1, zh_vocab, dup_factor=1))
    loader = BatchLoader(Dataset(str(out)), zh_vocab.special_ids(), batch_size=3)
    # an error in the worker is raised in the consumer, as it was raised there (every time: the
    # worker exits right after sending it, and must not take it along)
    loader.builder = None  # the worker's copy has no builder: its first batch fails
    for _ in range(10):
        with ProcessPrefetcher(loader, 2) as ahead, pytest.raises(AttributeError, match="collate"):
            next(ahead)
    # a worker that dies is an error that says so (not a wait for ever)
    loader = BatchLoader(Dataset(str(out)), zh_vocab.special_ids(), batch_size=3)
    loader.next_arrays = lambda: os._exit(3)
    with ProcessPrefetcher(loader, 2) as ahead, pytest.raises(RuntimeError, match=r"died \(exit code 3\)"):
        next(ahead)
    # a consumer killed outright (no close) leaves no worker behind
    code = ("import os, sys; sys.path.insert(0, sys.argv[1])\n"
            "from uer.data.dataset import Dataset\nfrom uer.data.loader import BatchLoader, ProcessPrefetcher\n"
            "from uer.vocab import Vocab\n"
            "ahead = ProcessPrefetcher(BatchLoader(Dataset(sys.argv[2]), Vocab.load(sys.argv[3]).special_ids(), 3), 2)\n"
            "next(ahead); print(ahead._worker.pid, flush=True); os.kill(os.getpid(), 9)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, ROOT, str(out), ZH_VOCAB], stdout=subprocess.PIPE, text=True)
    worker = int(proc.stdout.readline())
    proc.wait(timeout=60)
    deadline = time.monotonic() + 10
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
        order = BatchLoader(ds, sp, 16, seed=3, length_buckets=buckets)._epoch_order()
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
