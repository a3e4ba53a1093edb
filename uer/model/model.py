"""The five-slot model and its builder."""
from __future__ import annotations

import torch
from torch import nn

from uer.config import ModelConfig
from uer.model.registry import EMBEDDINGS, ENCODERS, TARGETS


class Model(nn.Module):
    """embedding -> encoder -> target. (mt/t5 keep their target embedding and decoder inside the
    target, as the reference checkpoints do.)"""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embedding = EMBEDDINGS[cfg.embedding](cfg, cfg.vocab_size)
        self.encoder = ENCODERS[cfg.encoder](cfg)
        self.target = TARGETS[cfg.target](cfg, cfg.vocab_size)

    def encode(self, src: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.embedding(src, seg), seg)

    def forward(self, batch: dict) -> dict:
        return self.target(self.encode(batch["src"], batch["seg"]), batch)

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


def build_model(cfg: ModelConfig, init: bool = True) -> Model:
    model = Model(cfg)
    if cfg.tie_weights:
        tie_weights(model)
    if init:
        init_weights(model)
    return model


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters, tied weights counted once."""
    return sum(p.numel() for p in model.parameters())
