"""Target slot (keys under `target.`). A target returns, per loss term, the summed loss, the number
of correct predictions and the number of predictions, as tensors: the training loop normalises
the sums over the whole global batch and reads the counts only when it reports.

Batch keys read here: mlm_pos [M] flat positions and mlm_tgt [M] ids of the predicted tokens,
label [B] the sentence-level label. The MLM head runs only on the M predicted positions.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from uer.config import ModelConfig
from uer.model.layers import LayerNorm, activation
from uer.model.registry import TARGETS, register

Terms = dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def token_terms(logits: torch.Tensor, labels: torch.Tensor):
    """(summed cross-entropy, correct, count) over rows whose label is not -100."""
    loss = F.cross_entropy(logits.float(), labels, ignore_index=-100, reduction="sum")
    valid = labels != -100
    correct = ((logits.argmax(-1) == labels) & valid).sum()
    return loss, correct, valid.sum()


class Target(nn.Module):
    #: weights whose shape equals the word embedding's, for --tie_weights
    tied_weight_name: str | None = None

    def counts(self, batch: dict) -> dict[str, int]:
        """Predictions per loss term in this batch, known on the host before the forward."""
        raise NotImplementedError


class MlmHead(nn.Module):
    """mlm_linear_1 (H -> H, or H -> E if factorized), GELU, layer_norm, mlm_linear_2 (-> V)."""

    def __init__(self, cfg: ModelConfig, vocab_size: int, out_size: int):
        super().__init__()
        self.mlm_linear_1 = nn.Linear(cfg.hidden_size, out_size)
        self.layer_norm = LayerNorm(out_size, cfg.layernorm_eps, cfg.layernorm)
        self.mlm_linear_2 = nn.Linear(out_size, vocab_size)
        self.act = activation("gelu")


def _mlm_forward(head_owner, hidden: torch.Tensor, batch: dict):
    flat = hidden.reshape(-1, hidden.shape[-1]).index_select(0, batch["mlm_pos"])
    x = head_owner.layer_norm(head_owner.act(head_owner.mlm_linear_1(flat)))
    return token_terms(head_owner.mlm_linear_2(x), batch["mlm_tgt"])


@register(TARGETS, "mlm")
class MlmTarget(Target):
    tied_weight_name = "mlm_linear_2.weight"

    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__()
        out = cfg.emb_size if cfg.factorized_embedding_parameterization else cfg.hidden_size
        # flat attributes (not a submodule) keep the reference key names target.mlm_linear_1...
        head = MlmHead(cfg, vocab_size, out)
        self.mlm_linear_1, self.layer_norm, self.mlm_linear_2 = head.mlm_linear_1, head.layer_norm, head.mlm_linear_2
        self.act = head.act

    def counts(self, batch):
        return {"mlm": int(batch["mlm_tgt"].numel())}

    def forward(self, hidden: torch.Tensor, batch: dict) -> Terms:
        return {"mlm": _mlm_forward(self, hidden, batch)}


@register(TARGETS, "bert")
class BertTarget(MlmTarget):
    """MLM + next-sentence prediction from the hidden state at position 0."""

    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__(cfg, vocab_size)
        self.nsp_linear_1 = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.nsp_linear_2 = nn.Linear(cfg.hidden_size, 2)

    def counts(self, batch):
        return {"mlm": int(batch["mlm_tgt"].numel()), "nsp": int(batch["label"].numel())}

    def forward(self, hidden, batch):
        nsp_logits = self.nsp_linear_2(torch.tanh(self.nsp_linear_1(hidden[:, 0])))
        return {"mlm": _mlm_forward(self, hidden, batch), "nsp": token_terms(nsp_logits, batch["label"])}
