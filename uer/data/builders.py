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

from dataclasses import dataclass, field

import numpy as np

from uer.data.corpus import CorpusIndex
from uer.data.dataset import Dataset, Field
from uer.data.masking import Masker, MaskingConfig
from uer.registry import register
from uer.vocab import SpecialIds

INSTANCE_BUILDERS: dict[str, type["InstanceBuilder"]] = {}


@dataclass(frozen=True)
class BuilderConfig:
    seq_length: int = 128
    dup_factor: int = 5
    short_seq_prob: float = 0.1
    full_sentences: bool = False
    dynamic_masking: bool = False
    docs_buffer_size: int = 100000
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    tgt_seq_length: int = 128


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

    def __init__(self, cfg: BuilderConfig, special: SpecialIds, vocab_size: int,
                 tgt_special: SpecialIds | None = None):
        self.cfg = cfg
        self.special = special
        self.tgt_special = tgt_special
        self.vocab_size = vocab_size
        self.masker = Masker(cfg.masking, vocab_size, special)

    @property
    def static_masking(self) -> bool:
        return self.masked and not self.cfg.dynamic_masking

    @property
    def dup_factor(self) -> int:
        return self.cfg.dup_factor if self.static_masking else 1

    def fields(self, token_dtype) -> list[Field]:
        raise NotImplementedError

    def build_unit(self, corpus: CorpusIndex, docs: range, pool: range,
                   rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Instances of the documents `docs`; `pool` is the document buffer they belong to."""
        raise NotImplementedError

    def collate(self, ds: Dataset, indices: np.ndarray, rng: np.random.Generator) -> dict:
        raise NotImplementedError

    # -- shared pieces ----------------------------------------------------------------------
    def _mask_fields(self, token_dtype) -> list[Field]:
        if not self.static_masking:
            return []
        return [Field("mask_pos", True, "uint16" if self.cfg.seq_length < 65536 else "uint32"),
                Field("mask_ids", True, np.dtype(token_dtype).name)]

    def _emit(self, out: Instances, src: np.ndarray, rng: np.random.Generator, **scalars) -> None:
        out.add(tokens=src, **scalars)  # static masking is applied to the whole unit in _chunk

    def _new_instances(self, scalars: list[str]) -> Instances:
        return Instances(["tokens"], scalars)

    def _chunk(self, out: Instances, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """The unit's instances as arrays; with static masking, masked (all at once) with their
        mask_pos and mask_ids."""
        chunk = out.to_chunk()
        if self.static_masking:
            masked, pos, counts, orig = self.masker.mask_flat(chunk["tokens"], chunk["tokens.lengths"], rng)
            chunk.update({"tokens": masked, "mask_pos": pos, "mask_pos.lengths": counts, "mask_ids": orig,
                          "mask_ids.lengths": counts})
        return chunk

    def _pad_batch(self, ds: Dataset, indices: np.ndarray, name: str = "tokens", pad: int | None = None):
        seqs = [np.asarray(ds.ragged(name, int(i))) for i in indices]
        return seqs, pad_rows(seqs, self.special.pad if pad is None else pad)

    def _masked(self, ds: Dataset, indices: np.ndarray, seqs, src, rng):
        """Per row, the sorted masked positions and their original ids; applies dynamic masking
        (all rows at once) to src."""
        if self.static_masking:
            return [(np.asarray(ds.ragged("mask_pos", int(i)), dtype=np.int64),
                     np.asarray(ds.ragged("mask_ids", int(i)), dtype=np.int64)) for i in indices]
        lengths = np.array([len(q) for q in seqs], dtype=np.int64)
        masked, pos, counts, orig = self.masker.mask_flat(np.concatenate(seqs) if len(seqs) else
                                                          np.zeros(0, np.int64), lengths, rng)
        src[real_mask(seqs, src.shape[1]) > 0] = masked  # rows are left-aligned
        bounds = np.cumsum(counts)[:-1]
        return list(zip(np.split(pos, bounds), np.split(orig.astype(np.int64), bounds)))

    def _mlm_targets(self, ds: Dataset, indices: np.ndarray, seqs, src, rng):
        """Flat predicted positions and their original ids; applies dynamic masking to src."""
        rows = self._masked(ds, indices, seqs, src, rng)
        return flat_targets([p for p, _ in rows], [t for _, t in rows], src.shape[1])


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


def split_segments(ds: Dataset, indices: np.ndarray, seqs, width: int) -> np.ndarray:
    """seg: 1 before each instance's seg_split, 2 from it to the end of its tokens, 0 after."""
    seg = np.zeros((len(seqs), width), dtype=np.int64)
    for b, i in enumerate(indices):
        split = int(ds.scalar("seg_split", int(i)))
        seg[b, :split] = 1
        seg[b, split:len(seqs[b])] = 2
    return seg


def truncate_pair(a: np.ndarray, b: np.ndarray, max_tokens: int, rng: np.random.Generator):
    """Drop tokens one at a time from the longer of a and b (b on a tie), each from the front or
    the back with probability 1/2, until len(a) + len(b) <= max_tokens. Computed in closed form."""
    la, lb = len(a), len(b)
    excess = la + lb - max_tokens
    if excess <= 0:
        return a, b
    ra = rb = 0
    if la > lb:
        d = min(excess, la - lb)
        ra, excess = d, excess - d
    elif lb > la:
        d = min(excess, lb - la)
        rb, excess = d, excess - d
    rb += (excess + 1) // 2  # equal lengths: b first, then alternate
    ra += excess // 2
    fa, fb = int(rng.binomial(ra, 0.5)), int(rng.binomial(rb, 0.5))
    return a[fa:la - (ra - fa)], b[fb:lb - (rb - fb)]


@register(INSTANCE_BUILDERS, "bert")
class BertBuilder(InstanceBuilder):
    """MLM + next-sentence prediction (SPEC 1.4, after Google's create_pretraining_data)."""
    corpus_format = "documents"
    format_help = "one sentence a line, documents separated by blank lines"

    def fields(self, token_dtype) -> list[Field]:
        return ([Field("tokens", True, np.dtype(token_dtype).name)] + self._mask_fields(token_dtype)
                + [Field("seg_split", False, "uint32"), Field("label", False, "uint8")])

    def build_unit(self, corpus, docs, pool, rng):
        out = self._new_instances(["seg_split", "label"])
        for _ in range(self.dup_factor):
            for d in docs:
                self._document(corpus, d, pool, rng, out)
        return self._chunk(out, rng)

    def _document(self, corpus: CorpusIndex, d: int, pool: range, rng, out: Instances) -> None:
        sp = self.special
        max_tokens = self.cfg.seq_length - 3
        target = max_tokens
        if rng.random() < self.cfg.short_seq_prob:
            target = int(rng.integers(2, max_tokens + 1))
        doc = corpus.sentences(d)
        chunk: list[np.ndarray] = []
        chunk_len = 0
        i = 0
        while i < len(doc):
            chunk.append(doc[i])
            chunk_len += len(doc[i])
            if i == len(doc) - 1 or chunk_len >= target:
                a_end = 1 if len(chunk) == 1 else int(rng.integers(1, len(chunk)))
                a, b, label, unused = self._pair(corpus, d, pool, chunk, a_end, target, rng)
                i -= unused  # the unused sentences go back to the document
                a, b = truncate_pair(a, b, max_tokens, rng)
                src = np.concatenate([[sp.cls], a, [sp.sep], b, [sp.sep]]).astype(np.int64)
                self._emit(out, src, rng, seg_split=len(a) + 2, label=label)
                chunk, chunk_len = [], 0
            i += 1

    def _pair(self, corpus, d, pool, chunk, a_end, target, rng):
        """(A, B, label, sentences of the chunk left unused): B is the actual next part of the
        chunk (label 0) or, for a one-sentence chunk or with p = 1/2, taken from a random
        document of the buffer (label 1)."""
        a = np.concatenate(chunk[:a_end])
        if len(chunk) == 1 or rng.random() < 0.5:
            return a, self._random_b(corpus, d, pool, target - len(a), rng), 1, len(chunk) - a_end
        return a, np.concatenate(chunk[a_end:]), 0, 0

    def _random_b(self, corpus, d, pool, target_b, rng) -> np.ndarray:
        other = d
        for _ in range(10):
            other = int(rng.integers(pool.start, pool.stop))
            if other != d:
                break
        sents = corpus.sentences(other)
        start = int(rng.integers(0, len(sents)))
        b, n = [], 0
        for s in sents[start:]:
            b.append(s)
            n += len(s)
            if n >= target_b:
                break
        return np.concatenate(b)

    def collate(self, ds, indices, rng):
        seqs, src = self._pad_batch(ds, indices)
        seg = split_segments(ds, indices, seqs, src.shape[1])
        mlm_pos, mlm_tgt = self._mlm_targets(ds, indices, seqs, src, rng)
        return {"src": src, "seg": seg, "mlm_pos": mlm_pos, "mlm_tgt": mlm_tgt, "label": labels(ds, indices)}


@register(INSTANCE_BUILDERS, "mlm")
class MlmBuilder(InstanceBuilder):
    """Masked LM over [CLS] doc [SEP] cut into seq_length pieces (SPEC 1.4); with
    --full_sentences the documents of a unit are concatenated before cutting."""
    corpus_format = "lines"
    format_help = "one document a line"

    def fields(self, token_dtype) -> list[Field]:
        return [Field("tokens", True, np.dtype(token_dtype).name)] + self._mask_fields(token_dtype)

    def build_unit(self, corpus, docs, pool, rng):
        sp, S = self.special, self.cfg.seq_length
        out = self._new_instances([])
        wrapped = [np.concatenate([[sp.cls], corpus.doc_tokens(d), [sp.sep]]).astype(np.int64)
                   for d in docs]
        streams = [np.concatenate(wrapped)] if self.cfg.full_sentences and wrapped else wrapped
        for _ in range(self.dup_factor):
            for stream in streams:
                for start in range(0, len(stream), S):
                    self._emit(out, stream[start:start + S], rng)
        return self._chunk(out, rng)

    def collate(self, ds, indices, rng):
        seqs, src = self._pad_batch(ds, indices)
        mlm_pos, mlm_tgt = self._mlm_targets(ds, indices, seqs, src, rng)
        return {"src": src, "seg": real_mask(seqs, src.shape[1]), "mlm_pos": mlm_pos, "mlm_tgt": mlm_tgt}


@register(INSTANCE_BUILDERS, "albert")
class AlbertBuilder(BertBuilder):
    """MLM + sentence-order prediction: A and B are consecutive parts of one chunk (B may be
    empty for a one-sentence chunk), swapped with p = 1/2 (label 1). No other document is read."""

    def _pair(self, corpus, d, pool, chunk, a_end, target, rng):
        a = np.concatenate(chunk[:a_end])
        b = np.concatenate(chunk[a_end:]) if a_end < len(chunk) else a[:0]
        if rng.random() < 0.5:
            return b, a, 1, 0
        return a, b, 0, 0


@register(INSTANCE_BUILDERS, "t5")
class T5Builder(MlmBuilder):
    """The dataset of mlm; the decoder reads [CLS] + the original ids of the masked positions (in
    position order) + [SEP], at most tgt_seq_length tokens, and predicts each next one."""

    def collate(self, ds, indices, rng):
        seqs, src = self._pad_batch(ds, indices)
        sp, T = self.special, self.cfg.tgt_seq_length
        rows = self._masked(ds, indices, seqs, src, rng)
        dec = [np.concatenate([[sp.cls], orig[:T - 2], [sp.sep]]).astype(np.int64) for _, orig in rows]
        tgt_in = pad_rows([d[:-1] for d in dec], sp.pad)
        dec_pos, dec_tgt = flat_targets([np.arange(len(d) - 1) for d in dec], [d[1:] for d in dec],
                                        tgt_in.shape[1])
        return {"src": src, "seg": real_mask(seqs, src.shape[1]), "tgt_in": tgt_in,
                "tgt_seg": real_mask([d[:-1] for d in dec], tgt_in.shape[1]),
                "dec_pos": dec_pos, "dec_tgt": dec_tgt}


class UnmaskedBuilder(InstanceBuilder):
    masked = False

    def fields(self, token_dtype) -> list[Field]:
        return [Field("tokens", True, np.dtype(token_dtype).name)]


@register(INSTANCE_BUILDERS, "lm")
class LmBuilder(UnmaskedBuilder):
    """[CLS] doc [SEP] cut into pieces of seq_length + 1 tokens; position p predicts token p + 1
    of its piece, so no prediction crosses a piece. A last piece of one token is dropped."""
    corpus_format = "lines"
    format_help = "one document a line"

    def build_unit(self, corpus, docs, pool, rng):
        sp, n = self.special, self.cfg.seq_length + 1
        out = self._new_instances([])
        for d in docs:
            doc = np.concatenate([[sp.cls], corpus.doc_tokens(d), [sp.sep]]).astype(np.int64)
            for start in range(0, len(doc) - 1, n):
                out.add(tokens=doc[start:start + n])
        return out.to_chunk()

    def collate(self, ds, indices, rng):
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
        out = self._new_instances([])
        for d in docs:
            ids = corpus.doc_tokens(d)
            for start in range(0, len(ids), S):
                out.add(tokens=ids[start:start + S])
        return out.to_chunk()

    def collate(self, ds, indices, rng):
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

    def fields(self, token_dtype) -> list[Field]:
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

    def collate(self, ds, indices, rng):
        seqs, src = self._pad_batch(ds, indices)
        tgts = [np.asarray(ds.ragged("tgt_tokens", int(i))) for i in indices]
        tgt_in = pad_rows([t[:-1] for t in tgts], 0)
        dec_pos, dec_tgt = flat_targets([np.arange(len(t) - 1) for t in tgts], [t[1:] for t in tgts],
                                        tgt_in.shape[1])
        return {"src": src, "seg": real_mask(seqs, src.shape[1]), "tgt_in": tgt_in,
                "tgt_seg": real_mask([t[:-1] for t in tgts], tgt_in.shape[1]),
                "dec_pos": dec_pos, "dec_tgt": dec_tgt}


@register(INSTANCE_BUILDERS, "cls")
class ClsBuilder(UnmaskedBuilder):
    """[CLS] text (segment 1), or [CLS] text_a [SEP] (segment 1) text_b [SEP] (segment 2), cut
    to seq_length; the line's own label."""
    corpus_format = "labeled"
    format_help = "label<TAB>text or label<TAB>text_a<TAB>text_b a line"

    def fields(self, token_dtype) -> list[Field]:
        return [Field("tokens", True, np.dtype(token_dtype).name), Field("seg_split", False, "uint32"),
                Field("label", False, "uint32")]

    def build_unit(self, corpus, docs, pool, rng):
        sp, S = self.special, self.cfg.seq_length
        out = self._new_instances(["seg_split", "label"])
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

    def collate(self, ds, indices, rng):
        seqs, src = self._pad_batch(ds, indices)
        return {"src": src, "seg": split_segments(ds, indices, seqs, src.shape[1]), "label": labels(ds, indices)}
