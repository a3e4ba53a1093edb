"""Checkpoint conversion between uer (the reference key names, SPEC 4) and HuggingFace transformers,
both directions, for BERT (BertForPreTraining / BertForMaskedLM), GPT-2 (GPT2LMHeadModel), ALBERT
(AlbertForPreTraining), and, as model directories with their config.json, LLaMA (LlamaForCausalLM),
BART (BartForConditionalGeneration) and T5 v1.1 (T5ForConditionalGeneration).
Sizes are read from the tensors; nothing is hard-coded.

Each family is a table of (uer key, HF key) pairs, `{i}` standing for a layer index, plus the few
tensors that need a transform (the pad row of the segment table, GPT-2's fused and transposed
Conv1D weights).
"""
from __future__ import annotations

import logging
import re

import torch

from uer.errors import UerError

logger = logging.getLogger(__name__)

BERT_EMBEDDING = [
    ("embedding.word_embedding.weight", "bert.embeddings.word_embeddings.weight"),
    ("embedding.position_embedding.weight", "bert.embeddings.position_embeddings.weight"),
    ("embedding.layer_norm.gamma", "bert.embeddings.LayerNorm.weight"),
    ("embedding.layer_norm.beta", "bert.embeddings.LayerNorm.bias"),
]
BERT_LAYER = [
    ("self_attn.linear_layers.0.{p}", "attention.self.query.{p}"),
    ("self_attn.linear_layers.1.{p}", "attention.self.key.{p}"),
    ("self_attn.linear_layers.2.{p}", "attention.self.value.{p}"),
    ("self_attn.final_linear.{p}", "attention.output.dense.{p}"),
    ("layer_norm_1.{ln}", "attention.output.LayerNorm.{p}"),
    ("feed_forward.linear_1.{p}", "intermediate.dense.{p}"),
    ("feed_forward.linear_2.{p}", "output.dense.{p}"),
    ("layer_norm_2.{ln}", "output.LayerNorm.{p}"),
]
BERT_MLM = [
    ("target.mlm_linear_1.{p}", "cls.predictions.transform.dense.{p}"),
    ("target.layer_norm.{ln}", "cls.predictions.transform.LayerNorm.{p}"),
    ("target.mlm_linear_2.weight", "cls.predictions.decoder.weight"),
    ("target.mlm_linear_2.bias", "cls.predictions.bias"),
]
BERT_NSP = [
    ("target.nsp_linear_1.{p}", "bert.pooler.dense.{p}"),
    ("target.nsp_linear_2.{p}", "cls.seq_relationship.{p}"),
]

ALBERT_LAYER_HF = "albert.encoder.albert_layer_groups.0.albert_layers.0."
ALBERT = [
    ("embedding.word_embedding.weight", "albert.embeddings.word_embeddings.weight"),
    ("embedding.position_embedding.weight", "albert.embeddings.position_embeddings.weight"),
    ("embedding.layer_norm.{ln}", "albert.embeddings.LayerNorm.{p}"),
    ("encoder.linear.{p}", "albert.encoder.embedding_hidden_mapping_in.{p}"),
    ("encoder.transformer.self_attn.linear_layers.0.{p}", ALBERT_LAYER_HF + "attention.query.{p}"),
    ("encoder.transformer.self_attn.linear_layers.1.{p}", ALBERT_LAYER_HF + "attention.key.{p}"),
    ("encoder.transformer.self_attn.linear_layers.2.{p}", ALBERT_LAYER_HF + "attention.value.{p}"),
    ("encoder.transformer.self_attn.final_linear.{p}", ALBERT_LAYER_HF + "attention.dense.{p}"),
    ("encoder.transformer.layer_norm_1.{ln}", ALBERT_LAYER_HF + "attention.LayerNorm.{p}"),
    ("encoder.transformer.feed_forward.linear_1.{p}", ALBERT_LAYER_HF + "ffn.{p}"),
    ("encoder.transformer.feed_forward.linear_2.{p}", ALBERT_LAYER_HF + "ffn_output.{p}"),
    ("encoder.transformer.layer_norm_2.{ln}", ALBERT_LAYER_HF + "full_layer_layer_norm.{p}"),
    ("target.mlm_linear_1.{p}", "predictions.dense.{p}"),
    ("target.layer_norm.{ln}", "predictions.LayerNorm.{p}"),
    ("target.mlm_linear_2.weight", "predictions.decoder.weight"),
    ("target.mlm_linear_2.bias", "predictions.bias"),
    ("target.sop_linear_1.{p}", "albert.pooler.{p}"),
    ("target.sop_linear_2.{p}", "sop_classifier.classifier.{p}"),
]

GPT2_LAYER = [
    ("layer_norm_1.{ln}", "ln_1.{p}"),
    ("layer_norm_2.{ln}", "ln_2.{p}"),
]


def _expand(pairs, uer_prefix: str = "", hf_prefix: str = ""):
    """(uer key, HF key) for weight/bias (and LayerNorm gamma/beta <-> weight/bias)."""
    out = []
    for u, h in pairs:
        if "{ln}" in u:
            out += [(uer_prefix + u.format(ln="gamma"), hf_prefix + h.format(p="weight")),
                    (uer_prefix + u.format(ln="beta"), hf_prefix + h.format(p="bias"))]
        elif "{p}" in u:
            out += [(uer_prefix + u.format(p=p), hf_prefix + h.format(p=p)) for p in ("weight", "bias")]
        else:
            out.append((uer_prefix + u, hf_prefix + h))
    return out


def count_layers(state: dict, pattern: str) -> int:
    found = {int(m.group(1)) for k in state if (m := re.match(pattern, k))}
    if not found:
        raise UerError(f"no layer keys matching {pattern!r}: is this the right kind of checkpoint?")
    return max(found) + 1


def _check_layers(layers_num: int | None, found: int) -> int:
    if layers_num is not None and layers_num != found:
        raise UerError(f"--layers_num {layers_num}, but the checkpoint has {found} layers")
    return found


def _take(state: dict, key: str, what: str) -> torch.Tensor:
    if key not in state:
        raise UerError(f"{what} checkpoint has no key {key}")
    return state[key]


def _positions(t: torch.Tensor, max_seq_length: int | None) -> torch.Tensor:
    return t[:max_seq_length] if max_seq_length else t


# -- BERT ---------------------------------------------------------------------------------------

def bert_pairs(layers_num: int, target: str):
    pairs = _expand(BERT_EMBEDDING)
    for i in range(layers_num):
        pairs += _expand(BERT_LAYER, f"encoder.transformer.{i}.", f"bert.encoder.layer.{i}.")
    pairs += _expand(BERT_MLM)
    if target == "bert":
        pairs += _expand(BERT_NSP)
    return pairs


def bert_from_hf(hf: dict, layers_num: int | None = None, target: str = "bert",
                 max_seq_length: int | None = None) -> dict:
    n = _check_layers(layers_num, count_layers(hf, r"bert\.encoder\.layer\.(\d+)\."))
    hf = dict(hf)
    hf.setdefault("cls.predictions.decoder.weight", hf.get("bert.embeddings.word_embeddings.weight"))
    out = {u: _take(hf, h, "HF BERT") for u, h in bert_pairs(n, target)}
    tt = _take(hf, "bert.embeddings.token_type_embeddings.weight", "HF BERT")
    out["embedding.segment_embedding.weight"] = torch.cat([torch.zeros_like(tt[:1]), tt[:2]], 0)
    out["embedding.position_embedding.weight"] = _positions(out["embedding.position_embedding.weight"],
                                                           max_seq_length)
    return _ordered(out)


def bert_to_hf(uer: dict, layers_num: int | None = None, target: str = "bert") -> dict:
    n = _check_layers(layers_num, count_layers(uer, r"encoder\.transformer\.(\d+)\."))
    out = {h: _take(uer, u, "uer BERT") for u, h in bert_pairs(n, target)}
    out["bert.embeddings.token_type_embeddings.weight"] = _take(
        uer, "embedding.segment_embedding.weight", "uer BERT")[1:3]
    out["cls.predictions.decoder.bias"] = out["cls.predictions.bias"]
    return out


# -- ALBERT -------------------------------------------------------------------------------------

def albert_from_hf(hf: dict, max_seq_length: int | None = None) -> dict:
    hf = dict(hf)
    hf.setdefault("predictions.decoder.weight", hf.get("albert.embeddings.word_embeddings.weight"))
    out = {u: _take(hf, h, "HF ALBERT") for u, h in _expand(ALBERT)}
    tt = _take(hf, "albert.embeddings.token_type_embeddings.weight", "HF ALBERT")
    out["embedding.segment_embedding.weight"] = torch.cat([torch.zeros_like(tt[:1]), tt[:2]], 0)
    out["embedding.position_embedding.weight"] = _positions(out["embedding.position_embedding.weight"],
                                                           max_seq_length)
    return _ordered(out)


def albert_to_hf(uer: dict) -> dict:
    out = {h: _take(uer, u, "uer ALBERT") for u, h in _expand(ALBERT)}
    out["albert.embeddings.token_type_embeddings.weight"] = _take(
        uer, "embedding.segment_embedding.weight", "uer ALBERT")[1:3]
    out["predictions.decoder.bias"] = out["predictions.bias"]
    return out


# -- GPT-2 --------------------------------------------------------------------------------------

def gpt2_from_hf(hf: dict, layers_num: int | None = None, max_seq_length: int | None = None) -> dict:
    n = _check_layers(layers_num, count_layers(hf, r"transformer\.h\.(\d+)\."))
    t = "transformer."
    wte = _take(hf, t + "wte.weight", "HF GPT-2")
    out = {"embedding.word_embedding.weight": wte,
           "embedding.position_embedding.weight": _positions(_take(hf, t + "wpe.weight", "HF GPT-2"),
                                                            max_seq_length)}
    H = wte.shape[1]
    for i in range(n):
        h, u = f"{t}h.{i}.", f"encoder.transformer.{i}."
        w = _take(hf, h + "attn.c_attn.weight", "HF GPT-2").t()  # Conv1D [in, out] -> Linear [out, in]
        b = _take(hf, h + "attn.c_attn.bias", "HF GPT-2")
        for j in range(3):
            out[f"{u}self_attn.linear_layers.{j}.weight"] = w[j * H:(j + 1) * H]
            out[f"{u}self_attn.linear_layers.{j}.bias"] = b[j * H:(j + 1) * H]
        for uk, hk in (("self_attn.final_linear", "attn.c_proj"), ("feed_forward.linear_1", "mlp.c_fc"),
                       ("feed_forward.linear_2", "mlp.c_proj")):
            out[f"{u}{uk}.weight"] = _take(hf, f"{h}{hk}.weight", "HF GPT-2").t()
            out[f"{u}{uk}.bias"] = _take(hf, f"{h}{hk}.bias", "HF GPT-2")
        for uk, hk in _expand(GPT2_LAYER):
            out[u + uk] = _take(hf, h + hk, "HF GPT-2")
    out["encoder.layer_norm.gamma"] = _take(hf, t + "ln_f.weight", "HF GPT-2")
    out["encoder.layer_norm.beta"] = _take(hf, t + "ln_f.bias", "HF GPT-2")
    out["target.output_layer.weight"] = hf.get("lm_head.weight", wte)
    return _ordered(out)


def gpt2_to_hf(uer: dict, layers_num: int | None = None) -> dict:
    n = _check_layers(layers_num, count_layers(uer, r"encoder\.transformer\.(\d+)\."))
    t = "transformer."
    out = {t + "wte.weight": _take(uer, "embedding.word_embedding.weight", "uer GPT-2"),
           t + "wpe.weight": _take(uer, "embedding.position_embedding.weight", "uer GPT-2")}
    for i in range(n):
        h, u = f"{t}h.{i}.", f"encoder.transformer.{i}."
        out[h + "attn.c_attn.weight"] = torch.cat(
            [_take(uer, f"{u}self_attn.linear_layers.{j}.weight", "uer GPT-2") for j in range(3)], 0).t()
        out[h + "attn.c_attn.bias"] = torch.cat(
            [_take(uer, f"{u}self_attn.linear_layers.{j}.bias", "uer GPT-2") for j in range(3)], 0)
        for uk, hk in (("self_attn.final_linear", "attn.c_proj"), ("feed_forward.linear_1", "mlp.c_fc"),
                       ("feed_forward.linear_2", "mlp.c_proj")):
            out[f"{h}{hk}.weight"] = _take(uer, f"{u}{uk}.weight", "uer GPT-2").t()
            out[f"{h}{hk}.bias"] = _take(uer, f"{u}{uk}.bias", "uer GPT-2")
        for uk, hk in _expand(GPT2_LAYER):
            out[h + hk] = _take(uer, u + uk, "uer GPT-2")
    out[t + "ln_f.weight"] = _take(uer, "encoder.layer_norm.gamma", "uer GPT-2")
    out[t + "ln_f.bias"] = _take(uer, "encoder.layer_norm.beta", "uer GPT-2")
    out["lm_head.weight"] = _take(uer, "target.output_layer.weight", "uer GPT-2")
    return out


# -- LLaMA --------------------------------------------------------------------------------------
# A directory both ways: config.json (transformers' LlamaConfig fields) and model.safetensors. RoPE
# uses the same (rotate-half) feature layout in uer and transformers, so q and k need no permutation.

LLAMA_LAYER = [
    ("self_attn.linear_layers.0", "self_attn.q_proj"), ("self_attn.linear_layers.1", "self_attn.k_proj"),
    ("self_attn.linear_layers.2", "self_attn.v_proj"), ("self_attn.final_linear", "self_attn.o_proj"),
    ("feed_forward.linear_gate", "mlp.gate_proj"), ("feed_forward.linear_1", "mlp.up_proj"),
    ("feed_forward.linear_2", "mlp.down_proj"),
]
#: uer's activation -> transformers' hidden_act (and the names transformers uses for the same function)
HF_ACTS = {"silu": ("silu", "swish"), "gelu": ("gelu",), "gelu_fast": ("gelu_pytorch_tanh", "gelu_new"),
           "relu": ("relu",)}
#: what a uer model must be to be a LlamaForCausalLM: (field, required value)
LLAMA_SHAPE = [("embedding", "word"), ("remove_embedding_layernorm", True), ("encoder", "transformer"),
               ("mask", "causal"), ("layernorm_positioning", "pre"), ("layernorm", "rms"),
               ("feed_forward", "gated"), ("rotary_position_embedding", True), ("target", "lm"),
               ("has_lmtarget_bias", False), ("parameter_sharing", False),
               ("factorized_embedding_parameterization", False)]


def llama_pairs(layers_num: int, bias: bool) -> list[tuple[str, str]]:
    pairs = [("embedding.word_embedding.weight", "model.embed_tokens.weight"),
             ("encoder.layer_norm.gamma", "model.norm.weight"),
             ("target.output_layer.weight", "lm_head.weight")]
    for i in range(layers_num):
        u, h = f"encoder.transformer.{i}.", f"model.layers.{i}."
        pairs += [(u + "layer_norm_1.gamma", h + "input_layernorm.weight"),
                  (u + "layer_norm_2.gamma", h + "post_attention_layernorm.weight")]
        for uk, hk in LLAMA_LAYER:
            pairs += [(f"{u}{uk}.{p}", f"{h}{hk}.{p}") for p in (("weight", "bias") if bias else ("weight",))]
    return pairs


def _config_problems(conf: dict, kind: str, ints: tuple[str, ...], where: str) -> list[str]:
    """The first checks of a config.json for `kind`: its model_type, and the whole-number sizes
    uer reads (missing ones are an error at once, the later checks read them)."""
    missing = [k for k in ints if not isinstance(conf.get(k), int)]
    if missing:
        raise UerError(f"{where}: no whole-number {', '.join(missing)}")
    if conf.get("model_type") != kind:
        return [f"{where}: model_type is {conf.get('model_type')!r}, expected {kind!r}"]
    return []


def _our_act(act: str, field: str, where: str, problems: list[str]) -> str | None:
    """uer's name for transformers' activation `act` (the config's `field`); None, with the problem
    listed, when uer has no such activation."""
    ours = [u for u, names in HF_ACTS.items() if act in names]
    if not ours:
        problems.append(f"{where}: {field} {act!r} is not one of uer's activations "
                        f"({', '.join(n for names in HF_ACTS.values() for n in names)})")
        return None
    return ours[0]


def llama_recipe_from_hf(conf: dict, where: str = "config.json") -> dict:
    """transformers' LlamaConfig fields -> a uer recipe; what uer cannot build exactly is refused,
    every reason in one error."""
    p = _config_problems(conf, "llama", ("hidden_size", "num_attention_heads", "intermediate_size",
                                         "num_hidden_layers", "vocab_size"), where)
    H, heads = conf.get("hidden_size"), conf.get("num_attention_heads")
    head_dim = conf.get("head_dim") or H // heads
    if head_dim * heads != H:
        p.append(f"{where}: head_dim {head_dim} x num_attention_heads {heads} differs from hidden_size {H} "
                 "(uer's heads split the hidden size)")
    rope = conf.get("rope_parameters") or conf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        p.append(f"{where}: RoPE scaling {rope_type!r} is not available in uer (only the default RoPE)")
    theta = rope.get("rope_theta", conf.get("rope_theta", 10000.0))
    if conf.get("attention_bias", False) != conf.get("mlp_bias", False):
        p.append(f"{where}: attention_bias {conf.get('attention_bias')} and mlp_bias {conf.get('mlp_bias')} "
                 "differ; uer's --remove_transformer_bias removes both or neither")
    act = _our_act(conf.get("hidden_act", "silu"), "hidden_act", where, p)
    if p:
        raise UerError("cannot convert this LLaMA model to uer:\n  " + "\n  ".join(p))
    kv = conf.get("num_key_value_heads") or heads
    recipe = {"emb_size": H, "hidden_size": H, "feedforward_size": conf["intermediate_size"], "heads_num": heads,
              "layers_num": conf["num_hidden_layers"], "hidden_act": act, "dropout": 0.0,
              "max_seq_length": conf.get("max_position_embeddings", 2048),
              "layernorm": "rms", "layernorm_eps": conf.get("rms_norm_eps", 1e-6), "feed_forward": "gated",
              "remove_transformer_bias": not conf.get("attention_bias", False),
              "rotary_position_embedding": True, "rope_base": float(theta), "embedding": "word",
              "remove_embedding_layernorm": True, "encoder": "transformer", "mask": "causal",
              "layernorm_positioning": "pre", "target": "lm", "tie_weights": bool(conf.get("tie_word_embeddings"))}
    if kv != heads:
        recipe["local_kv_heads_num"] = kv
    return recipe


def llama_config_to_hf(cfg) -> dict:
    """A uer ModelConfig (LLaMA-shaped) -> transformers' LlamaConfig fields (config.json)."""
    wrong = [f"{k} is {getattr(cfg, k)!r}, LlamaForCausalLM needs {want!r}" for k, want in LLAMA_SHAPE
             if getattr(cfg, k) != want]
    if cfg.emb_size != cfg.hidden_size:
        wrong.append(f"emb_size {cfg.emb_size} differs from hidden_size {cfg.hidden_size}")
    if wrong:
        raise UerError("this model is not a LLaMA-style model:\n  " + "\n  ".join(wrong))
    bias = not cfg.remove_transformer_bias
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.hidden_size, "intermediate_size": cfg.feedforward_size,
            "num_hidden_layers": cfg.layers_num, "num_attention_heads": cfg.heads_num,
            "num_key_value_heads": cfg.local_kv_heads_num or cfg.heads_num,
            "head_dim": cfg.hidden_size // cfg.heads_num, "hidden_act": HF_ACTS[cfg.hidden_act][0],
            "max_position_embeddings": cfg.max_seq_length, "rms_norm_eps": cfg.layernorm_eps,
            # both spellings: transformers 5 reads rope_parameters, 4.x rope_theta
            "rope_theta": cfg.rope_base, "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_base},
            "attention_bias": bias, "mlp_bias": bias, "attention_dropout": 0.0,
            "tie_word_embeddings": cfg.tie_weights, "initializer_range": 0.02, "torch_dtype": "float32"}


def llama_from_hf(hf: dict, recipe: dict) -> dict:
    bias = not recipe["remove_transformer_bias"]
    hf = dict(hf)
    if recipe["tie_weights"] or "lm_head.weight" not in hf:
        hf["lm_head.weight"] = _take(hf, "model.embed_tokens.weight", "HF LLaMA")
    n = _check_layers(recipe["layers_num"], count_layers(hf, r"model\.layers\.(\d+)\."))
    return _ordered({u: _take(hf, h, "HF LLaMA") for u, h in llama_pairs(n, bias)})


def llama_to_hf(uer: dict, cfg) -> dict:
    n = _check_layers(cfg.layers_num, count_layers(uer, r"encoder\.transformer\.(\d+)\."))
    out = {h: _take(uer, u, "uer LLaMA") for u, h in llama_pairs(n, not cfg.remove_transformer_bias)}
    if cfg.tie_weights:
        del out["lm_head.weight"]  # transformers ties it to embed_tokens
    return out


BART_ATTN = [("linear_layers.0", "q_proj"), ("linear_layers.1", "k_proj"), ("linear_layers.2", "v_proj"),
             ("final_linear", "out_proj")]
#: what a uer model must be to be a BartForConditionalGeneration: (field, required value)
BART_SHAPE = [("embedding", "word_pos"), ("remove_embedding_layernorm", False), ("encoder", "transformer"),
              ("mask", "fully_visible"), ("layernorm_positioning", "post"), ("layernorm", "torch"),
              ("feed_forward", "dense"), ("remove_transformer_bias", False), ("rotary_position_embedding", False),
              ("local_kv_heads_num", None), ("parameter_sharing", False),
              ("factorized_embedding_parameterization", False), ("tgt_embedding", "word_pos"),
              ("decoder", "transformer"), ("decoder_layernorm_positioning", "post"), ("target", "bart"),
              ("share_embedding", True), ("tie_weights", True)]
#: transformers' positions of BART start at 2: rows 0 and 1 of its tables are never read
BART_POSITION_OFFSET = 2


def bart_pairs(layers_num: int) -> list[tuple[str, str]]:
    """(uer key, HF key) of every tensor but the position tables and the output bias."""
    pairs = [("embedding.word_embedding.weight", "model.shared.weight"),
             ("target.embedding.word_embedding.weight", "model.shared.weight"),
             ("target.output_layer.weight", "model.shared.weight")]
    for side, u_side in (("encoder", "embedding"), ("decoder", "target.embedding")):
        pairs += [(f"{u_side}.layer_norm.gamma", f"model.{side}.layernorm_embedding.weight"),
                  (f"{u_side}.layer_norm.beta", f"model.{side}.layernorm_embedding.bias")]
    for i in range(layers_num):
        enc, dec = f"encoder.transformer.{i}.", f"target.decoder.transformer_decoder.{i}."
        henc, hdec = f"model.encoder.layers.{i}.", f"model.decoder.layers.{i}."
        layer = [(enc + f"self_attn.{u}", henc + f"self_attn.{h}") for u, h in BART_ATTN]
        layer += [(enc + "layer_norm_1", henc + "self_attn_layer_norm"), (enc + "feed_forward.linear_1", henc + "fc1"),
                  (enc + "feed_forward.linear_2", henc + "fc2"), (enc + "layer_norm_2", henc + "final_layer_norm")]
        layer += [(dec + f"self_attn.{u}", hdec + f"self_attn.{h}") for u, h in BART_ATTN]
        layer += [(dec + f"context_attn.{u}", hdec + f"encoder_attn.{h}") for u, h in BART_ATTN]
        layer += [(dec + "layer_norm_1", hdec + "self_attn_layer_norm"),
                  (dec + "layer_norm_2", hdec + "encoder_attn_layer_norm"),
                  (dec + "feed_forward.linear_1", hdec + "fc1"), (dec + "feed_forward.linear_2", hdec + "fc2"),
                  (dec + "layer_norm_3", hdec + "final_layer_norm")]
        for u, h in layer:
            ln = "layer_norm" in u
            pairs += [(f"{u}.{'gamma' if ln else 'weight'}", f"{h}.weight"),
                      (f"{u}.{'beta' if ln else 'bias'}", f"{h}.bias")]
    return pairs


def bart_recipe_from_hf(conf: dict, where: str = "config.json") -> dict:
    """transformers' BartConfig fields -> a uer recipe; what uer cannot build exactly is refused,
    every reason in one error."""
    p = _config_problems(conf, "bart", ("d_model", "encoder_layers", "encoder_attention_heads", "encoder_ffn_dim",
                                        "vocab_size"), where)
    for enc, dec in (("encoder_layers", "decoder_layers"), ("encoder_attention_heads", "decoder_attention_heads"),
                     ("encoder_ffn_dim", "decoder_ffn_dim")):
        if conf.get(dec, conf[enc]) != conf[enc]:
            p.append(f"{where}: {enc} {conf[enc]} and {dec} {conf.get(dec)} differ; uer's decoder has the encoder's "
                     "layers_num, heads_num and feedforward_size")
    for flag, what in (("scale_embedding", "embeddings scaled by sqrt(d_model)"),
                       ("normalize_before", "pre-LN layers (mBART)"),
                       ("add_final_layer_norm", "a final LayerNorm (mBART)")):
        if conf.get(flag, False):
            p.append(f"{where}: {flag} is true ({what}); uer builds BART's layout, without it")
    if not conf.get("tie_word_embeddings", True):
        p.append(f"{where}: tie_word_embeddings is false; uer's bart ties lm_head to the shared embedding")
    act = _our_act(conf.get("activation_function", "gelu"), "activation_function", where, p)
    if p:
        raise UerError("cannot convert this BART model to uer:\n  " + "\n  ".join(p))
    H = conf["d_model"]
    return {"emb_size": H, "hidden_size": H, "feedforward_size": conf["encoder_ffn_dim"],
            "heads_num": conf["encoder_attention_heads"], "layers_num": conf["encoder_layers"], "hidden_act": act,
            "dropout": conf.get("dropout", 0.1), "max_seq_length": conf.get("max_position_embeddings", 1024),
            "layernorm": "torch", "layernorm_eps": 1e-5, "embedding": "word_pos", "encoder": "transformer",
            "mask": "fully_visible", "layernorm_positioning": "post", "tgt_embedding": "word_pos",
            "decoder": "transformer", "decoder_layernorm_positioning": "post", "target": "bart",
            "share_embedding": True, "tie_weights": True, "has_lmtarget_bias": True}


def bart_config_to_hf(cfg, special=None) -> dict:
    """A uer ModelConfig (BART-shaped) -> transformers' BartConfig fields (config.json); special:
    the vocabulary's special ids, for the start, end and padding tokens."""
    wrong = [f"{k} is {getattr(cfg, k)!r}, BartForConditionalGeneration needs {want!r}" for k, want in BART_SHAPE
             if getattr(cfg, k) != want]
    if cfg.emb_size != cfg.hidden_size:
        wrong.append(f"emb_size {cfg.emb_size} differs from hidden_size {cfg.hidden_size}")
    if abs(cfg.layernorm_eps - 1e-5) > 1e-12:
        wrong.append(f"layernorm_eps is {cfg.layernorm_eps:g}; BART's LayerNorms use 1e-5")
    if wrong:
        raise UerError("this model is not a BART model:\n  " + "\n  ".join(wrong))
    ids = {} if special is None else {"pad_token_id": special.pad, "bos_token_id": special.cls,
                                      "eos_token_id": special.sep, "decoder_start_token_id": special.cls,
                                      "forced_eos_token_id": special.sep}
    return {"architectures": ["BartForConditionalGeneration"], "model_type": "bart", "vocab_size": cfg.vocab_size,
            "d_model": cfg.hidden_size, "encoder_layers": cfg.layers_num, "decoder_layers": cfg.layers_num,
            "encoder_attention_heads": cfg.heads_num, "decoder_attention_heads": cfg.heads_num,
            "encoder_ffn_dim": cfg.feedforward_size, "decoder_ffn_dim": cfg.feedforward_size,
            "activation_function": HF_ACTS[cfg.hidden_act][0], "max_position_embeddings": cfg.max_seq_length,
            "dropout": cfg.dropout, "attention_dropout": cfg.dropout, "activation_dropout": 0.0,
            "scale_embedding": False, "tie_word_embeddings": True, "is_encoder_decoder": True,
            "init_std": 0.02, "torch_dtype": "float32", **ids}


def bart_from_hf(hf: dict, recipe: dict) -> dict:
    n = _check_layers(recipe["layers_num"], count_layers(hf, r"model\.encoder\.layers\.(\d+)\."))
    hf = dict(hf)
    if "model.shared.weight" not in hf:  # some files keep the shared table under the encoder's name only
        hf["model.shared.weight"] = _take(hf, "model.encoder.embed_tokens.weight", "HF BART")
    out = {u: _take(hf, h, "HF BART") for u, h in bart_pairs(n)}
    for side, u_side in (("encoder", "embedding"), ("decoder", "target.embedding")):
        table = _take(hf, f"model.{side}.embed_positions.weight", "HF BART")
        out[f"{u_side}.position_embedding.weight"] = table[BART_POSITION_OFFSET:]
    V = out["target.output_layer.weight"].shape[0]
    out["target.output_layer.bias"] = hf.get("final_logits_bias", torch.zeros(1, V)).reshape(V)
    return _ordered(out)


def bart_to_hf(uer: dict, cfg) -> dict:
    n = _check_layers(cfg.layers_num, count_layers(uer, r"encoder\.transformer\.(\d+)\."))
    out = {}
    for u, h in bart_pairs(n):
        out.setdefault(h, _take(uer, u, "uer BART"))
    word = out["model.shared.weight"]
    out["model.encoder.embed_tokens.weight"] = out["model.decoder.embed_tokens.weight"] = out["lm_head.weight"] = word
    for side, u_side in (("encoder", "embedding"), ("decoder", "target.embedding")):
        table = _take(uer, f"{u_side}.position_embedding.weight", "uer BART")
        out[f"model.{side}.embed_positions.weight"] = torch.cat([table.new_zeros(BART_POSITION_OFFSET, table.shape[1]),
                                                                 table])
    bias = uer.get("target.output_layer.bias")
    out["final_logits_bias"] = (bias if bias is not None else word.new_zeros(word.shape[0])).reshape(1, -1)
    return out


T5_ATTN = [("linear_layers.0", "q"), ("linear_layers.1", "k"), ("linear_layers.2", "v"), ("final_linear", "o")]
#: what a uer model must be to be a T5ForConditionalGeneration (T5 v1.1's layout): (field, required value)
T5_SHAPE = [("embedding", "word"), ("remove_embedding_layernorm", True), ("encoder", "transformer"),
            ("mask", "fully_visible"), ("layernorm_positioning", "pre"), ("layernorm", "rms"),
            ("remove_transformer_bias", True), ("rotary_position_embedding", False), ("local_kv_heads_num", None),
            ("parameter_sharing", False), ("factorized_embedding_parameterization", False),
            ("relative_position_embedding", True), ("remove_attention_scale", True), ("tgt_embedding", "word"),
            ("decoder", "transformer"), ("decoder_layernorm_positioning", "pre"), ("decoder_final_layernorm", True),
            ("share_embedding", True), ("has_lmtarget_bias", False), ("target", "t5")]


def t5_pairs(layers_num: int, gated: bool) -> list[tuple[str, str]]:
    """(uer key, HF key) of every tensor but the output layer."""
    pairs = [("embedding.word_embedding.weight", "shared.weight"),
             ("target.embedding.word_embedding.weight", "shared.weight"),
             ("encoder.relative_position_bias.weight",
              "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
             ("target.decoder.relative_position_bias.weight",
              "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
             ("encoder.layer_norm.gamma", "encoder.final_layer_norm.weight"),
             ("target.decoder.layer_norm.gamma", "decoder.final_layer_norm.weight")]
    ff = [("linear_gate", "wi_0"), ("linear_1", "wi_1"), ("linear_2", "wo")] if gated else \
        [("linear_1", "wi"), ("linear_2", "wo")]
    for i in range(layers_num):
        enc, dec = f"encoder.transformer.{i}.", f"target.decoder.transformer_decoder.{i}."
        henc, hdec = f"encoder.block.{i}.layer.", f"decoder.block.{i}.layer."
        pairs += [(f"{enc}self_attn.{u}.weight", f"{henc}0.SelfAttention.{h}.weight") for u, h in T5_ATTN]
        pairs += [(enc + "layer_norm_1.gamma", henc + "0.layer_norm.weight"),
                  (enc + "layer_norm_2.gamma", henc + "1.layer_norm.weight")]
        pairs += [(f"{enc}feed_forward.{u}.weight", f"{henc}1.DenseReluDense.{h}.weight") for u, h in ff]
        pairs += [(f"{dec}self_attn.{u}.weight", f"{hdec}0.SelfAttention.{h}.weight") for u, h in T5_ATTN]
        pairs += [(f"{dec}context_attn.{u}.weight", f"{hdec}1.EncDecAttention.{h}.weight") for u, h in T5_ATTN]
        pairs += [(dec + "layer_norm_1.gamma", hdec + "0.layer_norm.weight"),
                  (dec + "layer_norm_2.gamma", hdec + "1.layer_norm.weight"),
                  (dec + "layer_norm_3.gamma", hdec + "2.layer_norm.weight")]
        pairs += [(f"{dec}feed_forward.{u}.weight", f"{hdec}2.DenseReluDense.{h}.weight") for u, h in ff]
    return pairs


def t5_recipe_from_hf(conf: dict, where: str = "config.json") -> dict:
    """transformers' T5Config fields -> a uer recipe (T5 v1.1's layout; tie_weights is settled by
    t5_from_hf from the weights); what uer cannot build exactly is refused, every reason in one
    error."""
    p = _config_problems(conf, "t5", ("d_model", "d_kv", "d_ff", "num_layers", "num_heads", "vocab_size"), where)
    H = conf["d_model"]
    if conf["d_kv"] * conf["num_heads"] != H:
        p.append(f"{where}: d_kv {conf['d_kv']} x num_heads {conf['num_heads']} differs from d_model {H} "
                 "(uer's heads split the hidden size)")
    if (conf.get("num_decoder_layers") or conf["num_layers"]) != conf["num_layers"]:
        p.append(f"{where}: num_layers {conf['num_layers']} and num_decoder_layers {conf['num_decoder_layers']} "
                 "differ; uer's decoder has the encoder's layers_num")
    if conf.get("scale_decoder_outputs", conf.get("tie_word_embeddings", True)):
        p.append(f"{where}: the decoder's output is scaled by d_model^-0.5 before lm_head (T5 v1.0's tied layout); "
                 "uer builds T5 v1.1's, without it")
    proj = conf.get("feed_forward_proj", "relu")
    gated = proj.startswith("gated-")
    act = _our_act(conf.get("dense_act_fn") or ("gelu_new" if proj == "gated-gelu" else proj.split("-")[-1]),
                   "the feed-forward activation", where, p)
    if p:
        raise UerError("cannot convert this T5 model to uer:\n  " + "\n  ".join(p))
    return {"emb_size": H, "hidden_size": H, "feedforward_size": conf["d_ff"], "heads_num": conf["num_heads"],
            "layers_num": conf["num_layers"], "hidden_act": act, "dropout": conf.get("dropout_rate", 0.1),
            "max_seq_length": conf.get("n_positions") or 512, "layernorm": "rms",
            "layernorm_eps": conf.get("layer_norm_epsilon", 1e-6), "feed_forward": "gated" if gated else "dense",
            "remove_transformer_bias": True, "embedding": "word", "remove_embedding_layernorm": True,
            "encoder": "transformer", "mask": "fully_visible", "layernorm_positioning": "pre",
            "relative_position_embedding": True,
            "relative_attention_buckets_num": conf.get("relative_attention_num_buckets", 32),
            "relative_attention_max_distance": conf.get("relative_attention_max_distance", 128),
            "remove_attention_scale": True, "tgt_embedding": "word", "decoder": "transformer",
            "decoder_final_layernorm": True, "share_embedding": True, "target": "t5", "tie_weights": True}


def t5_config_to_hf(cfg, special=None) -> dict:
    """A uer ModelConfig (T5 v1.1-shaped) -> transformers' T5Config fields. tie_word_embeddings is
    false in both readings of it: transformers 4 then keeps lm_head apart and unscaled (written
    equal to the shared table when uer ties them), transformers 5 always ties it and scales nothing."""
    wrong = [f"{k} is {getattr(cfg, k)!r}, T5ForConditionalGeneration needs {want!r}" for k, want in T5_SHAPE
             if getattr(cfg, k) != want]
    if cfg.emb_size != cfg.hidden_size:
        wrong.append(f"emb_size {cfg.emb_size} differs from hidden_size {cfg.hidden_size}")
    if cfg.feed_forward == "gated" and cfg.hidden_act == "gelu":
        wrong.append("hidden_act is 'gelu' (exact); T5's gated-gelu is the tanh approximation: --hidden_act gelu_fast")
    if wrong:
        raise UerError("this model is not a T5 (v1.1) model:\n  " + "\n  ".join(wrong))
    act = HF_ACTS[cfg.hidden_act][0]
    proj = ("gated-" if cfg.feed_forward == "gated" else "") + ("gelu" if act == "gelu_pytorch_tanh" else act)
    ids = {} if special is None else {"pad_token_id": special.pad, "eos_token_id": special.sep,
                                      "decoder_start_token_id": special.cls}
    return {"architectures": ["T5ForConditionalGeneration"], "model_type": "t5", "vocab_size": cfg.vocab_size,
            "d_model": cfg.hidden_size, "d_kv": cfg.hidden_size // cfg.heads_num, "d_ff": cfg.feedforward_size,
            "num_layers": cfg.layers_num, "num_decoder_layers": cfg.layers_num, "num_heads": cfg.heads_num,
            "relative_attention_num_buckets": cfg.relative_attention_buckets_num,
            "relative_attention_max_distance": cfg.relative_attention_max_distance,
            "dropout_rate": cfg.dropout, "layer_norm_epsilon": cfg.layernorm_eps, "feed_forward_proj": proj,
            "dense_act_fn": act, "is_gated_act": cfg.feed_forward == "gated", "tie_word_embeddings": False,
            "scale_decoder_outputs": False, "is_encoder_decoder": True, "n_positions": cfg.max_seq_length,
            "initializer_factor": 1.0, "torch_dtype": "float32", **ids}


def t5_from_hf(hf: dict, recipe: dict) -> dict:
    """The uer state; recipe["tie_weights"] says whether the file's lm_head is the shared table."""
    n = _check_layers(recipe["layers_num"], count_layers(hf, r"encoder\.block\.(\d+)\."))
    hf = dict(hf)
    if "shared.weight" not in hf:
        hf["shared.weight"] = _take(hf, "encoder.embed_tokens.weight", "HF T5")
    out = {u: _take(hf, h, "HF T5") for u, h in t5_pairs(n, recipe["feed_forward"] == "gated")}
    head = hf.get("lm_head.weight")
    recipe["tie_weights"] = head is None or torch.equal(head, hf["shared.weight"])
    out["target.output_layer.weight"] = hf["shared.weight"] if recipe["tie_weights"] else head
    return _ordered(out)


def t5_to_hf(uer: dict, cfg) -> dict:
    n = _check_layers(cfg.layers_num, count_layers(uer, r"encoder\.transformer\.(\d+)\."))
    out = {}
    for u, h in t5_pairs(n, cfg.feed_forward == "gated"):
        out.setdefault(h, _take(uer, u, "uer T5"))
    out["encoder.embed_tokens.weight"] = out["decoder.embed_tokens.weight"] = out["shared.weight"]
    out["lm_head.weight"] = _take(uer, "target.output_layer.weight", "uer T5")
    return out


def read_hf_dir(path: str) -> tuple[dict, dict]:
    """(config.json, the state dict) of a transformers model directory: model.safetensors, its
    shards (model.safetensors.index.json) or pytorch_model.bin."""
    import json
    import os

    from uer.checkpoint import read_state_dict
    from uer.utils import read_json

    conf_path = os.path.join(path, "config.json")
    if not os.path.isdir(path):
        raise UerError(f"--input_dir {path}: not a directory")
    if not os.path.isfile(conf_path):
        raise UerError(f"--input_dir {path} has no config.json: is it a transformers model directory?")
    conf = read_json(conf_path, "the transformers config")
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        state = {}
        for shard in shards:
            state.update(read_state_dict(os.path.join(path, shard)))
        return conf, state
    for name in ("model.safetensors", "pytorch_model.bin"):
        if os.path.isfile(os.path.join(path, name)):
            return conf, read_state_dict(os.path.join(path, name))
    raise UerError(f"--input_dir {path} holds no model.safetensors, model.safetensors.index.json or "
                   "pytorch_model.bin")


def write_hf_dir(path: str, conf: dict, state: dict) -> None:
    """config.json and model.safetensors into the directory `path`, each file written atomically."""
    import os

    from uer.checkpoint import write_state_dict
    from uer.utils import write_json

    if os.path.exists(path) and not os.path.isdir(path):
        raise UerError(f"--output_dir {path} is a file; give a directory")
    os.makedirs(path, exist_ok=True)
    write_state_dict(state, os.path.join(path, "model.safetensors"))
    write_json(conf, os.path.join(path, "config.json"))


#: the families converted as model directories with a recipe: (recipe from config.json, state from HF,
#: config.json from a ModelConfig and the special ids, state to HF, the transformers class)
DIR_FAMILIES = {"llama": (llama_recipe_from_hf, llama_from_hf, lambda cfg, special: llama_config_to_hf(cfg),
                          llama_to_hf, "LlamaForCausalLM"),
                "bart": (bart_recipe_from_hf, bart_from_hf, bart_config_to_hf, bart_to_hf,
                         "BartForConditionalGeneration"),
                "t5": (t5_recipe_from_hf, t5_from_hf, t5_config_to_hf, t5_to_hf, "T5ForConditionalGeneration")}


def dir_cli(family: str, direction: str, argv=None, prog: str | None = None) -> int:
    """The body of scripts/convert_{llama,bart,t5}_from_<a>_to_<b>.py: a transformers directory <-> a
    uer model file and its recipe."""
    from uer.errors import run_cli

    recipe_from_hf, from_hf, config_to_hf, to_hf, arch = DIR_FAMILIES[family]

    def main(argv):
        import os

        from uer.options import parse

        args, _ = parse(f"convert_{family}_{direction}", argv, prog=prog)
        from uer.checkpoint import read_state_dict, write_state_dict
        from uer.utils import write_json

        if direction == "from_huggingface_to_uer":
            conf, hf = read_hf_dir(args.input_dir)
            recipe = recipe_from_hf(conf, os.path.join(args.input_dir, "config.json"))
            out = from_hf(hf, recipe)
            write_state_dict(out, args.output_model_path)
            recipe_path = args.output_config_path or os.path.splitext(args.output_model_path)[0] + "_config.json"
            write_json(recipe, recipe_path)
            logger.info(f"Wrote {args.output_model_path}: {len(out)} tensors, and its recipe {recipe_path} "
                        f"(give it as --config_path).")
            return 0
        from uer.config import build_model_config, load_recipe
        from uer.model import model_problems

        state = read_state_dict(args.input_model_path)
        vocab_size = _take(state, "embedding.word_embedding.weight", f"uer {family}").shape[0]
        cfg = build_model_config(load_recipe(args.config_path), {}, set(), vocab_size)
        problems = model_problems(cfg)
        special = None
        if getattr(args, "vocab_path", None):
            from uer.vocab import Vocab

            vocab = Vocab.load(args.vocab_path)
            if len(vocab) != vocab_size:
                problems.append(f"--vocab_path {args.vocab_path} has {len(vocab)} tokens, the model's embedding "
                                f"{vocab_size} rows")
            special = vocab.special_ids()
        if problems:
            from uer.errors import ConfigError

            raise ConfigError(problems, what=f"model recipe {args.config_path}")
        write_hf_dir(args.output_dir, config_to_hf(cfg, special), to_hf(state, cfg))
        logger.info(f"Wrote {args.output_dir}: config.json and model.safetensors ({arch}).")
        return 0

    return run_cli(main, argv)


def llama_cli(direction: str, argv=None, prog: str | None = None) -> int:
    """The body of scripts/convert_llama_from_<a>_to_<b>.py."""
    return dir_cli("llama", direction, argv, prog)


def _ordered(state: dict) -> dict:
    """uer key order: embedding, encoder, target (as a freshly built model lists them)."""
    rank = {"embedding": 0, "encoder": 1, "target": 2}
    return {k: state[k].contiguous().clone() for k in sorted(state, key=lambda k: rank[k.split(".")[0]])}


FAMILIES = {"bert": (bert_from_hf, bert_to_hf), "gpt2": (gpt2_from_hf, gpt2_to_hf),
            "albert": (albert_from_hf, albert_to_hf)}


def convert_cli(family: str, direction: str, argv=None, prog: str | None = None) -> int:
    """The body of scripts/convert_<family>_from_<a>_to_<b>.py: a state-dict file, or a
    transformers model directory (uer.hf) with --input_dir / --output_dir."""
    from uer.errors import run_cli

    if family in DIR_FAMILIES:
        return dir_cli(family, direction, argv, prog)

    def main(argv):
        from uer import components
        from uer.options import parse

        components.load()
        args, explicit = parse(f"convert_{family}_{direction}", argv, prog=prog)
        from uer.card import read_card
        from uer.checkpoint import read_state_dict, write_state_dict

        pairs = ((("input_model_path", "input_dir"), ("output_model_path",)) if direction == "from_huggingface_to_uer"
                 else (("input_model_path",), ("output_model_path", "output_dir")))
        problems = [p for names in pairs if (p := _one_of(args, *names))]
        if problems:
            from uer.errors import ConfigError

            raise ConfigError(problems)
        if getattr(args, "input_dir", None):
            return _from_hf_dir(family, args)
        if getattr(args, "output_dir", None):
            return _to_hf_dir(family, args, explicit)
        card = read_card(args.input_model_path) if direction == "from_uer_to_huggingface" else None
        if card and "target" in vars(args) and "target" not in explicit and card["model"]["target"] in ("bert", "mlm"):
            args.target = card["model"]["target"]  # the model card says which head the model has

        state = read_state_dict(args.input_model_path)
        kw = {k: v for k, v in vars(args).items() if k in ("layers_num", "target", "max_seq_length")}
        from_hf, to_hf = FAMILIES[family]
        out = from_hf(state, **kw) if direction == "from_huggingface_to_uer" else to_hf(state, **kw)
        write_state_dict(out, args.output_model_path)
        logger.info(f"Wrote {args.output_model_path}: {len(out)} tensors.")
        return 0

    return run_cli(main, argv)


def _one_of(args, *names: str) -> str | None:
    """The problem, if not exactly one of these options is given."""
    given = [n for n in names if getattr(args, n)]
    if len(given) != 1:
        return f"give --{' or --'.join(names)}" + (" (not both)" if given else "")
    return None


#: the uer target of each family's transformers class (bert: --target bert|mlm)
FAMILY_TARGETS = {"gpt2": "lm", "albert": "albert"}


def _to_hf_dir(family: str, args, explicit: set[str]) -> int:
    """A uer model (its model card, or --config_path and --vocab_path) -> a transformers directory."""
    from uer.card import apply_defaults, card_problems, read_card, recipe_for
    from uer.config import build_model_config
    from uer.errors import ConfigError
    from uer.hf import SHAPES, export, family_of
    from uer.model import model_problems
    from uer.vocab import load_vocab

    card = read_card(args.input_model_path)
    if card is None and not args.config_path:
        raise UerError(f"{args.input_model_path} has no model card ({args.input_model_path}.json): give "
                       "--config_path (its recipe) and --vocab_path")
    apply_defaults(args, explicit, card)
    vocab = load_vocab(args.vocab_path, args.spm_model_path)
    options = {} if card else {**dict(SHAPES[family]), "target": FAMILY_TARGETS.get(family, "bert")}
    if "target" in explicit or (card is None and family == "bert"):
        options["target"] = args.target
    recipe = recipe_for(args.config_path or "", explicit if args.config_path else set(), card)
    cfg = build_model_config(recipe, options, set(options), len(vocab))
    problems = model_problems(cfg) + card_problems(card, cfg, vocab)
    if family_of(cfg) != family:
        problems.append(f"{args.input_model_path} is a model of target {cfg.target!r} "
                        f"({family_of(cfg) or 'no transformers family'}), not a {family} model")
    if problems:
        raise ConfigError(problems)
    told = (card or {}).get("tokenizer") or {}
    tokenizer = {"name": args.tokenizer, "do_lower_case": told.get("do_lower_case", True),
                 "spm_model_path": args.spm_model_path}
    export(args.input_model_path, args.output_dir, cfg, vocab, tokenizer, args.approximate)
    return 0


def _from_hf_dir(family: str, args) -> int:
    """A transformers directory -> a uer model and its model card (with the directory's vocab.txt)."""
    import os

    from uer.card import make_card, write_card
    from uer.checkpoint import write_state_dict
    from uer.config import ModelConfig
    from uer.hf import family_of, import_dir
    from uer.vocab import Vocab

    recipe, state, tokenizer = import_dir(args.input_dir)
    size = state["embedding.word_embedding.weight"].shape[0]
    cfg = ModelConfig(vocab_size=size, **recipe)
    if family_of(cfg) != family:
        raise UerError(f"--input_dir {args.input_dir} holds a {family_of(cfg) or 'another'} model, not a {family} one")
    write_state_dict(state, args.output_model_path)
    vocab_file = os.path.join(args.input_dir, "vocab.txt")
    said = "no vocab.txt there, so no model card: give --config_path and --vocab_path where it is used"
    if os.path.isfile(vocab_file):
        vocab = Vocab.load(vocab_file)
        if len(vocab) != size:
            raise UerError(f"{vocab_file} has {len(vocab)} tokens, the model's embedding {size} rows")
        write_card(args.output_model_path, make_card(cfg, vocab, tokenizer, None))
        said = f"its model card {args.output_model_path}.json"
    logger.info(f"Wrote {args.output_model_path}: {len(state)} tensors, and {said}.")
    return 0


DIRECTIONS = {"to-uer": "from_huggingface_to_uer", "to-hf": "from_uer_to_huggingface"}


def convert_main(argv=None) -> int:
    """uer-convert FAMILY DIRECTION [options]: the scripts/convert_<family>_from_<a>_to_<b>.py
    converters as one console command."""
    import sys

    argv = sys.argv[1:] if argv is None else list(argv)
    families = sorted(FAMILIES) + sorted(DIR_FAMILIES)
    usage = (f"usage: uer-convert {{{','.join(families)}}} {{{','.join(DIRECTIONS)}}} [options]; "
             "uer-convert FAMILY DIRECTION --help lists the options")
    if argv[:1] in (["-h"], ["--help"]):
        print(usage)
        return 0
    if len(argv) < 2 or argv[0] not in families or argv[1] not in DIRECTIONS:
        got = " ".join(argv[:2]) or "nothing"
        print(f"uer-convert: error: expected a model family and a direction, got {got}\n{usage}", file=sys.stderr)
        return 2
    return convert_cli(argv[0], DIRECTIONS[argv[1]], argv[2:], prog=f"uer-convert {argv[0]} {argv[1]}")
