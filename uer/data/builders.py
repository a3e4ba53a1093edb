"""Instance builders, one per target, registered in INSTANCE_BUILDERS.

A builder turns a unit of documents into instances (preprocess side, `build_unit`) and a list of
stored instances into a batch of arrays (loader side, `collate`). Both sides live in one class so
the stored fields and their reading cannot drift apart.

Batches are dicts of numpy arrays, padded to the longest instance of the batch:
  src [B, L] ids, seg [B, L] (1 = first segment, 2 = second, 0 = padding),
  mlm_pos [M] flat positions (b * L + p) of the predicted tokens, mlm_tgt [M] their original ids,
  label [B] sentence-level label (bert: 1 = random next).
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

    def __init__(self, cfg: BuilderConfig, special: SpecialIds, vocab_size: int):
        self.cfg = cfg
        self.special = special
        self.vocab_size = vocab_size
        self.masker = Masker(cfg.masking, vocab_size, special)

    @property
    def static_masking(self) -> bool:
        return not self.cfg.dynamic_masking

    @property
    def dup_factor(self) -> int:
        return 1 if self.cfg.dynamic_masking else self.cfg.dup_factor

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
        if self.static_masking:
            masked, pos, orig = self.masker(src, rng)
            out.add(tokens=masked, mask_pos=pos, mask_ids=orig, **scalars)
        else:
            out.add(tokens=src, **scalars)

    def _new_instances(self, scalars: list[str]) -> Instances:
        ragged = ["tokens"] + (["mask_pos", "mask_ids"] if self.static_masking else [])
        return Instances(ragged, scalars)

    def _pad_batch(self, ds: Dataset, indices: np.ndarray):
        seqs = [np.asarray(ds.ragged("tokens", int(i))) for i in indices]
        width = max(len(s) for s in seqs)
        src = np.full((len(seqs), width), self.special.pad, dtype=np.int64)
        for b, s in enumerate(seqs):
            src[b, :len(s)] = s
        return seqs, src

    def _mlm_targets(self, ds: Dataset, indices: np.ndarray, seqs, src, rng):
        """Flat predicted positions and their original ids; applies dynamic masking to src."""
        width = src.shape[1]
        pos_parts, tgt_parts = [], []
        for b, i in enumerate(indices):
            if self.static_masking:
                pos = np.asarray(ds.ragged("mask_pos", int(i)), dtype=np.int64)
                orig = np.asarray(ds.ragged("mask_ids", int(i)), dtype=np.int64)
            else:
                masked, pos, orig = self.masker(seqs[b], rng)
                src[b, :len(masked)] = masked
            pos_parts.append(pos + b * width)
            tgt_parts.append(orig)
        return (np.concatenate(pos_parts).astype(np.int64),
                np.concatenate(tgt_parts).astype(np.int64))


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
    label_random_next = True

    def fields(self, token_dtype) -> list[Field]:
        return ([Field("tokens", True, np.dtype(token_dtype).name)] + self._mask_fields(token_dtype)
                + [Field("seg_split", False, "uint32"), Field("label", False, "uint8")])

    def build_unit(self, corpus, docs, pool, rng):
        out = self._new_instances(["seg_split", "label"])
        for _ in range(self.dup_factor):
            for d in docs:
                self._document(corpus, d, pool, rng, out)
        return out.to_chunk()

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
                a = np.concatenate(chunk[:a_end])
                if len(chunk) == 1 or rng.random() < 0.5:
                    label = 1
                    b = self._random_b(corpus, d, pool, target - len(a), rng)
                    i -= len(chunk) - a_end  # the unused sentences go back to the document
                else:
                    label = 0
                    b = np.concatenate(chunk[a_end:])
                a, b = truncate_pair(a, b, max_tokens, rng)
                src = np.concatenate([[sp.cls], a, [sp.sep], b, [sp.sep]]).astype(np.int64)
                self._emit(out, src, rng, seg_split=len(a) + 2, label=label)
                chunk, chunk_len = [], 0
            i += 1

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
        seg = np.zeros_like(src)
        for b, i in enumerate(indices):
            split = int(ds.scalar("seg_split", int(i)))
            seg[b, :split] = 1
            seg[b, split:len(seqs[b])] = 2
        mlm_pos, mlm_tgt = self._mlm_targets(ds, indices, seqs, src, rng)
        label = np.asarray(ds.arrays["label"][np.asarray(indices)], dtype=np.int64)
        return {"src": src, "seg": seg, "mlm_pos": mlm_pos, "mlm_tgt": mlm_tgt, "label": label}


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
        return out.to_chunk()

    def collate(self, ds, indices, rng):
        seqs, src = self._pad_batch(ds, indices)
        seg = np.zeros_like(src)
        for b, s in enumerate(seqs):
            seg[b, :len(s)] = 1
        mlm_pos, mlm_tgt = self._mlm_targets(ds, indices, seqs, src, rng)
        return {"src": src, "seg": seg, "mlm_pos": mlm_pos, "mlm_tgt": mlm_tgt}
