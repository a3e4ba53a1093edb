import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT, layer_keys
from uer.config import ModelConfig
from uer.model import build_model, count_parameters
from uer.model.layers import (LayerNorm, MultiHeadedAttention, _CpuAttention, additive_mask, attention_with_dropout,
                              dropout, keep_mask, reference_attention)
from uer.model.targets import output_terms, token_terms, top1


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
    # the next call's mask is a fresh draw, independent of this one's
    both = ((a == 0) & (dropout(x.detach(), p, True) == 0)).float().mean().item()
    assert abs(both - p * p) < 3e-3
    assert dropout(x, p, False) is x
    assert dropout(x, 1.0, True).abs().sum() == 0


@pytest.mark.parametrize("p", [0.0, 0.1, 1.0])
@pytest.mark.parametrize("training", [True, False])
def test_dropout_with_a_residual_is_the_residual_plus_dropout(p, training):
    """dropout(x, p, training, residual) (one pass on CPU) equals residual + dropout(x, p, training)
    with the same mask; the residual's gradient passes through, x's is masked and scaled."""
    x, r = torch.rand(64, 48) + 1.0, torch.randn(64, 48)
    g = torch.randn(64, 48)
    torch.manual_seed(3)
    x1, r1 = x.clone().requires_grad_(), r.clone().requires_grad_()
    got = dropout(x1, p, training, r1)
    got.backward(g)
    torch.manual_seed(3)
    x2, r2 = x.clone().requires_grad_(), r.clone().requires_grad_()
    want = r2 + dropout(x2, p, training)
    want.backward(g)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(x1.grad, x2.grad)
    torch.testing.assert_close(r1.grad, g)
    if training and p == 0.1:
        assert 0 < (x1.grad == 0).float().mean() < 0.3  # the mask drops


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


@pytest.mark.parametrize("mask_kind", ["padding", "causal", "per_head", "none"])
@pytest.mark.parametrize("fused", [False, True])
def test_cpu_attention_equals_the_math_with_its_dropout_mask(mask_kind, fused):
    """The clone-free CPU attention (training, dropout on, fp32): outputs and gradients equal
    softmax(QK^T/sqrt(d) + mask), dropped with the very mask it draws, times V; q, k, v are strided
    views of one projection output, as in the model, passed apart or (fused) as that output."""
    B, Lk, h, d, p = 3, 7, 2, 4, 0.3
    Lq = Lk if fused else 5
    torch.manual_seed(0)
    x = torch.randn(B, Lk, 3, h, d, requires_grad=True)
    q, k, v = x[:, :Lq, 0], x[:, :, 1], x[:, :, 2]
    bool_mask = {"padding": torch.ones(B, 1, 1, Lk, dtype=torch.bool).index_fill_(3, torch.tensor([5, 6]), False),
                 "causal": None, "none": None,
                 "per_head": torch.rand(B, h, Lq, Lk, generator=torch.Generator().manual_seed(1)) > 0.3}[mask_kind]
    bool_mask = None if bool_mask is None else bool_mask.index_fill_(3, torch.tensor([0]), True)
    add = additive_mask(bool_mask, mask_kind == "causal", Lq, Lk, x.device)
    threshold = round(p * 2 ** 15)
    torch.manual_seed(5)
    out = _CpuAttention.apply(x, None, None, add, threshold) if fused else _CpuAttention.apply(q, k, v, add, threshold)
    torch.manual_seed(5)
    keep = keep_mask((h, B, Lq, Lk), threshold).float() / (1 - threshold / 2 ** 15)
    scores = q.transpose(1, 2) @ k.permute(0, 2, 3, 1) / math.sqrt(d)
    probs = (scores if add is None else scores + add).softmax(-1) * keep.transpose(0, 1)
    want = (probs @ v.transpose(1, 2)).transpose(1, 2).reshape(B, Lq, h * d)
    torch.testing.assert_close(out, want)
    grad = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad(out, x, grad)[0], torch.autograd.grad(want, x, grad)[0])
    assert 0 < (keep == 0).float().mean() < 0.6  # the mask drops


def _read_batch(B=4, L=16, V=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(5, V, (B, L), generator=g)
    seg = torch.ones(B, L, dtype=torch.long)
    seg[1, 10:] = 0
    seg[2, 5:] = 0
    src[seg == 0] = 0
    pos = torch.tensor([1, 3, 9, 17, 20, 34, 50, 52, 53])  # row 3 reads nothing but position 0
    return {"src": src, "seg": seg, "mlm_pos": pos, "mlm_tgt": torch.randint(0, V, (len(pos),), generator=g),
            "label": torch.tensor([0, 1, 1, 0])}


@pytest.mark.parametrize("target,kw", [("mlm", {}), ("bert", {}), ("mlm", {"layernorm_positioning": "pre"}),
                                       ("albert", {"parameter_sharing": True, "emb_size": 16,
                                                   "factorized_embedding_parameterization": True}),
                                       ("bert", {"layers_num": 1})])
def test_last_layer_runs_only_where_the_target_reads(target, kw):
    """mlm/bert/albert read the masked positions (and position 0): the encoder's last layer runs
    only there, and loss and gradients equal those of the whole last layer."""
    from uer.model.model import first_positions

    cfg = ModelConfig(**{"vocab_size": 100, "hidden_size": 32, "emb_size": 32, "feedforward_size": 64,
                         "heads_num": 4, "layers_num": 2, "target": target, **kw})
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    batch = _read_batch()
    last = model.encoder.transformer if cfg.parameter_sharing else model.encoder.transformer[-1]
    ffn_rows = []
    last.feed_forward.linear_1.register_forward_hook(lambda m, i, o: ffn_rows.append(i[0].numel() // i[0].shape[-1]))
    out = model(batch)
    read = {0, 16, 32, 48} | set(batch["mlm_pos"].tolist()) if target != "mlm" else set(batch["mlm_pos"].tolist())
    assert ffn_rows[-1] == len(read)

    hidden = model.encode(batch["src"], batch["seg"])  # every layer at every position
    whole = model.target(hidden.reshape(-1, cfg.hidden_size), {**batch, "first_pos": first_positions(batch)})
    assert ffn_rows[-1] == batch["src"].numel()
    assert out.keys() == whole.keys()
    for k in out:
        torch.testing.assert_close(out[k][0], whole[k][0])
        assert int(out[k][1]) == int(whole[k][1]) and int(out[k][2]) == int(whole[k][2])
    params = list(model.parameters())
    g_rows = torch.autograd.grad(sum(v[0] for v in out.values()), params)
    g_whole = torch.autograd.grad(sum(v[0] for v in whole.values()), params)
    for p, a, b in zip(params, g_rows, g_whole):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_read_plan_on_the_host_is_what_forward_uses():
    """The training loop plans on the host; the plan indexes exactly the positions the target
    reads, and forward with it equals forward planning for itself."""
    from uer.model.model import READ, read_plan

    cfg = ModelConfig(vocab_size=100, hidden_size=32, emb_size=32, feedforward_size=64, heads_num=4,
                      layers_num=2, target="bert")
    model = build_model(cfg).eval()
    batch = _read_batch()
    plan = read_plan(batch, model.target.reads)
    rows, query, keep = plan[READ + "rows"], plan[READ + "query"], plan[READ + "keep"]
    assert rows.tolist() == sorted({0, 16, 32, 48} | set(batch["mlm_pos"].tolist()))
    assert rows[plan[READ + "mlm_pos"]].tolist() == batch["mlm_pos"].tolist()
    assert rows[plan[READ + "first_pos"]].tolist() == [0, 16, 32, 48]
    assert query.shape == (4, 4)  # row 0 reads 0, 1, 3, 9: the most of any row
    assert query.reshape(-1)[keep].tolist() == rows.tolist()
    assert ((query // 16) == torch.arange(4)[:, None]).all()  # padding stays within its row
    prepared = model.prepare(batch)
    assert model.prepare(prepared) is prepared
    a, b = model(prepared), model(batch)
    for k in a:
        torch.testing.assert_close(a[k][0], b[k][0], rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_top1_is_argmax(dtype):
    """top1 (the label's score against the row's maximum in fp32) counts what argmax counts,
    -100 labels aside; in bf16 ties for the maximum are common and go to argmax's lowest index."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(300, 1000, generator=g).to(dtype)
    labels = torch.randint(0, 1000, (300,), generator=g)
    labels[:100] = logits[:100].float().argmax(-1)  # a third right
    labels[100:110] = -100
    if dtype == torch.bfloat16:  # rows whose maximum is tied, the label on the later index
        logits[110:120, 3] = logits[110:120, 7] = logits[110:120].amax(-1) + 1
        labels[110:120] = 7
    got = top1(logits, labels)
    assert torch.equal(got, logits.argmax(-1) == labels)
    assert int(got.sum()) == 100
    _, correct, count = token_terms(logits, labels)
    assert (int(correct), int(count)) == (100, 290)


@pytest.mark.parametrize("bias,frozen", [(True, False), (False, False), (True, True)])
def test_output_terms_equal_the_layer_then_token_terms(bias, frozen):
    """The fused output layer + cross-entropy (fp32 CPU) gives token_terms(layer(x), labels): the
    same loss, correct count and count, and the same gradients for x, weight and bias, -100 rows
    included."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(32, 500, bias=bias)
    layer.weight.requires_grad_(not frozen)  # frozen: autograd asks for no weight gradient
    x0 = torch.randn(64, 32) * 3
    labels = torch.randint(0, 500, (64,))
    labels[::5] = -100
    with torch.no_grad():
        labels[1::5] = layer(x0)[1::5].argmax(-1)  # some right
    grads = []
    for fused in (False, True):
        layer.zero_grad()
        x = x0.clone().requires_grad_()
        loss, correct, count = (output_terms if fused else lambda l, a, b: token_terms(l(a), b))(layer, x, labels)
        (loss * 0.37).backward()
        grads.append((loss, correct, count, x.grad, *(p.grad.clone() for p in layer.parameters() if p.requires_grad)))
    assert int(grads[0][1]) >= 12 and int(grads[0][2]) == 51
    for want, got in zip(*grads):
        torch.testing.assert_close(got, want)


def test_self_attention_with_one_qkv_gemm_equals_three():
    """In CPU training with dropout, self-attention projects Q, K and V with one GEMM: the same
    output and the same gradients (input and each of the three Linear layers) as the three
    projections it takes when the keys come from another tensor (here an equal copy)."""
    torch.manual_seed(0)
    attn = MultiHeadedAttention(16, 2, 0.3).train()
    x0 = torch.randn(3, 6, 16)
    mask = torch.ones(3, 1, 1, 6, dtype=torch.bool)
    mask[1, ..., 4:] = False
    results = []
    for fused in (True, False):
        attn.zero_grad()
        x = x0.clone().requires_grad_()
        torch.manual_seed(7)
        out = attn(x, x if fused else x * 1.0, mask)
        out.backward(torch.linspace(-1, 1, out.numel()).view_as(out))
        results.append([out, x.grad] + [p.grad.clone() for p in attn.parameters()])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want)
