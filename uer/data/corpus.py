"""Reading a corpus: parallel tokenization of byte ranges into a flat token file plus a per-line
length array, then grouping lines into documents for a corpus format.

Corpus formats:
  documents  one sentence a line, documents separated by blank lines (bert, albert)
  lines      one document a line (mlm, lm, bilm, t5); blank lines are skipped
  pairs      source<TAB>target a line (mt); the target side has its own tokenizer
  labeled    label<TAB>text or label<TAB>text_a<TAB>text_b a line (cls); a first line whose
             label field reads "label" is a header and is skipped
In the field formats a line is a document whose sentences are its text fields (empty ones
included), and a labeled line also carries its label.
"""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass

import numpy as np


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


FIELD_FORMATS = ("pairs", "labeled")
# gzip, bzip2, xz, zip, zstd, 7z: a compressed corpus given as text
BINARY_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"PK\x03\x04", b"\x28\xb5\x2f\xfd", b"7z\xbc\xaf")
_WORKER: dict = {}


def init_tokenize_worker(tokenizers_factory, single_thread: bool) -> None:
    """tokenizers_factory() -> (tokenizer, target-side tokenizer or None)."""
    if single_thread:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER["tokenizers"] = tokenizers_factory()


#: the largest label a dataset stores (labels are 0 .. labels_num - 1)
MAX_LABEL = 2**31 - 1


class LineError(Exception):
    pass


def split_fields(text: str, corpus_format: str, first_line: bool):
    """(text fields, label) of one non-blank line of a field format; None for a header line."""
    fields = text.rstrip("\r\n").split("\t")
    if corpus_format == "pairs":
        if len(fields) != 2:
            raise LineError(f"expected source<TAB>target (2 tab-separated fields), found {len(fields)}")
        return fields, -1
    if len(fields) not in (2, 3):
        raise LineError(f"expected label<TAB>text or label<TAB>text_a<TAB>text_b, found "
                        f"{len(fields)} tab-separated fields")
    try:
        label = int(fields[0])
    except ValueError:
        if first_line and fields[0].strip().lower() == "label":
            return None
        raise LineError(f"the label {fields[0]!r} is not an integer") from None
    if label < 0:
        raise LineError(f"the label {label} is negative; labels are 0, 1, ..., labels_num - 1")
    if label > MAX_LABEL:
        raise LineError(f"the label {label} is beyond {MAX_LABEL}, the largest a dataset holds; labels are "
                        "0, 1, ..., labels_num - 1")
    return fields[1:], label


def _utf8_error(data: bytes, start: int) -> tuple[int, str]:
    """(line index in the range, message) of the first line that is not UTF-8."""
    for k, raw in enumerate(data.split(b"\n")):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as e:
            hint = ""
            if b"\x00" in raw or (start == 0 and k == 0 and raw.startswith(BINARY_MAGIC)):
                hint = "; this looks like a binary or compressed file"
            return k, f"invalid UTF-8 at byte {e.start} of the line (the corpus must be UTF-8 text{hint})"
    raise AssertionError("no invalid line found")


def tokenize_range(args):
    """Tokenize the lines of one byte range. Returns (arrays, error): the text formats give
    line_len (BLANK for blank lines) and tokens; the field formats give line_fields (0 for a
    skipped line), field_len, label and tokens. error is (line index in the range, message)."""
    path, start, end, dtype, corpus_format = args
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    try:
        texts = data.decode("utf-8").split("\n")  # a newline byte is never inside a UTF-8 character
    except UnicodeDecodeError:
        return None, _utf8_error(data, start)
    if texts and texts[-1] == "":
        texts.pop()  # the range ends with a newline
    tok, tgt_tok = _WORKER["tokenizers"]
    nonblank = [i for i, t in enumerate(texts) if t.strip()]
    if corpus_format not in FIELD_FORMATS:
        lengths = np.full(len(texts), BLANK, dtype=np.int64)
        counts, flat = tok.encode_flat([texts[i] for i in nonblank])
        lengths[nonblank] = counts
        # ids are below the vocabulary size, which chose dtype
        return {"line_len": lengths, "tokens": flat.astype(dtype)}, None

    line_fields = np.zeros(len(texts), dtype=np.int64)
    labels = np.full(len(texts), -1, dtype=np.int64)
    columns: list[list[str]] = [[], [], []]
    where = []  # (line, column, row in column)
    for i in nonblank:
        try:
            parsed = split_fields(texts[i], corpus_format, start == 0 and i == nonblank[0])
        except LineError as e:
            return None, (i, str(e))
        if parsed is None:
            continue
        fields, labels[i] = parsed
        line_fields[i] = len(fields)
        for c, text in enumerate(fields):
            where.append((i, c, len(columns[c])))
            columns[c].append(text)
    # the target side of a pair has its own tokenizer; cls fields share one
    encoded = [(tgt_tok if c == 1 and tgt_tok is not None else tok).encode_batch(col) if col else []
               for c, col in enumerate(columns)]
    pieces = [encoded[c][r] for _, c, r in where]
    field_len = np.array([len(p) for p in pieces], dtype=np.int64)
    flat = np.fromiter(itertools.chain.from_iterable(pieces), dtype=dtype, count=int(field_len.sum()))
    return {"line_fields": line_fields, "field_len": field_len, "label": labels, "tokens": flat}, None


@dataclass
class CorpusIndex:
    """Tokenized corpus on disk: the tokens of every non-empty sentence, and the documents."""
    tokens: np.ndarray      # flat ids (memmap)
    sent_start: np.ndarray  # int64 [n_sentences]
    sent_len: np.ndarray    # int64 [n_sentences]
    doc_off: np.ndarray     # int64 [n_docs + 1], into the sentence arrays
    doc_label: np.ndarray | None = None  # int64 [n_docs] (labeled format)

    @property
    def n_docs(self) -> int:
        return len(self.doc_off) - 1

    def sentences(self, d: int) -> list[np.ndarray]:
        a, b = self.doc_off[d], self.doc_off[d + 1]
        return [self.tokens[s:s + n] for s, n in zip(self.sent_start[a:b], self.sent_len[a:b])]

    def token_start(self, d: int) -> int:
        """Offset of document d's first token in `tokens` (the total for d = n_docs): documents
        cover the token file in order, without gaps."""
        s = int(self.doc_off[d])
        return int(self.sent_start[s]) if s < len(self.sent_start) else len(self.tokens)

    def doc_tokens(self, d: int) -> np.ndarray:
        a, b = self.doc_off[d], self.doc_off[d + 1]
        if b - a == 1:
            s = self.sent_start[a]
            return np.asarray(self.tokens[s:s + self.sent_len[a]])
        return np.concatenate(self.sentences(d)) if b > a else self.tokens[:0]

    def save(self, directory: str) -> None:
        for name in ("sent_start", "sent_len", "doc_off", "doc_label"):
            if getattr(self, name) is not None:
                np.save(os.path.join(directory, name + ".npy"), getattr(self, name))

    @classmethod
    def open(cls, directory: str, dtype) -> "CorpusIndex":
        tok_path = os.path.join(directory, "tokens.bin")
        n = os.path.getsize(tok_path) // np.dtype(dtype).itemsize
        # a plain ndarray over the mapping: slicing a np.memmap builds a memmap object each time
        tokens = (np.memmap(tok_path, dtype=dtype, mode="r", shape=(n,)).view(np.ndarray) if n
                  else np.zeros(0, dtype=dtype))
        arrs = {name: np.load(os.path.join(directory, name + ".npy"), mmap_mode="r").view(np.ndarray)
                for name in ("sent_start", "sent_len", "doc_off", "doc_label")
                if os.path.exists(os.path.join(directory, name + ".npy"))}
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


def group_fields(line_fields: np.ndarray, field_len: np.ndarray, label: np.ndarray):
    """Field formats: every kept line is a document of its fields."""
    kept = line_fields > 0
    sent_start = np.concatenate([[0], np.cumsum(field_len)[:-1]]) if len(field_len) else field_len
    doc_off = np.concatenate([[0], np.cumsum(line_fields[kept])]).astype(np.int64)
    return sent_start.astype(np.int64), field_len.astype(np.int64), doc_off, label[kept].astype(np.int64)
