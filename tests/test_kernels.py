"""The speed kernels (uer.kernels): each equals the stock op it replaces (uer.model.ops), and
use_kernels puts them in a model only where the switch and the run allow."""
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import TINY
from uer.config import ModelConfig
from uer.kernels import use_kernels
from uer.kernels.cpu import CpuAttention, CpuDropout, _CpuAttention, additive_mask, keep_mask
from uer.model import build_model, ops
from uer.model.ops import token_terms


def cpu_dropout(x, p, training, residual=None):
    return CpuDropout(p).train(training)(x, residual)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_cpu_dropout_rate_scale_and_gradient(p):
    dropout = cpu_dropout
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
    """CpuDropout with a residual (one pass) equals residual + CpuDropout(x) with the same mask;
    the residual's gradient passes through, x's is masked and scaled."""
    dropout = cpu_dropout
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


@pytest.mark.parametrize("mask_kind", ["padding", "causal", "per_head", "prefix", "none"])
def test_cpu_attention_equals_the_math_with_its_dropout_mask(mask_kind):
    """The clone-free CPU attention (training, dropout on, fp32): outputs and gradients equal
    softmax(QK^T/sqrt(d) + mask), dropped with the very mask it draws, times V; q, k, v are strided
    views of one projection output, as in the model."""
    B, Lk, h, d, p = 3, 7, 2, 4, 0.3
    Lq = 5
    torch.manual_seed(0)
    x = torch.randn(B, Lk, 3, h, d, requires_grad=True)
    q, k, v = x[:, :Lq, 0], x[:, :, 1], x[:, :, 2]
    bool_mask = {"padding": torch.ones(B, 1, 1, Lk, dtype=torch.bool).index_fill_(3, torch.tensor([5, 6]), False),
                 "causal": None, "none": None,
                 "per_head": torch.rand(B, h, Lq, Lk, generator=torch.Generator().manual_seed(1)) > 0.3,
                 # one [Lq, Lk] mask for every head, as --mask causal_with_prefix gives
                 "prefix": torch.rand(B, 1, Lq, Lk, generator=torch.Generator().manual_seed(2)) > 0.3}[mask_kind]
    bool_mask = None if bool_mask is None else bool_mask.index_fill_(3, torch.tensor([0]), True)
    add = additive_mask(bool_mask, mask_kind == "causal", Lq, Lk, x.device)
    threshold = round(p * 2 ** 15)
    torch.manual_seed(5)
    out = _CpuAttention.apply(q, k, v, add, threshold)
    torch.manual_seed(5)
    keep = keep_mask((h, B, Lq, Lk), threshold).float() / (1 - threshold / 2 ** 15)
    scores = q.transpose(1, 2) @ k.permute(0, 2, 3, 1) / math.sqrt(d)
    probs = (scores if add is None else scores + add).softmax(-1) * keep.transpose(0, 1)
    want = (probs @ v.transpose(1, 2)).transpose(1, 2).reshape(B, Lq, h * d)
    torch.testing.assert_close(out, want)
    grad = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad(out, x, grad)[0], torch.autograd.grad(want, x, grad)[0])
    assert 0 < (keep == 0).float().mean() < 0.6  # the mask drops


def test_stock_attention_module_is_sdpa():
    """ops.Attention on [B, L, heads, d] is SDPA on the head-major layout; with dropout on in
    training, CpuAttention keeps every row's weights within 1/(1 - p)."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 7, 3, 8) for _ in range(3))
    mask = torch.ones(2, 1, 1, 7, dtype=torch.bool)
    mask[1, ..., 5:] = False
    for causal, m in ((False, mask), (True, None)):
        want = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                              attn_mask=m, is_causal=causal).transpose(1, 2).reshape(2, 7, 24)
        torch.testing.assert_close(ops.Attention(0.5).eval()(q, k, v, m, causal), want)
        torch.testing.assert_close(CpuAttention(0.5).eval()(q, k, v, m, causal), want)  # no dropout: stock
    out = CpuAttention(0.5).train()(q, k, v, mask)
    assert out.shape == (2, 7, 24) and torch.isfinite(out).all()


def test_token_terms_counts_the_argmax():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(300, 1000, generator=g)
    labels = torch.randint(0, 1000, (300,), generator=g)
    labels[:100] = logits[:100].argmax(-1)
    labels[100:110] = -100
    _, correct, count = token_terms(logits, labels)
    assert (int(correct), int(count)) == (100, 290)


@pytest.mark.parametrize("kernels,compiled,device,want", [
    ("auto", False, "cpu", ["CpuAttention", "CpuDropout"]), ("stock", False, "cpu", []),
    ("auto", True, "cpu", []), ("auto", False, "cuda", [])])
def test_use_kernels_only_where_they_pay(kernels, compiled, device, want):
    """auto: the CPU kernels in eager training on a CPU (fp32 or autocast); stock, --compile or a
    GPU: the model as built. The state dict is the same either way, and so are the outputs in eval."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=60, target="mlm", **{**TINY, "dropout": 0.1}))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = {"src": torch.randint(5, 60, (2, 8)), "seg": torch.ones(2, 8, dtype=torch.long),
             "mlm_pos": torch.tensor([1, 9]), "mlm_tgt": torch.tensor([7, 8])}
    model.eval()
    stock = model(batch)["mlm"][0]
    assert use_kernels(model, kernels, torch.device(device), compiled) == want
    kinds = {type(m).__name__ for m in model.modules()}
    assert set(want) <= kinds and not ({"Dropout", "Attention"} & kinds if want else False)
    assert model.state_dict().keys() == before.keys()
    torch.testing.assert_close(model(batch)["mlm"][0], stock)
    with pytest.raises(ValueError, match="kernels must be one of"):
        use_kernels(model, "fast")


def test_cpu_attention_under_bf16_autocast_is_the_math_with_its_dropout_mask():
    """Under CPU bf16 autocast CpuAttention is softmax(QK^T/sqrt(d) + mask), dropped with the mask
    it draws, times V, in the autocast's precision."""
    B, L, h, d, p = 2, 6, 2, 4, 0.3
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, L, h, d) for _ in range(3))
    mask = torch.ones(B, 1, 1, L, dtype=torch.bool)
    mask[1, ..., 4:] = False
    threshold = round(p * 2 ** 15)
    torch.manual_seed(5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = CpuAttention(p).train()(q, k, v, mask)
    torch.manual_seed(5)
    keep = keep_mask((B, h, L, L), threshold) / (1 - threshold / 2 ** 15)
    scores = q.transpose(1, 2) @ k.permute(0, 2, 3, 1) / math.sqrt(d)
    probs = scores.masked_fill(~mask, float("-inf")).softmax(-1) * keep
    want = (probs @ v.transpose(1, 2)).transpose(1, 2).reshape(B, L, h * d)
    torch.testing.assert_close(out.float(), want, rtol=0.05, atol=0.05)
    assert 0 < (keep == 0).float().mean() < 0.6
