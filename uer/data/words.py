"""Word boundaries for whole word masking (--whole_word_masking): which tokens start a word.

English words come from the vocabulary: a WordPiece piece "##x" continues the word before it (in a
sentencepiece vocabulary, a piece without the leading "▁" does). Chinese words come from jieba: the
tokens of a run of Chinese characters are joined, cut into words, and a token starts a word where a
word starts (a user dictionary adds words jieba does not know). Boundaries are derived from the ids
at masking time, so a dataset needs nothing stored for them and dynamic masking can use them too.
"""
from __future__ import annotations

import logging
import os
from typing import Sequence

import numpy as np

from uer.errors import UerError

#: run texts whose cut is remembered (static masking cuts each instance dup_factor times)
CACHE_RUNS = 200_000


def _is_han(ch: str) -> bool:
    c = ord(ch)
    return (0x4E00 <= c <= 0x9FFF or 0x3400 <= c <= 0x4DBF or 0x20000 <= c <= 0x2A6DF or 0xF900 <= c <= 0xFAFF
            or 0x2F800 <= c <= 0x2FA1F)


def jieba_problems(user_dict_path: str | None, option: str = "--user_dict_path") -> list[str]:
    """Why jieba cannot segment here: not installed, or the user dictionary is not a readable file."""
    p = []
    try:
        import jieba  # noqa: F401
    except ImportError:
        p.append("--whole_word_masking segments Chinese with jieba, which is not installed: "
                 "pip install 'uer[wwm]' (or pip install jieba)")
    if user_dict_path is not None and not os.path.isfile(user_dict_path):
        p.append(f"{option} {user_dict_path}: no such file (a jieba user dictionary: one word a line, "
                 "optionally followed by a frequency and a part-of-speech tag)")
    return p


def whole_word_problems(target: str, user_dict_path: str | None) -> list[str]:
    """Why --whole_word_masking cannot apply to a dataset of `target` here."""
    from uer.registry import INSTANCE_BUILDERS

    p = []
    builder = INSTANCE_BUILDERS.get(target)
    if builder is not None and not builder.masked:
        masked = sorted(name for name, b in INSTANCE_BUILDERS.items() if b.masked)
        p.append(f"--whole_word_masking applies to the masked-token targets ({', '.join(masked)}); "
                 f"--target {target} masks nothing")
    return p + jieba_problems(user_dict_path)


class WordSplitter:
    """starts(ids): a bool per position, True where a word starts. A special token is a word of
    its own, and a word never runs across one."""

    def __init__(self, tokens: Sequence[str], special_ids: Sequence[int], user_dict_path: str | None = None):
        n = len(tokens)
        spm = any(t.startswith("\u2581") for t in tokens)
        self.continues = np.zeros(n, dtype=bool)
        self.han = np.zeros(n, dtype=bool)
        self.text: list[str] = []
        for i, t in enumerate(tokens):
            body = t[2:] if t.startswith("##") and len(t) > 2 else t.lstrip("\u2581")
            self.text.append(body)
            self.continues[i] = (t.startswith("##") and len(t) > 2) or (spm and not t.startswith("\u2581"))
            self.han[i] = bool(body) and all(_is_han(c) for c in body)
        special = np.asarray([s for s in special_ids if 0 <= s < n], dtype=np.int64)
        self.special = np.zeros(n, dtype=bool)
        self.special[special] = True
        self.continues[special] = False
        self.han[special] = False
        self.user_dict_path = user_dict_path
        self._jieba = None
        self._cuts: dict[str, frozenset] = {}

    def __getstate__(self):  # a spawned worker loads jieba itself
        return {**self.__dict__, "_jieba": None, "_cuts": {}}

    def prepare(self) -> None:
        """Load jieba's dictionary now (about a second): forked workers then share it."""
        if self._jieba is not None or not self.han.any():
            return
        problems = jieba_problems(self.user_dict_path)
        if problems:
            raise UerError("; ".join(problems))
        import jieba

        jieba.setLogLevel(logging.WARNING)  # its dictionary-loading lines are not ours to print
        tk = jieba.Tokenizer()
        tk.initialize()
        if self.user_dict_path is not None:
            try:
                tk.load_userdict(self.user_dict_path)
            except (ValueError, UnicodeDecodeError) as e:
                raise UerError(f"--user_dict_path {self.user_dict_path}: not a jieba user dictionary "
                               f"(one word a line, optionally a frequency and a tag): {e}") from None
        self._jieba = tk

    def cut(self, text: str) -> frozenset:
        """The character offsets where jieba starts a word in `text`."""
        found = self._cuts.get(text)
        if found is None:
            self.prepare()
            offsets, at = [], 0
            for word in self._jieba.cut(text):
                offsets.append(at)
                at += len(word)
            found = frozenset(offsets)
            if len(self._cuts) >= CACHE_RUNS:
                self._cuts.clear()
            self._cuts[text] = found
        return found

    def starts(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids)
        if len(ids) == 0:
            return np.zeros(0, dtype=bool)
        special = self.special[ids]
        start = ~self.continues[ids]
        start[1:] |= special[:-1]
        start[0] = True
        han = np.flatnonzero(self.han[ids])
        if len(han) >= 2:
            for run in np.split(han, np.flatnonzero(np.diff(han) != 1) + 1):
                if len(run) < 2:
                    continue
                pieces = [self.text[i] for i in ids[run].tolist()]
                cuts, at = self.cut("".join(pieces)), 0
                for k, piece in zip(run.tolist(), pieces):
                    start[k] = at in cuts
                    at += len(piece)
        return start
