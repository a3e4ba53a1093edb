"""Typed configuration: built once from options + JSON recipe, validated once, never mutated.

Precedence: an option given on the command line > the recipe (--config_path) > the defaults.
Validation collects every problem and raises one ConfigError that lists them all.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import tempfile
from dataclasses import dataclass, fields

from uer.errors import ConfigError, UerError
from uer.options import OPTIONS, POOLINGS, default as _d  # noqa: F401  (POOLINGS: for the cls target)

# the largest Adam beta without --adam_bias_correction (see uer.train.optim.STEP_OFFSET)
MAX_BETA = 0.99999


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    emb_size: int = 768
    hidden_size: int = 768
    feedforward_size: int = 3072
    heads_num: int = 12
    layers_num: int = 12
    hidden_act: str = _d("hidden_act")
    dropout: float = _d("dropout")
    max_seq_length: int = 512
    layernorm: str = _d("layernorm")  # "torch" (F.layer_norm), "uer" (the reference formula), "rms"
    layernorm_eps: float = 1e-6
    feed_forward: str = _d("feed_forward")
    remove_transformer_bias: bool = _d("remove_transformer_bias")
    rotary_position_embedding: bool = _d("rotary_position_embedding")
    rope_base: float = _d("rope_base")
    relative_position_embedding: bool = _d("relative_position_embedding")
    relative_attention_buckets_num: int = _d("relative_attention_buckets_num")
    relative_attention_max_distance: int = _d("relative_attention_max_distance")
    remove_attention_scale: bool = _d("remove_attention_scale")
    local_kv_heads_num: int | None = _d("local_kv_heads_num")
    kernel_size: int = 3
    block_size: int = 2
    embedding: str = _d("embedding")
    remove_embedding_layernorm: bool = _d("remove_embedding_layernorm")
    encoder: str = _d("encoder")
    mask: str = _d("mask")
    layernorm_positioning: str = _d("layernorm_positioning")
    bidirectional: bool = _d("bidirectional")
    factorized_embedding_parameterization: bool = _d("factorized_embedding_parameterization")
    parameter_sharing: bool = _d("parameter_sharing")
    tgt_embedding: str = _d("tgt_embedding")
    decoder: str = _d("decoder")
    decoder_layernorm_positioning: str = _d("decoder_layernorm_positioning")
    decoder_final_layernorm: bool = _d("decoder_final_layernorm")
    share_embedding: bool = _d("share_embedding")
    target: str = _d("target")
    pooling: str = _d("pooling")
    labels_num: int | None = _d("labels_num")
    tie_weights: bool = _d("tie_weights")
    has_lmtarget_bias: bool = _d("has_lmtarget_bias")
    tgt_vocab_size: int | None = None

    def replace(self, **kw) -> "ModelConfig":
        return dataclasses.replace(self, **kw)


HIDDEN_ACTS = OPTIONS["hidden_act"].choices
LAYERNORMS = OPTIONS["layernorm"].choices
FEED_FORWARDS = OPTIONS["feed_forward"].choices


@dataclass(frozen=True)
class TrainConfig:
    dataset_path: str
    output_model_path: str
    pretrained_model_path: str | None = _d("pretrained_model_path")
    strict_load: bool = _d("strict_load")
    resume: bool = _d("resume")
    overwrite: bool = _d("overwrite")
    dev_dataset_path: str | None = _d("dev_dataset_path")
    dev_steps: int | None = _d("dev_steps")  # None: every save_checkpoint_steps
    best_model_path: str | None = None  # where the model with the best dev score is kept
    log_path: str | None = _d("log_path")  # every log line, appended
    tensorboard_dir: str | None = _d("tensorboard_dir")  # train and dev scalars (torch.utils.tensorboard)
    metrics_path: str | None = _d("metrics_path")  # CSV: one row per term per report or dev evaluation
    total_steps: int = _d("total_steps")
    save_checkpoint_steps: int = _d("save_checkpoint_steps")
    keep_checkpoints: int = _d("keep_checkpoints")  # 0: all
    report_steps: int = _d("report_steps")
    accumulation_steps: int = _d("accumulation_steps")
    batch_size: int = _d("batch_size")
    instances_buffer_size: int = _d("instances_buffer_size")
    length_buckets: bool = _d("length_buckets")
    seed: int = _d("seed")
    learning_rate: float = _d("learning_rate")
    warmup: float = _d("warmup")
    weight_decay: float = _d("weight_decay")
    max_grad_norm: float = _d("max_grad_norm")
    beta1: float = _d("beta1")
    beta2: float = _d("beta2")
    adam_bias_correction: bool = _d("adam_bias_correction")
    fp16: bool = _d("fp16")
    fp16_opt_level: str = _d("fp16_opt_level")
    bf16: bool = _d("bf16")
    activation_checkpointing: bool = _d("activation_checkpointing")
    fsdp: bool = _d("fsdp")
    fsdp_hybrid: bool = _d("fsdp_hybrid")
    async_checkpoint: bool = _d("async_checkpoint")
    compile: bool = _d("compile")
    kernels: str = _d("kernels")  # see uer.kernels
    world_size: int = _d("world_size")
    gpu_ranks: tuple[int, ...] = _d("gpu_ranks")
    master_ip: str = _d("master_ip")
    backend: str = _d("backend")
    dist_timeout: int = _d("dist_timeout")
    span_masking: bool | None = None   # None: as the dataset was built
    span_geo_prob: float | None = None
    span_max_length: int | None = None
    whole_word_masking: bool | None = None
    user_dict_path: str | None = None


#: the recipes that ship with the package (models/*_config.json in a checkout link to them)
RECIPES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "recipes")
RECIPE_SUFFIX = "_config.json"


def recipe_names() -> list[str]:
    return sorted(f[:-len(RECIPE_SUFFIX)] for f in os.listdir(RECIPES_DIR) if f.endswith(RECIPE_SUFFIX))


def resolve_recipe(value: str) -> str:
    """--config_path: a file, or the name of a packaged recipe (bert_base, albert_xxlarge, ...)."""
    if os.path.isfile(value):
        return value
    name = os.path.basename(value)
    name = name[:-len(RECIPE_SUFFIX)] if name.endswith(RECIPE_SUFFIX) else name
    packaged = os.path.join(RECIPES_DIR, name + RECIPE_SUFFIX)
    if os.path.basename(value) == value and os.path.isfile(packaged):  # a name, not a path
        return packaged
    hint = (f"; --config_path {name} names the packaged recipe of that name" if os.path.isfile(packaged) else
            f"; the packaged recipes are {', '.join(recipe_names())}")
    raise UerError(f"model recipe not found: --config_path {value} is neither a file nor a packaged "
                   f"recipe's name{hint}")


def load_recipe(path: str) -> dict:
    """Read a JSON recipe (a file, or a packaged recipe's name); unknown keys are an error (with a
    suggestion)."""
    path = resolve_recipe(path)
    from uer.utils import read_json  # here: importing the configs loads nothing else

    return check_recipe(read_json(path, "model recipe"), path)


def check_recipe(recipe, path: str) -> dict:
    """A recipe's fields and their JSON types; every problem in one error that names `path`."""
    if not isinstance(recipe, dict):
        raise UerError(f"model recipe {path} must hold a JSON object")
    types = {f.name: f.type for f in fields(ModelConfig) if f.name not in ("vocab_size", "tgt_vocab_size")}
    problems = []
    for key, value in recipe.items():
        if key not in types:
            close = difflib.get_close_matches(key, sorted(types), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"{path}: unknown field {key!r}{hint}")
        elif not RECIPE_TYPES[types[key]][0](value):
            problems.append(f"{path}: field {key!r} is {json.dumps(value)}, expected {RECIPE_TYPES[types[key]][1]}")
    if problems:
        raise ConfigError(problems, what=f"model recipe {path}")
    return recipe


#: a recipe field's type (as ModelConfig declares it): the JSON values it takes, and their name
RECIPE_TYPES = {
    "int": (lambda v: type(v) is int, "a whole number"),
    "int | None": (lambda v: v is None or type(v) is int, "a whole number or null"),
    "float": (lambda v: type(v) in (int, float), "a number"),
    "bool": (lambda v: type(v) is bool, "true or false"),
    "str": (lambda v: type(v) is str, "a string"),
}


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
    """defaults < recipe < options given explicitly (not validated: see uer.model.model_problems)."""
    defaults = {f.name: f.default for f in fields(ModelConfig) if f.name not in ("vocab_size", "tgt_vocab_size")}
    return ModelConfig(vocab_size=vocab_size, tgt_vocab_size=tgt_vocab_size,
                       **merge(defaults, recipe, options, explicit))


def expect(problems: list, cond: bool, msg: str) -> None:
    if not cond:
        problems.append(msg)


def finite_problems(values: dict) -> list[str]:
    """Every float option must be a number: inf passes `> 0` and a NaN or inf rate trains nothing."""
    return [f"--{k} must be a finite number, got {v}" for k, v in values.items()
            if isinstance(v, float) and not math.isfinite(v)]


def same_file(a: str | None, b: str | None) -> bool:
    return bool(a and b) and (os.path.abspath(a) == os.path.abspath(b) or
                              (os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)))


def output_problems(output: str, option: str, inputs: dict[str, str | None]) -> list[str]:
    """An output that would overwrite an input, or whose directory cannot be written (found now,
    not at the first save after hours of training)."""
    p = [f"{option} {output} is the same file as {name} {path}: give another output path"
         for name, path in inputs.items() if same_file(output, path)]
    out_dir = os.path.dirname(os.path.abspath(output))
    if os.path.isdir(output):
        p.append(f"{option} {output} is a directory; give a file path")
    elif os.path.exists(out_dir) and not os.path.isdir(out_dir):
        p.append(f"{option}: {out_dir} is not a directory")
    else:
        try:
            os.makedirs(out_dir, exist_ok=True)
            with tempfile.TemporaryFile(dir=out_dir):
                pass
        except OSError as e:
            p.append(f"{option} {output}: cannot write to the directory {out_dir} ({e.strerror})")
    return p


def input_problems(values: dict[str, str | None]) -> list[str]:
    """Each input file given (option -> path) must be a file."""
    return [f"{k} {v}: " + ("a directory, not a file" if os.path.isdir(v) else "file not found")
            for k, v in values.items() if v and not os.path.isfile(v)]


def train_problems(cfg: TrainConfig, other_inputs: dict[str, str | None] | None = None) -> list[str]:
    """other_inputs: option -> path of the inputs outside TrainConfig (vocabulary, recipe), which
    the outputs must not overwrite either."""
    p: list[str] = finite_problems(dataclasses.asdict(cfg))
    expect(p, cfg.seed >= 0, f"--seed must be >= 0, got {cfg.seed}")
    expect(p, cfg.keep_checkpoints >= 0, f"--keep_checkpoints must be >= 0 (0 keeps all), got {cfg.keep_checkpoints}")
    for name in ("total_steps", "save_checkpoint_steps", "report_steps", "accumulation_steps",
                 "batch_size", "instances_buffer_size", "world_size"):
        v = getattr(cfg, name)
        expect(p, v >= 1, f"--{name} must be at least 1, got {v}")
    # AdamW moves each weight by about the learning rate a step: beyond 1 the weights explode in a
    # few steps (1e10 wrote checkpoints of 8e9 weights that were finite, so kept as good)
    expect(p, 0 < cfg.learning_rate <= 1, f"--learning_rate must be in (0, 1], got {cfg.learning_rate}")
    expect(p, 0 <= cfg.warmup <= 1, f"--warmup is a fraction of total_steps in [0, 1], got {cfg.warmup}")
    expect(p, cfg.weight_decay >= 0, f"--weight_decay must be >= 0, got {cfg.weight_decay}")
    expect(p, cfg.max_grad_norm >= 0, f"--max_grad_norm must be >= 0, got {cfg.max_grad_norm}")
    for name in ("beta1", "beta2"):
        v = getattr(cfg, name)
        if cfg.adam_bias_correction:
            expect(p, 0 <= v < 1, f"--{name} must be in [0, 1), got {v}")
        else:
            expect(p, 0 <= v <= MAX_BETA,
                   f"--{name} must be in [0, {MAX_BETA}] without --adam_bias_correction, got {v}")
    expect(p, not (cfg.fp16 and cfg.bf16), "--fp16 and --bf16 exclude each other")
    expect(p, re.fullmatch(r"tcp://[^:/\s]+:\d{1,5}", cfg.master_ip) is not None,
           f"--master_ip must look like tcp://host:port, got {cfg.master_ip!r}")
    # with world_size 1, `--gpu_ranks 3` names the GPU to use (the manual's single-GPU example)
    if cfg.world_size > 1:
        bad = [r for r in cfg.gpu_ranks if not 0 <= r < cfg.world_size]
        expect(p, not bad, f"--gpu_ranks {bad} lie outside [0, world_size={cfg.world_size})")
    expect(p, cfg.dev_steps is None or cfg.dev_steps >= 1, f"--dev_steps must be at least 1, got {cfg.dev_steps}")
    expect(p, cfg.dist_timeout >= 1, f"--dist_timeout must be at least 1 second, got {cfg.dist_timeout}")
    expect(p, len(set(cfg.gpu_ranks)) == len(cfg.gpu_ranks), f"--gpu_ranks has duplicates: {list(cfg.gpu_ranks)}")
    p += tensorboard_problems(cfg.tensorboard_dir)
    p += input_problems({"--dev_dataset_path": cfg.dev_dataset_path,
                         "--pretrained_model_path": cfg.pretrained_model_path})
    p += output_problems(cfg.output_model_path, "--output_model_path", {
        "--dataset_path": cfg.dataset_path, "--dev_dataset_path": cfg.dev_dataset_path,
        "--pretrained_model_path": cfg.pretrained_model_path, **(other_inputs or {})})
    return p


def tensorboard_problems(directory: str | None) -> list[str]:
    p: list[str] = []
    if directory:
        import importlib.util

        expect(p, importlib.util.find_spec("tensorboard") is not None,
               f"--tensorboard_dir {directory} needs the tensorboard package: pip install 'uer[tensorboard]' "
               "(or pip install tensorboard)")
        expect(p, not os.path.isfile(directory), f"--tensorboard_dir {directory} is a file; give a directory")
    return p


def masking_problems(geo_prob: float | None, max_length: int | None) -> list[str]:
    p: list[str] = []
    if geo_prob is not None:
        expect(p, 0 < geo_prob <= 1, f"--span_geo_prob must be in (0, 1], got {geo_prob}")
    if max_length is not None:
        expect(p, max_length >= 1, f"--span_max_length must be at least 1, got {max_length}")
    return p
