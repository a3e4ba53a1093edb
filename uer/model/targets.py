"""Target slot (keys under `target.`). A target returns, per loss term, the summed loss, the number
of correct predictions and the number of predictions, as tensors: the training loop normalises
the sums over the whole global batch and reads the counts only when it reports.

Token-level terms read two batch keys: `<key>_pos` [M], flat positions (b * L + p) of the
predicted tokens, and `<key>_tgt` [M], their ids. The heads run only on those M positions, and the
loss is `cross_entropy` on them (ops.OutputLoss, the seam where a kernel may fuse it with the output layer): no
padding position is ever projected onto the vocabulary.
Sentence-level terms read `label` [B].
"""
from __future__ import annotations

import torch
from torch import nn

from uer.config import POOLINGS, ModelConfig
from uer.model.layers import LayerNorm, activation
from uer.model.ops import OutputLoss, token_terms
from uer.registry import DECODERS, EMBEDDINGS, ENCODERS, TARGETS, register

Terms = dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def at_positions(hidden: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Rows of hidden [B, L, D] (or [N, D]) at flat positions pos [M] -> [M, D]."""
    return hidden.reshape(-1, hidden.shape[-1]).index_select(0, pos)


class Target(nn.Module):
    #: loss term -> the batch key whose length is the term's number of predictions
    terms: dict[str, str] = {}
    #: the Linear (path under target.) that --tie_weights shares with a word embedding
    tied_weight_name: str | None = None
    #: the module (path under the model) whose word_embedding it shares
    tie_source = "embedding"
    #: when set, forward reads only the flat positions in these batch keys ("first_pos": position
    #: 0 of every row, which the model adds) and gets hidden as rows [N, H] that they index (see
    #: Model); otherwise forward gets hidden [B, L, H]
    reads: tuple[str, ...] | None = None
    #: whether it holds a target embedding and a decoder (--tgt_embedding, --decoder)
    has_decoder = False

    def counts(self, batch: dict) -> dict[str, int]:
        """Predictions per loss term in this batch, known on the host before the forward."""
        return {term: int(batch[key].numel()) for term, key in self.terms.items()}

    @classmethod
    def tie_in_features(cls, cfg: ModelConfig) -> int | None:
        """Input size of the tied output layer (it must equal emb_size); None: nothing to tie."""
        return None

    @classmethod
    def problems(cls, cfg: ModelConfig) -> list[str]:
        return []

    def logits(self, hidden: torch.Tensor, batch: dict) -> dict[str, torch.Tensor]:
        """Scores of every term at every position ([B, L, V]) or per sequence ([B, C]), for
        inference and parity checks; training uses forward, which scores only the targets."""
        raise NotImplementedError


class MlmHead(Target):
    """mlm_linear_1 (H -> out), GELU, layer_norm, mlm_linear_2 (out -> V), on predicted positions
    only. Flat attributes keep the reference key names target.mlm_linear_1..."""
    tied_weight_name = "mlm_linear_2.weight"

    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__()
        out = self.head_size(cfg)
        self.mlm_linear_1 = nn.Linear(cfg.hidden_size, out)
        self.layer_norm = LayerNorm(out, cfg.layernorm_eps, cfg.layernorm)
        self.mlm_linear_2 = nn.Linear(out, vocab_size)
        self.act = activation("gelu")
        self.output_loss = OutputLoss()

    @classmethod
    def head_size(cls, cfg: ModelConfig) -> int:
        return cfg.emb_size if cfg.factorized_embedding_parameterization else cfg.hidden_size

    @classmethod
    def tie_in_features(cls, cfg):
        return cls.head_size(cfg)

    def mlm_features(self, x: torch.Tensor) -> torch.Tensor:
        """What mlm_linear_2 reads."""
        return self.layer_norm(self.act(self.mlm_linear_1(x)))

    def mlm_scores(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlm_linear_2(self.mlm_features(x))

    def mlm(self, hidden: torch.Tensor, batch: dict):
        return self.output_loss(self.mlm_linear_2, self.mlm_features(at_positions(hidden, batch["mlm_pos"])),
                            batch["mlm_tgt"])

    def logits(self, hidden, batch):
        return {"mlm": self.mlm_scores(hidden)}


@register(TARGETS, "mlm")
class MlmTarget(MlmHead):
    terms = {"mlm": "mlm_tgt"}
    reads = ("mlm_pos",)

    def forward(self, hidden: torch.Tensor, batch: dict) -> Terms:
        return {"mlm": self.mlm(hidden, batch)}


class SentencePairTarget(MlmHead):
    """MLM + a two-way sentence-pair classifier on the hidden state at position 0
    (<sp>_linear_1 H -> H, tanh, <sp>_linear_2 H -> 2)."""
    sp = ""
    reads = ("first_pos", "mlm_pos")

    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__(cfg, vocab_size)
        setattr(self, f"{self.sp}_linear_1", nn.Linear(cfg.hidden_size, cfg.hidden_size))
        setattr(self, f"{self.sp}_linear_2", nn.Linear(cfg.hidden_size, 2))

    def sp_scores(self, first: torch.Tensor) -> torch.Tensor:
        """[B, H] hidden states at position 0 -> [B, 2]."""
        l1, l2 = getattr(self, f"{self.sp}_linear_1"), getattr(self, f"{self.sp}_linear_2")
        return l2(torch.tanh(l1(first)))

    def forward(self, hidden, batch):
        first = at_positions(hidden, batch["first_pos"])
        return {"mlm": self.mlm(hidden, batch), self.sp: token_terms(self.sp_scores(first), batch["label"])}

    def logits(self, hidden, batch):
        return {"mlm": self.mlm_scores(hidden), self.sp: self.sp_scores(hidden[:, 0])}


@register(TARGETS, "bert")
class BertTarget(SentencePairTarget):
    """MLM + next-sentence prediction (label 1 = random next)."""
    sp = "nsp"
    terms = {"mlm": "mlm_tgt", "nsp": "label"}

    @classmethod
    def problems(cls, cfg):
        if cfg.factorized_embedding_parameterization:
            return ["--target bert cannot use --factorized_embedding_parameterization "
                    "(use --target albert or mlm)"]
        return []


@register(TARGETS, "albert")
class AlbertTarget(SentencePairTarget):
    """MLM projecting to E (always) + sentence-order prediction (label 1 = swapped)."""
    sp = "sop"
    terms = {"mlm": "mlm_tgt", "sop": "label"}

    @classmethod
    def head_size(cls, cfg):
        return cfg.emb_size


@register(TARGETS, "lm")
class LmTarget(Target):
    """Next-token prediction at every real position: output_layer H -> V (bias only with
    --has_lmtarget_bias). Needs an encoder that does not see the future."""
    terms = {"lm": "lm_tgt"}
    tied_weight_name = "output_layer.weight"

    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__()
        self.output_layer = nn.Linear(cfg.hidden_size, vocab_size, bias=cfg.has_lmtarget_bias)
        self.output_loss = OutputLoss()

    @classmethod
    def tie_in_features(cls, cfg):
        return cfg.hidden_size

    @classmethod
    def problems(cls, cfg):
        enc = ENCODERS.get(cfg.encoder)
        if enc is not None and enc.direction(cfg) != "causal":
            how = ("use --mask causal" if cfg.encoder == "transformer" else
                   "drop --bidirectional" if cfg.bidirectional else "use a causal encoder")
            return [f"--target lm predicts the next token, but --encoder {cfg.encoder}"
                    f"{' --mask ' + cfg.mask if cfg.encoder == 'transformer' else ''}"
                    f"{' --bidirectional' if cfg.bidirectional else ''} sees the future: {how}"]
        return []

    def forward(self, hidden, batch):
        return {"lm": self.output_loss(self.output_layer, at_positions(hidden, batch["lm_pos"]), batch["lm_tgt"])}

    def logits(self, hidden, batch):
        return {"lm": self.output_layer(hidden)}


@register(TARGETS, "prefixlm")
class PrefixLmTarget(LmTarget):
    """The lm head on the target part of [CLS] source [SEP] target [SEP] only (the positions the
    prefixlm dataset names), with the source seen whole: --mask causal_with_prefix."""

    @classmethod
    def problems(cls, cfg):
        if cfg.encoder != "transformer" or cfg.mask != "causal_with_prefix":
            return [f"--target prefixlm reads the source whole and predicts the target causally: it needs --encoder "
                    f"transformer --mask causal_with_prefix (got --encoder {cfg.encoder} --mask {cfg.mask})"]
        return []


@register(TARGETS, "bilm")
class BilmTarget(Target):
    """The forward half of the hidden state predicts the next token, the backward half the previous
    one, through one shared output_layer (H/2 -> V, with bias)."""
    terms = {"forward": "forward_tgt", "backward": "backward_tgt"}
    tied_weight_name = "output_layer.weight"

    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__()
        self.half = cfg.hidden_size // 2
        self.output_layer = nn.Linear(self.half, vocab_size)
        self.output_loss = OutputLoss()

    @classmethod
    def tie_in_features(cls, cfg):
        return cfg.hidden_size // 2

    @classmethod
    def problems(cls, cfg):
        enc = ENCODERS.get(cfg.encoder)
        if enc is not None and enc.direction(cfg) != "split":
            return [f"--target bilm needs two independent directions: use --encoder birnn, bilstm "
                    f"or bigru, not {cfg.encoder}"]
        return []

    def logits(self, hidden, batch):
        return {"forward": self.output_layer(hidden[..., :self.half]),
                "backward": self.output_layer(hidden[..., self.half:])}

    def forward(self, hidden, batch):
        fwd, bwd = hidden[..., :self.half], hidden[..., self.half:]
        return {"forward": self.output_loss(self.output_layer, at_positions(fwd, batch["forward_pos"]),
                                        batch["forward_tgt"]),
                "backward": self.output_loss(self.output_layer, at_positions(bwd, batch["backward_pos"]),
                                         batch["backward_tgt"])}


def pool(hidden: torch.Tensor, seg: torch.Tensor, pooling: str) -> torch.Tensor:
    """[B, L, H] -> [B, H] over the real (seg > 0) positions only."""
    if pooling == "first":
        return hidden[:, 0]
    real = seg > 0
    if pooling == "last":
        last = real.sum(1).clamp(min=1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    if pooling == "mean":
        w = real.to(hidden.dtype)[..., None]
        return (hidden * w).sum(1) / w.sum(1).clamp(min=1)
    if pooling == "max":
        return hidden.masked_fill(~real[..., None], float("-inf")).amax(1)
    raise ValueError(pooling)


@register(TARGETS, "cls")
class ClsTarget(Target):
    """Pool (ignoring padding), linear_1 H -> H, tanh, linear_2 H -> labels_num."""
    terms = {"cls": "label"}

    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__()
        self.pooling = cfg.pooling
        self.linear_1 = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.linear_2 = nn.Linear(cfg.hidden_size, cfg.labels_num or 2)

    @classmethod
    def problems(cls, cfg):
        p = []
        if cfg.labels_num is None or cfg.labels_num < 2:
            p.append(f"--target cls needs --labels_num of at least 2, got {cfg.labels_num}")
        if cfg.pooling not in POOLINGS:
            p.append(f"--pooling must be one of {', '.join(POOLINGS)}, got {cfg.pooling!r}")
        return p

    def scores(self, hidden, seg):
        return self.linear_2(torch.tanh(self.linear_1(pool(hidden, seg, self.pooling))))

    def forward(self, hidden, batch):
        return {"cls": token_terms(self.scores(hidden, batch["seg"]), batch["label"])}

    def logits(self, hidden, batch):
        return {"cls": self.scores(hidden, batch["seg"])}


class Seq2SeqTarget(Target):
    """A decoder over the encoder's output: `embedding` (a --tgt_embedding module), `decoder`,
    `output_layer` (H -> V, bias with --has_lmtarget_bias). Batch keys: tgt_in [B, T] decoder
    input, tgt_seg [B, T] (1 = real), dec_pos/dec_tgt the predicted tokens; seg masks the source."""
    tied_weight_name = "output_layer.weight"
    tie_source = "target.embedding"
    has_decoder = True

    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__()
        V = self.output_vocab_size(cfg, vocab_size)
        self.embedding = EMBEDDINGS[cfg.tgt_embedding](cfg, V)
        self.decoder = DECODERS[cfg.decoder](cfg)
        self.output_layer = nn.Linear(cfg.hidden_size, V, bias=cfg.has_lmtarget_bias)
        self.output_loss = OutputLoss()

    @staticmethod
    def output_vocab_size(cfg: ModelConfig, vocab_size: int) -> int:
        return vocab_size

    @classmethod
    def tie_in_features(cls, cfg):
        return cfg.hidden_size

    @classmethod
    def problems(cls, cfg):
        p = []
        if cfg.tgt_embedding not in EMBEDDINGS:
            p.append(f"--tgt_embedding {cfg.tgt_embedding}: not available")
        if cfg.decoder not in DECODERS:
            p.append(f"--decoder {cfg.decoder}: not available")
        if cfg.emb_size != cfg.hidden_size:
            p.append(f"--target {cfg.target}: the decoder reads its embedding directly, so emb_size "
                     f"{cfg.emb_size} must equal hidden_size {cfg.hidden_size}")
        emb = EMBEDDINGS.get(cfg.tgt_embedding)
        if cfg.relative_position_embedding and emb is not None and emb.use_position:
            p.append(f"--relative_position_embedding puts the positions into the decoder's attention too, but "
                     f"--tgt_embedding {cfg.tgt_embedding} adds positions: use --tgt_embedding word")
        if cfg.rotary_position_embedding:
            p.append(f"--rotary_position_embedding applies to the encoder, and --target {cfg.target}'s decoder "
                     f"takes its positions from --tgt_embedding {cfg.tgt_embedding}: not available with a "
                     "decoder yet")
        return p

    def decode(self, hidden, batch):
        return self.decoder(self.embedding(batch["tgt_in"], batch["tgt_seg"]), hidden, batch["seg"])

    def forward(self, hidden, batch):
        return {self.name: self.output_loss(self.output_layer, at_positions(self.decode(hidden, batch), batch["dec_pos"]),
                                        batch["dec_tgt"])}

    def logits(self, hidden, batch):
        return {self.name: self.output_layer(self.decode(hidden, batch))}


@register(TARGETS, "mt")
class MtTarget(Seq2SeqTarget):
    """Translation: the decoder reads and predicts the target-side vocabulary."""
    terms = {"mt": "dec_tgt"}

    @staticmethod
    def output_vocab_size(cfg, vocab_size):
        return cfg.tgt_vocab_size or vocab_size


@register(TARGETS, "t5")
class T5Target(Seq2SeqTarget):
    """Span corruption: the decoder predicts the masked tokens, over the source vocabulary, with
    its own (untied) embedding."""
    terms = {"t5": "dec_tgt"}


@register(TARGETS, "gsg")
class GsgTarget(Seq2SeqTarget):
    """PEGASUS's gap-sentence generation: the decoder generates the sentences the source lost to
    [MASK]s, over the source vocabulary."""
    terms = {"gsg": "dec_tgt"}


@register(TARGETS, "bart")
class BartTarget(Seq2SeqTarget):
    """BART's denoising: the encoder reads a run of sentences shuffled and with spans hidden behind
    one [MASK] each, and the decoder rebuilds the original run, over the source vocabulary
    (transformers' BartForConditionalGeneration: --decoder_layernorm_positioning post
    --share_embedding --tie_weights --has_lmtarget_bias)."""
    terms = {"bart": "dec_tgt"}
