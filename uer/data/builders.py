"""Instance builders, one per target, registered in INSTANCE_BUILDERS.

A builder turns a unit of documents into instances (preprocess side, `build_unit`) and a list of
stored instances into a batch of arrays (loader side, `collate`). Both sides live in one class so
the stored fields and their reading cannot drift apart.

Batches are dicts of numpy arrays, padded to the longest instance of the batch:
  src [B, L] ids, seg [B, L] (1 = first segment, 2 = second, 0 = padding; real tokens first),
  <term>_pos [M] flat positions (b * L + p) of the predicted tokens and <term>_tgt [M] their ids
  (mlm, lm, forward/backward for bilm, dec for the decoder of mt/t5),
  label [B] sentence-level label (bert: 1 = random next; albert: 1 = swapped; cls: the class),
  tgt_in [B, T] decoder input and tgt_seg [B, T] (mt, t5).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field, fields, replace

import numpy as np

from uer.data.corpus import CorpusIndex
from uer.data.dataset import Dataset, Field
from uer.data.masking import Masker, MaskingConfig
from uer.options import default
from uer.registry import INSTANCE_BUILDERS, register
from uer.vocab import SpecialIds

@dataclass(frozen=True)
class BuilderConfig:
    """preprocess.py's instance options; the dataset header keeps them under these names (the
    masking options flattened), and the loader reads them back from there."""
    seq_length: int = default("seq_length")
    dup_factor: int = default("dup_factor")
    short_seq_prob: float = default("short_seq_prob")
    full_sentences: bool = default("full_sentences")
    dynamic_masking: bool = default("dynamic_masking")
    docs_buffer_size: int = default("docs_buffer_size")
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    tgt_seq_length: int = default("tgt_seq_length")
    sentence_selection_strategy: str = default("sentence_selection_strategy")
    gap_sentence_ratio: float = default("gap_sentence_ratio")
    infilling_ratio: float = default("infilling_ratio")
    poisson_lambda: float = default("poisson_lambda")
    sentence_permutation: bool = default("sentence_permutation")
    sentinel_tokens: bool = default("sentinel_tokens")
    #: with sentinel_tokens, their ids in order (the vocabulary's [unusedN]; set by preprocess)
    sentinel_ids: tuple = ()

    @classmethod
    def from_options(cls, values) -> "BuilderConfig":
        """From an object with the options as attributes (a namespace, a dataset header)."""
        get = values.get if isinstance(values, dict) else lambda name, d: getattr(values, name, d)
        masking = MaskingConfig(**{f.name: get(f.name, f.default) for f in fields(MaskingConfig)})
        return cls(masking=masking, **{f.name: get(f.name, f.default) for f in fields(cls) if f.name != "masking"})

    def settings(self) -> dict:
        """The header entries: every option by name, the masking options flattened."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "masking"}
        out.update({f.name: getattr(self.masking, f.name) for f in fields(MaskingConfig)})
        return out


def builder_config_from_header(header: dict, masking: MaskingConfig | None = None) -> BuilderConfig:
    """The options a dataset was built with (an older header lacks some: they had the defaults),
    with `masking` for the loader's dynamic masks when given."""
    cfg = BuilderConfig.from_options(header)
    return cfg if masking is None else replace(cfg, masking=masking)


class Instances:
    """Accumulates instances of one unit as flat arrays."""

    def __init__(self, ragged: list[str], scalars: list[str]):
        self.ragged = {name: [] for name in ragged}
        self.scalars = {name: [] for name in scalars}

    def add(self, **values) -> None:
        for name, parts in self.ragged.items():
            parts.append(np.asarray(values[name]))
        for name, parts in self.scalars.items():
            parts.append(values[name])

    def to_chunk(self) -> dict[str, np.ndarray]:
        out = {}
        for name, parts in self.ragged.items():
            out[name] = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
            out[name + ".lengths"] = np.array([len(p) for p in parts], dtype=np.int64)
        for name, parts in self.scalars.items():
            out[name] = np.array(parts, dtype=np.int64)
        return out


class InstanceBuilder:
    name = ""
    corpus_format = "lines"
    #: what the corpus format looks like, for error messages
    format_help = ""

    #: whether the target predicts masked tokens (else masking options and dup_factor are unused)
    masked = True
    #: whether the second field of a pairs corpus has a vocabulary of its own (mt)
    target_vocabulary = False

    def __init__(self, cfg: BuilderConfig, special: SpecialIds, vocab_size: int,
                 tgt_special: SpecialIds | None = None, words=None):
        """words: the vocabulary's word boundaries (uer.data.words.WordSplitter), for whole word
        masking."""
        self.cfg = cfg
        self.special = special
        self.tgt_special = tgt_special
        self.vocab_size = vocab_size
        self.masker = Masker(cfg.masking, vocab_size, special, words) if self.masked else None

    @property
    def static_masking(self) -> bool:
        return self.masked and not self.cfg.dynamic_masking

    @property
    def dup_factor(self) -> int:
        return self.cfg.dup_factor if self.static_masking else 1

    def fields(self, token_dtype, store_size: int) -> list[Field]:
        """The stored fields; store_size bounds the token store (corpus tokens + 2 a document)."""
        raise NotImplementedError

    def build_unit(self, corpus: CorpusIndex, docs: range, pool: range,
                   rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Instances of the documents `docs`; `pool` is the document buffer they belong to."""
        raise NotImplementedError

    def collate(self, ds: Dataset, indices: np.ndarray, rngs: list[np.random.Generator]) -> dict:
        """The batch of these instances; rngs: one generator an instance, for its draws alone
        (dynamic masks, noise), so that an instance comes out the same in any batch."""
        raise NotImplementedError

    def instance_tokens(self, ds: Dataset, indices) -> list[np.ndarray]:
        """The instances' ids, before any masking."""
        return [np.asarray(ds.ragged("tokens", int(i))) for i in indices]

    def lengths(self, ds: Dataset, lo: int, hi: int) -> np.ndarray:
        """int32 token counts of instances lo..hi-1."""
        return np.diff(ds.read("tokens.offsets", lo, hi + 1)).astype(np.int32)

    def stored(self, ds: Dataset, i: int) -> dict:
        """Instance i as training first sees it (static masks applied), with its masked
        positions and their original ids; for tests and inspection."""
        tokens = self.instance_tokens(ds, [i])[0].astype(np.int64)
        out = {"tokens": tokens}
        if self.static_masking:
            pos = ds.ragged("mask_pos", i).astype(np.int64)
            out.update(mask_pos=pos, mask_ids=tokens[pos].copy())
            tokens[pos] = ds.ragged("mask_repl", i)
        return out

    # -- shared pieces ----------------------------------------------------------------------
    def _mask_fields(self, token_dtype) -> list[Field]:
        """Static masks: the masked positions and the ids put there ([MASK], a random id, or the
        original), one offsets array for both."""
        if not self.static_masking:
            return []
        pos = "uint8" if self.cfg.seq_length <= 256 else "uint16" if self.cfg.seq_length <= 65536 else "uint32"
        return [Field("mask_pos", True, pos), Field("mask_repl", True, np.dtype(token_dtype).name, offsets_of="mask_pos")]

    def _pad_batch(self, ds: Dataset, indices: np.ndarray):
        seqs = self.instance_tokens(ds, indices)
        return seqs, pad_rows(seqs, self.special.pad)

    def _masked(self, ds: Dataset, indices: np.ndarray, seqs, src, rngs):
        """Per row, the sorted masked positions and their original ids; applies the static masks,
        or dynamic masking (all rows at once, each with its own generator), to src."""
        if self.static_masking:
            rows = []
            for b, i in enumerate(indices):
                pos = ds.ragged("mask_pos", int(i)).astype(np.int64)
                rows.append((pos, src[b, pos].copy()))
                src[b, pos] = ds.ragged("mask_repl", int(i))
            return rows
        lengths = np.array([len(q) for q in seqs], dtype=np.int64)
        masked, pos, counts, orig = self.masker.mask_flat(np.concatenate(seqs) if len(seqs) else
                                                          np.zeros(0, np.int64), lengths, rngs)
        src[real_mask(seqs, src.shape[1]) > 0] = masked  # rows are left-aligned
        bounds = np.cumsum(counts)[:-1]
        return list(zip(np.split(pos, bounds), np.split(orig.astype(np.int64), bounds)))

    def _mlm_targets(self, ds: Dataset, indices: np.ndarray, seqs, src, rngs):
        """Flat predicted positions and their original ids; applies the masks to src."""
        rows = self._masked(ds, indices, seqs, src, rngs)
        return flat_targets([p for p, _ in rows], [t for _, t in rows], src.shape[1])


class SpanBuilder(InstanceBuilder):
    """A masked target whose instances are runs of the corpus: the token `store` holds the corpus
    once, whatever dup_factor, and an instance is SPAN_WIDTH // 2 (start, length) spans of it
    (`spans`), plus the special tokens its target puts around them. Static masks are stored as
    positions and the ids put there."""
    SPAN_WIDTH = 2

    def fields(self, token_dtype, store_size: int) -> list[Field]:
        index = "uint32" if store_size + self.cfg.seq_length < 2 ** 32 else "uint64"
        return ([Field("store", False, np.dtype(token_dtype).name, shared=True),
                 Field("spans", False, index, width=self.SPAN_WIDTH)] + self._mask_fields(token_dtype))

    def assemble(self, spans: np.ndarray, read) -> list[np.ndarray]:
        """Instance ids from their spans; read(start, stop) gives store ids."""
        raise NotImplementedError

    def instance_tokens(self, ds, indices):
        return self.assemble(ds.rows("spans", indices), lambda a, b: ds.read("store", a, b))

    def lengths(self, ds, lo, hi):
        w, out = self.SPAN_WIDTH, []
        for a in range(lo, hi, 1 << 20):  # bounded temporaries
            rows = ds.read("spans", a * w, min(hi, a + (1 << 20)) * w).reshape(-1, w)
            out.append(rows[:, 1::2].sum(1).astype(np.int32) + self.extra_tokens)
        return np.concatenate(out) if out else np.zeros(0, np.int32)

    #: special tokens an instance adds to its spans
    extra_tokens = 0

    def _chunk(self, store: np.ndarray, spans: np.ndarray, flat: np.ndarray, lengths: np.ndarray,
               rng: np.random.Generator, **scalars) -> dict[str, np.ndarray]:
        """A unit's arrays: its part of the store, its instances' spans (global store offsets),
        and, with static masking, the masks of all its instances (`flat` holds their ids one after
        the other) drawn at once."""
        chunk = {"store": store, "spans": spans.ravel(), **scalars}
        if self.static_masking:
            masked, pos, counts, _ = self.masker.mask_flat(flat, lengths, rng)
            row = np.repeat(np.arange(len(lengths)), counts)
            starts = np.cumsum(lengths) - lengths
            chunk.update({"mask_pos": pos, "mask_pos.lengths": counts, "mask_repl": masked[starts[row] + pos],
                          "mask_repl.lengths": counts})
        return chunk


def pad_rows(seqs, pad: int) -> np.ndarray:
    width = max(len(s) for s in seqs)
    out = np.full((len(seqs), width), pad, dtype=np.int64)
    for b, s in enumerate(seqs):
        out[b, :len(s)] = s
    return out


def real_mask(seqs, width: int) -> np.ndarray:
    """[B, width] int64: 1 over each row's tokens, 0 over its padding."""
    lengths = np.array([len(s) for s in seqs])
    return (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)


def flat_targets(positions, targets, width: int):
    """Per-row positions and target ids -> (flat positions b * width + p, ids), int64."""
    pos = [np.asarray(p, dtype=np.int64) + b * width for b, p in enumerate(positions)]
    return (np.concatenate(pos) if pos else np.zeros(0, np.int64),
            np.concatenate([np.asarray(t, dtype=np.int64) for t in targets]) if targets else np.zeros(0, np.int64))


def labels(ds: Dataset, indices: np.ndarray) -> np.ndarray:
    return np.asarray(ds.arrays["label"][np.asarray(indices)], dtype=np.int64)


def segments(splits: np.ndarray, seqs, width: int) -> np.ndarray:
    """seg: 1 before each row's split, 2 from it to the end of its tokens, 0 after."""
    cols = np.arange(width)[None, :]
    lengths = np.array([len(s) for s in seqs])[:, None]
    return np.where(cols < np.asarray(splits)[:, None], 1, np.where(cols < lengths, 2, 0)).astype(np.int64)


def runs(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The indices starts[0], ..., starts[0] + lengths[0] - 1, then those of the next run, ..."""
    return np.repeat(starts - (np.cumsum(lengths) - lengths), lengths) + np.arange(int(lengths.sum()))


def gather(tokens: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """tokens[starts[0]:starts[0] + lengths[0]], then the next run, ..., concatenated."""
    return tokens[runs(starts, lengths)]


def place(out: np.ndarray, dest: np.ndarray, values: np.ndarray, lengths: np.ndarray) -> None:
    """Write values (runs of `lengths`, concatenated) to out at the run starts `dest`."""
    out[runs(dest, lengths)] = values


def trim_pair(la: int, lb: int, max_tokens: int, rnd: random.Random) -> tuple[int, int, int, int]:
    """Drop tokens one at a time from the longer of A and B (B on a tie), each from the front or
    the back with probability 1/2, until la + lb <= max_tokens. Computed in closed form; returns
    (dropped from A's front, dropped from A, dropped from B's front, dropped from B)."""
    excess = la + lb - max_tokens
    if excess <= 0:
        return 0, 0, 0, 0
    ra = rb = 0
    if la > lb:
        d = min(excess, la - lb)
        ra, excess = d, excess - d
    elif lb > la:
        d = min(excess, lb - la)
        rb, excess = d, excess - d
    rb += (excess + 1) // 2  # equal lengths: b first, then alternate
    ra += excess // 2
    return _heads(ra, rnd), ra, _heads(rb, rnd), rb


def _heads(n: int, rnd: random.Random) -> int:
    """A Binomial(n, 1/2) draw: the ones among n random bits."""
    return bin(rnd.getrandbits(n)).count("1") if n else 0


@register(INSTANCE_BUILDERS, "bert")
class BertBuilder(SpanBuilder):
    """MLM + next-sentence prediction (SPEC 1.4, after Google's create_pretraining_data). An
    instance is [CLS] A [SEP] B [SEP], with A and B runs of whole sentences (then truncated) of the
    store, which holds the corpus tokens in order."""
    corpus_format = "documents"
    format_help = "one sentence a line, documents separated by blank lines"
    SPAN_WIDTH = 4  # A start, A length, B start, B length
    extra_tokens = 3

    def fields(self, token_dtype, store_size):
        return super().fields(token_dtype, store_size) + [Field("label", False, "uint8")]

    def build_unit(self, corpus, docs, pool, rng):
        # Python's generator for the scalar draws of the document loop: a twentieth of the cost
        # of a numpy draw per call; the masks are drawn with numpy over the whole unit
        rnd = random.Random(int(rng.integers(2 ** 63)))
        # the corpus index as memoryviews: indexing one gives a Python int, 5x faster than numpy's
        index = tuple(memoryview(np.ascontiguousarray(a, dtype=np.int64))
                      for a in (corpus.doc_off, corpus.sent_start, corpus.sent_len))
        s0, s1 = int(corpus.doc_off[docs.start]), int(corpus.doc_off[docs.stop])
        starts = corpus.sent_start[s0:s1]
        st, en = starts.tolist(), (starts + corpus.sent_len[s0:s1]).tolist()
        bounds = (np.asarray(corpus.doc_off[docs.start:docs.stop + 1]) - s0).tolist()
        rows: list[tuple] = []
        for _ in range(self.dup_factor):
            for k, d in enumerate(docs):
                lo, hi = bounds[k], bounds[k + 1]
                self._document(index, d, st[lo:hi], en[lo:hi], pool, rnd, rows)
        table = np.array(rows, dtype=np.int64).reshape(-1, 5)
        spans, label = table[:, :4], table[:, 4]
        flat, lengths = None, None
        if self.static_masking:
            flat, lengths = self._flat(corpus.tokens, spans)
        store = corpus.tokens[corpus.token_start(docs.start):corpus.token_start(docs.stop)]
        return self._chunk(store, spans, flat, lengths, rng, label=label)

    def _flat(self, tokens, spans):
        """The ids of all the unit's instances, one after the other, and their lengths."""
        sp = self.special
        la, lb = spans[:, 1], spans[:, 3]
        n = la + lb + 3
        inst = np.cumsum(n) - n
        flat = np.empty(int(n.sum()), dtype=np.int64)
        flat[inst] = sp.cls
        flat[inst + 1 + la] = sp.sep
        flat[inst + n - 1] = sp.sep
        place(flat, inst + 1, gather(tokens, spans[:, 0], la), la)
        place(flat, inst + 2 + la, gather(tokens, spans[:, 2], lb), lb)
        return flat, n

    def _document(self, index: tuple, d: int, st: list, en: list, pool: range, rnd, rows: list) -> None:
        """Instances of document d, whose sentences are the store runs st[i]..en[i]: gather
        sentences into a chunk of about `target` tokens, split it into A and B. `index` is the
        corpus's (doc_off, sent_start, sent_len)."""
        max_tokens = self.cfg.seq_length - 3
        target = max_tokens
        uniform = rnd.random  # below, int(uniform() * n) draws from 0..n-1 (cheaper than randrange)
        if uniform() < self.cfg.short_seq_prob:
            target = 2 + int(uniform() * (max_tokens - 1))
        n = len(st)
        first, chunk_len, i = 0, 0, 0  # the chunk is sentences first..i
        while i < n:
            chunk_len += en[i] - st[i]
            if i == n - 1 or chunk_len >= target:
                a_end = first + (1 if i == first else 1 + int(uniform() * (i - first)))  # A: first..a_end-1
                (a0, a1), (b0, b1), label, unused = self._pair(index, d, pool, st, en, first, a_end, i,
                                                               target, rnd)
                i -= unused  # the unused sentences go back to the document
                fa, ra, fb, rb = trim_pair(a1 - a0, b1 - b0, max_tokens, rnd)
                rows.append((a0 + fa, a1 - a0 - ra, b0 + fb, b1 - b0 - rb, label))
                first, chunk_len = i + 1, 0
            i += 1

    def _pair(self, index, d, pool, st, en, first, a_end, last, target, rnd):
        """((A start, end), (B start, end), label, sentences of the chunk left unused): B is the
        actual next part of the chunk (label 0) or, for a one-sentence chunk or with p = 1/2,
        taken from a random document of the buffer (label 1)."""
        a = (st[first], en[a_end - 1])
        if last == first or rnd.random() < 0.5:
            return a, self._random_b(index, d, pool, target - (a[1] - a[0]), rnd), 1, last - a_end + 1
        return a, (st[a_end], en[last]), 0, 0

    def _random_b(self, index, d, pool, target_b, rnd) -> tuple[int, int]:
        """Whole sentences of another document of the buffer, from a random one on, until
        target_b tokens (at least one sentence)."""
        other = d
        for _ in range(10):
            other = pool.start + int(rnd.random() * len(pool))
            if other != d:
                break
        doc_off, sent_start, sent_len = index
        lo, hi = doc_off[other], doc_off[other + 1]
        first = lo + int(rnd.random() * (hi - lo))
        n, k = 0, first
        while k < hi:
            n += sent_len[k]
            k += 1
            if n >= target_b:
                break
        return sent_start[first], sent_start[k - 1] + sent_len[k - 1]

    def assemble(self, spans, read):
        sp = self.special
        return [np.concatenate([[sp.cls], read(a, a + la), [sp.sep], read(b, b + lb), [sp.sep]]).astype(np.int64)
                for a, la, b, lb in spans.tolist()]

    def collate(self, ds, indices, rngs):
        spans = ds.rows("spans", indices)
        seqs = self.assemble(spans, lambda a, b: ds.read("store", a, b))
        src = pad_rows(seqs, self.special.pad)
        seg = segments(spans[:, 1] + 2, seqs, src.shape[1])
        mlm_pos, mlm_tgt = self._mlm_targets(ds, indices, seqs, src, rngs)
        return {"src": src, "seg": seg, "mlm_pos": mlm_pos, "mlm_tgt": mlm_tgt, "label": labels(ds, indices)}

    def stored(self, ds, i):
        out = super().stored(ds, i)
        out.update(seg_split=int(ds.rows("spans", [i])[0, 1]) + 2, label=int(ds.arrays["label"][i]))
        return out


@register(INSTANCE_BUILDERS, "mlm")
class MlmBuilder(SpanBuilder):
    """Masked LM over [CLS] doc [SEP] cut into seq_length pieces (SPEC 1.4); with
    --full_sentences the documents of a unit are concatenated before cutting. The store holds
    [CLS] doc [SEP] for every document, so a piece is one run of it."""
    corpus_format = "lines"
    format_help = "one document a line"

    def build_unit(self, corpus, docs, pool, rng):
        sp, S = self.special, self.cfg.seq_length
        t0 = corpus.token_start(docs.start)
        doc_start = np.array([corpus.token_start(d) for d in range(docs.start, docs.stop + 1)], dtype=np.int64)
        m = np.diff(doc_start) + 2  # wrapped lengths
        at = np.cumsum(m) - m  # where each wrapped document starts in the unit's store
        store = np.empty(int(m.sum()), dtype=np.int64)
        store[at] = sp.cls
        store[at + m - 1] = sp.sep
        place(store, at + 1, corpus.tokens[t0:corpus.token_start(docs.stop)], m - 2)
        if self.cfg.full_sentences:
            at, m = np.zeros(1, np.int64), np.array([len(store)], np.int64)
        pieces = -(-m // S)
        starts = np.repeat(at, pieces) + S * (np.arange(int(pieces.sum())) - np.repeat(np.cumsum(pieces) - pieces, pieces))
        lengths = np.minimum(S, np.repeat(at + m, pieces) - starts)
        starts, lengths = np.tile(starts, self.dup_factor), np.tile(lengths, self.dup_factor)
        flat = gather(store, starts, lengths) if self.static_masking else None
        base = t0 + 2 * docs.start  # the unit's store in the dataset's
        return self._chunk(store, np.stack([starts + base, lengths], 1), flat, lengths, rng)

    def assemble(self, spans, read):
        return [read(a, a + n).astype(np.int64) for a, n in spans.tolist()]

    def collate(self, ds, indices, rngs):
        seqs, src = self._pad_batch(ds, indices)
        mlm_pos, mlm_tgt = self._mlm_targets(ds, indices, seqs, src, rngs)
        return {"src": src, "seg": real_mask(seqs, src.shape[1]), "mlm_pos": mlm_pos, "mlm_tgt": mlm_tgt}


@register(INSTANCE_BUILDERS, "albert")
class AlbertBuilder(BertBuilder):
    """MLM + sentence-order prediction: A and B are consecutive parts of one chunk (B may be
    empty for a one-sentence chunk), swapped with p = 1/2 (label 1). No other document is read."""

    def _pair(self, index, d, pool, st, en, first, a_end, last, target, rnd):
        a = (st[first], en[a_end - 1])
        b = (st[a_end], en[last]) if a_end <= last else (a[1], a[1])
        if rnd.random() < 0.5:
            return b, a, 1, 0
        return a, b, 0, 0


@register(INSTANCE_BUILDERS, "t5")
class T5Builder(MlmBuilder):
    """The dataset of mlm; the decoder reads [CLS] + the original ids of the masked positions (in
    position order) + [SEP], at most tgt_seq_length tokens, and predicts each next one. With
    --sentinel_tokens (T5's span corruption), each run of masked positions is one sentinel in the
    source instead, and the decoder's ids are: sentinel 0, run 0, sentinel 1, run 1, ..., the next
    sentinel; an instance with more runs than sentinels keeps the rest unmasked."""

    def corrupt(self, ids: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(source, decoder body) of an instance whose sorted masked positions are pos."""
        sentinels = self.cfg.sentinel_ids
        runs = np.split(pos, np.flatnonzero(np.diff(pos) != 1) + 1) if len(pos) else []
        runs = runs[:len(sentinels)]
        src, body, last = [], [], 0
        for k, run in enumerate(runs):
            src += [ids[last:run[0]], [sentinels[k]]]
            body += [[sentinels[k]], ids[run[0]:run[-1] + 1]]
            last = run[-1] + 1
        src.append(ids[last:])
        if len(runs) < len(sentinels):
            body.append([sentinels[len(runs)]])
        return (np.concatenate(src).astype(np.int64),
                np.concatenate(body).astype(np.int64) if body else np.zeros(0, np.int64))

    def collate(self, ds, indices, rngs):
        seqs, src = self._pad_batch(ds, indices)
        sp, T = self.special, self.cfg.tgt_seq_length
        rows = self._masked(ds, indices, seqs, src, rngs)
        if self.cfg.sentinel_tokens:
            seqs, bodies = zip(*[self.corrupt(s, pos) for s, (pos, _) in zip(seqs, rows)])
            src = pad_rows(seqs, sp.pad)
        else:
            bodies = [orig for _, orig in rows]
        dec = [np.concatenate([[sp.cls], body[:T - 2], [sp.sep]]).astype(np.int64) for body in bodies]
        tgt_in = pad_rows([d[:-1] for d in dec], sp.pad)
        dec_pos, dec_tgt = flat_targets([np.arange(len(d) - 1) for d in dec], [d[1:] for d in dec],
                                        tgt_in.shape[1])
        return {"src": src, "seg": real_mask(seqs, src.shape[1]), "tgt_in": tgt_in,
                "tgt_seg": real_mask([d[:-1] for d in dec], tgt_in.shape[1]),
                "dec_pos": dec_pos, "dec_tgt": dec_tgt}


class UnmaskedBuilder(InstanceBuilder):
    masked = False

    def fields(self, token_dtype, store_size) -> list[Field]:
        return [Field("tokens", True, np.dtype(token_dtype).name)]


@register(INSTANCE_BUILDERS, "lm")
class LmBuilder(UnmaskedBuilder):
    """[CLS] doc [SEP] cut into pieces of seq_length + 1 tokens; position p predicts token p + 1
    of its piece, so no prediction crosses a piece. A last piece of one token is dropped."""
    corpus_format = "lines"
    format_help = "one document a line"

    def build_unit(self, corpus, docs, pool, rng):
        sp, n = self.special, self.cfg.seq_length + 1
        out = Instances(["tokens"], [])
        for d in docs:
            doc = np.concatenate([[sp.cls], corpus.doc_tokens(d), [sp.sep]]).astype(np.int64)
            for start in range(0, len(doc) - 1, n):
                out.add(tokens=doc[start:start + n])
        return out.to_chunk()

    def collate(self, ds, indices, rngs):
        pieces = [np.asarray(ds.ragged("tokens", int(i))) for i in indices]
        seqs = [p[:self.cfg.seq_length] for p in pieces]
        src = pad_rows(seqs, self.special.pad)
        lm_pos, lm_tgt = flat_targets([np.arange(len(p) - 1) for p in pieces], [p[1:] for p in pieces],
                                      src.shape[1])
        return {"src": src, "seg": real_mask(seqs, src.shape[1]), "lm_pos": lm_pos, "lm_tgt": lm_tgt}


@register(INSTANCE_BUILDERS, "bilm")
class BilmBuilder(UnmaskedBuilder):
    """The document ids (no [CLS]/[SEP]) cut into seq_length chunks; position p predicts token
    p + 1 forward ([SEP] after the last) and token p - 1 backward ([CLS] before the first)."""
    corpus_format = "lines"
    format_help = "one document a line"

    def build_unit(self, corpus, docs, pool, rng):
        S = self.cfg.seq_length
        out = Instances(["tokens"], [])
        for d in docs:
            ids = corpus.doc_tokens(d)
            for start in range(0, len(ids), S):
                out.add(tokens=ids[start:start + S])
        return out.to_chunk()

    def collate(self, ds, indices, rngs):
        sp = self.special
        seqs, src = self._pad_batch(ds, indices)
        width = src.shape[1]
        steps = [np.arange(len(s)) for s in seqs]
        fwd = flat_targets(steps, [np.concatenate([s[1:], [sp.sep]]) for s in seqs], width)
        bwd = flat_targets(steps, [np.concatenate([[sp.cls], s[:-1]]) for s in seqs], width)
        return {"src": src, "seg": real_mask(seqs, width), "forward_pos": fwd[0], "forward_tgt": fwd[1],
                "backward_pos": bwd[0], "backward_tgt": bwd[1]}


@register(INSTANCE_BUILDERS, "mt")
class MtBuilder(UnmaskedBuilder):
    """src = [CLS] source [SEP] cut to seq_length; tgt = [CLS] target [SEP] (target-side
    vocabulary) cut to tgt_seq_length + 1. The decoder reads tgt[:-1] and predicts tgt[1:]."""
    corpus_format = "pairs"
    format_help = "source<TAB>target a line"
    target_vocabulary = True

    def fields(self, token_dtype, store_size) -> list[Field]:
        dtype = np.dtype(token_dtype).name
        return [Field("tokens", True, dtype), Field("tgt_tokens", True, dtype)]

    def build_unit(self, corpus, docs, pool, rng):
        sp, tsp = self.special, self.tgt_special
        out = Instances(["tokens", "tgt_tokens"], [])
        for d in docs:
            src, tgt = corpus.sentences(d)
            out.add(tokens=np.concatenate([[sp.cls], src, [sp.sep]]).astype(np.int64)[:self.cfg.seq_length],
                    tgt_tokens=np.concatenate([[tsp.cls], tgt, [tsp.sep]]).astype(np.int64)[
                        :self.cfg.tgt_seq_length + 1])
        return out.to_chunk()

    def collate(self, ds, indices, rngs):
        seqs = self.instance_tokens(ds, indices)
        return seq2seq_batch(seqs, [np.asarray(ds.ragged("tgt_tokens", int(i))) for i in indices],
                             self.special.pad)


def seq2seq_batch(seqs, tgts, pad: int) -> dict:
    """An encoder-decoder batch: the sources, and the decoder reading tgt[:-1] to predict tgt[1:]."""
    src = pad_rows(seqs, pad)
    tgt_in = pad_rows([t[:-1] for t in tgts], 0)
    dec_pos, dec_tgt = flat_targets([np.arange(len(t) - 1) for t in tgts], [t[1:] for t in tgts], tgt_in.shape[1])
    return {"src": src, "seg": real_mask(seqs, src.shape[1]), "tgt_in": tgt_in,
            "tgt_seg": real_mask([t[:-1] for t in tgts], tgt_in.shape[1]), "dec_pos": dec_pos, "dec_tgt": dec_tgt}


@register(INSTANCE_BUILDERS, "gsg")
class GsgBuilder(UnmaskedBuilder):
    """PEGASUS's gap sentences: each document is cut into runs of whole sentences that fit
    seq_length - 2 tokens; in a run of n >= 2 sentences, max(1, round(gap_sentence_ratio * n)) of
    them (the first ones with --sentence_selection_strategy lead, any with random) become one
    [MASK] each in src = [CLS] run [SEP], and tgt = [CLS] the gap sentences in order [SEP], cut to
    tgt_seq_length + 1, is what the decoder generates. A sentence longer than seq_length - 2 is
    cut."""
    corpus_format = "documents"
    format_help = "documents of one sentence a line, a blank line between documents"

    def fields(self, token_dtype, store_size) -> list[Field]:
        dtype = np.dtype(token_dtype).name
        return [Field("tokens", True, dtype), Field("tgt_tokens", True, dtype)]

    def runs(self, sentences: list[np.ndarray]) -> list[list[np.ndarray]]:
        room, out, run, used = self.cfg.seq_length - 2, [], [], 0
        for sent in sentences:
            sent = sent[:room]
            if run and used + len(sent) > room:
                out.append(run)
                run, used = [], 0
            run.append(sent)
            used += len(sent)
        return out + ([run] if run else [])

    def gaps(self, n: int, rng: np.random.Generator) -> np.ndarray:
        k = min(n - 1, max(1, round(self.cfg.gap_sentence_ratio * n)))  # at least one sentence stays
        if self.cfg.sentence_selection_strategy == "lead":
            return np.arange(k)
        return np.sort(rng.choice(n, k, replace=False))

    def build_unit(self, corpus, docs, pool, rng):
        sp, T = self.special, self.cfg.tgt_seq_length
        out = Instances(["tokens", "tgt_tokens"], [])
        for d in docs:
            for run in self.runs(corpus.sentences(d)):
                if len(run) < 2:
                    continue
                chosen = set(self.gaps(len(run), rng).tolist())
                src = [[sp.mask] if k in chosen else sent for k, sent in enumerate(run)]
                tgt = [run[k] for k in sorted(chosen)]
                out.add(tokens=np.concatenate([[sp.cls], *src, [sp.sep]]).astype(np.int64),
                        tgt_tokens=np.concatenate([[sp.cls], *tgt, [sp.sep]]).astype(np.int64)[:T + 1])
        return out.to_chunk()

    def collate(self, ds, indices, rngs):
        return MtBuilder.collate(self, ds, indices, rngs)


@register(INSTANCE_BUILDERS, "bart")
class BartBuilder(GsgBuilder):
    """BART's noising of each run of whole sentences that fits seq_length - 2 tokens (the runs of
    gsg; a sentence longer than that is cut): the run's sentences shuffled (--sentence_permutation),
    then text infilling: spans of Poisson(--poisson_lambda) lengths that together cover
    round(--infilling_ratio * n) of the run's n tokens, each span replaced by one [MASK] (a span of
    length 0 inserts one), an unhidden token between any two. src = [CLS] noised run [SEP],
    tgt = [CLS] the original run [SEP] cut to tgt_seq_length + 1, rebuilt by the decoder.
    --dup_factor copies of every run, each with noise of its own; with --dynamic_masking the runs
    are stored as they are and noised afresh in every batch."""

    @property
    def dup_factor(self) -> int:
        return 1 if self.cfg.dynamic_masking else self.cfg.dup_factor

    def fields(self, token_dtype, store_size) -> list[Field]:
        if not self.cfg.dynamic_masking:
            return super().fields(token_dtype, store_size)
        # --dynamic_masking: the run as it is and its sentences' lengths; the noise comes per batch
        return [Field("tokens", True, np.dtype(token_dtype).name), Field("sent_lengths", True, "uint32")]

    def noise(self, run: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
        """[CLS] the run's sentences shuffled and infilled [SEP]."""
        sp = self.special
        order = rng.permutation(len(run)) if self.cfg.sentence_permutation else range(len(run))
        noised = self.infill(np.concatenate([run[k] for k in order]), rng)
        return np.concatenate([[sp.cls], noised, [sp.sep]]).astype(np.int64)

    def infill(self, ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """ids with text infilling's spans each replaced by one [MASK]; at most seq_length - 2 long."""
        n, mask = len(ids), self.special.mask
        m = int(round(self.cfg.infilling_ratio * n))
        lengths, total = [], 0
        while total < m:
            lengths.append(int(rng.poisson(self.cfg.poisson_lambda)))
            total += lengths[-1]
        if lengths:
            lengths[-1] -= total - m
        gaps = n - m + 1  # spans go between the n - m tokens kept, one span a gap at most
        while len(lengths) > gaps:  # too many spans: one joins another
            extra = lengths.pop()
            lengths[int(rng.integers(len(lengths)))] += extra
        room = self.cfg.seq_length - 2
        while n - m + len(lengths) > room and 0 in lengths:  # insertions may not lengthen a full run
            lengths.remove(0)
        at = np.sort(rng.choice(gaps, len(lengths), replace=False))
        lengths = np.asarray(lengths, dtype=np.int64)
        # span i starts after the at[i] tokens kept and the tokens of the spans before it: element
        # j of arange(m) is the j-th hidden token, so at[i] + arange places span i's
        hidden = np.zeros(n, dtype=bool)
        hidden[np.repeat(at, lengths) + np.arange(m)] = True
        return np.insert(np.asarray(ids)[~hidden], at, mask).astype(np.int64)

    def build_unit(self, corpus, docs, pool, rng):
        sp, T = self.special, self.cfg.tgt_seq_length
        out = Instances(["tokens", "tgt_tokens"], [])
        runs = [run for d in docs for run in self.runs(corpus.sentences(d))]
        if self.cfg.dynamic_masking:
            out = Instances(["tokens", "sent_lengths"], [])
            for run in runs:
                out.add(tokens=np.concatenate([[sp.cls], *run, [sp.sep]]).astype(np.int64),
                        sent_lengths=np.array([len(x) for x in run], dtype=np.int64))
            return out.to_chunk()
        for _ in range(self.dup_factor):
            for run in runs:
                out.add(tokens=self.noise(run, rng),
                        tgt_tokens=np.concatenate([[sp.cls], *run, [sp.sep]]).astype(np.int64)[:T + 1])
        return out.to_chunk()

    def collate(self, ds, indices, rngs):
        if not self.cfg.dynamic_masking:
            return super().collate(ds, indices, rngs)
        seqs, tgts, T = [], [], self.cfg.tgt_seq_length
        for i, rng in zip(indices, rngs):
            tokens = np.asarray(ds.ragged("tokens", int(i))).astype(np.int64)
            bounds = np.cumsum(np.asarray(ds.ragged("sent_lengths", int(i))).astype(np.int64))
            seqs.append(self.noise(np.split(tokens[1:-1], bounds[:-1]), rng))
            tgts.append(tokens[:T + 1])
        return seq2seq_batch(seqs, tgts, self.special.pad)


@register(INSTANCE_BUILDERS, "prefixlm")
class PrefixLmBuilder(UnmaskedBuilder):
    """[CLS] source [SEP] (segment 1, the prefix) target [SEP] (segment 2), cut to seq_length;
    each position from the prefix's [SEP] on predicts the next token, so only the target is
    learned, from the whole source (attention: --mask causal_with_prefix). A line whose target
    is cut away entirely gives no instance."""
    corpus_format = "pairs"
    format_help = "source<TAB>target a line"

    def fields(self, token_dtype, store_size) -> list[Field]:
        return [Field("tokens", True, np.dtype(token_dtype).name), Field("seg_split", False, "uint32")]

    def build_unit(self, corpus, docs, pool, rng):
        sp, S = self.special, self.cfg.seq_length
        out = Instances(["tokens"], ["seg_split"])
        for d in docs:
            source, target = corpus.sentences(d)
            prefix = np.concatenate([[sp.cls], source, [sp.sep]]).astype(np.int64)
            if len(prefix) >= S:  # no room left for the target
                continue
            tokens = np.concatenate([prefix, target, [sp.sep]]).astype(np.int64)[:S]
            out.add(tokens=tokens, seg_split=len(prefix))
        return out.to_chunk()

    def collate(self, ds, indices, rngs):
        seqs, src = self._pad_batch(ds, indices)
        splits = np.asarray(ds.arrays["seg_split"][np.asarray(indices)]).astype(np.int64)
        # position p predicts token p + 1, from the prefix's [SEP] (p = split - 1) to the end
        lm_pos, lm_tgt = flat_targets([np.arange(k - 1, len(s) - 1) for k, s in zip(splits, seqs)],
                                      [s[k:] for k, s in zip(splits, seqs)], src.shape[1])
        return {"src": src, "seg": segments(splits, seqs, src.shape[1]), "lm_pos": lm_pos, "lm_tgt": lm_tgt}


@register(INSTANCE_BUILDERS, "cls")
class ClsBuilder(UnmaskedBuilder):
    """[CLS] text (segment 1), or [CLS] text_a [SEP] (segment 1) text_b [SEP] (segment 2), cut
    to seq_length; the line's own label."""
    corpus_format = "labeled"
    format_help = "label<TAB>text or label<TAB>text_a<TAB>text_b a line"

    def fields(self, token_dtype, store_size) -> list[Field]:
        return [Field("tokens", True, np.dtype(token_dtype).name), Field("seg_split", False, "uint32"),
                Field("label", False, "uint32")]

    def build_unit(self, corpus, docs, pool, rng):
        sp, S = self.special, self.cfg.seq_length
        out = Instances(["tokens"], ["seg_split", "label"])
        for d in docs:
            texts = corpus.sentences(d)
            if len(texts) == 1:
                src = np.concatenate([[sp.cls], texts[0]])
                split = len(src)
            else:
                a = np.concatenate([[sp.cls], texts[0], [sp.sep]])
                src = np.concatenate([a, texts[1], [sp.sep]])
                split = len(a)
            src = src.astype(np.int64)[:S]
            out.add(tokens=src, seg_split=min(split, len(src)), label=int(corpus.doc_label[d]))
        return out.to_chunk()

    def collate(self, ds, indices, rngs):
        seqs, src = self._pad_batch(ds, indices)
        splits = np.asarray(ds.arrays["seg_split"][np.asarray(indices)])
        return {"src": src, "seg": segments(splits, seqs, src.shape[1]), "label": labels(ds, indices)}
