"""Tokenizers: `bert` (basic + WordPiece, or sentencepiece with --spm_model_path), `char`, `space`.

Each tokenizer is registered once in TOKENIZERS; the command-line choices are read from it.
`encode_batch` is the fast path used by preprocess: for `bert` with a vocab file it runs HF
`tokenizers` (Rust) configured to give exactly the ids of the reference algorithm, which is kept
here in pure Python (`BasicTokenizer` + `wordpiece`) as the specification and as the fallback.
"""
from __future__ import annotations

import itertools
import os
import unicodedata
from typing import TYPE_CHECKING

from uer.errors import UerError
from uer.registry import TOKENIZERS, register
from uer.vocab import RESERVED_TOKENS, UNK, Vocab

if TYPE_CHECKING:
    import numpy as np


class Tokenizer:
    name = ""

    def __init__(self, vocab: Vocab, spm_model_path: str | None = None, do_lower_case: bool = True):
        self.vocab = vocab
        self.unk_id = vocab.get(UNK, 0) if UNK in vocab.w2i else None
        self.do_lower_case = do_lower_case
        self.sp = None
        if spm_model_path:
            import sentencepiece as spm

            self.sp = spm.SentencePieceProcessor()
            self.sp.Load(spm_model_path)

    def tokenize(self, text: str) -> list[str]:
        raise NotImplementedError

    def convert_tokens_to_ids(self, tokens: list[str]) -> list[int]:
        if self.sp is not None:
            return [self.sp.PieceToId(t) for t in tokens]
        w2i, unk = self.vocab.w2i, self.unk_id
        return [w2i.get(t, unk) for t in tokens]

    def encode(self, text: str) -> list[int]:
        return self.convert_tokens_to_ids(self.tokenize(text))

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def encode_flat(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(ids per text, int64 [n]; all the ids in order, int64): encode_batch, flattened."""
        import numpy as np

        encoded = self.encode_batch(texts)
        counts = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        ids = np.fromiter(itertools.chain.from_iterable(encoded), dtype=np.int64, count=int(counts.sum()))
        return counts, ids

    def describe(self) -> str:
        return describe_tokenizer(self.name, self.sp is not None, self.do_lower_case)


def describe_tokenizer(name: str, spm: bool, do_lower_case: bool) -> str:
    """What identifies a tokenizer's output (stored in dataset headers)."""
    if spm:
        return f"{name}+spm"
    return f"{name}(lower={do_lower_case})" if name == "bert" else name


@register(TOKENIZERS, "char")
class CharTokenizer(Tokenizer):
    """One token per Unicode character of the stripped text (spaces included)."""

    def tokenize(self, text: str) -> list[str]:
        return list(text.strip())


@register(TOKENIZERS, "space")
class SpaceTokenizer(Tokenizer):
    """Split the stripped text on the single character ' ' (for pre-segmented corpora)."""

    def tokenize(self, text: str) -> list[str]:
        text = text.strip()
        return text.split(" ") if text else []


@register(TOKENIZERS, "bert")
class BertTokenizer(Tokenizer):
    """Google BERT tokenization: basic tokenizer then greedy longest-match-first WordPiece."""

    def __init__(self, vocab: Vocab, spm_model_path: str | None = None, do_lower_case: bool = True):
        super().__init__(vocab, spm_model_path, do_lower_case)
        self.basic = BasicTokenizer(do_lower_case)
        self._hf_cache: dict[bool, object] = {}

    def tokenize(self, text: str) -> list[str]:
        if self.sp is not None:
            return spm_encode_pieces(self.sp, text)
        out = []
        for word in self.basic.tokenize(text):
            out.extend(wordpiece(word, self.vocab.w2i))
        return out

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if self._hf() is None:
            return super().encode_batch(texts)
        pieces, owner = cut_long_texts(texts)
        out: list[list[int]] = []
        for a, b in slices(pieces):
            out.extend(e.ids for e in self._encode(pieces[a:b]))
        if owner is not None:  # the pieces' ids joined per text
            joined: list[list[int]] = [[] for _ in texts]
            for i, piece_ids in zip(owner, out):
                joined[i].extend(piece_ids)
            out = joined
        for i, t in enumerate(texts):
            if self._rust_differs(t):
                out[i] = self.encode(t)
        return out

    def _rust_differs(self, text: str) -> bool:
        """The Rust normalizer lowercases character by character: a word-final capital sigma
        becomes σ, where the reference's str.lower() gives ς. Such texts take the reference path."""
        return self.do_lower_case and _SIGMA in text

    def _hf(self, marker: bool = False):
        """The HF `tokenizers` pipeline (built on first use; None without a fast path)."""
        if marker not in self._hf_cache:
            self._hf_cache[marker] = None if self.sp is not None else \
                _build_fast_bert(self.vocab, self.do_lower_case, marker)
        return self._hf_cache[marker]

    def _encode(self, texts: list[str], marker: bool = False):
        hf = self._hf(marker)
        return getattr(hf, "encode_batch_fast", hf.encode_batch)(texts, add_special_tokens=False)

    def encode_flat(self, texts):
        """The fast path encodes groups of JOIN_LINES texts joined by " <marker> " (a word of its
        own, whose id is len(vocab)) and cuts the ids at the markers: one Encoding per group
        instead of per text. Each text is tokenized alone either way (the marker is a
        whitespace-delimited word; nothing in BERT tokenization crosses whitespace). A slice
        whose texts produce a marker id themselves (the marker character in the text) is
        encoded text by text."""
        import numpy as np

        if self._hf(marker=True) is None:
            return super().encode_flat(texts)
        pieces, owner = cut_long_texts(texts)
        if owner is not None:  # the pieces' counts summed per text (the ids are in order)
            counts, ids = self.encode_flat(pieces)
            return np.bincount(owner, weights=counts, minlength=len(texts)).astype(np.int64), ids
        marker = len(self.vocab)
        counts, ids = [], []
        glue = f" {_MARKER} "
        for k, end in slices(texts):
            part = texts[k:end]
            groups = [glue.join(part[g:g + JOIN_LINES]) + glue for g in range(0, len(part), JOIN_LINES)]
            flat = np.concatenate([np.array(e.ids, dtype=np.int64) for e in self._encode(groups, marker=True)])
            at = np.flatnonzero(flat == marker)
            if len(at) == len(part) and not any(map(self._rust_differs, groups)):
                counts.append(np.diff(at, prepend=-1) - 1)
                ids.append(np.delete(flat, at))
            else:  # text by text, through encode_batch
                c, i = super().encode_flat(part)
                counts.append(c)
                ids.append(i)
        if not counts:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        return np.concatenate(counts), np.concatenate(ids)


ENCODE_SLICE = 2048  # texts per call of the HF tokenizer
# An HF Encoding holds offsets and token strings besides the ids (about 170 bytes per character
# of text): texts go to the tokenizer in slices of at most this many characters, and a longer
# text in pieces, so that the memory for one long line is bounded (a 20 MB line took 3.5 GB).
SLICE_CHARS = 1 << 18
LONG_TEXT = 1 << 15


def slices(texts: list[str]):
    """(start, end) of consecutive slices of at most ENCODE_SLICE texts and about SLICE_CHARS
    characters."""
    start, chars = 0, 0
    for i, t in enumerate(texts):
        if i > start and (i - start >= ENCODE_SLICE or chars + len(t) > SLICE_CHARS):
            yield start, i
            start, chars = i, 0
        chars += len(t)
    if start < len(texts):
        yield start, len(texts)


def _starts_a_word(ch: str) -> bool:
    """Whether BERT's basic tokenizer begins a new token at `ch` whatever precedes it."""
    return _is_whitespace(ch) or _is_cjk(ord(ch)) or _is_punctuation(ch)


def cut_long_texts(texts: list[str], size: int = LONG_TEXT) -> tuple[list[str], list[int] | None]:
    """(pieces, index of the text each comes from): texts longer than `size` characters are cut
    just before a character that starts a new token anyway (whitespace, a CJK character, a
    punctuation mark), so that the pieces tokenize to the text's tokens. A run of `size`
    characters without such a place stays whole (it is one word: one [UNK] beyond 200 characters).
    (texts, None) when nothing is cut, the usual case."""
    if all(len(t) <= size for t in texts):
        return texts, None
    pieces, owner = [], []
    for i, text in enumerate(texts):
        start = 0
        while len(text) - start > size:
            cut = next((j for j in range(start + size, len(text)) if _starts_a_word(text[j])), None)
            if cut is None:
                break
            pieces.append(text[start:cut])
            owner.append(i)
            start = cut
        pieces.append(text[start:])
        owner.append(i)
    return (texts, None) if len(pieces) == len(texts) else (pieces, owner)
JOIN_LINES = 32  # texts per HF Encoding in encode_flat
_SIGMA = "\u03a3"
_MARKER = "\u2603"  # a symbol: not removed by clean_text, not punctuation, not CJK, so a word alone

# ----------------------------------------------------------------------------------------------
# The reference algorithm (pure Python)
# ----------------------------------------------------------------------------------------------
_CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
               (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


def _is_cjk(cp: int) -> bool:
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


def _is_whitespace(ch: str) -> bool:
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _is_control(ch: str) -> bool:
    if ch in "\t\n\r":
        return False
    return unicodedata.category(ch) in ("Cc", "Cf")


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


class BasicTokenizer:
    def __init__(self, do_lower_case: bool = True):
        self.do_lower_case = do_lower_case

    def tokenize(self, text: str) -> list[str]:
        chars = []
        for ch in text:
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD or _is_control(ch):
                continue
            if _is_whitespace(ch):
                chars.append(" ")
            elif _is_cjk(cp):
                chars.append(f" {ch} ")
            else:
                chars.append(ch)
        out = []
        for token in "".join(chars).split():
            if self.do_lower_case:
                token = token.lower()
                token = "".join(c for c in unicodedata.normalize("NFD", token)
                                if unicodedata.category(c) != "Mn")
            current: list[str] = []
            for c in token:
                if _is_punctuation(c):
                    if current:
                        out.append("".join(current))
                        current = []
                    out.append(c)
                else:
                    current.append(c)
            if current:
                out.append("".join(current))
        return out


def wordpiece(word: str, w2i: dict[str, int], max_chars: int = 200) -> list[str]:
    if len(word) > max_chars:
        return [UNK]
    pieces, start = [], 0
    while start < len(word):
        end = len(word)
        piece = None
        while start < end:
            sub = word[start:end] if start == 0 else "##" + word[start:end]
            if sub in w2i:
                piece = sub
                break
            end -= 1
        if piece is None:
            return [UNK]
        pieces.append(piece)
        start = end
    return pieces


def spm_encode_pieces(sp, text: str) -> list[str]:
    """XLNet-style piece encoding: a piece ending in '<digit>,' is re-split so that the comma
    stands alone."""
    pieces = sp.EncodeAsPieces(text)
    out = []
    for p in pieces:
        if len(p) > 1 and p[-1] == "," and p[-2].isdigit():
            cur = sp.EncodeAsPieces(p[:-1].replace("\u2581", ""))
            if p[0] != "\u2581" and cur and cur[0][0] == "\u2581":
                cur[0] = cur[0][1:] if len(cur[0]) > 1 else cur[0]
                if cur[0] == "":
                    cur = cur[1:]
            out.extend(cur)
            out.append(p[-1])
        else:
            out.append(p)
    return out


def _build_fast_bert(vocab: Vocab, do_lower_case: bool, marker: bool = False):
    """HF `tokenizers` pipeline equal to BasicTokenizer + wordpiece, or None if unavailable;
    marker: _MARKER gets the id len(vocab) (see BertTokenizer.encode_flat)."""
    try:
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import models, normalizers, pre_tokenizers
    except ImportError:
        return None
    if UNK not in vocab.w2i:
        return None
    w2i = dict(vocab.w2i)
    if marker:
        w2i[_MARKER] = len(vocab)
    tok = HFTokenizer(models.WordPiece(w2i, unk_token=UNK, max_input_chars_per_word=200,
                                       continuing_subword_prefix="##"))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                strip_accents=do_lower_case, lowercase=do_lower_case)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tok


def build_tokenizer(name: str, vocab: Vocab, spm_model_path: str | None = None,
                    do_lower_case: bool = True) -> Tokenizer:
    if name not in TOKENIZERS:
        raise UerError(f"unknown tokenizer {name!r}; choose one of {', '.join(sorted(TOKENIZERS))}")
    return TOKENIZERS[name](vocab, spm_model_path=spm_model_path, do_lower_case=do_lower_case)


# -- building a vocabulary from a corpus (scripts/build_vocab.py) -----------------------------------

def _count_range(args):
    from collections import Counter

    path, start, end, tokenizer = args
    tok = build_tokenizer(tokenizer, Vocab([UNK]))
    counts: Counter = Counter()
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    for k, raw in enumerate(data.split(b"\n")):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None, k
        counts.update(tok.tokenize(line))
    return counts, None


def build_vocab(corpus_path: str, tokenizer: str = "space", min_count: int = 1,
                workers_num: int = 1) -> Vocab:
    """Reserved tokens, then every corpus token seen at least min_count times, most frequent first
    (ties in first-seen order), reserved tokens not repeated. No line is skipped."""
    import multiprocessing as mp
    from collections import Counter

    from uer.data.corpus import byte_ranges

    if tokenizer not in ("char", "space"):
        raise UerError(f"--tokenizer {tokenizer}: build_vocab counts 'char' or 'space' tokens")
    if not os.path.isfile(corpus_path):
        raise UerError(f"--corpus_path {corpus_path}: file not found")
    ranges = byte_ranges(corpus_path, max(1 << 16, os.path.getsize(corpus_path) // max(1, workers_num) + 1))
    tasks = [(corpus_path, a, b, tokenizer) for a, b in ranges]
    if workers_num > 1 and len(tasks) > 1:
        with mp.get_context("fork").Pool(workers_num) as pool:
            results = pool.map(_count_range, tasks)
    else:
        results = [_count_range(t) for t in tasks]
    total: Counter = Counter()
    for (counts, bad), (path, start, _, _) in zip(results, tasks):
        if counts is None:
            with open(path, "rb") as f:
                line = f.read(start).count(b"\n") + bad + 1
            raise UerError(f"{path} line {line}: invalid UTF-8 (the corpus must be UTF-8 text)")
        for tok, n in counts.items():
            total[tok] += n
    ranked = sorted(total.items(), key=lambda kv: -kv[1])  # stable: ties keep first-seen order
    reserved = set(RESERVED_TOKENS)
    tokens = list(RESERVED_TOKENS) + [t for t, n in ranked if n >= min_count and t not in reserved
                                      and t.strip() == t and t != ""]
    return Vocab(tokens, source=corpus_path)
