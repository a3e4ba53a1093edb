"""Reliability (issue #8): bad corpora never crash or hang, a killed preprocess leaves nothing that
looks complete, and a non-finite gradient stops training before the weights change, on every rank."""
import gzip
import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import DOC_CORPUS, ROOT, ZH_VOCAB, BERT_CORPUS, assert_clean_error, free_port, run_script
from uer.cli import preprocess_main
from uer.data.dataset import Dataset
from uer.errors import UerError
from uer.train.checkpoint import latest_checkpoint, read_state_dict
from uer.vocab import Vocab

VOCAB = Vocab.load(ZH_VOCAB)
LAST = "终"  # the last token of every corpus below: it must not be lost

# per corpus format: (target, well-formed text whose last line has no newline, extra options)
FORMATS = {
    "documents": ("bert", "第一句。\n第二句。\n\n第三句。\n最后一句终", []),
    "lines": ("mlm", "第一篇文章。\n第二篇。\n最后一篇终", []),
    "lm": ("lm", "第一篇文章。\n第二篇。\n最后一篇终", []),
    "labeled": ("cls", "label\ttext_a\n1\t好书\n0\t最后终", []),
    "pairs": ("mt", "hello\t你好\nworld\t世界\nlast\t最后终", ["--tgt_vocab_path", ZH_VOCAB]),
}


def preprocess(tmp_path, capsys, corpus_bytes, target, extra=(), name="c.txt"):
    corpus = tmp_path / name
    corpus.write_bytes(corpus_bytes)
    out = tmp_path / f"{name}.pt"
    rc = preprocess_main(["--corpus_path", str(corpus), "--vocab_path", ZH_VOCAB, "--dataset_path", str(out),
                          "--target", target, "--seq_length", "16", "--processes_num", "2", *extra])
    err = capsys.readouterr().err
    return rc, err, corpus, out


def all_tokens(out):
    ds = Dataset(str(out))
    got = set(np.asarray(ds.arrays.get("store", ds.arrays.get("tokens"))).tolist())
    if "tgt_tokens" in ds.arrays:
        got |= set(np.asarray(ds.arrays["tgt_tokens"]).tolist())
    return ds, got


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_well_formed_edge_cases_keep_every_line(tmp_path, capsys, fmt):
    """No trailing newline, CRLF line ends, trailing blank lines, NUL bytes: a correct dataset, the
    last line included."""
    target, text, extra = FORMATS[fmt]
    variants = {
        "no_newline": text.encode(),
        "crlf": text.replace("\n", "\r\n").encode() + b"\r\n",
        "trailing_blank": text.encode() + b"\n\n\n \n",
        "nul": text.replace("第", "第\x00").encode() + b"\n",
    }
    datasets = {}
    for name, data in variants.items():
        rc, err, _, out = preprocess(tmp_path, capsys, data, target, extra, name=name)
        assert rc == 0, err
        ds, got = all_tokens(out)
        assert VOCAB.get(LAST) in got, f"{name}: the last line was lost"
        datasets[name] = (len(ds), ds.header["corpus"]["documents"], ds.header["corpus"]["tokens"])
    # line ends, trailing blank lines and the NUL control characters change nothing
    assert len(set(datasets.values())) == 1, datasets


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_bad_corpora_are_clear_errors(tmp_path, capsys, fmt):
    target, text, extra = FORMATS[fmt]
    rc, err, corpus, out = preprocess(tmp_path, capsys, b"", target, extra, name="empty.txt")
    assert rc == 2 and f"{corpus}: the corpus file is empty" in err and not out.exists()
    rc, err, corpus, out = preprocess(tmp_path, capsys, b"\n\n \r\n\t\n", target, extra, name="blank.txt")
    assert rc == 2 and str(corpus) in err and "holds no" in err and not out.exists()
    # invalid UTF-8 on line 3, the line named
    bad = text.encode().split(b"\n")
    bad[2] = bad[2] + b"\xff\xfe"
    rc, err, corpus, out = preprocess(tmp_path, capsys, b"\n".join(bad), target, extra, name="utf8.txt")
    assert rc == 2 and f"{corpus} line 3: invalid UTF-8" in err and not out.exists()
    # a compressed corpus and random binary data
    rc, err, corpus, out = preprocess(tmp_path, capsys, gzip.compress(text.encode() * 100), target, extra,
                                      name="corpus.gz")
    assert rc == 2 and f"{corpus} line 1" in err and "binary or compressed" in err and not out.exists()
    noise = np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes()
    rc, err, corpus, out = preprocess(tmp_path, capsys, noise, target, extra, name="noise.bin")
    assert rc == 2 and f"{corpus} line" in err and "UTF-8" in err and not out.exists()


def test_a_5mb_single_line(tmp_path, capsys):
    line = "好" * (5 * 2**20 // 3)  # 5 MiB of UTF-8
    rc, err, _, out = preprocess(tmp_path, capsys, (line + "终\n").encode(), "mlm",
                                 ["--seq_length", "128", "--dynamic_masking"])
    assert rc == 0, err
    ds = Dataset(str(out))
    assert ds.header["corpus"]["tokens"] == len(line) + 1
    tokens = np.asarray(ds.arrays["store"])  # the corpus, stored once
    assert len(tokens) == len(line) + 3 and tokens[-2] == VOCAB.get("终")  # [CLS] line [SEP], nothing lost
    # as one sentence of a bert document
    rc, err, _, out = preprocess(tmp_path, capsys, (line + "\n第二句终\n\n第二篇。\n").encode(), "bert",
                                 ["--seq_length", "128", "--dup_factor", "1"], name="big_doc.txt")
    assert rc == 0, err


@pytest.mark.e2e
def test_a_killed_preprocess_leaves_no_complete_looking_dataset(tmp_path):
    out = tmp_path / "dataset.pt"
    rng = np.random.default_rng()
    for attempt in range(3):
        p = subprocess.Popen([sys.executable, "preprocess.py", "--corpus_path", BERT_CORPUS, "--vocab_path",
                              ZH_VOCAB, "--dataset_path", str(out), "--processes_num", "2", "--dup_factor", "10"],
                             cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(float(rng.uniform(1.0, 4.0)))
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        # either nothing at --dataset_path, or (killed after the final rename) a complete, readable dataset
        if out.exists():
            ds = Dataset(str(out))
            assert len(ds) > 0 and ds.header["total_bytes"] == out.stat().st_size
            out.unlink()
    # what the killed runs left (their temporary directories and files) goes with the next run
    (tmp_path / ".uer-preprocess-otherhost-1-x").mkdir()  # another host's: it may still be running
    proc = run_script("preprocess.py", "--corpus_path", BERT_CORPUS, "--vocab_path", ZH_VOCAB,
                      "--dataset_path", str(out), "--dup_factor", "1")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [".uer-preprocess-otherhost-1-x", "dataset.pt"]


@pytest.fixture(scope="module")
def nan_setup(tmp_path_factory):
    """A corpus whose last document repeats a character found nowhere else, and a checkpoint whose
    embedding row for that character is 3e38: the first batch holding it overflows, its gradients
    are not finite."""
    d = tmp_path_factory.mktemp("nan")
    (d / "tiny.json").write_text('{"emb_size": 32, "hidden_size": 32, "feedforward_size": 64, "heads_num": 4, '
                                 '"layers_num": 2, "dropout": 0.1}')
    lines = [line[:60] for line in open(DOC_CORPUS, encoding="utf-8").read().split("\n")[:40] if line.strip()]
    assert "丟" not in "".join(lines)
    (d / "corpus.txt").write_text("\n".join(lines + ["丟" * 30]) + "\n", encoding="utf-8")
    proc = run_script("preprocess.py", "--corpus_path", str(d / "corpus.txt"), "--vocab_path", ZH_VOCAB,
                      "--dataset_path", str(d / "d.pt"), "--target", "mlm", "--dynamic_masking",
                      "--seq_length", "32")
    assert proc.returncode == 0, proc.stderr
    common = ["--dataset_path", str(d / "d.pt"), "--vocab_path", ZH_VOCAB, "--config_path", str(d / "tiny.json"),
              "--target", "mlm", "--embedding", "word_pos", "--batch_size", "4"]
    proc = run_script("pretrain.py", *common, "--output_model_path", str(d / "init.bin"), "--total_steps", "1")
    assert proc.returncode == 0, proc.stderr
    state = read_state_dict(str(d / "init.bin"))
    # finite (a checkpoint holding a non-finite value is never saved), but the forward overflows
    state["embedding.word_embedding.weight"][VOCAB.get("丟")] = 3e38
    torch.save(state, d / "poisoned.bin")
    return d, common


@pytest.mark.e2e
@pytest.mark.parametrize("world,report,save", [(1, 1, 1), (2, 1, 1), (1, 7, 2)])
def test_non_finite_gradients_stop_training_and_keep_the_last_good_checkpoint(tmp_path, nan_setup, world, report,
                                                                              save):
    """Every step reported and saved, on one rank and two; and reports and checkpoints further
    apart, where the bad step is found on the device and named at the next checkpoint."""

    d, common = nan_setup
    out = tmp_path / "m.bin"
    dist = [] if world == 1 else ["--world_size", "2", "--gpu_ranks", "0", "1", "--backend", "gloo",
                                  "--master_ip", f"tcp://127.0.0.1:{free_port()}"]
    proc = run_script("pretrain.py", *common, "--pretrained_model_path", str(d / "poisoned.bin"), "--output_model_path", str(out),
                      "--total_steps", "60", "--save_checkpoint_steps", str(save), "--report_steps", str(report),
                      *dist, timeout=300)
    assert_clean_error(proc, "the gradient norm is nan; training stopped before the weights changed")
    import re

    step = int(re.search(r"step (\d+): the gradient norm", proc.stderr).group(1))
    assert step > 2, "the poisoned row is only in the last document, not in the first batches"
    if world == 2:  # both ranks saw the non-finite norm, though only one of them read the poisoned row
        assert proc.stderr.count(f"step {step}: the gradient norm is nan") == 2, proc.stderr
    found = latest_checkpoint(str(out))
    assert found is not None and found[0] == (step - 1) // save * save and str(found[1]) in proc.stderr
    assert not list(tmp_path.glob(f"m.bin-{found[0] + save}*")), "nothing is saved after the bad step"
    assert not out.exists(), "no final model is written after a failed step"
    state = read_state_dict(found[1])
    # the checkpoint's weights are finite everywhere but in the poisoned row it was given
    for k, v in state.items():
        if k != "embedding.word_embedding.weight":
            assert torch.isfinite(v).all(), k


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))])
def test_a_non_finite_step_is_caught_on_the_device_and_no_later_step_moves_the_weights(tmp_path, device):
    from uer.config import TrainConfig
    from uer.errors import UerError
    from uer.train.optim import build_optimizer
    from uer.train.precision import Precision
    from uer.train.trainer import guard

    model = torch.nn.Linear(4, 4).to(device)
    opt = build_optimizer(model, 0.1, 0.01)
    precision = Precision(False, False, "O1", torch.device(device))
    tcfg = TrainConfig(dataset_path="d.pt", output_model_path=str(tmp_path / "m.bin"))
    init, before = model.weight.detach().clone(), None
    for step in (1, 2, 3, 4):
        if step == 2:
            before = {k: v.clone() for k, v in model.state_dict().items()}
        loss = model(torch.ones(2, 4, device=device)).sum() * (math.nan if step == 2 else 1.0)
        precision.backward(loss)
        precision.step(step, opt, model.parameters(), 1.0, loss)
        opt.zero_grad()
        if step == 1:
            guard(precision, tcfg)  # a finite step passes
            assert not torch.equal(model.weight, init)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # the bad step and every later one left the weights alone
    with pytest.raises(UerError, match=r"^step 2: the gradient norm is nan; training stopped before the weights"):
        guard(precision, tcfg)


@pytest.mark.e2e
def test_damaged_datasets_are_refused_before_or_at_the_first_batch(tmp_path, nan_setup):
    d, common = nan_setup
    data = (d / "d.pt").read_bytes()
    args = [a if a != str(d / "d.pt") else None for a in common]

    def pretrain(path):
        return run_script("pretrain.py", *[a if a is not None else str(path) for a in args], "--output_model_path",
                          str(tmp_path / "m.bin"), "--total_steps", "2")

    # another version of the format
    from uer.data.dataset import FORMAT_VERSION

    version = f'"version": {FORMAT_VERSION}'.encode()
    assert version in data
    (tmp_path / "v.pt").write_bytes(data.replace(version, b'"version": 7', 1))
    assert_clean_error(pretrain(tmp_path / "v.pt"), "has format version 7", "rebuild it with preprocess.py")
    # a damaged header
    (tmp_path / "h.pt").write_bytes(data[:20] + b"\xff" * 8 + data[28:])
    assert_clean_error(pretrain(tmp_path / "h.pt"), "corrupted header")
    # damaged token arrays: ids beyond the vocabulary
    ds = Dataset(str(d / "d.pt"))
    tokens = "store" if "store" in ds.arrays else "tokens"
    start = ds.header["arrays"][tokens]["offset"]
    n = ds.header["arrays"][tokens]["length"]
    body = bytearray(data)
    body[start:start + 2 * n] = b"\xff" * (2 * n)
    (tmp_path / "b.pt").write_bytes(bytes(body))
    assert_clean_error(pretrain(tmp_path / "b.pt"), "is corrupted: a batch of instances", "rebuild it")


# -- round two (#32) ------------------------------------------------------------------------------

@pytest.mark.e2e
def test_non_finite_and_negative_option_values_are_refused_at_start(tmp_path, nan_setup):
    d, common = nan_setup
    proc = run_script("pretrain.py", *common, "--output_model_path", str(tmp_path / "m.bin"), "--total_steps", "2",
                      "--learning_rate", "inf", "--weight_decay", "inf", "--seed", "-1")
    assert_clean_error(proc, "--learning_rate must be a finite number, got inf",
                       "--weight_decay must be a finite number, got inf", "--seed must be >= 0, got -1")
    assert list(tmp_path.iterdir()) == []
    # a finite rate that explodes the weights in a few steps (1e10 wrote checkpoints of 8e9 weights)
    proc = run_script("pretrain.py", *common, "--output_model_path", str(tmp_path / "m.bin"), "--learning_rate", "1e10")
    assert_clean_error(proc, "--learning_rate must be in (0, 1], got 10000000000.0")
    proc = run_script("preprocess.py", "--corpus_path", str(d / "corpus.txt"), "--vocab_path", ZH_VOCAB,
                      "--dataset_path", str(tmp_path / "x.pt"), "--seed", "-1", "--short_seq_prob", "nan")
    assert_clean_error(proc, "--seed must be >= 0, got -1", "--short_seq_prob must be a finite number, got nan")


def test_no_checkpoint_with_a_non_finite_weight_is_written(tmp_path, nan_setup):
    """A finite gradient with a huge learning rate makes the weights overflow: the save refuses. (The
    command line refuses such a rate at start; train() from Python takes it.)"""
    from uer.config import ModelConfig, TrainConfig
    from uer.train.trainer import train

    d, _ = nan_setup
    out = tmp_path / "m.bin"
    tcfg = TrainConfig(dataset_path=str(d / "d.pt"), output_model_path=str(out), total_steps=4, batch_size=4,
                       learning_rate=3e38, warmup=0, save_checkpoint_steps=1)
    mcfg = ModelConfig(vocab_size=len(VOCAB), target="mlm", embedding="word_pos", emb_size=32, hidden_size=32,
                       feedforward_size=64, heads_num=4, layers_num=2)
    with pytest.raises(UerError, match="^step 1: the updated weights hold non-finite values; nothing of this step "
                                       "was saved, and no checkpoint was written yet"):
        train(tcfg, mcfg, Dataset(tcfg.dataset_path), VOCAB.special_ids(), log=lambda *_: None)
    assert list(tmp_path.iterdir()) == []


def test_the_weights_guard_reads_every_parameter():
    from uer.config import TrainConfig
    from uer.errors import UerError
    from uer.train.trainer import guard_weights

    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 2))
    tcfg = TrainConfig(dataset_path="d.pt", output_model_path="/nonexistent/m.bin")
    guard_weights(model, 5, tcfg)  # finite: passes
    with torch.no_grad():
        model[1].bias[1] = math.inf
    with pytest.raises(UerError, match="^step 5: the updated weights hold non-finite values"):
        guard_weights(model, 5, tcfg)


@pytest.mark.e2e
def test_an_output_that_is_an_input_is_refused_and_the_input_kept(tmp_path, nan_setup):
    d, common = nan_setup
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes((d / "corpus.txt").read_bytes())
    before = corpus.read_bytes()
    proc = run_script("preprocess.py", "--corpus_path", str(corpus), "--vocab_path", ZH_VOCAB,
                      "--dataset_path", str(corpus), "--target", "mlm")
    assert_clean_error(proc, f"--dataset_path {corpus} is the same file as --corpus_path {corpus}")
    assert corpus.read_bytes() == before
    dataset = tmp_path / "d.pt"
    dataset.write_bytes((d / "d.pt").read_bytes())
    args = [str(dataset) if a == str(d / "d.pt") else a for a in common]
    proc = run_script("pretrain.py", *args, "--output_model_path", str(dataset), "--total_steps", "2")
    assert_clean_error(proc, f"--output_model_path {dataset} is the same file as --dataset_path {dataset}")
    assert dataset.read_bytes() == (d / "d.pt").read_bytes()
    model = d / "init.bin"
    proc = run_script("scripts/average_models.py", "--model_list_path", str(model), str(model),
                      "--output_model_path", str(model))
    assert_clean_error(proc, f"--output_model_path {model} is the same file as --model_list_path[0]")
    assert torch.equal(read_state_dict(str(model))["embedding.word_embedding.weight"],
                       read_state_dict(str(d / "init.bin"))["embedding.word_embedding.weight"])


@pytest.mark.e2e
def test_an_unwritable_output_directory_is_found_at_start(tmp_path, nan_setup):
    d, common = nan_setup
    (tmp_path / "a_file").write_text("x")
    out = tmp_path / "a_file" / "models" / "m.bin"
    proc = run_script("pretrain.py", *common, "--output_model_path", str(out), "--total_steps", "2")
    assert_clean_error(proc, f"--output_model_path {out}: cannot write to the directory {out.parent}")
    assert "steps|" not in proc.stdout  # refused before any training


def test_a_failed_write_names_the_path_and_the_free_space_and_keeps_the_earlier_file(tmp_path):
    import errno

    from uer.errors import UerError
    from uer.utils import atomic_path

    path = tmp_path / "m.bin"
    path.write_bytes(b"earlier")
    with pytest.raises(UerError, match=r"could not write .*m\.bin: \[Errno 28\] No space left on device .*MiB free "
                                       r"on its disk\); the earlier .*m\.bin is left as it was"):
        with atomic_path(str(path)) as tmp:
            open(tmp, "wb").write(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert path.read_bytes() == b"earlier" and os.listdir(tmp_path) == ["m.bin"]


@pytest.mark.e2e
def test_a_vocabulary_with_a_byte_order_mark_and_a_directory_as_corpus(tmp_path):
    bom = tmp_path / "vocab.txt"
    bom.write_bytes(b"\xef\xbb\xbf" + open(ZH_VOCAB, "rb").read())
    assert Vocab.load(str(bom)).special_ids() == VOCAB.special_ids()
    proc = run_script("preprocess.py", "--corpus_path", str(tmp_path), "--vocab_path", str(bom),
                      "--dataset_path", str(tmp_path / "d.pt"))
    assert_clean_error(proc, f"--corpus_path {tmp_path}: a directory, not a file")


@pytest.mark.e2e
def test_a_dataset_header_is_checked_against_its_arrays(tmp_path, nan_setup):
    """An edited header (more instances than the arrays hold, a foreign dtype, an array beyond the
    file, a missing key) is an error naming the dataset before any batch is read, never a hang or
    a traceback."""
    d, common = nan_setup
    data = (d / "d.pt").read_bytes()
    n = Dataset(str(d / "d.pt")).header["instances"]

    hlen = int(np.frombuffer(data[8:16], dtype=np.uint64)[0])
    header = json.loads(data[16:16 + hlen])

    def edited(name, change):
        h = json.loads(json.dumps(header))
        change(h)
        blob = json.dumps(h).encode()
        assert len(blob) <= hlen
        path = tmp_path / name
        path.write_bytes(data[:16] + blob + b" " * (hlen - len(blob)) + data[16 + hlen:])  # space-padded
        return path

    first = next(iter(header["arrays"]))
    cases = {
        "float": (lambda h: h.update(instances=1e9), "instances is 1000000000.0, expected int"),
        "more": (lambda h: h.update(instances=n * 10), f"{n * 10} instances, but array"),
        "dtype": (lambda h: h["arrays"][first].update(dtype="object"), "is not an array of one of int8"),
        "offset": (lambda h: h["arrays"][first].update(offset=h["total_bytes"] - 8),
                   "lies outside the file's arrays"),
        "missing": (lambda h: h.pop("seq_length"), "seq_length is missing, expected int"),
    }
    for name, (change, needle) in cases.items():
        path = edited(f"{name}.pt", change)
        with pytest.raises(UerError, match=re.escape(f"dataset {path} has a damaged header")) as e:
            Dataset(str(path))
        assert needle in str(e.value), (name, str(e.value))
    # and on the command line: a clear error at once (the 1e9 header used to hang, its worker growing to GBs)
    proc = run_script("pretrain.py", *[str(tmp_path / "more.pt") if a == str(d / "d.pt") else a for a in common],
                      "--output_model_path", str(tmp_path / "m.bin"), "--total_steps", "2")
    assert_clean_error(proc, "more.pt has a damaged header", "Rebuild it with preprocess.py")


@pytest.mark.e2e
def test_a_mistyped_label_is_refused_with_its_line(tmp_path):
    """One label of 1000000 used to train a silent 1,000,001-class head; 4000000000 asked for 512 GB;
    a 20-digit label was an OverflowError traceback."""
    book = os.path.join(os.path.dirname(ZH_VOCAB), "..", "datasets", "book_review")
    rows = open(os.path.join(book, "train.tsv"), encoding="utf-8").read().splitlines()[:41]
    dev = tmp_path / "dev.tsv"
    dev.write_text("\n".join(rows[:21]) + "\n", encoding="utf-8")

    def tsv(label, line=5):
        edited = list(rows)
        edited[line - 1] = label + "\t" + edited[line - 1].split("\t", 1)[1]
        path = tmp_path / f"t{label}.tsv"
        path.write_text("\n".join(edited) + "\n", encoding="utf-8")
        return path

    def finetune(train, *extra):
        return run_script("finetune/run_classifier.py", "--vocab_path", ZH_VOCAB, "--train_path", str(train),
                          "--dev_path", str(dev), "--output_model_path", str(tmp_path / "ft.bin"), *extra)

    proc = finetune(tsv("1000000"))
    assert_clean_error(proc, f"t1000000.tsv line 5: the label 1000000 would make a head of 1000001 classes",
                       "--labels_num 1000001")
    proc = finetune(tsv("4000000000"))
    assert_clean_error(proc, "t4000000000.tsv line 5: the label '4000000000' is not an integer from 0 to 2147483647")
    proc = finetune(tsv("3"), "--labels_num", "2")
    assert_clean_error(proc, "t3.tsv line 5: the label 3 is beyond --labels_num 2")
    assert not (tmp_path / "ft.bin").exists()
    # a cls corpus for pretrain: the 20-digit label names its line, and the one beyond --labels_num too
    corpus = tmp_path / "cls.txt"
    lines = [r for r in rows[1:]]
    lines[6] = "12345678901234567890\t" + lines[6].split("\t", 1)[1]
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    proc = run_script("preprocess.py", "--corpus_path", str(corpus), "--vocab_path", ZH_VOCAB, "--dataset_path",
                      str(tmp_path / "cls.pt"), "--target", "cls", "--seq_length", "32")
    assert_clean_error(proc, "line 7", "the label 12345678901234567890 is beyond 2147483647")
    lines[6] = "1000000\t" + lines[6].split("\t", 1)[1]
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    proc = run_script("preprocess.py", "--corpus_path", str(corpus), "--vocab_path", ZH_VOCAB, "--dataset_path",
                      str(tmp_path / "cls.pt"), "--target", "cls", "--seq_length", "32")
    assert proc.returncode == 0, proc.stderr
    proc = run_script("pretrain.py", "--dataset_path", str(tmp_path / "cls.pt"), "--vocab_path", ZH_VOCAB,
                      "--target", "cls", "--labels_num", "2", "--output_model_path", str(tmp_path / "m.bin"),
                      "--config_path", os.path.join(ROOT, "models", "bert_tiny_config.json"))
    assert_clean_error(proc, f"has labels up to 1000000 (line 7 of {corpus}), but --labels_num is 2")


@pytest.mark.e2e
def test_script_inputs_and_outputs_are_clear_errors(tmp_path, nan_setup):
    """Tracebacks before: extract_features.py on an empty input or with a directory as output,
    generate_lm.py on a non-UTF-8 prompt, inference with NaN weights (it wrote `0 nan nan`), a
    recipe field `true`, dynamic_vocab_adapter.py with a vocabulary lacking the special tokens."""
    d, common = nan_setup
    model = ["--load_model_path", str(d / "init.bin"), "--vocab_path", ZH_VOCAB, "--config_path",
             str(d / "tiny.json"), "--target", "mlm", "--embedding", "word_pos"]
    (tmp_path / "empty.txt").write_text("\n \n")
    (tmp_path / "one.txt").write_text("你好\n")
    (tmp_path / "bad.txt").write_bytes("你好\n".encode() + b"\xff\xfe abc\n")
    (tmp_path / "outdir").mkdir()
    features = ("scripts/extract_features.py", *model, "--output_path")
    assert_clean_error(run_script(*features, str(tmp_path / "f.pt"), "--input_path", str(tmp_path / "empty.txt")),
                       "empty.txt holds no text")
    assert_clean_error(run_script(*features, str(tmp_path / "outdir"), "--input_path", str(tmp_path / "one.txt")),
                       "--output_path", "outdir is a directory")
    proc = run_script("scripts/generate_lm.py", *model, "--test_path", str(tmp_path / "bad.txt"),
                      "--prediction_path", str(tmp_path / "p.txt"))
    assert_clean_error(proc, "bad.txt line 2: not UTF-8 text")
    proc = run_script(*features, str(tmp_path / "f.pt"), "--input_path", str(tmp_path / "one.txt"))
    assert proc.returncode == 0, proc.stderr
    # NaN weights: refused, not turned into NaN outputs
    state = read_state_dict(str(d / "init.bin"))
    state["encoder.transformer.0.feed_forward.linear_1.weight"][0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.bin")
    nan_model = [str(tmp_path / "nan.bin") if a == str(d / "init.bin") else a for a in features]
    proc = run_script(*nan_model, str(tmp_path / "g.pt"), "--input_path", str(tmp_path / "one.txt"))
    assert_clean_error(proc, "nan.bin holds non-finite weights", "feed_forward.linear_1.weight")
    assert not (tmp_path / "g.pt").exists()
    # a recipe field of the wrong JSON type
    (tmp_path / "r.json").write_text('{"hidden_size": true, "dropout": "0.1", "layers_num": 2}')
    proc = run_script("pretrain.py", *[str(tmp_path / "r.json") if a == str(d / "tiny.json") else a for a in common],
                      "--output_model_path", str(tmp_path / "m.bin"))
    assert_clean_error(proc, "field 'hidden_size' is true, expected a whole number",
                       "field 'dropout' is \"0.1\", expected a number")
    # a new vocabulary without the special tokens
    (tmp_path / "v.txt").write_text("你\n好\n", encoding="utf-8")
    proc = run_script("scripts/dynamic_vocab_adapter.py", "--old_model_path", str(d / "init.bin"), "--old_vocab_path",
                      ZH_VOCAB, "--new_vocab_path", str(tmp_path / "v.txt"), "--new_model_path", str(tmp_path / "a.bin"))
    assert_clean_error(proc, "v.txt lacks the special token(s) [PAD]")
    assert not (tmp_path / "a.bin").exists()


@pytest.mark.e2e
def test_a_damaged_newest_state_points_to_the_previous_checkpoint(tmp_path, nan_setup):
    d, common = nan_setup
    run = ["pretrain.py", *common, "--output_model_path", str(tmp_path / "m.bin"), "--total_steps", "6",
           "--save_checkpoint_steps", "2"]
    assert run_script(*run).returncode == 0
    (tmp_path / "m.bin-6.state").write_bytes(b"\x00" * 100)
    proc = run_script(*run, "--resume")
    assert_clean_error(proc, f"cannot read training state {tmp_path}/m.bin-6.state",
                       f"The previous complete checkpoint is {tmp_path}/m.bin-4 (step 4)")
