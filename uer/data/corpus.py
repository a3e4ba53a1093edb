"""Reading a corpus: parallel tokenization of byte ranges into a flat token file plus a per-line
length array, then grouping lines into documents for a corpus format.

Corpus formats:
  documents  one sentence a line, documents separated by blank lines (bert, albert)
  lines      one document a line (mlm, lm, bilm, t5); blank lines are skipped
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from uer.errors import UerError

BLANK = -1  # line length marker for a blank (whitespace-only) line
RANGE_BYTES = 1 << 22  # tokenization work unit; any value gives the same result


def byte_ranges(path: str, target_bytes: int = RANGE_BYTES) -> list[tuple[int, int]]:
    """Split the file into ranges of about target_bytes that end just after a newline."""
    size = os.path.getsize(path)
    ranges, start = [], 0
    with open(path, "rb") as f:
        while start < size:
            end = min(start + target_bytes, size)
            if end < size:
                f.seek(end)
                while True:
                    block = f.read(1 << 16)
                    if not block:
                        end = size
                        break
                    k = block.find(b"\n")
                    if k >= 0:
                        end = end + k + 1
                        break
                    end += len(block)
            ranges.append((start, end))
            start = end
    return ranges


_WORKER_TOKENIZER = None


def init_tokenize_worker(tokenizer_factory, single_thread: bool) -> None:
    global _WORKER_TOKENIZER
    if single_thread:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER_TOKENIZER = tokenizer_factory()


def tokenize_range(args):
    """Tokenize the lines of one byte range. Returns (line_lengths, token_ids, error)."""
    path, start, end, dtype = args
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    raw_lines = data.split(b"\n")
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()  # the range ends with a newline
    texts = []
    for k, raw in enumerate(raw_lines):
        try:
            texts.append(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            return None, None, (k, f"invalid UTF-8 at byte {e.start} of the line "
                                   "(the corpus must be UTF-8 text)")
    lengths = np.empty(len(texts), dtype=np.int64)
    nonblank = [i for i, t in enumerate(texts) if t.strip()]
    lengths[:] = BLANK
    encoded = _WORKER_TOKENIZER.encode_batch([texts[i] for i in nonblank]) if nonblank else []
    for i, ids in zip(nonblank, encoded):
        lengths[i] = len(ids)
    # ids are below the vocabulary size, which chose dtype
    flat = np.fromiter((t for ids in encoded for t in ids), dtype=dtype)
    return lengths, flat, None


@dataclass
class CorpusIndex:
    """Tokenized corpus on disk: the tokens of every non-empty sentence, and the documents."""
    tokens: np.ndarray      # flat ids (memmap)
    sent_start: np.ndarray  # int64 [n_sentences]
    sent_len: np.ndarray    # int64 [n_sentences]
    doc_off: np.ndarray     # int64 [n_docs + 1], into the sentence arrays

    @property
    def n_docs(self) -> int:
        return len(self.doc_off) - 1

    def sentences(self, d: int) -> list[np.ndarray]:
        a, b = self.doc_off[d], self.doc_off[d + 1]
        return [self.tokens[s:s + n] for s, n in zip(self.sent_start[a:b], self.sent_len[a:b])]

    def doc_tokens(self, d: int) -> np.ndarray:
        a, b = self.doc_off[d], self.doc_off[d + 1]
        if b - a == 1:
            s = self.sent_start[a]
            return np.asarray(self.tokens[s:s + self.sent_len[a]])
        return np.concatenate(self.sentences(d)) if b > a else self.tokens[:0]

    def save(self, directory: str) -> None:
        for name in ("sent_start", "sent_len", "doc_off"):
            np.save(os.path.join(directory, name + ".npy"), getattr(self, name))

    @classmethod
    def open(cls, directory: str, dtype) -> "CorpusIndex":
        tok_path = os.path.join(directory, "tokens.bin")
        n = os.path.getsize(tok_path) // np.dtype(dtype).itemsize
        tokens = (np.memmap(tok_path, dtype=dtype, mode="r", shape=(n,)) if n
                  else np.zeros(0, dtype=dtype))
        arrs = {name: np.load(os.path.join(directory, name + ".npy"), mmap_mode="r")
                for name in ("sent_start", "sent_len", "doc_off")}
        return cls(tokens=tokens, **arrs)


def group_documents(line_len: np.ndarray, corpus_format: str) -> tuple[np.ndarray, ...]:
    """From per-line token counts (BLANK for blank lines) to sentence and document arrays.
    Lines that tokenize to nothing are dropped; a blank line closes a document."""
    nonempty = line_len > 0
    sent_len = line_len[nonempty]
    starts = np.concatenate([[0], np.cumsum(np.where(line_len > 0, line_len, 0))[:-1]]) \
        if len(line_len) else np.zeros(0, dtype=np.int64)
    sent_start = starts[nonempty]
    if corpus_format == "lines":
        doc_off = np.arange(len(sent_len) + 1, dtype=np.int64)
    elif corpus_format == "documents":
        # document id of each sentence = number of blank lines before it; empty documents vanish
        blank_before = np.cumsum(line_len == BLANK)[nonempty]
        if len(blank_before):
            change = np.flatnonzero(np.diff(blank_before)) + 1
            doc_off = np.concatenate([[0], change, [len(sent_len)]]).astype(np.int64)
        else:
            doc_off = np.zeros(1, dtype=np.int64)
    else:
        raise ValueError(corpus_format)
    return sent_start.astype(np.int64), sent_len.astype(np.int64), doc_off
