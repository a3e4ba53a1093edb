"""Vocabulary: one token a line, id = line number; special tokens looked up by name."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from uer.errors import UerError

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)
#: the reserved head of every vocabulary build_vocab writes (models/reserved_vocab.txt)
RESERVED_TOKENS = (PAD,) + tuple(f"[unused{i}]" for i in range(1, 100)) + (UNK, CLS, SEP, MASK)


@dataclass(frozen=True)
class SpecialIds:
    pad: int
    unk: int
    cls: int
    sep: int
    mask: int

    def all(self) -> tuple[int, ...]:
        return (self.pad, self.unk, self.cls, self.sep, self.mask)


class Vocab:
    """Token list with a token -> id map. With duplicate tokens the later line wins in the map,
    but every line counts towards the size (as in the reference)."""

    def __init__(self, tokens: list[str], source: str = "<memory>"):
        self.tokens = list(tokens)
        self.source = source
        self.w2i: dict[str, int] = {}
        for i, t in enumerate(self.tokens):
            self.w2i[t] = i

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def load(cls, path: str) -> "Vocab":
        if not os.path.isfile(path):
            raise UerError(f"vocabulary file not found: {path}")
        tokens = []
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise UerError(f"{path} line {lineno}: not valid UTF-8 "
                                   "(a vocabulary file holds one UTF-8 token a line)") from None
                line = line.rstrip("\r\n")
                if lineno == 1:
                    line = line.removeprefix("\ufeff")  # a byte-order mark is not part of the first token
                fields = line.split()
                tokens.append(fields[0] if fields else " ")
        if not tokens:
            raise UerError(f"vocabulary file is empty: {path}")
        return cls(tokens, source=path)

    @classmethod
    def from_spm(cls, path: str) -> "Vocab":
        if not os.path.isfile(path):
            raise UerError(f"sentencepiece model not found: {path}")
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor()
        try:
            sp.Load(path)
        except Exception as e:  # sentencepiece raises OSError/RuntimeError with its own text
            raise UerError(f"cannot read sentencepiece model {path}: {e}") from None
        return cls([sp.IdToPiece(i) for i in range(sp.GetPieceSize())], source=path)

    def save(self, path: str) -> None:
        from uer.utils import atomic_write_text

        atomic_write_text(path, "".join(t + "\n" for t in self.tokens))

    # -- queries ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.tokens)

    def get(self, token: str, default: int | None = None) -> int | None:
        return self.w2i.get(token, default)

    def special_ids(self) -> SpecialIds:
        missing = [t for t in SPECIAL_TOKENS if t not in self.w2i]
        if missing:
            raise UerError(f"vocabulary {self.source} lacks the special token(s) {', '.join(missing)}; "
                           f"every vocabulary needs {', '.join(SPECIAL_TOKENS)}")
        return SpecialIds(*(self.w2i[t] for t in SPECIAL_TOKENS))

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for t in self.tokens:
            h.update(t.encode("utf-8"))
            h.update(b"\n")
        return h.hexdigest()[:16]

    def token_dtype(self):
        import numpy as np

        return np.uint16 if len(self) <= 65536 else np.uint32


def load_vocab(vocab_path: str | None, spm_model_path: str | None, what: str = "") -> Vocab:
    """The vocabulary an options pair names: a sentencepiece model wins over a vocab file."""
    if spm_model_path:
        return Vocab.from_spm(spm_model_path)
    if vocab_path:
        return Vocab.load(vocab_path)
    raise UerError(f"no {what}vocabulary given: pass --{what.replace(' ', '_')}vocab_path "
                   f"or --{what.replace(' ', '_')}spm_model_path")
