"""Whole word masking (--whole_word_masking): word boundaries from jieba and WordPiece, every
chosen word masked whole, the budget kept, and the same dataset for any process count."""
import filecmp

import numpy as np
import pytest

from conftest import BERT_CORPUS, DOC_CORPUS, EN_VOCAB, ZH_VOCAB, assert_clean_error, run_script
from test_masking import corpus_sequences
from uer.data.builders import BuilderConfig
from uer.data.dataset import Dataset
from uer.data.loader import BatchLoader, builder_for
from uer.data.masking import Masker, MaskingConfig
from uer.data.preprocess import PreprocessJob, build_dataset
from uer.data.words import WordSplitter
from uer.tokenizers import build_tokenizer
from uer.vocab import Vocab


@pytest.fixture(scope="module")
def zh_words(zh_vocab):
    return WordSplitter(zh_vocab.tokens, zh_vocab.special_ids().all())


def split(vocab, words, text):
    """text -> its words, each written as its tokens joined (## dropped)."""
    sp = vocab.special_ids()
    ids = np.array([sp.cls] + build_tokenizer("bert", vocab).encode(text) + [sp.sep])
    out = []
    for i, start in zip(ids.tolist(), words.starts(ids)):
        piece = vocab.tokens[i].removeprefix("##")
        if start:
            out.append(piece)
        else:
            out[-1] += piece
    return out


def word_spans(words, ids):
    starts = np.flatnonzero(words.starts(ids))
    return list(zip(starts.tolist(), np.diff(np.append(starts, len(ids))).tolist()))


def test_words_come_from_jieba_and_wordpiece(zh_vocab, zh_words, tmp_path):
    text = "我们去蓝鲸书店买书, unbelievably 2019年"
    assert split(zh_vocab, zh_words, text) == ["[CLS]", "我们", "去", "蓝鲸", "书店", "买", "书", ",",
                                               "unbelievably", "2019", "年", "[SEP]"]
    en = Vocab.load(EN_VOCAB)
    assert split(en, WordSplitter(en.tokens, en.special_ids().all()), "unbelievably good transformers") == [
        "[CLS]", "unbelievably", "good", "transformers", "[SEP]"]
    assert len(build_tokenizer("bert", en).encode("unbelievably")) > 1  # pieces joined into one word
    user_dict = tmp_path / "dict.txt"
    user_dict.write_text("蓝鲸书店 100 nz\n", encoding="utf-8")
    mine = WordSplitter(zh_vocab.tokens, zh_vocab.special_ids().all(), str(user_dict))
    assert "蓝鲸书店" in split(zh_vocab, mine, text)


def check_whole(vocab, words, ids, out, pos, orig):
    """Every word is masked whole or not at all, with one fate: all [MASK] or none."""
    mask = vocab.special_ids().mask
    picked = np.zeros(len(ids), dtype=bool)
    picked[pos] = True
    assert (orig == ids[pos]).all()
    n_words = n_mask = 0
    for start, size in word_spans(words, ids):
        inside = picked[start:start + size]
        assert inside.all() or not inside.any(), (start, size, pos)
        if inside.all():
            n_words += 1
            is_mask = out[start:start + size] == mask
            assert is_mask.all() or not is_mask.any()
            n_mask += bool(is_mask.all())
    assert (out[~picked] == ids[~picked]).all()
    return n_words, n_mask


def within_budget(ids, pos) -> int:
    """The instance's budget, 15 % of its tokens (at least one); a mask exceeds it only with one
    word, where every word is longer than the budget."""
    budget = max(1, round(0.15 * len(ids)))
    assert len(pos) <= budget or len(pos) <= 4
    return budget


@pytest.mark.parametrize("span", [False, True])
def test_whole_words_masked_and_the_budget_kept(zh_vocab, zh_words, span):
    masker = Masker(MaskingConfig(whole_word_masking=True, span_masking=span), len(zh_vocab),
                    zh_vocab.special_ids(), zh_words)
    rng = np.random.default_rng(0)
    seqs = corpus_sequences(zh_vocab, 2000)
    tokens = masked = words = as_mask = longer = budget = 0
    lengths = np.array([len(s) for s in seqs])
    out, pos, counts, orig = masker.mask_flat(np.concatenate(seqs), lengths, rng)
    starts, where = np.cumsum(lengths) - lengths, np.cumsum(counts) - counts
    for k, ids in enumerate(seqs):
        row_pos = pos[where[k]:where[k] + counts[k]]
        w, m = check_whole(zh_vocab, zh_words, ids, out[starts[k]:starts[k] + lengths[k]], row_pos,
                           orig[where[k]:where[k] + counts[k]])
        tokens, masked, words, as_mask = tokens + len(ids), masked + len(row_pos), words + w, as_mask + m
        longer += len(row_pos) > w  # some chosen word has several tokens
        budget += within_budget(ids, row_pos)
    assert 0.97 < masked / budget < 1.01 and abs(masked / tokens - 0.15) < 0.01, (masked / budget, masked / tokens)
    assert 0.76 < as_mask / words < 0.84  # 80 % of the words become [MASK]
    assert longer > len(seqs) // 2  # Chinese words of two or more characters are common


@pytest.mark.e2e
def test_problems_listed_at_start(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("一二三\n", encoding="utf-8")
    proc = run_script("preprocess.py", "--corpus_path", str(corpus), "--vocab_path", ZH_VOCAB, "--dataset_path",
                      str(tmp_path / "d.pt"), "--target", "lm", "--whole_word_masking", "--user_dict_path",
                      str(tmp_path / "missing.txt"))
    assert_clean_error(proc, "--whole_word_masking applies to the masked-token targets (albert, bert, mlm, t5)",
                       "--target lm masks nothing", "missing.txt: no such file")
    proc = run_script("preprocess.py", "--corpus_path", str(corpus), "--vocab_path", ZH_VOCAB, "--dataset_path",
                      str(tmp_path / "d.pt"), "--user_dict_path", str(corpus))
    assert_clean_error(proc, "--user_dict_path is read only with --whole_word_masking")


def _job(corpus, out, target, processes, vocab, **builder):
    return PreprocessJob(corpus_path=str(corpus), dataset_path=str(out), target=target, tokenizer="bert",
                         vocab=vocab, spm_model_path=None, builder=BuilderConfig(seq_length=64, **builder),
                         processes_num=processes, seed=3)


@pytest.mark.parametrize("target,corpus,extra", [
    ("bert", BERT_CORPUS, {}),
    ("mlm", DOC_CORPUS, {"full_sentences": True, "span": True}),
])
def test_static_masks_are_whole_words_for_any_process_count(tmp_path, zh_vocab, zh_words, target, corpus, extra):
    with open(corpus, encoding="utf-8") as f:
        sample = "".join(f.readlines()[:2000 if target == "bert" else 250])
    (tmp_path / "c.txt").write_text(sample, encoding="utf-8")
    masking = MaskingConfig(whole_word_masking=True, span_masking=extra.pop("span", False))
    a, b = tmp_path / "p1.pt", tmp_path / "p2.pt"
    for path, processes in ((a, 1), (b, 2)):
        build_dataset(_job(tmp_path / "c.txt", path, target, processes, zh_vocab, dup_factor=2, masking=masking,
                           docs_buffer_size=300, **extra))
    assert filecmp.cmp(a, b, shallow=False)
    ds = Dataset(str(a))
    assert ds.header["whole_word_masking"] is True
    builder = builder_for(ds, zh_vocab.special_ids())
    tokens = masked = budget = 0
    for i in range(len(ds)):
        stored = builder.stored(ds, i)
        out, pos = stored["tokens"], stored["mask_pos"]  # as training sees it
        ids = out.copy()
        ids[pos] = stored["mask_ids"]
        check_whole(zh_vocab, zh_words, ids, out, pos, stored["mask_ids"])
        tokens, masked, budget = tokens + len(ids), masked + len(pos), budget + within_budget(ids, pos)
    assert 0.97 < masked / budget < 1.01 and abs(masked / tokens - 0.15) < 0.01, (masked / budget, masked / tokens)


def test_dynamic_whole_word_masks_at_pretrain(tmp_path, zh_vocab, zh_words):
    """A dataset built with --dynamic_masking gets whole word masks in the loader when pretrain asks."""
    with open(DOC_CORPUS, encoding="utf-8") as f:
        (tmp_path / "c.txt").write_text("".join(f.readlines()[:300]), encoding="utf-8")
    build_dataset(_job(tmp_path / "c.txt", tmp_path / "d.pt", "mlm", 1, zh_vocab, dynamic_masking=True))
    ds = Dataset(str(tmp_path / "d.pt"))
    assert ds.header["whole_word_masking"] is False
    with pytest.raises(ValueError, match="needs the vocabulary's word boundaries"):
        next(BatchLoader(ds, zh_vocab.special_ids(), 8, masking=MaskingConfig(whole_word_masking=True)).ordered())
    loader = BatchLoader(ds, zh_vocab.special_ids(), 8, masking=MaskingConfig(whole_word_masking=True),
                         words=zh_words)
    mask, longer = zh_vocab.special_ids().mask, 0
    for batch in loader.ordered():
        batch = {k: v.numpy() for k, v in batch.items() if hasattr(v, "numpy")}
        src = batch["src"]
        for b in range(len(src)):
            row = batch["mlm_pos"][(batch["mlm_pos"] // src.shape[1]) == b] % src.shape[1]
            orig = src[b].copy()
            orig[row] = batch["mlm_tgt"][(batch["mlm_pos"] // src.shape[1]) == b]
            ids = orig[orig != zh_vocab.special_ids().pad]
            words, _ = check_whole(zh_vocab, zh_words, ids, src[b][:len(ids)], row, orig[row])
            longer += len(row) > words
    assert longer > 0 and (src == mask).any()


@pytest.mark.e2e
def test_static_dataset_refuses_another_masking_at_pretrain(tmp_path, bert_dataset):
    proc = run_script("pretrain.py", "--dataset_path", bert_dataset, "--vocab_path", ZH_VOCAB, "--config_path",
                      "bert_tiny", "--output_model_path", str(tmp_path / "m.bin"), "--total_steps", "1",
                      "--whole_word_masking")
    assert_clean_error(proc, "--whole_word_masking differs from the dataset", "--dynamic_masking")
