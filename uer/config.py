"""Typed configuration: built once from options + JSON recipe, validated once, never mutated.

Precedence: an option given on the command line > the recipe (--config_path) > the defaults.
Validation collects every problem and raises one ConfigError that lists them all.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
from dataclasses import dataclass, fields

from uer.errors import ConfigError, UerError


POOLINGS = ("mean", "max", "first", "last")  # the cls target's --pooling
KERNELS = ("auto", "stock")  # --kernels: see uer.kernels
BATCH_WORKERS = ("process", "thread", "none")  # --batch_worker: see uer.data.loader.BatchLoader.prefetch


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    emb_size: int = 768
    hidden_size: int = 768
    feedforward_size: int = 3072
    heads_num: int = 12
    layers_num: int = 12
    hidden_act: str = "gelu"
    dropout: float = 0.1
    max_seq_length: int = 512
    layernorm: str = "torch"          # "torch" (F.layer_norm) or "uer" (the reference formula)
    layernorm_eps: float = 1e-6
    kernel_size: int = 3
    block_size: int = 2
    embedding: str = "word_pos_seg"
    remove_embedding_layernorm: bool = False
    encoder: str = "transformer"
    mask: str = "fully_visible"
    layernorm_positioning: str = "post"
    bidirectional: bool = False
    factorized_embedding_parameterization: bool = False
    parameter_sharing: bool = False
    tgt_embedding: str = "word_pos"
    decoder: str = "transformer"
    target: str = "bert"
    pooling: str = "first"
    labels_num: int | None = None
    tie_weights: bool = False
    has_lmtarget_bias: bool = False
    tgt_vocab_size: int | None = None

    def replace(self, **kw) -> "ModelConfig":
        return dataclasses.replace(self, **kw)


#: recipe keys that are not options (SPEC 2.1: "config fields that exist only in JSON")
RECIPE_ONLY = ("emb_size", "hidden_size", "feedforward_size", "heads_num", "layers_num", "hidden_act",
               "max_seq_length", "layernorm", "layernorm_eps", "kernel_size", "block_size")
HIDDEN_ACTS = ("gelu", "gelu_fast", "relu")
MODEL_OPTION_KEYS = tuple(f.name for f in fields(ModelConfig)
                          if f.name not in RECIPE_ONLY + ("vocab_size", "tgt_vocab_size"))


@dataclass(frozen=True)
class TrainConfig:
    dataset_path: str
    output_model_path: str
    pretrained_model_path: str | None = None
    strict_load: bool = True
    resume: bool = False
    dev_dataset_path: str | None = None
    dev_steps: int | None = None       # None: every save_checkpoint_steps
    best_model_path: str | None = None  # where the model with the best dev score is kept
    log_path: str | None = None         # every log line, appended
    metrics_path: str | None = None     # CSV: one row per term per report or dev evaluation
    total_steps: int = 100000
    save_checkpoint_steps: int = 10000
    report_steps: int = 100
    accumulation_steps: int = 1
    batch_size: int = 32
    instances_buffer_size: int = 25600
    length_buckets: bool = True
    seed: int = 7
    learning_rate: float = 2e-5
    warmup: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    beta1: float = 0.9
    beta2: float = 0.999
    fp16: bool = False
    fp16_opt_level: str = "O1"
    bf16: bool = False
    compile: bool = False
    kernels: str = "auto"               # see uer.kernels
    world_size: int = 1
    gpu_ranks: tuple[int, ...] = ()
    master_ip: str = "tcp://localhost:12345"
    backend: str = "nccl"
    dist_timeout: int = 300
    span_masking: bool | None = None   # None: as the dataset was built
    span_geo_prob: float | None = None
    span_max_length: int | None = None


def load_recipe(path: str) -> dict:
    """Read a JSON recipe; unknown keys are an error (with a suggestion)."""
    if not os.path.isfile(path):
        raise UerError(f"model recipe not found: --config_path {path}")
    try:
        with open(path, encoding="utf-8") as f:
            recipe = json.load(f)
    except ValueError as e:
        raise UerError(f"model recipe {path} is not valid JSON: {e}") from None
    if not isinstance(recipe, dict):
        raise UerError(f"model recipe {path} must hold a JSON object")
    known = set(f.name for f in fields(ModelConfig)) - {"vocab_size", "tgt_vocab_size"}
    problems = []
    for key in recipe:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"{path}: unknown field {key!r}{hint}")
    if problems:
        raise ConfigError(problems, what=f"model recipe {path}")
    return recipe


def merge(defaults: dict, recipe: dict, cli: dict, explicit: set[str]) -> dict:
    """defaults < recipe < options given on the command line."""
    out = dict(defaults)
    out.update({k: v for k, v in cli.items() if k in out})
    for k, v in recipe.items():
        if k not in explicit:
            out[k] = v
    return out


def build_model_config(recipe: dict, options: dict, explicit: set[str], vocab_size: int,
                       tgt_vocab_size: int | None = None) -> ModelConfig:
    """defaults < recipe < options given explicitly (not validated: see model_problems)."""
    defaults = {f.name: f.default for f in fields(ModelConfig) if f.name not in ("vocab_size", "tgt_vocab_size")}
    return ModelConfig(vocab_size=vocab_size, tgt_vocab_size=tgt_vocab_size,
                       **merge(defaults, recipe, options, explicit))


def _expect(problems: list, cond: bool, msg: str) -> None:
    if not cond:
        problems.append(msg)


def model_problems(cfg: ModelConfig) -> list[str]:
    """Every reason this model cannot be built, in one list. Each component adds its own checks
    (its `problems` classmethod); the checks between components are here."""
    from uer.model.registry import DECODERS, EMBEDDINGS, ENCODERS, TARGETS

    p: list[str] = []
    slots = [("--embedding", cfg.embedding, EMBEDDINGS), ("--encoder", cfg.encoder, ENCODERS),
             ("--target", cfg.target, TARGETS)]
    if cfg.target in ("mt", "t5"):
        slots += [("--tgt_embedding", cfg.tgt_embedding, EMBEDDINGS), ("--decoder", cfg.decoder, DECODERS)]
    for kind, name, registry in slots:
        _expect(p, name in registry, f"{kind} {name}: not available (available: {', '.join(sorted(registry))})")
    for name in ("emb_size", "hidden_size", "layers_num", "max_seq_length"):
        v = getattr(cfg, name)
        _expect(p, isinstance(v, int) and v > 0, f"{name} must be a positive integer, got {v!r}")
    if p:
        return p  # the checks below read these
    _expect(p, 0.0 <= cfg.dropout < 1.0, f"dropout must be in [0, 1), got {cfg.dropout}")
    _expect(p, cfg.layernorm in ("torch", "uer"), f"layernorm must be 'torch' or 'uer', got {cfg.layernorm!r}")
    _expect(p, cfg.layernorm_eps > 0, f"layernorm_eps must be positive, got {cfg.layernorm_eps}")
    p += EMBEDDINGS[cfg.embedding].problems(cfg) + ENCODERS[cfg.encoder].problems(cfg)
    target = TARGETS[cfg.target]
    p += target.problems(cfg)
    if cfg.encoder != "transformer":
        for flag in ("factorized_embedding_parameterization", "parameter_sharing"):
            _expect(p, not getattr(cfg, flag), f"--{flag} applies to --encoder transformer only, "
                                               f"not {cfg.encoder}")
    _expect(p, not cfg.bidirectional or cfg.encoder in ("rnn", "lstm", "gru"),
            f"--bidirectional applies to --encoder rnn, lstm or gru, not {cfg.encoder} "
            "(birnn, bilstm and bigru are bidirectional by design)")
    if cfg.tie_weights:
        d = target.tie_in_features(cfg)
        if d is None:
            p.append(f"--tie_weights: --target {cfg.target} has no output layer over the vocabulary to tie")
        elif d != cfg.emb_size:
            p.append(f"--tie_weights: the output layer of --target {cfg.target} reads {d} features, "
                     f"the word embedding has emb_size {cfg.emb_size}; they must be equal")
    return p


def train_problems(cfg: TrainConfig) -> list[str]:
    p: list[str] = []
    for name in ("total_steps", "save_checkpoint_steps", "report_steps", "accumulation_steps",
                 "batch_size", "instances_buffer_size", "world_size"):
        v = getattr(cfg, name)
        _expect(p, v >= 1, f"--{name} must be at least 1, got {v}")
    _expect(p, cfg.learning_rate > 0, f"--learning_rate must be positive, got {cfg.learning_rate}")
    _expect(p, 0 <= cfg.warmup <= 1, f"--warmup is a fraction of total_steps in [0, 1], got {cfg.warmup}")
    _expect(p, cfg.weight_decay >= 0, f"--weight_decay must be >= 0, got {cfg.weight_decay}")
    _expect(p, cfg.max_grad_norm >= 0, f"--max_grad_norm must be >= 0, got {cfg.max_grad_norm}")
    for name in ("beta1", "beta2"):
        v = getattr(cfg, name)
        _expect(p, 0 <= v < 1, f"--{name} must be in [0, 1), got {v}")
    _expect(p, not (cfg.fp16 and cfg.bf16), "--fp16 and --bf16 exclude each other")
    _expect(p, re.fullmatch(r"tcp://[^:/\s]+:\d{1,5}", cfg.master_ip) is not None,
            f"--master_ip must look like tcp://host:port, got {cfg.master_ip!r}")
    # with world_size 1, `--gpu_ranks 3` names the GPU to use (the manual's single-GPU example)
    if cfg.world_size > 1:
        bad = [r for r in cfg.gpu_ranks if not 0 <= r < cfg.world_size]
        _expect(p, not bad, f"--gpu_ranks {bad} lie outside [0, world_size={cfg.world_size})")
    if cfg.dev_dataset_path:
        _expect(p, os.path.isfile(cfg.dev_dataset_path), f"--dev_dataset_path {cfg.dev_dataset_path}: file not found")
    _expect(p, cfg.dev_steps is None or cfg.dev_steps >= 1, f"--dev_steps must be at least 1, got {cfg.dev_steps}")
    _expect(p, cfg.dist_timeout >= 1, f"--dist_timeout must be at least 1 second, got {cfg.dist_timeout}")
    _expect(p, len(set(cfg.gpu_ranks)) == len(cfg.gpu_ranks), f"--gpu_ranks has duplicates: {list(cfg.gpu_ranks)}")
    if cfg.pretrained_model_path:
        _expect(p, os.path.isfile(cfg.pretrained_model_path),
                f"--pretrained_model_path {cfg.pretrained_model_path}: file not found")
    out_dir = os.path.dirname(os.path.abspath(cfg.output_model_path))
    _expect(p, not os.path.isdir(cfg.output_model_path),
            f"--output_model_path {cfg.output_model_path} is a directory; give a file path")
    _expect(p, not os.path.exists(out_dir) or os.path.isdir(out_dir),
            f"--output_model_path: {out_dir} is not a directory")
    return p


def preprocess_problems(args) -> list[str]:
    from uer.data.builders import INSTANCE_BUILDERS
    from uer.tokenizers import TOKENIZERS

    p: list[str] = []
    if not os.path.isfile(args.corpus_path):
        p.append(f"--corpus_path {args.corpus_path}: file not found")
    if not args.vocab_path and not args.spm_model_path:
        p.append("give --vocab_path or --spm_model_path")
    for name in ("vocab_path", "spm_model_path"):
        v = getattr(args, name)
        if v and not os.path.isfile(v):
            p.append(f"--{name} {v}: file not found")
    _expect(p, args.target in INSTANCE_BUILDERS,
            f"--target {args.target}: not available in this version (available: "
            f"{', '.join(sorted(INSTANCE_BUILDERS))})")
    _expect(p, args.tokenizer in TOKENIZERS, f"--tokenizer {args.tokenizer}: not available")
    _expect(p, args.processes_num >= 1, f"--processes_num must be at least 1, got {args.processes_num}")
    _expect(p, args.seq_length >= 8, f"--seq_length must be at least 8, got {args.seq_length}")
    _expect(p, args.dup_factor >= 1, f"--dup_factor must be at least 1, got {args.dup_factor}")
    _expect(p, args.docs_buffer_size >= 1, f"--docs_buffer_size must be at least 1, got {args.docs_buffer_size}")
    _expect(p, 0 <= args.short_seq_prob <= 1, f"--short_seq_prob must be in [0, 1], got {args.short_seq_prob}")
    p += masking_problems(args.span_geo_prob, args.span_max_length)
    if os.path.isdir(args.dataset_path):
        p.append(f"--dataset_path {args.dataset_path} is a directory; give a file path")
    return p


def masking_problems(geo_prob: float | None, max_length: int | None) -> list[str]:
    p: list[str] = []
    if geo_prob is not None:
        _expect(p, 0 < geo_prob <= 1, f"--span_geo_prob must be in (0, 1], got {geo_prob}")
    if max_length is not None:
        _expect(p, max_length >= 1, f"--span_max_length must be at least 1, got {max_length}")
    return p
