import pytest

from conftest import BERT_CORPUS, EN_VOCAB, SPM_MODEL, ZH_VOCAB
from uer.tokenizers import build_tokenizer
from uer.vocab import Vocab


@pytest.fixture(scope="module")
def zh():
    return build_tokenizer("bert", Vocab.load(ZH_VOCAB))


@pytest.fixture(scope="module")
def en():
    return build_tokenizer("bert", Vocab.load(EN_VOCAB))


@pytest.mark.parametrize("text,tokens", [
    ("Hello, World!", ["hello", ",", "world", "!"]),                              # lower case, ASCII punct
    ("Héllo café naïve", ["hello", "cafe", "naive"]),                             # accents stripped
    ("unaffable", ["una", "##ffa", "##ble"]),                                     # WordPiece split
    ("tokenization", ["token", "##ization"]),
    ("a\tb\u00a0c\x00d\u200b", ["a", "b", "cd"]),                                 # whitespace, NUL, Cf dropped
    ("x" * 201, ["[UNK]"]),                                                       # longer than 200 chars
    ("\u2603", ["[UNK]"]),                                                        # no piece matches
])
def test_bert_tokenizer_hand_checked(en, text, tokens):
    assert en.tokenize(text) == tokens
    assert en.encode(text) == en.convert_tokens_to_ids(tokens)
    assert en.encode_batch([text]) == [en.encode(text)]  # the Rust fast path agrees


@pytest.mark.parametrize("text,tokens", [
    ("我爱北京天安门", ["我", "爱", "北", "京", "天", "安", "门"]),               # CJK split per character
    ("你好，世界！", ["你", "好", "，", "世", "界", "！"]),                        # full-width punctuation
    ("我爱NLP", ["我", "爱", "n", "##lp"]),                                       # longest-match-first
])
def test_bert_tokenizer_zh(zh, text, tokens):
    assert zh.tokenize(text) == tokens
    assert zh.encode_batch([text]) == [zh.convert_tokens_to_ids(tokens)]


def test_final_sigma_as_the_reference(zh):
    """str.lower() gives a word-final capital sigma as ς; the Rust normalizer would give σ."""
    assert zh.tokenize("ΟΔΟΣ") == ["ο", "##δ", "##ο", "##ς"]
    assert zh.encode_batch(["ΟΔΟΣ", "ΣΟΣ x", "abc"]) == [zh.encode("ΟΔΟΣ"), zh.encode("ΣΟΣ x"), zh.encode("abc")]


def test_bert_ids_zh(zh):
    # ids straight from google_zh_vocab.txt (line number - 1)
    v = zh.vocab
    assert zh.encode("我爱NLP") == [2769, 4263, 156, 10986]
    assert [v.tokens[i] for i in (2769, 4263, 156, 10986)] == ["我", "爱", "n", "##lp"]
    assert v.get("[CLS]") == 101 and v.get("[UNK]") == 100
    assert zh.encode("\U0001F600") == [100]


def test_fast_path_equals_reference_on_corpus(zh):
    with open(BERT_CORPUS, encoding="utf-8") as f:
        lines = f.read().split("\n")[:4000]
    assert zh.encode_batch(lines) == [zh.encode(l) for l in lines]


def _flat(tok, texts):
    encoded = [tok.encode(t) for t in texts]
    return [len(e) for e in encoded], [i for e in encoded for i in e]


@pytest.mark.parametrize("extra", [[], ["\u2603"], ["雪\u2603人 x\u2603", "a \u2603 b"]])
def test_encode_flat_joins_texts_without_changing_them(zh, en, extra):
    """encode_flat tokenizes groups of texts joined by a marker word: every text still gets
    exactly the reference's ids, including texts that hold the marker character (that slice is
    then encoded text by text), empty texts and texts whose edges are accents or final sigmas."""
    from uer.tokenizers import ENCODE_SLICE, JOIN_LINES

    with open(BERT_CORPUS, encoding="utf-8") as f:
        lines = f.read().split("\n")[:3000]
    lines[5:5] = ["", "  ", "\u0301abc", "x" * 201, "我爱NLP"] + extra
    lines[2500:2500] = ["ΟΔΟΣ", "ΟΔΟΣ\u0301 x"]  # final sigma: the reference lowercases it to ς
    assert len(lines) > ENCODE_SLICE + JOIN_LINES  # several slices, the last one short
    for tok in (zh, en):
        counts, ids = tok.encode_flat(lines)
        assert (counts.tolist(), ids.tolist()) == _flat(tok, lines)
    assert [a.tolist() for a in zh.encode_flat([])] == [[], []]


def test_char_and_space_tokenizers():
    v = Vocab(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "hello", " "])
    char = build_tokenizer("char", v)
    assert char.tokenize(" ab c ") == ["a", "b", " ", "c"]
    assert char.encode("ab c") == [5, 6, 8, 1]
    space = build_tokenizer("space", v)
    assert space.tokenize("hello  a") == ["hello", "", "a"]
    assert space.encode("hello a zz") == [7, 5, 1]


def test_sentencepiece_vocab_and_ids():
    v = Vocab.from_spm(SPM_MODEL)
    assert len(v) == 100000 and v.special_ids().pad == 0 and v.special_ids().cls == 2
    tok = build_tokenizer("bert", v, spm_model_path=SPM_MODEL)
    pieces = tok.tokenize("我们今天去北京, 2019,10")
    assert "".join(pieces).replace("\u2581", "") == "我们今天去北京,2019,10"
    assert "," in pieces and all(not (len(p) > 1 and p.endswith(",") and p[-2].isdigit()) for p in pieces)
    assert tok.encode("我们") == [v.get(p) for p in tok.tokenize("我们")]


def test_vocab_rules(tmp_path):
    p = tmp_path / "v.txt"
    p.write_text("[PAD]\n[UNK] 12\n\n[CLS]\n[SEP]\n[MASK]\nx\nx\n", encoding="utf-8")
    v = Vocab.load(str(p))
    assert len(v) == 8 and v.tokens[2] == " " and v.get("x") == 7 and v.get("[UNK]") == 1


def test_long_texts_are_cut_where_a_token_starts_anyway(zh, en, monkeypatch):
    """A text beyond LONG_TEXT characters goes to the tokenizer in pieces (the memory for one long
    line is bounded); the ids are those of the whole text, for every kind of place a cut can fall
    (before whitespace, a CJK character, punctuation; never inside a word, never before an
    accent)."""
    import uer.tokenizers as t

    with open(BERT_CORPUS, encoding="utf-8") as f:
        corpus = f.read()[:20000].replace("\n", " ")
    texts = [corpus, "Héllo, wörld\u0301! " * 300 + "ΟΔΟΣ x", "x" * 500 + " ab" * 100, "naïve" * 60, "short"]
    for size in (7, 64):
        pieces, owner = t.cut_long_texts(texts, size)
        assert len(pieces) > 3 * len(texts) and sorted(owner) == owner
        for i, text in enumerate(texts):
            assert "".join(p for p, o in zip(pieces, owner) if o == i) == text
        for tok in (zh, en):
            whole = [tok.basic.tokenize(x) for x in texts]
            cut = [[] for _ in texts]
            for p, o in zip(pieces, owner):
                cut[o] += tok.basic.tokenize(p)
            assert cut == whole
    monkeypatch.setattr(t, "LONG_TEXT", 64)
    monkeypatch.setattr(t, "SLICE_CHARS", 1000)
    for tok in (zh, en):
        assert tok.encode_batch(texts) == [tok.encode(x) for x in texts]
        counts, ids = tok.encode_flat(texts)
        assert (counts.tolist(), ids.tolist()) == _flat(tok, texts)


@pytest.mark.e2e
def test_the_memory_for_one_long_line_is_bounded(tmp_path):
    """An 8 MB line used to take about 170x its size (1.4 GB); now the tokenizer's own use stays in
    a few hundred MB whatever the line's length."""
    import subprocess
    import sys

    script = tmp_path / "m.py"
    script.write_text(f"""
import resource
from uer.tokenizers import build_tokenizer
from uer.vocab import Vocab
tok = build_tokenizer("bert", Vocab.load({ZH_VOCAB!r}))
tok.encode_flat(["预热"])
text = open({BERT_CORPUS!r}, encoding="utf-8").read().replace("\\n", "")
line = (text * (8 * 2**20 // len(text.encode()) + 1))[:8 * 2**20 // 3]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
counts, ids = tok.encode_flat([line])
print(int(counts[0]), (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
""")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    tokens, grown_mb = map(int, out.stdout.split())
    assert tokens > 2_000_000
    assert grown_mb < 400, f"{grown_mb} MB for one 8 MB line"
