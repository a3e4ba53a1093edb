import json
import os

import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT, layer_keys
from uer.config import ModelConfig
from uer.model import build_model, count_parameters
from uer.model.layers import LayerNorm, MultiHeadedAttention, attention_with_dropout, dropout, reference_attention


def recipe(name, **kw):
    with open(os.path.join(ROOT, "models", name), encoding="utf-8") as f:
        return ModelConfig(**{**json.load(f), **kw})


def spec_41_shapes(V, H, F_, L, target="bert"):
    """SPEC 4.1: the keys and shapes of a BERT checkpoint."""
    s = {"embedding.word_embedding.weight": [V, H], "embedding.position_embedding.weight": [512, H],
         "embedding.segment_embedding.weight": [3, H], "embedding.layer_norm.gamma": [H],
         "embedding.layer_norm.beta": [H]}
    for i in range(L):
        s.update(layer_keys(f"encoder.transformer.{i}.", H, F_))
    s.update({"target.mlm_linear_1.weight": [H, H], "target.mlm_linear_1.bias": [H],
              "target.layer_norm.gamma": [H], "target.layer_norm.beta": [H],
              "target.mlm_linear_2.weight": [V, H], "target.mlm_linear_2.bias": [V]})
    if target == "bert":
        s.update({"target.nsp_linear_1.weight": [H, H], "target.nsp_linear_1.bias": [H],
                  "target.nsp_linear_2.weight": [2, H], "target.nsp_linear_2.bias": [2]})
    return s


@pytest.mark.parametrize("name,H,F_,L", [("bert_tiny_config.json", 384, 1536, 3),
                                         ("bert_base_config.json", 768, 3072, 12)])
@pytest.mark.parametrize("target", ["bert", "mlm"])
def test_checkpoint_keys_and_shapes(name, H, F_, L, target):
    model = build_model(recipe(name, vocab_size=21128, target=target))
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    want = spec_41_shapes(21128, H, F_, L, target)
    assert list(got) == list(want) and got == want
    if name == "bert_base_config.json" and target == "bert":
        assert len(got) == 207
        tied = build_model(recipe(name, vocab_size=21128, tie_weights=True))
        assert round(count_parameters(tied) / 1e6, 1) == 102.9  # SPEC 4.1, tied weights once


def test_init_distribution():
    model = build_model(recipe("bert_tiny_config.json", vocab_size=5000))
    sd = model.state_dict()
    w = sd["encoder.transformer.0.feed_forward.linear_1.weight"]
    assert abs(w.std().item() - 0.02) < 0.001 and abs(w.mean().item()) < 0.001
    assert (sd["embedding.layer_norm.gamma"] == 1).all() and (sd["embedding.layer_norm.beta"] == 0).all()


def test_sdpa_matches_plain_softmax_attention():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 8) for _ in range(3))
    keep = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1]], dtype=torch.bool)[:, None, None, :]
    torch.testing.assert_close(F.scaled_dot_product_attention(q, k, v, attn_mask=keep),
                               reference_attention(q, k, v, keep))
    torch.testing.assert_close(F.scaled_dot_product_attention(q, k, v, is_causal=True),
                               reference_attention(q, k, v, is_causal=True))


def test_fully_visible_ignores_padding():
    cfg = ModelConfig(vocab_size=100, emb_size=32, hidden_size=32, feedforward_size=64, heads_num=4,
                      layers_num=2, dropout=0.0)
    model = build_model(cfg).eval()
    src = torch.randint(5, 100, (2, 9))
    seg = torch.ones(2, 9, dtype=torch.long)
    seg[:, 5:] = 2
    with torch.no_grad():
        short = model.encode(src, seg)
        longer = model.encode(torch.cat([src, torch.zeros(2, 6, dtype=torch.long)], 1),
                              torch.cat([seg, torch.zeros(2, 6, dtype=torch.long)], 1))
    torch.testing.assert_close(longer[:, :9], short)


def test_uer_layernorm_formula():
    ln = LayerNorm(8, eps=1e-6, kind="uer")
    x = torch.randn(3, 8)
    want = (x - x.mean(-1, keepdim=True)) / (x.std(-1, unbiased=True, keepdim=True) + 1e-6)
    torch.testing.assert_close(ln(x), want)
    torch.testing.assert_close(LayerNorm(8, 1e-6)(x), F.layer_norm(x, (8,), eps=1e-6))


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_cpu_dropout_rate_scale_and_gradient(p):
    torch.manual_seed(0)
    x = (torch.rand(1000, 1000) + 1.0).requires_grad_()
    y = dropout(x, p, True)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - p) < 3e-3  # 1M units: the standard error is 5e-4
    kept = y != 0
    scale = 1.0 / (1.0 - round(p * 2**15) / 2**15)
    torch.testing.assert_close(y[kept], x[kept] * scale)
    assert abs(y.mean().item() / x.mean().item() - 1.0) < 3e-3  # the expectation is kept
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() * scale)
    # a function of torch's generator; off in eval mode, and p = 1 drops everything
    torch.manual_seed(1)
    a = dropout(x.detach(), p, True)
    torch.manual_seed(1)
    assert torch.equal(a, dropout(x.detach(), p, True))
    assert dropout(x, p, False) is x
    assert dropout(x, 1.0, True).abs().sum() == 0


def test_attention_with_dropout_is_sdpa_math():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 8) for _ in range(3))
    mask = torch.ones(2, 1, 1, 7, dtype=torch.bool)
    mask[1, ..., 5:] = False
    for causal, m in ((False, mask), (True, None)):
        want = F.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=causal)
        torch.testing.assert_close(attention_with_dropout(q, k, v, m, causal, 0.0), want)
    # training mode on CPU takes that path: with dropout every row still sums to at most 1/(1-p)
    attn = MultiHeadedAttention(16, 2, 0.5).train()
    out = attn(torch.randn(2, 7, 16), torch.randn(2, 7, 16), mask)
    assert out.shape == (2, 7, 16) and torch.isfinite(out).all()
