"""Encoder slot (keys under `encoder.`)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from uer.config import ModelConfig
from uer.model.layers import TransformerLayer, biased_mask, layer_norm, relative_position_bias
from uer.model.ops import Dropout
from uer.registry import EMBEDDINGS, ENCODERS, register


class Encoder(nn.Module):
    """forward(emb [B, L, E], seg [B, L]) -> hidden [B, L, H]. An encoder with selects_rows also
    takes rows=(query, keep, flat) (see model.read_plan) and returns hidden [U, H] at flat only."""
    selects_rows = False

    @classmethod
    def direction(cls, cfg: ModelConfig) -> str:
        """"causal": position t sees only tokens <= t; "split": the first half of the features is
        causal and the second half anti-causal; "bidirectional": anything else."""
        return "causal"

    @classmethod
    def problems(cls, cfg: ModelConfig) -> list[str]:
        return []


def prefix_mask(seg: torch.Tensor) -> torch.Tensor:
    """[B, 1, L, L], True where position i may attend to j: every real position sees the prefix
    (segment 1) whole, and the positions after it see themselves and the past; padding is unseen."""
    L = seg.shape[1]
    in_prefix = seg == 1
    past = torch.ones(L, L, dtype=torch.bool, device=seg.device).tril()
    return ((in_prefix[:, None, :] | past[None]) & (seg > 0)[:, None, :])[:, None]


@register(ENCODERS, "transformer")
class TransformerEncoder(Encoder):
    """Stack of transformer layers; `fully_visible` ignores padding keys (seg == 0), `causal`
    sees only the past, `causal_with_prefix` the prefix (segment 1) whole and the past. Pre-LN
    adds a final `layer_norm`; --parameter_sharing keeps one layer (`transformer.*`, no index);
    factorized embeddings are projected E -> H by `linear`. Only a fully visible encoder runs its
    last layer at the read rows alone (its mask does not depend on the query)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.causal = cfg.mask == "causal"
        self.prefix = cfg.mask == "causal_with_prefix"
        # the last layer at chosen rows alone: its queries' position bias would need gathering too
        self.selects_rows = cfg.mask == "fully_visible" and not cfg.relative_position_embedding
        self.layers_num = cfg.layers_num
        self.parameter_sharing = cfg.parameter_sharing
        if cfg.factorized_embedding_parameterization:
            self.linear = nn.Linear(cfg.emb_size, cfg.hidden_size)

        if cfg.parameter_sharing:
            self.transformer = TransformerLayer(cfg)
        else:
            self.transformer = nn.ModuleList([TransformerLayer(cfg) for _ in range(cfg.layers_num)])
        if cfg.layernorm_positioning == "pre":
            self.layer_norm = layer_norm(cfg)
        self.relative_position_bias = relative_position_bias(cfg, bidirectional=cfg.mask != "causal")

    def forward(self, emb: torch.Tensor, seg: torch.Tensor, caches: list[dict] | None = None,
                rows: tuple | None = None) -> torch.Tensor:
        """caches (causal and causal_with_prefix, for generation): one dict per layer holding the
        keys and values of the positions already seen; emb then holds only the new positions (with
        a prefix: first the prefix, then one position at a time, which sees everything before it).
        rows (fully visible only): the last layer runs at those positions alone."""
        x = self.linear(emb) if hasattr(self, "linear") else emb
        if self.causal:
            mask = None
        elif self.prefix:
            mask = None if caches is not None and "k" in caches[0] else prefix_mask(seg)
        else:
            mask = (seg > 0)[:, None, None, :]  # [B, 1, 1, L]: padding keys are invisible
        causal = self.causal
        if self.relative_position_bias is not None:  # one bias for every layer, the mask folded in
            past = caches[0]["k"].shape[1] if caches is not None and "k" in caches[0] else 0
            L = x.shape[1]
            if self.causal:
                mask = torch.ones(L, past + L, dtype=torch.bool, device=x.device).tril(past)
            mask, causal = biased_mask(self.relative_position_bias(past, L, past + L, x.device), mask), False
        for i in range(self.layers_num):
            layer = self.transformer if self.parameter_sharing else self.transformer[i]
            last = rows if i == self.layers_num - 1 else None
            x = layer(x, mask, causal, caches[i] if caches is not None else None, rows=last)
        if hasattr(self, "layer_norm"):
            x = self.layer_norm(x)
        return x

    @classmethod
    def direction(cls, cfg):
        return {"causal": "causal", "causal_with_prefix": "prefix"}.get(cfg.mask, "bidirectional")

    @classmethod
    def problems(cls, cfg):
        from uer.config import HIDDEN_ACTS

        p = []
        if cfg.hidden_act not in HIDDEN_ACTS:
            p.append(f"hidden_act must be one of {', '.join(HIDDEN_ACTS)}, got {cfg.hidden_act!r}")
        heads_ok = isinstance(cfg.heads_num, int) and cfg.heads_num > 0 and cfg.hidden_size % cfg.heads_num == 0
        if not heads_ok:
            p.append(f"hidden_size {cfg.hidden_size} must be a multiple of heads_num {cfg.heads_num}")
        kv = cfg.local_kv_heads_num
        if kv is not None and not (isinstance(kv, int) and kv > 0 and heads_ok and cfg.heads_num % kv == 0):
            p.append(f"--local_kv_heads_num {kv} must be a positive divisor of heads_num {cfg.heads_num} "
                     "(each key/value head serves heads_num / local_kv_heads_num query heads)")
        if cfg.rotary_position_embedding:
            emb = EMBEDDINGS.get(cfg.embedding)
            if emb is not None and emb.use_position:
                p.append(f"--rotary_position_embedding puts the positions into attention, but --embedding "
                         f"{cfg.embedding} adds positions too: use --embedding word")
            if heads_ok and (cfg.hidden_size // cfg.heads_num) % 2:
                p.append(f"--rotary_position_embedding rotates pairs of features: the head size hidden_size / "
                         f"heads_num = {cfg.hidden_size // cfg.heads_num} must be even")
            if not cfg.rope_base > 1:
                p.append(f"--rope_base must be greater than 1, got {cfg.rope_base}")
        if cfg.relative_position_embedding:
            emb = EMBEDDINGS.get(cfg.embedding)
            if emb is not None and emb.use_position:
                p.append(f"--relative_position_embedding puts the positions into attention, but --embedding "
                         f"{cfg.embedding} adds positions too: use --embedding word")
            if cfg.rotary_position_embedding:
                p.append("--relative_position_embedding and --rotary_position_embedding are two ways of giving "
                         "attention the positions: choose one")
            if cfg.mask == "causal_with_prefix":
                p.append("--relative_position_embedding: not available with --mask causal_with_prefix")
            if not (isinstance(cfg.relative_attention_buckets_num, int) and cfg.relative_attention_buckets_num >= 4):
                p.append(f"--relative_attention_buckets_num must be at least 4, got "
                         f"{cfg.relative_attention_buckets_num}")
            elif not cfg.relative_attention_max_distance > cfg.relative_attention_buckets_num // 2:
                p.append(f"--relative_attention_max_distance {cfg.relative_attention_max_distance} must exceed the "
                         f"exact distances, half of --relative_attention_buckets_num "
                         f"({cfg.relative_attention_buckets_num // 2})")
        if cfg.mask == "causal_with_prefix" and cfg.target != "prefixlm":
            p.append(f"--mask causal_with_prefix reads segment 1 as the prefix of a prefixlm instance: use it with "
                     f"--target prefixlm, not {cfg.target}")
        if not (isinstance(cfg.feedforward_size, int) and cfg.feedforward_size > 0):
            p.append(f"feedforward_size must be a positive integer, got {cfg.feedforward_size!r}")
        if not cfg.factorized_embedding_parameterization and cfg.emb_size != cfg.hidden_size:
            p.append(f"emb_size {cfg.emb_size} differs from hidden_size {cfg.hidden_size}: use "
                     "--factorized_embedding_parameterization or make them equal")
        return p


# -- recurrent encoders ---------------------------------------------------------------------------
# Sequences are right-padded: the real tokens of row b are positions [0, n_b) with n_b = #(seg > 0).
# Packing makes every direction skip the padding, so a row's outputs do not depend on how much
# padding follows it, and a backward direction starts at the row's last real token.

def real_lengths(seg: torch.Tensor) -> torch.Tensor:
    return (seg > 0).sum(1).clamp(min=1)


def run_packed(rnn: nn.RNNBase, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Run `rnn` (batch_first) over the first lengths[b] steps of each row; zeros beyond them."""
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
    out, _ = rnn(packed)
    out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
    return out


def reverse_index(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """[B, width] gather index that reverses the first lengths[b] positions of each row and leaves
    the padding in place (its own inverse)."""
    pos = torch.arange(width, device=lengths.device).expand(len(lengths), width)
    n = lengths[:, None]
    return torch.where(pos < n, n - 1 - pos, pos)


def gather_time(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return x.gather(1, index[:, :, None].expand(-1, -1, x.shape[2]))


RNN_CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


def _cell(kind: str, input_size: int, hidden: int, cfg: ModelConfig, bidirectional: bool = False):
    return RNN_CELLS[kind](input_size, hidden, num_layers=cfg.layers_num, batch_first=True,
                           dropout=cfg.dropout if cfg.layers_num > 1 else 0.0,
                           bidirectional=bidirectional)


@register(ENCODERS, "rnn")
class RnnEncoder(Encoder):
    """One PyTorch RNN stack (`encoder.rnn.*`); --bidirectional gives each direction H/2 units
    and concatenates them at every layer (keys with `_reverse`). Dropout on the outputs."""
    kind = "rnn"

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        bi = cfg.bidirectional
        self.rnn = _cell(self.kind, cfg.emb_size, cfg.hidden_size // 2 if bi else cfg.hidden_size, cfg, bi)
        self.dropout = Dropout(cfg.dropout)

    def forward(self, emb: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        return self.dropout(run_packed(self.rnn, emb, real_lengths(seg)))

    @classmethod
    def direction(cls, cfg):
        return "bidirectional" if cfg.bidirectional else "causal"

    @classmethod
    def problems(cls, cfg):
        if cfg.bidirectional and cfg.hidden_size % 2:
            return [f"--bidirectional splits hidden_size between two directions: it must be even, "
                    f"got {cfg.hidden_size}"]
        return []


@register(ENCODERS, "birnn")
class BiRnnEncoder(Encoder):
    """Two independent stacks of H/2 units (`rnn_forward`, `rnn_backward`); the backward stack
    reads each row reversed from its last real token. Output [forward half, backward half]; the
    halves never mix, so position t of the forward half sees only tokens <= t and of the backward
    half only tokens >= t (what the bilm target needs)."""
    kind = "rnn"

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.rnn_forward = _cell(self.kind, cfg.emb_size, cfg.hidden_size // 2, cfg)
        self.rnn_backward = _cell(self.kind, cfg.emb_size, cfg.hidden_size // 2, cfg)
        self.dropout = Dropout(cfg.dropout)

    def forward(self, emb: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        lengths = real_lengths(seg)
        fwd = run_packed(self.rnn_forward, emb, lengths)
        rev = reverse_index(lengths, emb.shape[1])
        bwd = gather_time(run_packed(self.rnn_backward, gather_time(emb, rev), lengths), rev)
        return torch.cat([self.dropout(fwd), self.dropout(bwd)], dim=-1)

    @classmethod
    def direction(cls, cfg):
        return "split"

    @classmethod
    def problems(cls, cfg):
        if cfg.hidden_size % 2:
            return [f"--encoder {cfg.encoder} gives each direction hidden_size / 2 units: hidden_size "
                    f"must be even, got {cfg.hidden_size}"]
        return []


@register(ENCODERS, "lstm")
class LstmEncoder(RnnEncoder):
    kind = "lstm"


@register(ENCODERS, "gru")
class GruEncoder(RnnEncoder):
    kind = "gru"


@register(ENCODERS, "bilstm")
class BiLstmEncoder(BiRnnEncoder):
    kind = "lstm"


@register(ENCODERS, "bigru")
class BiGruEncoder(BiRnnEncoder):
    kind = "gru"


# -- gated CNN ------------------------------------------------------------------------------------

@register(ENCODERS, "gatedcnn")
class GatedCnnEncoder(Encoder):
    """Causal gated convolutions (SPEC 3.3): every layer left-pads time with k-1 zero frames and
    computes (conv + b) * sigmoid(gate + b_g); a residual is added after every block_size layers
    past the first. The first layer's Conv2d(1 -> H, (k, E)) and the later Conv2d(H -> H, (k, 1))
    keep the reference shapes and are applied as 1-D convolutions over time."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        H, E, k = cfg.hidden_size, cfg.emb_size, cfg.kernel_size
        self.kernel_size, self.block_size = k, cfg.block_size
        self.conv_1 = nn.Conv2d(1, H, (k, E))
        self.gate_1 = nn.Conv2d(1, H, (k, E))
        self.conv_b1 = nn.Parameter(torch.zeros(1, H, 1, 1))
        self.gate_b1 = nn.Parameter(torch.zeros(1, H, 1, 1))
        n = cfg.layers_num - 1
        self.conv = nn.ModuleList([nn.Conv2d(H, H, (k, 1)) for _ in range(n)])
        self.gate = nn.ModuleList([nn.Conv2d(H, H, (k, 1)) for _ in range(n)])
        self.conv_b = nn.ParameterList([nn.Parameter(torch.zeros(1, H, 1, 1)) for _ in range(n)])
        self.gate_b = nn.ParameterList([nn.Parameter(torch.zeros(1, H, 1, 1)) for _ in range(n)])

    @staticmethod
    def _gated(x, conv, conv_b, gate, gate_b, weight_view):
        a = F.conv1d(x, weight_view(conv.weight), conv.bias) + conv_b.flatten()[:, None]
        g = F.conv1d(x, weight_view(gate.weight), gate.bias) + gate_b.flatten()[:, None]
        return a * torch.sigmoid(g)

    def forward(self, emb: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        pad = self.kernel_size - 1
        x = F.pad(emb.transpose(1, 2), (pad, 0))  # [B, E, k-1+L]
        first = lambda w: w.squeeze(1).transpose(1, 2)  # [H, 1, k, E] -> [H, E, k]  # noqa: E731
        h = self._gated(x, self.conv_1, self.conv_b1, self.gate_1, self.gate_b1, first)
        res = h
        later = lambda w: w.squeeze(-1)  # [H, H, k, 1] -> [H, H, k]  # noqa: E731
        for i in range(len(self.conv)):
            h = self._gated(F.pad(h, (pad, 0)), self.conv[i], self.conv_b[i], self.gate[i], self.gate_b[i], later)
            if (i + 1) % self.block_size == 0:
                h = h + res
                res = h
        return h.transpose(1, 2)  # [B, L, H]

    @classmethod
    def problems(cls, cfg):
        return [f"{name} must be a positive integer, got {getattr(cfg, name)!r}"
                for name in ("kernel_size", "block_size")
                if not (isinstance(getattr(cfg, name), int) and getattr(cfg, name) > 0)]
