"""Masking for MLM-style targets (SPEC 1.3, with the fixes of section 8).

Budget K = max(1, round(0.15 * n)) where n counts every token of the instance ([CLS]/[SEP]
included). Candidates are the positions that hold no special token. Token mode picks K of them
at random; span mode draws spans whose lengths follow a geometric distribution truncated to
[1, span_max_length], never covering a special token. Each picked token (each span, as a whole)
becomes [MASK] with p = 0.8, a random non-special token with p = 0.1, and stays with p = 0.1.

Whole word masking (uer.data.words) picks words instead of tokens: all the tokens of a chosen word
are masked together and share one 80/10/10 draw; a word that would overflow the budget is skipped;
span lengths count words. Without it, every token is a word of its own and the draws are the same.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from uer.options import default
from uer.vocab import SpecialIds

MASK_RATE = 0.15


@dataclass(frozen=True)
class MaskingConfig:
    span_masking: bool = default("span_masking")
    span_geo_prob: float = default("span_geo_prob")
    span_max_length: int = default("span_max_length")
    whole_word_masking: bool = default("whole_word_masking")
    user_dict_path: str | None = default("user_dict_path")


#: the masking options, as the dataset header and the pretrain command line name them
MASKING_FIELDS = tuple(f.name for f in fields(MaskingConfig))


class Masker:
    def __init__(self, cfg: MaskingConfig, vocab_size: int, special: SpecialIds, words=None):
        """words: a uer.data.words.WordSplitter, needed (and used) only with whole word masking
        (a reader of static masks has none to give)."""
        self.cfg = cfg
        self.words = words if cfg.whole_word_masking else None
        self.special = special
        specials = np.array(sorted(set(special.all())), dtype=np.int64)
        self._specials = specials
        # Random replacements are drawn from every id that is not a special token.
        keep = np.ones(vocab_size, dtype=bool)
        keep[specials[specials < vocab_size]] = False
        self._replacement_pool = np.flatnonzero(keep)
        # id -> is special, as a table: np.isin costs more than the rest of the masking together
        self._special_table = np.zeros(max(vocab_size, int(specials.max(initial=0)) + 1), dtype=bool)
        self._special_table[specials] = True
        p, m = cfg.span_geo_prob, cfg.span_max_length
        probs = np.array([p * (1 - p) ** (k - 1) for k in range(1, m + 1)])
        self._span_cdf = np.cumsum(probs / probs.sum())

    def is_special(self, ids: np.ndarray) -> np.ndarray:
        return self._special_table[ids]

    def __call__(self, ids: np.ndarray, rng: np.random.Generator):
        """One instance: (masked_ids, positions, original_ids); positions are sorted."""
        ids = np.asarray(ids)
        if not self.cfg.span_masking and not self.cfg.whole_word_masking:
            out, positions, _, originals = self.mask_flat(ids, [len(ids)], rng)
            return out, positions, originals
        first, size, eligible = self._words(ids)
        if not eligible.any():
            return ids.copy(), np.zeros(0, dtype=np.int64), ids[:0].copy()
        budget = max(1, round(MASK_RATE * len(ids)))
        pick = self._spans if self.cfg.span_masking else self._whole_words
        chosen, fate = pick(size, eligible, budget, rng)
        reps = size[chosen]  # every token of each chosen word, with its word's fate
        positions = np.repeat(first[chosen], reps) + np.arange(reps.sum()) - np.repeat(np.cumsum(reps) - reps, reps)
        fates = np.repeat(fate, reps)
        srt = np.argsort(positions, kind="stable")
        positions, fates = positions[srt].astype(np.int64), fates[srt]
        random_ids = self._replacement_pool[rng.integers(0, len(self._replacement_pool), len(positions))]
        out, originals = self._apply(ids, positions, fates, random_ids)
        return out, positions, originals

    def _words(self, ids: np.ndarray):
        """(first position, token count, eligible) of each word of the instance; a special token
        is an ineligible word of its own. Without whole word masking each token is a word."""
        special = self.is_special(ids)
        if not self.cfg.whole_word_masking:
            first = np.arange(len(ids))
        elif self.words is None:
            raise ValueError("whole word masking needs the vocabulary's word boundaries (words=WordSplitter)")
        else:
            first = np.flatnonzero(self.words.starts(ids) | special)
        size = np.diff(np.append(first, len(ids)))
        return first, size, ~special[first]

    @staticmethod
    def _whole_words(size: np.ndarray, eligible: np.ndarray, budget: int, rng: np.random.Generator):
        """Words in random order until `budget` tokens are covered, skipping a word that would
        overflow it (at least one word, the shortest, when every word is longer than the budget);
        one fate a word."""
        order = rng.permutation(np.flatnonzero(eligible))
        covered, chosen = 0, []
        for k in order.tolist():
            if covered + size[k] > budget:
                continue
            chosen.append(k)
            covered += int(size[k])
            if covered >= budget:
                break
        if not chosen:
            chosen = [int(order[np.argmin(size[order])])]
        return np.array(chosen, dtype=np.int64), rng.random(len(chosen))

    def _apply(self, ids: np.ndarray, positions: np.ndarray, fate: np.ndarray, random_ids: np.ndarray):
        """(masked copy of ids, original ids at positions): each picked position becomes [MASK]
        (fate < 0.8), its random non-special id of random_ids (fate < 0.9) or stays."""
        originals = ids[positions].copy()
        out = ids.copy()
        out[positions[fate < 0.8]] = self.special.mask
        to_rand = (fate >= 0.8) & (fate < 0.9)
        out[positions[to_rand]] = random_ids[to_rand]
        return out, originals

    def mask_flat(self, flat: np.ndarray, lengths, rng):
        """Mask many instances at once: `flat` holds them one after the other, `lengths` their
        sizes; rng: one generator for all, or a list of one generator an instance (its draws its
        own, the same in any batch). Returns (masked flat ids, positions within each instance,
        masked count per instance, original ids); positions are sorted within an instance. Token
        mode is vectorised over all instances; span and whole word modes go one instance at a time."""
        if self.cfg.whole_word_masking and self.words is None:
            raise ValueError("whole word masking needs the vocabulary's word boundaries (words=WordSplitter)")
        flat = np.asarray(flat)
        lengths = np.asarray(lengths, dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        if self.cfg.span_masking or self.cfg.whole_word_masking:
            rngs = rng if isinstance(rng, list) else [rng] * len(lengths)
            parts = [self(flat[a:a + n], g) for a, n, g in zip(starts, lengths, rngs)]
            if not parts:
                return flat.copy(), np.zeros(0, np.int64), np.zeros(0, np.int64), flat[:0].copy()
            return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                    np.array([len(p[1]) for p in parts], dtype=np.int64), np.concatenate([p[2] for p in parts]))
        # per position: a sort key, a fate and a replacement id, drawn before knowing the choice
        pool = len(self._replacement_pool)
        if isinstance(rng, list):
            draws = [(g.random((2, n)), g.integers(0, pool, n)) for g, n in zip(rng, lengths.tolist())]
            uniform = np.concatenate([d[0] for d in draws], axis=1) if draws else np.zeros((2, 0))
            spare = np.concatenate([d[1] for d in draws]) if draws else np.zeros(0, np.int64)
        else:
            uniform, spare = rng.random((2, len(flat))), rng.integers(0, pool, len(flat))
        eligible = ~self._special_table[flat]
        # budget K = max(1, round(0.15 n)), half to even as Python's round: the K eligible
        # positions of smallest key (a uniform K-subset), one row per instance
        budget = np.maximum(1, np.round(MASK_RATE * lengths)).astype(np.int64)
        width = int(lengths.max(initial=0))
        inside = np.arange(width)[None, :] < lengths[:, None]
        keys = np.full(inside.shape, 3.0)
        keys[inside] = np.where(eligible, uniform[0], 2.0)  # the ineligible after every eligible one
        order = np.argsort(keys, axis=1)
        rank_ok = np.arange(width)[None, :] < budget[:, None]
        chosen = rank_ok & (np.take_along_axis(keys, order, axis=1) < 2.0)
        picked = np.zeros(len(flat), dtype=bool)
        picked[(starts[:, None] + order)[chosen]] = True
        positions = np.flatnonzero(picked)  # sorted, without a sort
        row = np.repeat(np.arange(len(lengths)), lengths)[positions]
        out, originals = self._apply(flat, positions, uniform[1][positions], self._replacement_pool[spare[positions]])
        counts = np.bincount(row, minlength=len(lengths)).astype(np.int64)
        return out, positions - starts[row], counts, originals

    def _spans(self, size: np.ndarray, eligible: np.ndarray, budget: int, rng: np.random.Generator):
        """Cut the words into spans of geometric length (in words) that never cover a special
        token, then take spans in random order until `budget` tokens are covered, skipping one that
        would overflow it (cutting it back to the words that fit, with whole words); one fate a
        span. Returns (chosen words, their fates)."""
        n = len(eligible)
        lengths = np.searchsorted(self._span_cdf, rng.random(n), side="right") + 1
        lengths = np.minimum(lengths, self.cfg.span_max_length)
        spans = []
        i = 0
        while i < n:
            if not eligible[i]:
                i += 1
                continue
            end = min(i + int(lengths[i]), n)
            stop = np.flatnonzero(~eligible[i:end])  # a span never covers a special token
            if len(stop):
                end = i + int(stop[0])
            spans.append((i, end - i, int(size[i:end].sum())))
            i = end
        order = rng.permutation(len(spans))
        covered = 0
        chosen, fates = [], []
        for k in order:
            start, length, tokens = spans[k]
            if covered + tokens > budget and self.words is not None:
                # whole words: cut the span back to the words that fit, which keeps the budget
                # filled (words are longer than tokens, so skipping would under-fill it)
                while length and covered + tokens > budget:
                    length -= 1
                    tokens -= int(size[start + length])
            if covered + tokens > budget or not length:
                continue
            fate = rng.random()
            chosen.extend(range(start, start + length))
            fates.extend([fate] * length)
            covered += tokens
            if covered >= budget:
                break
        return np.array(chosen, dtype=np.int64), np.array(fates, dtype=np.float64)
