"""Embedding slot: word, word_pos, word_pos_seg, word_sinusoidalpos (keys under `embedding.`)."""
from __future__ import annotations

import math

import torch
from torch import nn

from uer.config import ModelConfig
from uer.model.layers import LayerNorm
from uer.model.ops import Dropout
from uer.registry import EMBEDDINGS, register


class Embedding(nn.Module):
    """forward(src [B, L], seg [B, L]) -> [B, L, E]."""
    #: whether positions index a table of max_seq_length rows
    use_position = False

    @classmethod
    def problems(cls, cfg: ModelConfig) -> list[str]:
        return []


class WordEmbedding(Embedding):
    """word (+ learned positions) (+ segments) -> LayerNorm -> dropout."""
    use_segment = False

    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__()
        E = cfg.emb_size
        self.word_embedding = nn.Embedding(vocab_size, E)
        if self.use_position:
            self.position_embedding = nn.Embedding(cfg.max_seq_length, E)
        if self.use_segment:
            self.segment_embedding = nn.Embedding(3, E)
        self.layer_norm = None if cfg.remove_embedding_layernorm else \
            LayerNorm(E, cfg.layernorm_eps, cfg.layernorm)
        self.dropout = Dropout(cfg.dropout)

    def forward(self, src: torch.Tensor, seg: torch.Tensor, start: int = 0) -> torch.Tensor:
        """start: the position of src's first token (generation continues a sequence)."""
        emb = self.word_embedding(src)
        if self.use_position:
            pos = torch.arange(start, start + src.shape[1], device=src.device)
            emb = emb + self.position_embedding(pos)
        if self.use_segment:
            emb = emb + self.segment_embedding(seg)
        if self.layer_norm is not None:
            emb = self.layer_norm(emb)
        return self.dropout(emb)


@register(EMBEDDINGS, "word")
class Word(WordEmbedding):
    pass


@register(EMBEDDINGS, "word_pos")
class WordPos(WordEmbedding):
    use_position = True


@register(EMBEDDINGS, "word_pos_seg")
class WordPosSeg(WordEmbedding):
    use_position = True
    use_segment = True


@register(EMBEDDINGS, "word_sinusoidalpos")
class WordSinusoidalPos(Embedding):
    """word * sqrt(E) + sinusoidal encoding of the token position -> dropout. The encoding is a
    buffer that is not saved (SPEC 8)."""
    use_position = True

    @classmethod
    def problems(cls, cfg):
        if cfg.emb_size % 2:
            return [f"--embedding word_sinusoidalpos needs an even emb_size, got {cfg.emb_size}"]
        return []

    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__()
        E = cfg.emb_size
        self.emb_size = E
        self.word_embedding = nn.Embedding(vocab_size, E)
        position = torch.arange(cfg.max_seq_length).unsqueeze(1).float()
        div = torch.exp(torch.arange(0, E, 2).float() * -(math.log(10000.0) / E))
        pe = torch.zeros(cfg.max_seq_length, E)
        pe[:, 0::2] = torch.sin(position * div)
        pe[:, 1::2] = torch.cos(position * div)
        self.register_buffer("pe", pe, persistent=False)
        self.dropout = Dropout(cfg.dropout)

    def forward(self, src: torch.Tensor, seg: torch.Tensor, start: int = 0) -> torch.Tensor:
        emb = self.word_embedding(src) * math.sqrt(self.emb_size)
        return self.dropout(emb + self.pe[start:start + src.shape[1]].to(emb.dtype))
