"""Python API: build a model from a recipe and options, load a checkpoint, run text through it.

    from uer.api import Pretrained
    m = Pretrained.load("models/output_model.bin", config_path="models/bert_tiny_config.json",
                        vocab_path="models/google_zh_vocab.txt", target="mlm")
    hidden, seg = m.hidden_states(["今天天气很好", "你好"])     # [B, L, H], [B, L]
    scores = m.logits(["今天[MASK]气很好"])["mlm"]               # [B, L, V]
    m.model                                                     # the torch module (eval mode)

Options are the names of pretrain.py's model options (embedding, encoder, mask, target, ...); the
recipe at config_path (else the model card beside the model file, uer.card) supplies the sizes, and
an option given here wins over it, as on the command line. The scripts in scripts/ are built on
this module.
"""
from __future__ import annotations

import argparse

import torch

from uer.config import ModelConfig, build_model_config, input_problems, output_problems
from uer.errors import ConfigError, UerError
from uer.options import DEFAULT_CONFIG_PATH
from uer.vocab import Vocab, load_vocab


class Pretrained:
    def __init__(self, model, cfg: ModelConfig, vocab: Vocab, tokenizer, device: str = "cpu",
                 tgt_vocab: Vocab | None = None):
        self.model, self.cfg, self.vocab, self.tokenizer = model, cfg, vocab, tokenizer
        self.special = vocab.special_ids()
        self.device = torch.device(device)
        #: the decoder's vocabulary (mt; else the source vocabulary) and its special ids
        self.tgt_vocab = tgt_vocab or vocab
        self.tgt_special = self.tgt_vocab.special_ids()

    @classmethod
    def load(cls, model_path: str | None = None, *, config_path: str | None = None,
             vocab_path: str | None = None, spm_model_path: str | None = None, tokenizer: str | None = None,
             do_lower_case: bool | None = None, device: str = "cpu", strict: bool = True,
             tgt_vocab_path: str | None = None, tgt_spm_model_path: str | None = None,
             **options) -> "Pretrained":
        """Build the model of `config_path` + `options`, and load `model_path` into it (strict by
        default: any key that does not fit is an error that names it). The model card beside
        model_path (uer.card), if there is one, is the recipe when config_path is None, and names the
        vocabulary and tokenizer when they are not given; without a card the recipe defaults to the
        packaged BERT-base, the tokenizer to bert. An mt model also needs its target-side
        vocabulary (tgt_vocab_path / tgt_spm_model_path, else the card's)."""
        from uer.card import card_problems, card_tgt_vocab, card_vocab, read_card, recipe_for
        from uer.model import build_model, model_problems
        from uer.tokenizers import build_tokenizer
        from uer.checkpoint import load_model

        card = read_card(model_path)
        if not vocab_path and not spm_model_path:
            vocab_path, spm_model_path = card_vocab(card)
        told = (card or {}).get("tokenizer") or {}
        tokenizer = tokenizer or told.get("name") or "bert"
        do_lower_case = told.get("do_lower_case", True) if do_lower_case is None else do_lower_case
        vocab = load_vocab(vocab_path, spm_model_path)
        tgt_vocab = None
        if not tgt_vocab_path and not tgt_spm_model_path:
            tgt_vocab_path, tgt_spm_model_path = card_tgt_vocab(card)
        if tgt_vocab_path or tgt_spm_model_path:
            tgt_vocab = load_vocab(tgt_vocab_path, tgt_spm_model_path, what="tgt ")
        tgt = options.pop("tgt_vocab_size", None) or (len(tgt_vocab) if tgt_vocab is not None else None)
        recipe = recipe_for(config_path or DEFAULT_CONFIG_PATH, {"config_path"} if config_path else set(), card)
        cfg = build_model_config(recipe, options, set(options), len(vocab), tgt)
        problems = model_problems(cfg) + card_problems(card, cfg, vocab, tgt_vocab)
        if cfg.target == "mt" and tgt is None:
            problems.append("--target mt: give the target-side vocabulary (--tgt_vocab_path or --tgt_spm_model_path)")
        if problems:
            raise ConfigError(problems)
        model = build_model(cfg)
        if model_path:
            load_model(model, model_path, strict=strict)
            bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
            if bad:  # its outputs would be NaN: say so instead of writing them
                raise UerError(f"{model_path} holds non-finite weights (NaN or inf) in {len(bad)} tensor(s): "
                               f"{', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''}; use an earlier checkpoint")
        model.to(device).eval()
        return cls(model, cfg, vocab, build_tokenizer(tokenizer, vocab, spm_model_path, do_lower_case), device,
                   tgt_vocab)

    @classmethod
    def from_args(cls, args: argparse.Namespace, explicit: set[str]) -> "Pretrained":
        """From the options of an inference script (uer.options.parse); the options the model card
        answers (uer.card.apply_defaults) are set in args, for the script to use too."""
        from uer.card import apply_defaults, read_card

        apply_defaults(args, explicit, read_card(args.load_model_path))
        names = [f for f in ModelConfig.__dataclass_fields__ if f in explicit]
        return cls.load(args.load_model_path, config_path=args.config_path if "config_path" in explicit else None,
                        vocab_path=args.vocab_path, spm_model_path=args.spm_model_path,
                        tokenizer=args.tokenizer if "tokenizer" in explicit else None,
                        do_lower_case=getattr(args, "do_lower_case", None),
                        tgt_vocab_path=getattr(args, "tgt_vocab_path", None),
                        tgt_spm_model_path=getattr(args, "tgt_spm_model_path", None),
                        **{n: getattr(args, n) for n in names})

    def encode(self, texts: list[str], seq_length: int | None = None, add_sep: bool = True) -> dict:
        """A batch: [CLS] ids [SEP] per text (cut to seq_length), right-padded; seg 1 / 0."""
        sp = self.special
        limit = min(seq_length or self.cfg.max_seq_length, self.cfg.max_seq_length)
        rows = [([sp.cls] + self.tokenizer.encode(t) + ([sp.sep] if add_sep else []))[:limit] for t in texts]
        width = max(len(r) for r in rows)
        src = torch.full((len(rows), width), sp.pad, dtype=torch.long)
        seg = torch.zeros((len(rows), width), dtype=torch.long)
        for b, r in enumerate(rows):
            src[b, :len(r)] = torch.tensor(r)
            seg[b, :len(r)] = 1
        return {"src": src.to(self.device), "seg": seg.to(self.device)}

    def decode(self, ids: list[int], vocab: Vocab | None = None) -> str:
        """Ids (of `vocab`, default the source vocabulary) back to text: WordPiece pieces joined,
        words of Latin script spaced (space tokenizer: tokens joined by spaces)."""
        tokens = [(vocab or self.vocab).tokens[i] for i in ids]
        if self.tokenizer.name == "space":
            return " ".join(tokens)
        out = ""
        for t in tokens:
            if t.startswith("##"):
                out += t[2:]
            elif out and t[:1].isascii() and t[:1].isalnum() and out[-1:].isascii() and out[-1:].isalnum():
                out += " " + t
            else:
                out += t
        return out

    @torch.no_grad()
    def hidden_states(self, texts: list[str], seq_length: int | None = None):
        batch = self.encode(texts, seq_length)
        return self.model.encode(batch["src"], batch["seg"]), batch["seg"]

    @torch.no_grad()
    def logits(self, texts: list[str], seq_length: int | None = None) -> dict[str, torch.Tensor]:
        return self.model.logits(self.encode(texts, seq_length))


def check_files(inputs: dict[str, str | None], outputs: dict[str, str | None]) -> None:
    """A script's files, before any model is loaded: each input a file, each output writable and
    none of the inputs; every problem in one error."""
    problems = input_problems(inputs)
    for option, path in outputs.items():
        if path:
            problems += output_problems(path, option, inputs)
    if problems:
        raise ConfigError(problems)


def read_lines(path: str, option: str) -> list[str]:
    """The lines (stripped) of a script's UTF-8 text input; not UTF-8 or without any text is an
    error that names the file (and the line)."""
    lines = []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                lines.append(raw.decode("utf-8").strip())
            except UnicodeDecodeError as e:
                raise UerError(f"{option} {path} line {n}: not UTF-8 text ({e.reason} at byte {e.start} of the "
                               "line)") from None
    if not any(lines):
        raise UerError(f"{option} {path} holds no text: give one text a line")
    return lines

