"""The five-slot model and its builder."""
from __future__ import annotations

import torch
from torch import nn

from uer.config import FEED_FORWARDS, LAYERNORMS, ModelConfig, expect
from uer.registry import DECODERS, EMBEDDINGS, ENCODERS, TARGETS


READ = "read:"  # prefix of the batch keys a read plan adds


def first_positions(batch: dict) -> torch.Tensor:
    """Flat positions (b * L) of every row's first token."""
    B, L = batch["src"].shape
    return torch.arange(B, device=batch["src"].device) * L


def read_plan(batch: dict, keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Where an encoder's last layer must run for a target that reads only the flat positions in
    batch[k] for k in keys ("first_pos": position 0 of every row), as batch keys:
      read:rows  [U]     the distinct positions read, sorted;
      read:query [B, Q]  row b's positions among them, left-aligned, padded with b * L (Q: the most
                         in one row), the queries of the last layer's attention;
      read:keep  [U]     where rows lie in read:query flattened;
      read:<k>   [M_k]   batch[k] as indices into rows.
    The one data-dependent shape, Q, is read on the host: call it on host batches (the training
    loop does) and a GPU step never waits for it."""
    first = first_positions(batch)
    parts = [first if k == "first_pos" else batch[k] for k in keys]
    rows, inverse = torch.unique(torch.cat(parts), sorted=True, return_inverse=True)
    B, L = batch["src"].shape
    row_of = torch.div(rows, L, rounding_mode="floor")
    counts = torch.bincount(row_of, minlength=B)
    slot = torch.arange(len(rows), device=rows.device) - (counts.cumsum(0) - counts)[row_of]
    width = max(int(counts.max()), 1)
    query = first[:, None].repeat(1, width)
    query[row_of, slot] = rows
    plan = {READ + "rows": rows, READ + "query": query, READ + "keep": row_of * width + slot}
    for k, piece in zip(keys, inverse.split([len(p) for p in parts])):
        plan[READ + k] = piece
    return plan


class Model(nn.Module):
    """embedding -> encoder -> target. (mt/t5 keep their target embedding and decoder inside the
    target, as the reference checkpoints do.)

    A target that reads only some positions (`Target.reads`) gets the hidden states as rows [N, H]
    and its position keys as indices into them. When the encoder can run its last layer at chosen
    positions only (`Encoder.selects_rows`), it runs there alone: for mlm that is the masked 15 %,
    and the rest of the last layer's output, which no loss reads, is never computed."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embedding = EMBEDDINGS[cfg.embedding](cfg, cfg.vocab_size)
        self.encoder = ENCODERS[cfg.encoder](cfg)
        self.target = TARGETS[cfg.target](cfg, cfg.vocab_size)

    def encode(self, src: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.embedding(src, seg), seg)

    def prepare(self, batch: dict) -> dict:
        """batch with its read plan, when the target and encoder use one (see read_plan)."""
        reads = self.target.reads
        if reads is None or not self.encoder.selects_rows or READ + "rows" in batch:
            return batch
        return {**batch, **read_plan(batch, reads)}

    def forward(self, batch: dict) -> dict:
        src, seg = batch["src"], batch["seg"]
        reads = self.target.reads
        if reads is None:
            return self.target(self.encode(src, seg), batch)
        if self.encoder.selects_rows:
            batch = self.prepare(batch)
            rows = tuple(batch[READ + k] for k in ("query", "keep", "rows"))
            hidden = self.encoder(self.embedding(src, seg), seg, rows=rows)
            return self.target(hidden, {**batch, **{k: batch[READ + k] for k in reads}})
        hidden = self.encode(src, seg)
        return self.target(hidden.reshape(-1, hidden.shape[-1]), {**batch, "first_pos": first_positions(batch)})

    def logits(self, batch: dict) -> dict[str, torch.Tensor]:
        """Every term's scores at every position (or per sequence); see Target.logits."""
        return self.target.logits(self.encode(batch["src"], batch["seg"]), batch)


def init_weights(model: nn.Module, std: float = 0.02) -> None:
    """N(0, std) for every parameter except LayerNorm gamma (1) and beta (0). Tied weights are
    drawn once (named_parameters yields a shared tensor once)."""
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "gamma":
            nn.init.ones_(p)
        elif leaf == "beta":
            nn.init.zeros_(p)
        else:
            nn.init.normal_(p, 0.0, std)


def tie_weights(model: Model) -> None:
    name = model.target.tied_weight_name
    if name is None:
        return
    module_name, attr = name.rsplit(".", 1)
    source = model.get_submodule(model.target.tie_source).word_embedding
    setattr(model.target.get_submodule(module_name), attr, source.weight)


def share_embedding(model: Model) -> None:
    """--share_embedding: the decoder's word embedding is the encoder's, one parameter (BART);
    made before --tie_weights, so the output layer shares it too."""
    model.target.embedding.word_embedding.weight = model.embedding.word_embedding.weight


def build_model(cfg: ModelConfig, init: bool = True) -> Model:
    model = Model(cfg)
    if cfg.share_embedding:
        share_embedding(model)
    if cfg.tie_weights:
        tie_weights(model)
    if init:
        init_weights(model)
    return model


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters, tied weights counted once."""
    return sum(p.numel() for p in model.parameters())


def model_problems(cfg: ModelConfig) -> list[str]:
    """Every reason this model cannot be built, in one list. Each component adds its own checks
    (its `problems` classmethod); the checks between components are here."""
    p: list[str] = []
    slots = [("--embedding", cfg.embedding, EMBEDDINGS), ("--encoder", cfg.encoder, ENCODERS),
             ("--target", cfg.target, TARGETS)]
    if getattr(TARGETS.get(cfg.target), "has_decoder", False):
        slots += [("--tgt_embedding", cfg.tgt_embedding, EMBEDDINGS), ("--decoder", cfg.decoder, DECODERS)]
    for kind, name, registry in slots:
        expect(p, name in registry, f"{kind} {name}: not available (available: {', '.join(sorted(registry))})")
    for name in ("emb_size", "hidden_size", "layers_num", "max_seq_length"):
        v = getattr(cfg, name)
        expect(p, isinstance(v, int) and v > 0, f"{name} must be a positive integer, got {v!r}")
    if p:
        return p  # the checks below read these
    expect(p, 0.0 <= cfg.dropout < 1.0, f"dropout must be in [0, 1), got {cfg.dropout}")
    expect(p, cfg.layernorm in LAYERNORMS, f"layernorm must be one of {', '.join(LAYERNORMS)}, got {cfg.layernorm!r}")
    expect(p, cfg.feed_forward in FEED_FORWARDS,
           f"feed_forward must be one of {', '.join(FEED_FORWARDS)}, got {cfg.feed_forward!r}")
    expect(p, cfg.layernorm_eps > 0, f"layernorm_eps must be positive, got {cfg.layernorm_eps}")
    p += EMBEDDINGS[cfg.embedding].problems(cfg) + ENCODERS[cfg.encoder].problems(cfg)
    target = TARGETS[cfg.target]
    p += target.problems(cfg)
    if cfg.encoder != "transformer":
        for flag in ("factorized_embedding_parameterization", "parameter_sharing", "rotary_position_embedding",
                     "remove_transformer_bias"):
            expect(p, not getattr(cfg, flag), f"--{flag} applies to --encoder transformer only, "
                                              f"not {cfg.encoder}")
        expect(p, cfg.feed_forward == "dense", f"--feed_forward gated applies to --encoder transformer only, "
                                               f"not {cfg.encoder}")
        expect(p, cfg.local_kv_heads_num is None, f"--local_kv_heads_num applies to --encoder transformer "
                                                  f"only, not {cfg.encoder}")
    expect(p, not cfg.bidirectional or cfg.encoder in ("rnn", "lstm", "gru"),
           f"--bidirectional applies to --encoder rnn, lstm or gru, not {cfg.encoder} "
           "(birnn, bilstm and bigru are bidirectional by design)")
    expect(p, cfg.decoder_layernorm_positioning in ("pre", "post"),
           f"decoder_layernorm_positioning must be pre or post, got {cfg.decoder_layernorm_positioning!r}")
    expect(p, cfg.decoder_layernorm_positioning == "pre" or target.has_decoder,
           f"--decoder_layernorm_positioning post: --target {cfg.target} has no decoder")
    expect(p, not cfg.decoder_final_layernorm or target.has_decoder,
           f"--decoder_final_layernorm: --target {cfg.target} has no decoder")
    if cfg.share_embedding:
        if not target.has_decoder:
            p.append(f"--share_embedding: --target {cfg.target} has no decoder whose embedding could share the "
                     "encoder's")
        elif cfg.tgt_vocab_size not in (None, cfg.vocab_size):
            p.append(f"--share_embedding: the target vocabulary ({cfg.tgt_vocab_size} tokens) is not the source "
                     f"vocabulary ({cfg.vocab_size}); one table serves both only with one vocabulary")
    if cfg.tie_weights:
        d = target.tie_in_features(cfg)
        if d is None:
            p.append(f"--tie_weights: --target {cfg.target} has no output layer over the vocabulary to tie")
        elif d != cfg.emb_size:
            p.append(f"--tie_weights: the output layer of --target {cfg.target} reads {d} features, "
                     f"the word embedding has emb_size {cfg.emb_size}; they must be equal")
    return p


