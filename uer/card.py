"""The model card: a small JSON file beside every model file that pretrain and fine-tuning write
(`<model path>.json`, the litgpt habit). It says what the model is: the resolved configuration (a
valid recipe), the vocabulary it was trained with (size and fingerprint, and where it was), the
tokenizer, the sequence length of its data, the step and the uer version.

The commands that load a model read it: without --config_path the card is the recipe, and the
vocabulary, tokenizer and sequence length default to the card's. Where the card and the command
line disagree on the model's body (its sizes, embedding and encoder), or on the vocabulary, one
error lists every difference. A model file without a card (the model zoo's) loads as before.
"""
from __future__ import annotations

import dataclasses
import os

from uer.config import ModelConfig, check_recipe, load_recipe
from uer.errors import ConfigError, UerError

FORMAT = 1
#: what the weights are: the fields a command line may not change on a loaded model. The rest
#: (the target and its head, dropout) may differ: fine-tuning puts a new head on the body.
BODY = ("emb_size", "hidden_size", "feedforward_size", "heads_num", "layers_num", "hidden_act", "max_seq_length",
        "layernorm", "layernorm_eps", "feed_forward", "remove_transformer_bias", "rotary_position_embedding",
        "rope_base", "local_kv_heads_num", "kernel_size", "block_size", "embedding", "remove_embedding_layernorm",
        "encoder", "mask", "layernorm_positioning", "bidirectional", "factorized_embedding_parameterization",
        "parameter_sharing")
_SIZES = ("vocab_size", "tgt_vocab_size")


def card_path(model_path: str) -> str:
    return model_path + ".json"


def tokenizer_of(name: str, do_lower_case: bool = True, spm_model_path: str | None = None) -> dict:
    return {"name": name, "do_lower_case": bool(do_lower_case),
            "spm_model_path": os.path.abspath(spm_model_path) if spm_model_path else None}


def tokenizer_from_header(described: str, spm_model_path: str | None) -> dict:
    """The tokenizer of a dataset header's description (uer.tokenizers.describe_tokenizer)."""
    name = described.split("(", 1)[0].split("+", 1)[0]
    return tokenizer_of(name, "lower=False" not in described, spm_model_path if "+spm" in described else None)


def vocab_entry(vocab) -> dict:
    """A card's record of a vocabulary: its size, fingerprint and file."""
    return {"size": len(vocab), "fingerprint": vocab.fingerprint(),
            "path": os.path.abspath(vocab.source) if os.path.isfile(vocab.source) else None}


def make_card(mcfg: ModelConfig, vocab, tokenizer: dict, seq_length: int | None, tgt_vocab=None) -> dict:
    from uer import __version__

    model = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(mcfg).items()
             if k not in _SIZES}
    card = {"format": FORMAT, "uer_version": __version__, "model": model, "vocab": vocab_entry(vocab),
            "tokenizer": tokenizer, "seq_length": seq_length}
    if tgt_vocab is not None:
        card["tgt_vocab"] = vocab_entry(tgt_vocab)
    return card


def write_card(model_path: str, card: dict, **extra) -> None:
    """card (as make_card or read_card gave it) and `extra` into model_path's card file."""
    from uer.utils import write_json

    write_json({**{k: v for k, v in card.items() if k != "path"}, **extra}, card_path(model_path))


def read_card(model_path: str | None) -> dict | None:
    """The card beside model_path, checked (its model a valid recipe); None when it has none."""
    if not model_path or not os.path.isfile(card_path(model_path)):
        return None
    from uer.utils import read_json

    path = card_path(model_path)
    card = read_json(path, "model card")
    vocab = card.get("vocab") if isinstance(card, dict) else None
    if not isinstance(card, dict) or not isinstance(card.get("model"), dict) or not isinstance(vocab, dict) or \
            type(vocab.get("size")) is not int or not isinstance(vocab.get("fingerprint"), str):
        raise UerError(f"model card {path}: expected a JSON object with 'model' (a recipe) and 'vocab' (size, "
                       f"fingerprint); delete it to load {model_path} without it")
    check_recipe(card["model"], path)
    card["path"] = path
    return card


def recipe_for(config_path: str, explicit: set[str], card: dict | None) -> dict:
    """The recipe a loaded model is built from: the card's model, with --config_path's fields over
    it when that option is given; without a card, --config_path (default: the packaged BERT-base)."""
    if card is None:
        return load_recipe(config_path)
    recipe = dict(card["model"])
    if "config_path" in explicit:
        recipe.update(load_recipe(config_path))
    return recipe


def card_vocab(card: dict | None) -> tuple[str | None, str | None]:
    """(vocab_path, spm_model_path) of the vocabulary the card's model was trained with."""
    if card is None:
        return None, None
    spm = (card.get("tokenizer") or {}).get("spm_model_path")
    path = spm or card["vocab"].get("path")
    if path and not os.path.isfile(path):
        raise UerError(f"the model card {card['path']} says the model was trained with the vocabulary {path}, "
                       f"which is gone: pass --vocab_path or --spm_model_path (a vocabulary of "
                       f"{card['vocab']['size']} tokens)")
    return (None, spm) if spm else (path, None)


def card_tgt_vocab(card: dict | None) -> tuple[str | None, str | None]:
    """(tgt_vocab_path, tgt_spm_model_path) of the target-side vocabulary an mt model was trained
    with (None, None when the card names none)."""
    entry = (card or {}).get("tgt_vocab") or {}
    path = entry.get("path")
    if not path:
        return None, None
    if not os.path.isfile(path):
        raise UerError(f"the model card {card['path']} says the model was trained with the target-side vocabulary "
                       f"{path}, which is gone: pass --tgt_vocab_path or --tgt_spm_model_path (a vocabulary of "
                       f"{entry['size']} tokens)")
    return (None, path) if path.endswith(".model") else (path, None)


def apply_defaults(args, explicit: set[str], card: dict | None, seq_length: bool = True) -> None:
    """The options a card answers when the command line leaves them out: the vocabulary, the
    tokenizer and (with seq_length) the sequence length, of those the command has."""
    if card is None:
        return
    tokenizer = card.get("tokenizer") or {}
    if not getattr(args, "vocab_path", None) and not getattr(args, "spm_model_path", None):
        args.vocab_path, args.spm_model_path = card_vocab(card)
    if hasattr(args, "tokenizer") and "tokenizer" not in explicit and tokenizer.get("name"):
        args.tokenizer = tokenizer["name"]
    if hasattr(args, "do_lower_case") and "do_lower_case" not in explicit and "do_lower_case" in tokenizer:
        args.do_lower_case = tokenizer["do_lower_case"]
    if seq_length and hasattr(args, "seq_length") and "seq_length" not in explicit and card.get("seq_length"):
        args.seq_length = card["seq_length"]


def card_problems(card: dict | None, mcfg: ModelConfig, vocab, tgt_vocab=None) -> list[str]:
    """Every way the model the command line builds differs from the card's (the body and the
    vocabulary), each as `field: the card's value, this command line's`."""
    if card is None:
        return []
    diffs = [f"{k}: {card['model'].get(k, _default(k))!r} in the card, {getattr(mcfg, k)!r} here"
             for k in BODY if card["model"].get(k, _default(k)) != _plain(getattr(mcfg, k))]
    for key, v in (("vocab", vocab), ("tgt_vocab", tgt_vocab)):
        if v is not None and key in card and (card[key]["size"], card[key]["fingerprint"]) != \
                (len(v), v.fingerprint()):
            diffs.append(f"{key.replace('_', ' ')}ulary: {card[key]['size']} tokens "
                         f"({card[key].get('path')}, fingerprint "
                         f"{card[key]['fingerprint']}) in the card, {len(v)} tokens here ({v.source}, fingerprint "
                         f"{v.fingerprint()})")
    if not diffs:
        return []
    return [f"the model card {card['path']} and this command line disagree on {len(diffs)} thing(s) (leave out "
            "--config_path and the model options to build the model as the card says):\n    "
            + "\n    ".join(diffs)]


def check_against_card(card: dict | None, mcfg: ModelConfig, vocab, tgt_vocab=None) -> None:
    problems = card_problems(card, mcfg, vocab, tgt_vocab)
    if problems:
        raise ConfigError(problems)


def _default(name: str):
    return ModelConfig.__dataclass_fields__[name].default


def _plain(value):
    return list(value) if isinstance(value, tuple) else value
