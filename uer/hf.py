"""HuggingFace transformers model directories, both ways (the key maps are in uer.convert).

A uer model becomes a directory that `from_pretrained` loads: config.json (the architecture, the
sizes, tie_word_embeddings as trained, layer_norm_eps, the feed-forward size, the activation,
positions, segments), model.safetensors, and the tokenizer files (tokenizer.json holds the very
pipeline uer tokenizes with), so that AutoTokenizer tokenizes as uer does. Before the directory
is written, the model is loaded back with transformers and its logits compared with uer's: a model
transformers cannot represent exactly (uer's reference LayerNorm formula, an MLM head activation
that differs from hidden_act, ...) is refused with the measured difference, unless the
approximation is asked for. A directory is read back through its config.json.
"""
from __future__ import annotations

import logging
import os
import shutil

import torch

from uer.config import ModelConfig
from uer.convert import (HF_ACTS, albert_from_hf, albert_to_hf, bart_config_to_hf, bart_to_hf, bert_from_hf,
                         bert_to_hf, gpt2_from_hf, gpt2_to_hf, llama_config_to_hf, llama_from_hf, llama_recipe_from_hf,
                         llama_to_hf, read_hf_dir, t5_config_to_hf, t5_to_hf)
from uer.errors import UerError

logger = logging.getLogger(__name__)

#: the largest logit difference a directory may have from uer's model without --approximate
TOLERANCE = 1e-4
#: (family, uer target) -> the transformers class
ARCHITECTURES = {("bert", "bert"): "BertForPreTraining", ("bert", "mlm"): "BertForMaskedLM",
                 ("albert", "albert"): "AlbertForPreTraining", ("gpt2", "lm"): "GPT2LMHeadModel",
                 ("llama", "lm"): "LlamaForCausalLM", ("bart", "bart"): "BartForConditionalGeneration",
                 ("t5", "t5"): "T5ForConditionalGeneration"}
#: the encoder-decoder families: config.json and the state from uer's
SEQ2SEQ = {"bart": (bart_config_to_hf, bart_to_hf), "t5": (t5_config_to_hf, t5_to_hf)}
_ENCODER = [("encoder", "transformer"), ("feed_forward", "dense"), ("remove_transformer_bias", False),
            ("rotary_position_embedding", False), ("local_kv_heads_num", None)]
#: what each family's uer model must be: (field, value)
SHAPES = {
    "bert": _ENCODER + [("embedding", "word_pos_seg"), ("remove_embedding_layernorm", False),
                        ("mask", "fully_visible"), ("layernorm_positioning", "post"),
                        ("factorized_embedding_parameterization", False), ("parameter_sharing", False)],
    "albert": _ENCODER + [("embedding", "word_pos_seg"), ("remove_embedding_layernorm", False),
                          ("mask", "fully_visible"), ("layernorm_positioning", "post"),
                          ("factorized_embedding_parameterization", True), ("parameter_sharing", True)],
    "gpt2": _ENCODER + [("embedding", "word_pos"), ("remove_embedding_layernorm", True), ("mask", "causal"),
                        ("layernorm_positioning", "pre"), ("factorized_embedding_parameterization", False),
                        ("parameter_sharing", False), ("has_lmtarget_bias", False)],
}


def family_of(cfg: ModelConfig) -> str:
    if cfg.target == "lm":
        return "llama" if cfg.rotary_position_embedding or cfg.feed_forward == "gated" else "gpt2"
    if cfg.target == "t5":  # T5 v1.1's layout; uer's reference t5 has no transformers class
        return "t5" if cfg.relative_position_embedding else ""
    return {"bert": "bert", "mlm": "bert", "albert": "albert", "bart": "bart"}.get(cfg.target, "")


def shape_problems(cfg: ModelConfig) -> list[str]:
    """Why no transformers class holds this model at all (its weights would not map)."""
    family = family_of(cfg)
    if not family:
        return [f"--target {cfg.target}: no transformers model directory for it (bert, mlm, albert, lm, bart and "
                "t5 with --relative_position_embedding are)"]
    if family == "llama" or family in SEQ2SEQ:
        try:
            (llama_config_to_hf if family == "llama" else SEQ2SEQ[family][0])(cfg)
        except UerError as e:
            return [str(e)]
        return []
    p = [f"{k} is {getattr(cfg, k)!r}; a {ARCHITECTURES[family, cfg.target]} needs {want!r}"
         for k, want in SHAPES[family] if getattr(cfg, k) != want]
    if family != "albert" and cfg.emb_size != cfg.hidden_size:
        p.append(f"emb_size {cfg.emb_size} differs from hidden_size {cfg.hidden_size}")
    return p


def inexact(cfg: ModelConfig) -> list[str]:
    """What transformers computes otherwise than uer for this model (weights that map, logits that
    may not): the reasons given when the measured difference is too large."""
    p = []
    if cfg.layernorm == "uer":
        p.append("--layernorm uer (the reference formula: the unbiased std added to eps) is not transformers' "
                 "LayerNorm")
    if family_of(cfg) in ("bert", "albert") and cfg.hidden_act != "gelu":
        p.append(f"uer's MLM head applies gelu, transformers' the model's hidden_act ({cfg.hidden_act})")
    return p


def hf_config(cfg: ModelConfig, special) -> dict:
    """config.json of the transformers class that holds this model (shape_problems must be empty)."""
    family, act = family_of(cfg), HF_ACTS[cfg.hidden_act][0]
    common = {"architectures": [ARCHITECTURES[family, cfg.target]], "vocab_size": cfg.vocab_size,
              "tie_word_embeddings": cfg.tie_weights, "pad_token_id": special.pad, "initializer_range": 0.02,
              "torch_dtype": "float32"}
    if family == "llama":
        return {**llama_config_to_hf(cfg), "pad_token_id": special.pad}
    if family in SEQ2SEQ:
        return SEQ2SEQ[family][0](cfg, special)
    if family == "gpt2":
        return {**common, "model_type": "gpt2", "n_embd": cfg.hidden_size, "n_layer": cfg.layers_num,
                "n_head": cfg.heads_num, "n_inner": cfg.feedforward_size, "n_positions": cfg.max_seq_length,
                "activation_function": act, "layer_norm_epsilon": cfg.layernorm_eps, "resid_pdrop": cfg.dropout,
                "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout, "bos_token_id": special.cls,
                "eos_token_id": special.sep}
    conf = {**common, "model_type": family, "hidden_size": cfg.hidden_size, "num_hidden_layers": cfg.layers_num,
            "num_attention_heads": cfg.heads_num, "intermediate_size": cfg.feedforward_size, "hidden_act": act,
            "hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.dropout,
            "max_position_embeddings": cfg.max_seq_length, "type_vocab_size": 2,
            "layer_norm_eps": cfg.layernorm_eps, "position_embedding_type": "absolute"}
    if family == "albert":
        conf.update(embedding_size=cfg.emb_size, num_hidden_groups=1, inner_group_num=1,
                    classifier_dropout_prob=cfg.dropout)
    return conf


def hf_state(cfg: ModelConfig, state: dict) -> dict:
    family = family_of(cfg)
    if family == "bert":
        return bert_to_hf(state, cfg.layers_num, cfg.target)
    if family == "albert":
        return albert_to_hf(state)
    if family == "gpt2":
        return gpt2_to_hf(state, cfg.layers_num)
    if family in SEQ2SEQ:
        return SEQ2SEQ[family][1](state, cfg)
    return llama_to_hf(state, cfg)


# -- tokenizer files ------------------------------------------------------------------------------

SPECIAL_TOKENS = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
                  "mask_token": "[MASK]"}


def hf_tokenizer(vocab, name: str, do_lower_case: bool = True, spm: bool = False):
    """A `tokenizers` pipeline that gives uer's ids (without [CLS]/[SEP]), or None where there is
    none (sentencepiece)."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers

    from uer.tokenizers import _build_fast_bert

    if spm:
        return None
    if name == "bert":
        return _build_fast_bert(vocab, do_lower_case)
    tok = Tokenizer(models.WordLevel(dict(vocab.w2i), unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.normalizer = normalizers.Strip()
    tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="removed") if name == "space" else \
        pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # char: every character, spaces too
    return tok


def write_tokenizer(path: str, vocab, name: str, do_lower_case: bool, max_length: int, spm: bool = False) -> bool:
    """tokenizer.json (uer's own pipeline, with [CLS] text [SEP] added as BERT does),
    tokenizer_config.json, special_tokens_map.json and vocab.txt; False where uer's tokenizer has
    no transformers counterpart (sentencepiece)."""
    from tokenizers import processors

    from uer.utils import write_json

    tok = hf_tokenizer(vocab, name, do_lower_case, spm)
    if tok is None:
        return False
    cls, sep = SPECIAL_TOKENS["cls_token"], SPECIAL_TOKENS["sep_token"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, vocab.w2i[cls]), (sep, vocab.w2i[sep])])
    tok.save(os.path.join(path, "tokenizer.json"))
    write_json({"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_length,
                "do_lower_case": do_lower_case, "uer_tokenizer": name, **SPECIAL_TOKENS},
               os.path.join(path, "tokenizer_config.json"))
    write_json(SPECIAL_TOKENS, os.path.join(path, "special_tokens_map.json"))
    vocab.save(os.path.join(path, "vocab.txt"))
    return True


# -- uer -> a directory ---------------------------------------------------------------------------

def measured_difference(path: str, cfg: ModelConfig, model, special) -> float:
    """The largest difference between the logits of the directory (loaded by transformers) and
    uer's, on two sequences of random tokens."""
    import transformers
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a bar for loading a few tensors from a temporary directory
    try:
        hf = getattr(transformers, ARCHITECTURES[family_of(cfg), cfg.target]).from_pretrained(path).eval()
    finally:
        if shown:
            hf_logging.enable_progress_bar()
    g = torch.Generator().manual_seed(0)
    length = min(12, cfg.max_seq_length)
    src = torch.randint(0, cfg.vocab_size, (2, length), generator=g)
    src[:, 0] = special.cls
    if family_of(cfg) in SEQ2SEQ:  # the source, and the decoder reading it back
        with torch.no_grad():
            ours = model.eval().logits({"src": src, "seg": torch.ones_like(src), "tgt_in": src,
                                        "tgt_seg": torch.ones_like(src)})[cfg.target]
            theirs = hf(input_ids=src, attention_mask=torch.ones_like(src), decoder_input_ids=src).logits
        return float((ours.float() - theirs.float()).abs().max())
    with torch.no_grad():
        ours = model.eval().logits({"src": src, "seg": torch.ones_like(src)})
        out = hf(input_ids=src, attention_mask=torch.ones_like(src),
                 **({} if family_of(cfg) in ("gpt2", "llama") else {"token_type_ids": torch.zeros_like(src)}))
    theirs = {"lm": getattr(out, "logits", None), "mlm": getattr(out, "prediction_logits", None),
              "nsp": getattr(out, "seq_relationship_logits", None), "sop": getattr(out, "sop_logits", None)}
    if theirs["mlm"] is None:
        theirs["mlm"] = getattr(out, "logits", None)
    return max(float((ours[k].float() - theirs[k].float()).abs().max()) for k in ours)


def export(model_path: str, out_dir: str, cfg: ModelConfig, vocab, tokenizer: dict,
           approximate: bool = False) -> float | None:
    """Write the model file (built with cfg, its vocabulary `vocab`, tokenized as `tokenizer` says:
    name, do_lower_case, spm_model_path) as a transformers directory; returns the measured logit
    difference (None when transformers is not installed to measure it)."""
    from uer.checkpoint import load_model, write_state_dict
    from uer.model import build_model
    from uer.utils import owned_temp_dir, write_json

    problems = shape_problems(cfg)
    if problems:
        raise UerError("no transformers class holds this model:\n  " + "\n  ".join(problems))
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UerError(f"--output_dir {out_dir} is a file; give a directory")
    special = vocab.special_ids()
    model = build_model(cfg, init=False)
    load_model(model, model_path)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    work = owned_temp_dir(".uer-export-", parent)  # checked before anything lands in out_dir
    try:
        write_state_dict(hf_state(cfg, state), os.path.join(work, "model.safetensors"))
        write_json(hf_config(cfg, special), os.path.join(work, "config.json"))
        wrote_tokenizer = write_tokenizer(work, vocab, tokenizer.get("name", "bert"),
                                          tokenizer.get("do_lower_case", True), cfg.max_seq_length,
                                          bool(tokenizer.get("spm_model_path")))
        try:
            diff = measured_difference(work, cfg, model, special)
        except ImportError:
            diff = None
        arch = ARCHITECTURES[family_of(cfg), cfg.target]
        if diff is None and inexact(cfg) and not approximate:
            raise UerError(f"{arch} computes this model otherwise than uer ({'; '.join(inexact(cfg))}), and without "
                           "transformers installed the difference cannot be measured: give --approximate to write "
                           "it anyway")
        if diff is not None and diff > TOLERANCE and not approximate:
            why = "; ".join(inexact(cfg)) or "the logits differ"
            raise UerError(f"transformers' {arch} cannot represent this model exactly ({why}): its logits differ "
                           f"from uer's by up to {diff:.3g} (measured on 2 sequences of random tokens; at most "
                           f"{TOLERANCE:g} is exact); give --approximate to write it anyway")
        os.makedirs(out_dir, exist_ok=True)
        for name in sorted(os.listdir(work)):
            os.replace(os.path.join(work, name), os.path.join(out_dir, name))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    logger.info(f"Wrote {out_dir}: a {arch} (config.json, model.safetensors"
                + (", the tokenizer files" if wrote_tokenizer else "; no tokenizer files: transformers has no "
                   "counterpart of uer's sentencepiece tokenizer here") + "); "
                + ("logits not checked (transformers is not installed)." if diff is None else
                   f"its logits differ from uer's by at most {diff:.2g}."))
    return diff


# -- a directory -> uer ---------------------------------------------------------------------------

def _act(name: str, where: str) -> str:
    ours = [u for u, names in HF_ACTS.items() if name in names]
    if not ours:
        raise UerError(f"{where}: the activation {name!r} is not one of uer's")
    return ours[0]


def recipe_from_hf(conf: dict, where: str) -> dict:
    """config.json -> a uer recipe (the model card's model), for BERT, ALBERT, GPT-2 and LLaMA."""
    kind = conf.get("model_type")
    if kind == "llama":
        return llama_recipe_from_hf(conf, where)
    arch = (conf.get("architectures") or [""])[0]
    if kind == "gpt2":
        H = conf["n_embd"]
        return {"emb_size": H, "hidden_size": H, "feedforward_size": conf.get("n_inner") or 4 * H,
                "heads_num": conf["n_head"], "layers_num": conf["n_layer"],
                "hidden_act": _act(conf.get("activation_function", "gelu_new"), where),
                "dropout": conf.get("resid_pdrop", 0.1), "max_seq_length": conf.get("n_positions", 1024),
                "layernorm_eps": conf.get("layer_norm_epsilon", 1e-5), "embedding": "word_pos",
                "remove_embedding_layernorm": True, "encoder": "transformer", "mask": "causal",
                "layernorm_positioning": "pre", "target": "lm", "tie_weights": conf.get("tie_word_embeddings", True)}
    if kind not in ("bert", "albert"):
        raise UerError(f"{where}: model_type {kind!r}; uer reads bert, albert, gpt2 and llama directories")
    p = []
    if conf.get("type_vocab_size", 2) != 2:
        p.append(f"type_vocab_size {conf.get('type_vocab_size')} (uer's segments: 2)")
    if conf.get("position_embedding_type", "absolute") != "absolute":
        p.append(f"position_embedding_type {conf.get('position_embedding_type')!r} (uer's: absolute)")
    if kind == "albert" and (conf.get("num_hidden_groups", 1), conf.get("inner_group_num", 1)) != (1, 1):
        p.append("num_hidden_groups and inner_group_num other than 1 (uer shares one layer)")
    if p:
        raise UerError(f"cannot convert {where} to uer: " + "; ".join(p))
    H = conf["hidden_size"]
    recipe = {"emb_size": conf.get("embedding_size", H) if kind == "albert" else H, "hidden_size": H,
              "feedforward_size": conf["intermediate_size"], "heads_num": conf["num_attention_heads"],
              "layers_num": conf["num_hidden_layers"], "hidden_act": _act(conf.get("hidden_act", "gelu"), where),
              "dropout": conf.get("hidden_dropout_prob", 0.1), "max_seq_length": conf.get("max_position_embeddings",
                                                                                           512),
              "layernorm_eps": conf.get("layer_norm_eps", 1e-12), "embedding": "word_pos_seg",
              "encoder": "transformer", "mask": "fully_visible", "tie_weights": conf.get("tie_word_embeddings", True)}
    if kind == "albert":
        recipe.update(factorized_embedding_parameterization=True, parameter_sharing=True, target="albert")
    else:
        recipe["target"] = "mlm" if arch == "BertForMaskedLM" else "bert"
    return recipe


def import_dir(path: str) -> tuple[dict, dict, dict]:
    """(recipe, uer state dict, tokenizer) of a transformers directory."""
    from uer.utils import read_json

    conf, hf = read_hf_dir(path)
    recipe = recipe_from_hf(conf, os.path.join(path, "config.json"))
    kind = conf.get("model_type")
    if kind == "llama":
        state = llama_from_hf(hf, recipe)
    elif kind == "gpt2":
        state = gpt2_from_hf(hf, recipe["layers_num"], recipe["max_seq_length"])
    elif kind == "albert":
        state = albert_from_hf(hf, recipe["max_seq_length"])
    else:
        state = bert_from_hf(hf, recipe["layers_num"], recipe["target"], recipe["max_seq_length"])
    told = os.path.join(path, "tokenizer_config.json")
    told = read_json(told, "the tokenizer config") if os.path.isfile(told) else {}
    tokenizer = {"name": told.get("uer_tokenizer", "bert"), "do_lower_case": bool(told.get("do_lower_case", True)),
                 "spm_model_path": None}
    return recipe, state, tokenizer
