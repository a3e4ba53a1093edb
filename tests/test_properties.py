"""Property-based tests: random corpora through every instance builder (SPEC 1.4).

Every generated corpus uses each token at most once (distinct CJK characters of the vocabulary,
each its own token), so the position of any token in the corpus is known and "no token lost or
duplicated within a document" can be checked exactly."""
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ZH_VOCAB
from uer.data.builders import INSTANCE_BUILDERS, BuilderConfig
from uer.data.dataset import Dataset
from uer.data.loader import builder_for
from uer.data.preprocess import PreprocessJob, build_dataset
from uer.errors import UerError
from uer.vocab import Vocab

VOCAB = Vocab.load(ZH_VOCAB)
SP = VOCAB.special_ids()
SPECIAL = {SP.cls, SP.sep, SP.pad, SP.mask}
# single CJK characters of the vocabulary: the bert tokenizer makes each its own token
CHARS = [t for t in VOCAB.tokens if len(t) == 1 and "\u4e00" <= t <= "\u9fff"]
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# documents: lists of sentences, a sentence is a number of tokens
documents = st.lists(st.lists(st.integers(1, 12), min_size=1, max_size=5), min_size=1, max_size=6)


def make_corpus(shape, rng):
    """Token ids per document and sentence, drawn without replacement."""
    n = sum(sum(d) for d in shape)
    chars = rng.choice(len(CHARS), size=n, replace=False)
    ids, k = [], 0
    for doc in shape:
        sents = []
        for length in doc:
            sents.append([VOCAB.get(CHARS[c]) for c in chars[k:k + length]])
            k += length
        ids.append(sents)
    return ids


def text(sent):
    return "".join(VOCAB.tokens[i] for i in sent)


def build(tmp_path, target, corpus_text, seed=0, **builder):
    path = tmp_path / "corpus.txt"
    path.write_text(corpus_text, encoding="utf-8")
    out = tmp_path / "ds.pt"
    build_dataset(PreprocessJob(corpus_path=str(path), dataset_path=str(out), target=target, tokenizer="bert",
                                vocab=VOCAB, spm_model_path=None, builder=BuilderConfig(**builder),
                                processes_num=1, seed=seed,
                                tgt_vocab=VOCAB if target == "mt" else None))
    return Dataset(str(out))


def instances(ds, field="tokens"):
    """Each instance's ids as training first sees them (static masks applied)."""
    if field != "tokens":
        return [np.asarray(ds.ragged(field, i)).tolist() for i in range(len(ds))]
    builder = builder_for(ds, SP)
    return [builder.stored(ds, i)["tokens"].tolist() for i in range(len(ds))]


def unmask(ds, i, toks):
    """The instance with its statically masked positions restored; checks the mask fields."""
    if "mask_pos" not in ds.header["arrays"]:
        return toks
    stored = builder_for(ds, SP).stored(ds, i)
    pos, orig = stored["mask_pos"].tolist(), stored["mask_ids"].tolist()
    assert pos == sorted(set(pos)) and all(p < len(toks) for p in pos)
    assert all(o not in SPECIAL for o in orig), "a special token was masked"
    restored = list(toks)
    for p, o in zip(pos, orig):
        restored[p] = o
    return restored


@SETTINGS
@given(shape=documents, target=st.sampled_from(["mlm", "t5"]), seq_length=st.integers(8, 40),
       full=st.booleans(), dynamic=st.booleans(), dup=st.integers(1, 3), buffer=st.integers(1, 4),
       seed=st.integers(0, 2**16))
def test_mlm_and_t5_keep_every_token_once(tmp_path_factory, shape, target, seq_length, full, dynamic, dup, buffer,
                                          seed):
    tmp = tmp_path_factory.mktemp("mlm")
    docs = make_corpus(shape, np.random.default_rng(seed))
    ds = build(tmp, target, "".join(text(sum(d, [])) + "\n" for d in docs), seq_length=seq_length,
               full_sentences=full, dynamic_masking=dynamic, dup_factor=dup, docs_buffer_size=buffer, seed=seed)
    rows = [unmask(ds, i, t) for i, t in enumerate(instances(ds))]
    assert all(1 <= len(r) <= seq_length for r in rows)
    stream = [t for r in rows for t in r]
    expected = [t for d in docs for t in [SP.cls] + sum(d, []) + [SP.sep]]
    copies = 1 if dynamic else dup
    # instances are grouped by unit (docs_buffer_size documents are one unit at most), each unit repeated
    assert sorted(stream) == sorted(expected * copies)
    if copies == 1:
        assert stream == expected
    # a chunk only starts with [CLS] where a document starts
    for r in rows:
        assert r.count(SP.cls) == r.count(SP.sep) or abs(r.count(SP.cls) - r.count(SP.sep)) == 1


@SETTINGS
@given(shape=documents, seq_length=st.integers(4, 30), seed=st.integers(0, 2**16))
def test_lm_and_bilm_pieces(tmp_path_factory, shape, seq_length, seed):
    tmp = tmp_path_factory.mktemp("lm")
    docs = make_corpus(shape, np.random.default_rng(seed))
    corpus = "".join(text(sum(d, [])) + "\n" for d in docs)
    lm = instances(build(tmp, "lm", corpus, seq_length=seq_length))
    bilm = instances(build(tmp, "bilm", corpus, seq_length=seq_length))
    assert all(2 <= len(p) <= seq_length + 1 for p in lm)  # seq_length inputs + the last target
    assert all(1 <= len(c) <= seq_length for c in bilm)
    # lm: [CLS] doc [SEP] in pieces; only a last one-token piece (nothing to predict) is dropped
    stream = [t for p in lm for t in p]
    pos = 0
    for d in docs:
        full = [SP.cls] + sum(d, []) + [SP.sep]
        got = stream[pos:pos + len(full)]
        assert got == full or got[:len(full) - 1] == full[:-1] and (len(full) - 1) % (seq_length + 1) == 0
        pos += len(full) if got == full else len(full) - 1
    assert pos == len(stream)
    # bilm: the document ids exactly, no special token added
    assert [t for c in bilm for t in c] == [t for d in docs for t in sum(d, [])]


@SETTINGS
@given(shape=documents, seq_length=st.sampled_from([8, 12, 20, 40, 128]), target=st.sampled_from(["bert", "albert"]),
       dynamic=st.booleans(), short=st.sampled_from([0.0, 0.5]), buffer=st.integers(1, 4),
       seed=st.integers(0, 2**16))
def test_sentence_pair_instances(tmp_path_factory, shape, seq_length, target, dynamic, short, buffer, seed):
    tmp = tmp_path_factory.mktemp("pair")
    docs = make_corpus(shape, np.random.default_rng(seed))
    corpus = "".join("\n".join(text(s) for s in d) + "\n\n" for d in docs)
    ds = build(tmp, target, corpus, seq_length=seq_length, dynamic_masking=dynamic, dup_factor=1,
               short_seq_prob=short, docs_buffer_size=buffer, seed=seed)
    where = {}  # token -> (document, position in the document)
    for di, d in enumerate(docs):
        for k, t in enumerate(sum(d, [])):
            where[t] = (di, k)
    no_truncation = seq_length - 3 >= 2 * max(sum(map(len, d)) for d in docs)
    used = {di: [] for di in range(len(docs))}
    for i, toks in enumerate(instances(ds)):
        r = unmask(ds, i, toks)
        split, label = builder_for(ds, SP).stored(ds, i)["seg_split"], int(ds.arrays["label"][i])
        assert len(r) <= seq_length
        assert r[0] == SP.cls and r[split - 1] == SP.sep and r[-1] == SP.sep
        a, b = r[1:split - 1], r[split:-1]
        assert not SPECIAL & set(a + b)
        assert a or b
        for part in (a, b):  # each part is one contiguous run of one document
            if part:
                d0, k0 = where[part[0]]
                assert [where[t] for t in part] == [(d0, k0 + j) for j in range(len(part))]
        if target == "bert" or label == 0:
            if a and b and (target == "albert" or label == 0):
                assert where[a[0]][0] == where[b[0]][0]
                # the actual next part follows A (for albert label 0; bert label 0), precedes it when swapped
                first, second = (a, b) if label == 0 else (b, a)
                assert where[second[0]][1] > where[first[-1]][1]
        kept = (a + b) if (target == "albert" or label == 0) else a
        for t in kept:
            used[where[t][0]].append(where[t][1])
    for di, positions in used.items():
        assert len(positions) == len(set(positions)), "a token appears twice"
        if no_truncation:
            assert sorted(positions) == list(range(sum(map(len, docs[di])))), "a token was lost"


@SETTINGS
@given(rows=st.lists(st.tuples(st.integers(0, 4), st.integers(1, 20), st.integers(0, 20)), min_size=1,
                     max_size=8),
       seq_length=st.integers(4, 40), header=st.booleans(), seed=st.integers(0, 2**16))
def test_cls_lines(tmp_path_factory, rows, seq_length, header, seed):
    tmp = tmp_path_factory.mktemp("cls")
    shape = [[a] + ([b] if b else []) for _, a, b in rows]
    docs = make_corpus(shape, np.random.default_rng(seed))
    lines = ["label\ttext_a"] if header else []
    lines += [f"{label}\t" + "\t".join(text(s) for s in d) for (label, _, _), d in zip(rows, docs)]
    ds = build(tmp, "cls", "\n".join(lines) + "\n", seq_length=seq_length)
    assert len(ds) == len(rows)
    for i, ((label, _, b), d) in enumerate(zip(rows, docs)):
        full = [SP.cls] + d[0] + ([SP.sep] + d[1] + [SP.sep] if b else [])
        toks = instances(ds)[i]
        assert toks == full[:seq_length] and int(ds.arrays["label"][i]) == label
        assert int(ds.arrays["seg_split"][i]) == min(len(d[0]) + (2 if b else 1), len(toks))


@SETTINGS
@given(rows=st.lists(st.tuples(st.integers(1, 20), st.integers(1, 20)), min_size=1, max_size=8),
       seq_length=st.integers(4, 30), tgt_seq_length=st.integers(2, 30), seed=st.integers(0, 2**16))
def test_mt_pairs(tmp_path_factory, rows, seq_length, tgt_seq_length, seed):
    tmp = tmp_path_factory.mktemp("mt")
    docs = make_corpus([list(r) for r in rows], np.random.default_rng(seed))
    ds = build(tmp, "mt", "".join(f"{text(s)}\t{text(t)}\n" for s, t in docs), seq_length=seq_length,
               tgt_seq_length=tgt_seq_length)
    src, tgt = instances(ds), instances(ds, "tgt_tokens")
    for (s, t), a, b in zip(docs, src, tgt):
        assert a == ([SP.cls] + s + [SP.sep])[:seq_length]
        assert b == ([SP.cls] + t + [SP.sep])[:tgt_seq_length + 1]


@SETTINGS
@given(rows=st.lists(st.tuples(st.integers(1, 20), st.integers(1, 20)), min_size=1, max_size=8),
       seq_length=st.integers(4, 40), seed=st.integers(0, 2**16))
def test_prefixlm_pairs(tmp_path_factory, rows, seq_length, seed):
    """[CLS] source [SEP] target [SEP] cut to seq_length, the prefix's length stored; a line whose
    prefix fills seq_length gives no instance."""
    tmp = tmp_path_factory.mktemp("prefixlm")
    docs = make_corpus([list(r) for r in rows], np.random.default_rng(seed))
    kept = [(s, t) for s, t in docs if len(s) + 2 < seq_length]
    if not kept:
        return  # nothing to build: preprocess says so (tested with the empty corpora)
    ds = build(tmp, "prefixlm", "".join(f"{text(s)}\t{text(t)}\n" for s, t in docs), seq_length=seq_length)
    assert len(ds) == len(kept)
    for i, (s, t) in enumerate(kept):
        assert instances(ds)[i] == ([SP.cls] + s + [SP.sep] + t + [SP.sep])[:seq_length]
        assert int(ds.arrays["seg_split"][i]) == len(s) + 2


@SETTINGS
@given(shape=documents, seq_length=st.integers(6, 40), tgt_seq_length=st.integers(2, 40),
       ratio=st.sampled_from([0.1, 0.3, 0.5, 0.9]), strategy=st.sampled_from(["lead", "random"]),
       seed=st.integers(0, 2**16))
def test_gsg_gap_sentences(tmp_path_factory, shape, seq_length, tgt_seq_length, ratio, strategy, seed):
    """Each source is [CLS] a run of whole sentences [SEP] with some sentences replaced by one
    [MASK] each; the target is [CLS] exactly those sentences in order [SEP]; every sentence of the
    corpus appears once, in the source or in the target, and at least one stays in the source."""
    tmp = tmp_path_factory.mktemp("gsg")
    docs = make_corpus(shape, np.random.default_rng(seed))
    corpus = "".join("\n".join(text(s) for s in d) + "\n\n" for d in docs)
    if not any(len(d) >= 2 for d in docs):
        return  # no run of two sentences: preprocess says there is nothing to build
    try:
        ds = build(tmp, "gsg", corpus, seq_length=seq_length, tgt_seq_length=tgt_seq_length,
                   gap_sentence_ratio=ratio, sentence_selection_strategy=strategy, seed=seed)
    except UerError as e:  # every run of whole sentences that fits seq_length holds one sentence
        assert "no training instance could be built" in str(e), e
        return
    first = {s[0]: s[:seq_length - 2] for d in docs for s in d}  # a sentence by its first token
    seen = []
    for src, tgt in zip(instances(ds), instances(ds, "tgt_tokens")):
        assert src[0] == SP.cls and src[-1] == SP.sep and len(src) <= seq_length
        assert tgt[0] == SP.cls and len(tgt) <= tgt_seq_length + 1
        body, kept, k = src[1:-1], [], 0
        while k < len(body):
            if body[k] == SP.mask:
                kept.append(None)
                k += 1
            else:
                sent = first[body[k]]
                assert body[k:k + len(sent)] == sent
                kept.append(sent)
                k += len(sent)
        gaps = kept.count(None)
        assert 1 <= gaps < len(kept)
        if strategy == "lead":
            assert kept[:gaps] == [None] * gaps
        # the target: the gap sentences, in order, cut to tgt_seq_length + 1
        rest, gap_sents = tgt[1:], []
        while rest and rest != [SP.sep]:
            sent = first[rest[0]]
            assert rest[:len(sent)] == sent[:len(rest)]
            gap_sents.append(sent)
            rest = rest[len(sent):]
        assert len(gap_sents) <= gaps
        seen += [s[0] for s in kept if s] + [s[0] for s in gap_sents]
    assert len(seen) == len(set(seen)), "a sentence appears twice"


@SETTINGS
@given(shape=documents, seq_length=st.integers(8, 40), ratio=st.sampled_from([0.0, 0.15, 0.3, 0.6]),
       lam=st.sampled_from([0.5, 3.0]), permute=st.booleans(), dup=st.integers(1, 2), seed=st.integers(0, 2**16))
def test_bart_noise(tmp_path_factory, shape, seq_length, ratio, lam, permute, dup, seed):
    """Each target is [CLS] a run of whole sentences of one document [SEP], every sentence in one
    run; its source hides exactly round(ratio * n) of the run's n tokens behind [MASK]s, keeps the
    others (in order within each sentence, the sentences in order without permutation), and is no
    longer than seq_length."""
    tmp = tmp_path_factory.mktemp("bart")
    docs = make_corpus(shape, np.random.default_rng(seed))
    corpus = "".join("\n".join(text(s) for s in d) + "\n\n" for d in docs)
    ds = build(tmp, "bart", corpus, seq_length=seq_length, tgt_seq_length=seq_length, infilling_ratio=ratio,
               poisson_lambda=lam, sentence_permutation=permute, dup_factor=dup, seed=seed)
    runs = []
    for src, tgt in zip(instances(ds), instances(ds, "tgt_tokens")):
        assert src[0] == tgt[0] == SP.cls and src[-1] == tgt[-1] == SP.sep and len(src) <= seq_length
        run, kept = tgt[1:-1], [t for t in src[1:-1] if t != SP.mask]
        assert len(run) - len(kept) == round(ratio * len(run))
        assert set(kept) <= set(run) and len(set(kept)) == len(kept)
        if not permute:
            assert kept == [t for t in run if t in set(kept)]
        runs.append(tuple(run))
    # the runs: every document's sentences (cut to seq_length - 2) in order, each in one run, dup times
    expected = [t for d in docs for s in d for t in s[:seq_length - 2]]
    assert len(runs) % dup == 0
    assert [t for r in runs[:len(runs) // dup] for t in r] == expected
    assert runs == runs[:len(runs) // dup] * dup


def test_every_builder_is_covered():
    covered = {"mlm", "t5", "lm", "bilm", "bert", "albert", "cls", "mt", "prefixlm", "gsg", "bart"}
    assert set(INSTANCE_BUILDERS) <= covered, set(INSTANCE_BUILDERS) - covered
