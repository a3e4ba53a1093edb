import numpy as np
import pytest

from conftest import BERT_CORPUS
from uer.data.masking import Masker, MaskingConfig
from uer.tokenizers import build_tokenizer


def corpus_sequences(vocab, n=3000):
    tok = build_tokenizer("bert", vocab)
    sp = vocab.special_ids()
    with open(BERT_CORPUS, encoding="utf-8") as f:
        lines = [l for l in f.read().split("\n") if l.strip()][:n]
    return [np.array([sp.cls] + ids[:120] + [sp.sep], dtype=np.int64) for ids in tok.encode_batch(lines)]


def one_at_a_time(masker, seqs, rng):
    for seq in seqs:
        yield masker(seq, rng)


def all_at_once(masker, seqs, rng):
    """Masker.mask_flat over all sequences (in two groups), split back into sequences."""
    half = len(seqs) // 2
    for group in (seqs[:half], seqs[half:]):
        lengths = np.array([len(s) for s in group])
        out, pos, counts, orig = masker.mask_flat(np.concatenate(group), lengths, rng)
        starts, where = np.cumsum(lengths) - lengths, np.cumsum(counts) - counts
        for k in range(len(group)):
            yield (out[starts[k]:starts[k] + lengths[k]], pos[where[k]:where[k] + counts[k]],
                   orig[where[k]:where[k] + counts[k]])


@pytest.mark.parametrize("how", [one_at_a_time, all_at_once])
def test_token_masking_statistics(zh_vocab, how):
    sp = zh_vocab.special_ids()
    masker = Masker(MaskingConfig(), len(zh_vocab), sp)
    rng = np.random.default_rng(0)
    picked = total = masked = replaced = kept = 0
    seqs = corpus_sequences(zh_vocab)
    quarters = np.zeros(4)
    for seq, (out, pos, orig) in zip(seqs, how(masker, seqs, rng)):
        quarters += np.bincount((4 * (pos - 1)) // (len(seq) - 2), minlength=4)  # where in its sequence
        assert np.array_equal(seq[pos], orig) and np.all(np.diff(pos) > 0)
        assert not np.isin(orig, [sp.cls, sp.sep, sp.pad]).any()
        assert len(pos) == min(max(1, round(0.15 * len(seq))), len(seq) - 2)
        unchanged = out == seq
        assert unchanged[np.setdiff1d(np.arange(len(seq)), pos)].all()
        picked += len(pos)
        total += len(seq)
        masked += int((out[pos] == sp.mask).sum())
        kept += int((out[pos] == orig).sum())
        replaced += int(((out[pos] != orig) & (out[pos] != sp.mask)).sum())
        assert not np.isin(out[pos][(out[pos] != orig) & (out[pos] != sp.mask)], sp.all()).any()
    assert abs(picked / total - 0.15) < 0.01
    assert abs(masked / picked - 0.8) < 0.01
    assert abs(replaced / picked - 0.1) < 0.01
    assert abs(kept / picked - 0.1) < 0.012  # a random draw may hit the original id
    # every eligible position is equally likely: each quarter of a sequence gets a quarter of the picks
    assert np.all(np.abs(quarters / quarters.sum() - 0.25) < 0.02), quarters / quarters.sum()  # bins differ a little


def test_span_masking(zh_vocab):
    sp = zh_vocab.special_ids()
    cfg = MaskingConfig(span_masking=True, span_geo_prob=0.2, span_max_length=10)
    masker = Masker(cfg, len(zh_vocab), sp)
    rng = np.random.default_rng(1)
    picked = total = 0
    run_lengths = []
    for seq in corpus_sequences(zh_vocab, 1500):
        # a [SEP] in the middle must never be covered by a span
        seq = np.concatenate([seq[:40], [sp.sep], seq[40:]])
        out, pos, orig = masker(seq, rng)
        assert not np.isin(seq[pos], [sp.cls, sp.sep]).any()
        assert len(pos) <= max(1, round(0.15 * len(seq)))
        picked += len(pos)
        total += len(seq)
        if len(pos):
            breaks = np.flatnonzero(np.diff(pos) != 1)
            run_lengths += np.diff(np.concatenate([[-1], breaks, [len(pos) - 1]])).tolist()
    assert 0.10 < picked / total <= 0.15
    assert max(run_lengths) >= 5  # spans, not single tokens
