"""preprocess: corpus -> dataset file for one target.

Two parallel phases, each independent of the number of processes:
  1. tokenize byte ranges of the corpus (deterministic) into a flat token file + line lengths;
  2. group lines into documents, cut the documents into fixed units (UNIT_DOCS documents, inside
     buffers of docs_buffer_size documents that share a negative-sampling pool) and build the
     instances of each unit with its own random generator, seeded by (seed, unit index).
So the same corpus, options and seed give the same dataset whatever --processes_num is.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import sys
import time
from dataclasses import dataclass, replace

import numpy as np

from uer.config import expect, finite_problems, input_problems, masking_problems, output_problems
from uer.data.builders import BuilderConfig, InstanceBuilder
from uer.data.words import WordSplitter, whole_word_problems
from uer.data.corpus import BLANK, FIELD_FORMATS, CorpusIndex, byte_ranges, group_documents, group_fields, \
    RANGE_BYTES, init_tokenize_worker, tokenize_range
from uer.data.dataset import DatasetWriter
from uer.errors import UerError
from uer.registry import INSTANCE_BUILDERS, TOKENIZERS
from uer.tokenizers import build_tokenizer, describe_tokenizer
from uer.utils import owned_temp_dir
from uer.vocab import Vocab

UNIT_DOCS = 256


@dataclass(frozen=True)
class PreprocessJob:
    corpus_path: str
    dataset_path: str
    target: str
    tokenizer: str
    vocab: Vocab
    spm_model_path: str | None
    builder: BuilderConfig
    processes_num: int = 1
    seed: int = 7
    do_lower_case: bool = True
    show_progress: bool | None = None
    tgt_vocab: Vocab | None = None        # mt: the target side
    tgt_spm_model_path: str | None = None

    def token_dtype(self):
        vocabs = [self.vocab] + ([self.tgt_vocab] if self.tgt_vocab is not None else [])
        return np.uint16 if max(len(v) for v in vocabs) <= 65536 else np.uint32

    def tokenizers(self):
        """(source tokenizer, target-side tokenizer or None); runs in the workers."""
        src = build_tokenizer(self.tokenizer, self.vocab, self.spm_model_path, self.do_lower_case)
        tgt = None
        if self.tgt_vocab is not None:
            tgt = build_tokenizer(self.tokenizer, self.tgt_vocab, self.tgt_spm_model_path, self.do_lower_case)
        return src, tgt


def _pool(processes: int, initializer, initargs):
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    return mp.get_context(method).Pool(processes, initializer=initializer, initargs=initargs)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total, desc, unit, enabled):
    if not enabled:
        return _NoBar()  # and no tqdm import
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True,
                unit_scale=True)


def tokenize_corpus(job: PreprocessJob, corpus_format: str, workdir: str, dtype) -> dict[str, np.ndarray]:
    """Phase 1. Writes workdir/tokens.bin and returns the per-line arrays of tokenize_range."""
    # ranges small enough that every process gets several (the result does not depend on their size)
    size = os.path.getsize(job.corpus_path)
    ranges = byte_ranges(job.corpus_path, min(RANGE_BYTES, max(1 << 18, size // (4 * job.processes_num))))
    tasks = [(job.corpus_path, a, b, dtype, corpus_format) for a, b in ranges]
    parts: dict[str, list] = {}
    line_base = 0
    bar = _progress(size, "tokenize", "B", job.show_progress)
    pool = None
    try:
        if job.processes_num > 1:
            pool = _pool(job.processes_num, init_tokenize_worker, (job.tokenizers, True))
            results = pool.imap(tokenize_range, tasks)
        else:
            init_tokenize_worker(job.tokenizers, False)
            results = map(tokenize_range, tasks)
        with open(os.path.join(workdir, "tokens.bin"), "wb") as out:
            for (start, end), (arrays, error) in zip(ranges, results):
                if error is not None:
                    k, msg = error
                    raise UerError(f"{job.corpus_path} line {line_base + k + 1}: {msg}")
                arrays.pop("tokens").tofile(out)
                for name, arr in arrays.items():
                    parts.setdefault(name, []).append(arr)
                line_base += len(arrays.get("line_len", arrays.get("line_fields")))
                bar.update(end - start)
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
    return {name: np.concatenate(arrs) for name, arrs in parts.items()}


_BUILD = {}


def _init_build_worker(builder: InstanceBuilder, workdir: str, dtype) -> None:
    _BUILD.update(builder=builder, workdir=workdir, dtype=dtype)


def _build_unit(task):
    k, docs, pool, seed = task
    rng = np.random.default_rng([seed, k])
    # the corpus is mapped for one unit at a time: the pages a unit reads leave this process's
    # memory with it, so memory does not grow with the corpus
    corpus = CorpusIndex.open(_BUILD["workdir"], _BUILD["dtype"])
    return _BUILD["builder"].build_unit(corpus, docs, pool, rng)


def units(n_docs: int, docs_buffer_size: int):
    """(unit docs, buffer docs) pairs in corpus order; independent of the process count."""
    for g in range(0, n_docs, docs_buffer_size):
        buffer = range(g, min(g + docs_buffer_size, n_docs))
        for u in range(buffer.start, buffer.stop, UNIT_DOCS):
            yield range(u, min(u + UNIT_DOCS, buffer.stop)), buffer


def sentinel_ids(vocab: Vocab) -> tuple[int, ...]:
    """The vocabulary's [unusedN] tokens in the order of N: T5's sentinels."""
    found = sorted((int(t[7:-1]), i) for t, i in vocab.w2i.items()
                   if t.startswith("[unused") and t.endswith("]") and t[7:-1].isdigit())
    return tuple(i for _, i in found)


def build_dataset(job: PreprocessJob) -> dict:
    t0 = time.time()
    if job.show_progress is None:
        job = PreprocessJob(**{**job.__dict__, "show_progress": sys.stderr.isatty()})
    if job.builder.sentinel_tokens:
        ids = sentinel_ids(job.vocab)
        if not ids:
            raise UerError(f"--sentinel_tokens: the vocabulary {job.vocab.source} has no [unusedN] token to serve "
                           "as a sentinel")
        job = PreprocessJob(**{**job.__dict__, "builder": replace(job.builder, sentinel_ids=ids)})
    special = job.vocab.special_ids()
    words = None
    if job.builder.masking.whole_word_masking and INSTANCE_BUILDERS[job.target].masked:
        words = WordSplitter(job.vocab.tokens, special.all(), job.builder.masking.user_dict_path)
        if not job.builder.dynamic_masking:
            words.prepare()  # once, before the workers fork
    builder = INSTANCE_BUILDERS[job.target](job.builder, special, len(job.vocab),
                                            job.tgt_vocab.special_ids() if job.tgt_vocab else None, words=words)
    if builder.target_vocabulary and job.tgt_vocab is None:
        raise UerError(f"--target {job.target} needs the target-side vocabulary: give --tgt_vocab_path "
                       "or --tgt_spm_model_path")
    if os.path.getsize(job.corpus_path) == 0:
        raise UerError(f"{job.corpus_path}: the corpus file is empty (0 bytes); target {job.target!r} expects "
                       f"{builder.format_help}")
    dtype = job.token_dtype()
    out_dir = os.path.dirname(os.path.abspath(job.dataset_path)) or "."
    os.makedirs(out_dir, exist_ok=True)
    workdir = owned_temp_dir(".uer-preprocess-", out_dir)
    writer = None
    try:
        lines = tokenize_corpus(job, builder.corpus_format, workdir, dtype)
        doc_label = None
        if builder.corpus_format in FIELD_FORMATS:
            sent_start, sent_len, doc_off, doc_label = group_fields(
                lines["line_fields"], lines["field_len"], lines["label"])
            n_lines = len(lines["line_fields"])
            if len(doc_off) == 1:
                raise UerError(f"{job.corpus_path}: the corpus holds no line of the form "
                               f"{builder.format_help} ({n_lines} lines)")
        else:
            line_len = lines["line_len"]
            sent_start, sent_len, doc_off = group_documents(line_len, builder.corpus_format)
            n_lines, n_blank = len(line_len), int((line_len == BLANK).sum())
            _check_format(job, builder, n_lines, n_blank, len(sent_len))
        CorpusIndex(tokens=np.zeros(0, dtype=dtype), sent_start=sent_start, sent_len=sent_len,
                    doc_off=doc_off, doc_label=doc_label).save(workdir)
        n_docs = len(doc_off) - 1
        tasks = [(k, docs, buf, job.seed) for k, (docs, buf) in
                 enumerate(units(n_docs, job.builder.docs_buffer_size))]
        writer = DatasetWriter(job.dataset_path, builder.fields(dtype, int(sent_len.sum()) + 2 * n_docs))
        bar = _progress(n_docs, "build", "doc", job.show_progress)
        pool = None
        try:
            if job.processes_num > 1:
                pool = _pool(job.processes_num, _init_build_worker, (builder, workdir, dtype))
                results = pool.imap(_build_unit, tasks)
            else:
                _init_build_worker(builder, workdir, dtype)
                results = map(_build_unit, tasks)
            for task, chunk in zip(tasks, results):
                writer.add(chunk)
                bar.update(len(task[1]))
        finally:
            bar.close()
            if pool is not None:
                pool.terminate()
        if writer.count == 0:
            raise UerError(f"{job.corpus_path}: no training instance could be built for target "
                           f"{job.target!r} (expected {builder.format_help})")
        user_dict = job.builder.masking.user_dict_path
        header = {
            "target": job.target,
            "tokenizer": describe_tokenizer(job.tokenizer, bool(job.spm_model_path), job.do_lower_case),
            "vocab_size": len(job.vocab),
            "vocab_fingerprint": job.vocab.fingerprint(),
            "vocab_source": os.path.basename(job.vocab.source),
            **job.builder.settings(),
            "dup_factor": builder.dup_factor,  # the copies made (1 where nothing is masked in preprocess)
            # absolute: a dynamic-masking pretrain run elsewhere reads it again
            "user_dict_path": user_dict and os.path.abspath(user_dict),
            "seed": job.seed,
            "corpus": {"path": os.path.abspath(job.corpus_path), "bytes": os.path.getsize(job.corpus_path),
                       "lines": n_lines, "sentences": int(len(sent_len)), "documents": n_docs,
                       "tokens": int(sent_len.sum())},
        }
        if job.tgt_vocab is not None:
            header.update(tgt_vocab_size=len(job.tgt_vocab), tgt_vocab_fingerprint=job.tgt_vocab.fingerprint(),
                          tgt_vocab_source=os.path.basename(job.tgt_vocab.source))
        if doc_label is not None:
            header["labels_num"] = int(doc_label.max()) + 1
            # the line of the largest label, for an error that names it (lines count from 1)
            header["largest_label_line"] = int(np.argmax(lines["label"])) + 1
        header = writer.finish(header)
        writer = None
        header["seconds"] = round(time.time() - t0, 3)
        return header
    finally:
        if writer is not None:
            writer.abort()
        shutil.rmtree(workdir, ignore_errors=True)


def _check_format(job: PreprocessJob, builder: InstanceBuilder, n_lines: int, n_blank: int,
                  n_sentences: int) -> None:
    if n_sentences == 0:
        raise UerError(f"{job.corpus_path}: the corpus holds no text ({n_lines} lines, all blank or "
                       f"empty after tokenization); target {job.target!r} expects "
                       f"{builder.format_help}")
    if builder.corpus_format == "documents" and n_blank == 0 and n_sentences > 1:
        raise UerError(f"{job.corpus_path}: no blank line separates documents in {n_lines} lines; "
                       f"target {job.target!r} expects {builder.format_help} (for one document a "
                       f"line, use --target mlm)")


#: options that only one target's builder reads: given for another target, they are refused
TARGET_OPTIONS = {"sentence_selection_strategy": "gsg", "gap_sentence_ratio": "gsg", "infilling_ratio": "bart",
                  "poisson_lambda": "bart", "sentence_permutation": "bart"}


def preprocess_problems(args, explicit: frozenset = frozenset()) -> list[str]:
    """explicit: the options given on the command line (those of another target are refused)."""
    p: list[str] = []
    p += [f"--{name} is read by --target {TARGET_OPTIONS[name]} only, not {args.target}"
          for name in sorted(explicit) if TARGET_OPTIONS.get(name, args.target) != args.target]
    p += input_problems({f"--{n}": getattr(args, n) for n in ("corpus_path", "vocab_path", "spm_model_path")})
    if not args.vocab_path and not args.spm_model_path:
        p.append("give --vocab_path or --spm_model_path")
    expect(p, args.target in INSTANCE_BUILDERS,
           f"--target {args.target}: not available in this version (available: "
           f"{', '.join(sorted(INSTANCE_BUILDERS))})")
    expect(p, args.tokenizer in TOKENIZERS, f"--tokenizer {args.tokenizer}: not available")
    expect(p, args.processes_num >= 1, f"--processes_num must be at least 1, got {args.processes_num}")
    expect(p, args.seq_length >= 8, f"--seq_length must be at least 8, got {args.seq_length}")
    expect(p, args.dup_factor >= 1, f"--dup_factor must be at least 1, got {args.dup_factor}")
    expect(p, args.docs_buffer_size >= 1, f"--docs_buffer_size must be at least 1, got {args.docs_buffer_size}")
    expect(p, 0 <= args.short_seq_prob <= 1, f"--short_seq_prob must be in [0, 1], got {args.short_seq_prob}")
    expect(p, args.seed >= 0, f"--seed must be >= 0, got {args.seed}")
    p += finite_problems(vars(args)) + masking_problems(args.span_geo_prob, args.span_max_length)
    expect(p, 0 < args.gap_sentence_ratio < 1, f"--gap_sentence_ratio must be in (0, 1), got {args.gap_sentence_ratio}")
    expect(p, 0 <= args.infilling_ratio < 1, f"--infilling_ratio must be in [0, 1), got {args.infilling_ratio}")
    expect(p, args.poisson_lambda > 0, f"--poisson_lambda must be positive, got {args.poisson_lambda}")
    expect(p, not args.sentinel_tokens or args.target == "t5",
           f"--sentinel_tokens is T5's span corruption: for --target t5, not {args.target}")
    if args.whole_word_masking:
        p += whole_word_problems(args.target, args.user_dict_path)
    elif args.user_dict_path is not None:
        p.append("--user_dict_path is read only with --whole_word_masking")
    p += output_problems(args.dataset_path, "--dataset_path", {
        f"--{n}": getattr(args, n) for n in ("corpus_path", "vocab_path", "spm_model_path", "tgt_vocab_path",
                                             "tgt_spm_model_path")})
    return p


