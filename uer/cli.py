"""Command-line entry points: preprocess.py, pretrain.py (and the uer-* console scripts)."""
from __future__ import annotations

import logging
import os
from dataclasses import fields, replace

from uer import logs
from uer.errors import ConfigError, run_cli

logger = logging.getLogger(__name__)


def _preprocess(argv: list[str] | None) -> int:
    from uer import components
    from uer.data.builders import BuilderConfig
    from uer.data.preprocess import PreprocessJob, build_dataset, preprocess_problems
    from uer.options import parse
    from uer.vocab import load_vocab

    components.load("tokenizer", "instance_builder")
    args, explicit = parse("preprocess", argv)
    logs.setup(args.log_level)
    problems = preprocess_problems(args, frozenset(explicit))
    if problems:
        raise ConfigError(problems)
    vocab = load_vocab(args.vocab_path, args.spm_model_path)
    vocab.special_ids()
    tgt_vocab = None
    if args.target == "mt":
        tgt_vocab = load_vocab(args.tgt_vocab_path, args.tgt_spm_model_path, what="tgt ")
        tgt_vocab.special_ids()
    job = PreprocessJob(corpus_path=args.corpus_path, dataset_path=args.dataset_path, target=args.target,
                        tokenizer=args.tokenizer, vocab=vocab, spm_model_path=args.spm_model_path,
                        builder=BuilderConfig.from_options(args), processes_num=args.processes_num, seed=args.seed,
                        do_lower_case=args.do_lower_case, tgt_vocab=tgt_vocab,
                        tgt_spm_model_path=args.tgt_spm_model_path if tgt_vocab else None)
    header = build_dataset(job)
    c = header["corpus"]
    logger.info(f"Wrote {args.dataset_path}: {header['instances']} instances for target {args.target} from "
                f"{c['documents']} documents ({c['tokens']} tokens, {c['lines']} lines) in "
                f"{header['seconds']:.1f}s, {os.path.getsize(args.dataset_path) / 2**20:.1f} MiB.")
    return 0


def dataset_problems(header: dict, path: str, mcfg, vocab, tgt_vocab=None) -> list[str]:
    """Whether the dataset fits the model and vocabularies pretrain was given."""
    from uer.registry import EMBEDDINGS, TARGETS

    p = []
    target = mcfg.target
    if header["target"] != target:
        p.append(f"dataset {path} was built for target {header['target']!r}, not {target!r}: "
                 f"pass --target {header['target']} or rebuild it with preprocess.py --target {target}")
        return p
    if header["vocab_fingerprint"] != vocab.fingerprint() or header["vocab_size"] != len(vocab):
        p.append(f"dataset {path} was built with another vocabulary ({header.get('vocab_source')}, "
                 f"{header['vocab_size']} tokens) than {vocab.source} ({len(vocab)} tokens)")
    if tgt_vocab is not None and (header.get("tgt_vocab_fingerprint") != tgt_vocab.fingerprint()):
        p.append(f"dataset {path} was built with another target-side vocabulary "
                 f"({header.get('tgt_vocab_source')}, {header.get('tgt_vocab_size')} tokens) than "
                 f"{tgt_vocab.source} ({len(tgt_vocab)} tokens)")
    lengths = [("seq_length", header["seq_length"], mcfg.embedding)]
    if getattr(TARGETS.get(target), "has_decoder", False):
        lengths.append(("tgt_seq_length", header.get("tgt_seq_length", 0), mcfg.tgt_embedding))
    for name, n, emb in lengths:
        if getattr(EMBEDDINGS.get(emb), "use_position", False) and n > mcfg.max_seq_length:
            p.append(f"dataset {path} has {name} {n}, beyond the position table of --embedding {emb} "
                     f"(max_seq_length {mcfg.max_seq_length} in the recipe)")
    if target == "cls" and mcfg.labels_num is not None and header.get("labels_num", 0) > mcfg.labels_num:
        where = (f" (line {header['largest_label_line']} of {header['corpus']['path']})"
                 if "largest_label_line" in header else "")
        p.append(f"dataset {path} has labels up to {header['labels_num'] - 1}{where}, but --labels_num is "
                 f"{mcfg.labels_num}: labels are 0, 1, ..., labels_num - 1")
    return p


def _pretrain(argv: list[str] | None) -> int:
    from uer import components
    from uer.card import card_problems, make_card, read_card, recipe_for, tokenizer_from_header
    from uer.config import TrainConfig, build_model_config, masking_problems, train_problems
    from uer.data.dataset import Dataset
    from uer.data.masking import MASKING_FIELDS, MaskingConfig
    from uer.data.words import WordSplitter, whole_word_problems
    from uer.model import model_problems
    from uer.options import parse
    from uer.train.distributed import elastic_restart, launch_problems, local_ranks, run_ranks
    from uer.train.trainer import pretrain_worker
    from uer.vocab import load_vocab

    components.load()
    args, explicit = parse("pretrain", argv)
    logs.setup(args.log_level)
    card = read_card(args.pretrained_model_path)
    recipe = recipe_for(args.config_path, explicit, card)
    vocab = load_vocab(args.vocab_path, args.spm_model_path)
    special = vocab.special_ids()
    dataset = Dataset(args.dataset_path)
    header = dataset.header

    tgt_vocab = None
    target = args.target if "target" in explicit else recipe.get("target", args.target)
    if target == "mt":
        tgt_vocab = load_vocab(args.tgt_vocab_path, args.tgt_spm_model_path, what="tgt ")
    mcfg = build_model_config(recipe, vars(args), explicit, len(vocab), len(tgt_vocab) if tgt_vocab else None)

    train_kw = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    train_kw["gpu_ranks"] = tuple(args.gpu_ranks)
    for name in MASKING_FIELDS:
        train_kw[name] = getattr(args, name) if name in explicit else None
    tcfg = TrainConfig(**train_kw)
    if (restart := elastic_restart()) and not tcfg.resume:
        # torchrun --max-restarts started the group again after a worker died: it continues
        if os.environ.get("RANK") == "0":
            logger.info(f"torchrun restart {restart}: continuing from the newest complete checkpoint "
                        "(--resume implied).")
        tcfg = replace(tcfg, resume=True)

    inputs = {f"--{n}": getattr(args, n) for n in ("vocab_path", "spm_model_path", "tgt_vocab_path",
                                                   "tgt_spm_model_path", "config_path")}
    problems = model_problems(mcfg) + train_problems(tcfg, inputs) + dataset_problems(
        header, args.dataset_path, mcfg, vocab, tgt_vocab)
    if tcfg.strict_load:  # --strict_load false: the model may differ from the one loaded
        problems += card_problems(card, mcfg, vocab, tgt_vocab)
    if args.export_hf:
        from uer.hf import shape_problems

        problems += [f"--export_hf: {q}" for q in shape_problems(mcfg)]
        if os.path.isfile(args.export_hf):
            problems.append(f"--export_hf {args.export_hf} is a file; give a directory")
    if tcfg.dev_dataset_path and os.path.isfile(tcfg.dev_dataset_path):
        problems += [f"dev: {q}" for q in dataset_problems(Dataset(tcfg.dev_dataset_path).header,
                                                           tcfg.dev_dataset_path, mcfg, vocab, tgt_vocab)]
    problems += masking_problems(tcfg.span_geo_prob, tcfg.span_max_length)
    problems += launch_problems(tcfg)
    masking, words = None, None
    given = {name: getattr(tcfg, name) for name in MASKING_FIELDS if getattr(tcfg, name) is not None}
    if header["dynamic_masking"]:
        masking = MaskingConfig(**{name: given.get(name, header.get(name, getattr(MaskingConfig, name)))
                                   for name in MASKING_FIELDS})
        if masking.whole_word_masking:
            problems += whole_word_problems(header["target"], masking.user_dict_path)
            words = WordSplitter(vocab.tokens, special.all(), masking.user_dict_path)
    else:
        for name in ("span_masking", "whole_word_masking"):
            if name in given and given[name] != header.get(name, False):
                problems.append(f"--{name} differs from the dataset {args.dataset_path}, which was masked in "
                                "preprocess (masking options apply at pretrain only to datasets built with "
                                "--dynamic_masking)")
    if problems:
        raise ConfigError(problems)
    process = {k: getattr(args, k) for k in ("keep_freed_memory", "batch_worker", "progress_bar", "log_level")}
    written = make_card(mcfg, vocab, tokenizer_from_header(header["tokenizer"], args.spm_model_path),
                        header["seq_length"], tgt_vocab)
    run_ranks(tcfg, pretrain_worker, tcfg, mcfg, args.dataset_path, special, masking, process, written, words)
    if args.export_hf and any(r.is_main for r in local_ranks(tcfg)):  # rank 0's node holds the final model
        from uer.hf import export

        export(tcfg.output_model_path, args.export_hf, mcfg, vocab, written["tokenizer"], args.approximate)
    return 0


def preprocess_main(argv: list[str] | None = None) -> int:
    return run_cli(_preprocess, argv)


def pretrain_main(argv: list[str] | None = None) -> int:
    return run_cli(_pretrain, argv)


