"""Checkpoint conversion between uer (the reference key names, SPEC 4) and HuggingFace transformers,
both directions, for BERT (BertForPreTraining / BertForMaskedLM), GPT-2 (GPT2LMHeadModel) and ALBERT
(AlbertForPreTraining). Sizes are read from the tensors; nothing is hard-coded.

Each family is a table of (uer key, HF key) pairs, `{i}` standing for a layer index, plus the few
tensors that need a transform (the pad row of the segment table, GPT-2's fused and transposed
Conv1D weights).
"""
from __future__ import annotations

import re

import torch

from uer.errors import UerError

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


def _ordered(state: dict) -> dict:
    """uer key order: embedding, encoder, target (as a freshly built model lists them)."""
    rank = {"embedding": 0, "encoder": 1, "target": 2}
    return {k: state[k].contiguous().clone() for k in sorted(state, key=lambda k: rank[k.split(".")[0]])}


FAMILIES = {"bert": (bert_from_hf, bert_to_hf), "gpt2": (gpt2_from_hf, gpt2_to_hf),
            "albert": (albert_from_hf, albert_to_hf)}


def convert_cli(family: str, direction: str, argv=None) -> int:
    """The body of scripts/convert_<family>_from_<a>_to_<b>.py."""
    from uer.errors import run_cli

    def main(argv):
        from uer.options import parse

        args, _ = parse(f"convert_{family}_{direction}", argv)
        from uer.checkpoint import read_state_dict
        from uer.utils import atomic_path

        state = read_state_dict(args.input_model_path)
        kw = {k: v for k, v in vars(args).items() if k in ("layers_num", "target", "max_seq_length")}
        from_hf, to_hf = FAMILIES[family]
        out = from_hf(state, **kw) if direction == "from_huggingface_to_uer" else to_hf(state, **kw)
        with atomic_path(args.output_model_path) as tmp:
            if args.output_model_path.endswith(".safetensors"):
                from safetensors.torch import save_file

                save_file({k: v.contiguous().clone() for k, v in out.items()}, tmp)
            else:
                torch.save(out, tmp)
        print(f"Wrote {args.output_model_path}: {len(out)} tensors.")
        return 0

    return run_cli(main, argv)
