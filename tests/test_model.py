import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT, layer_keys, reference_attention
from uer.config import ModelConfig
from uer.model import build_model, count_parameters
from uer.model.layers import LayerNorm, MultiHeadedAttention


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


def test_self_attention_with_one_qkv_gemm_equals_three():
    """Self-attention projects Q, K and V with one GEMM: the same
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


@pytest.mark.e2e
def test_the_model_package_imports_no_data_training_or_option_module():
    """The layers of DESIGN.md: uer.model stands on config alone, and a checkpoint is read through
    uer.checkpoint, outside the training package (a fresh interpreter, as a user's script)."""
    import subprocess
    import sys

    code = ("import sys, torch\nimport uer.model, uer.checkpoint\nfrom uer.config import ModelConfig\n"
            "m = uer.model.build_model(ModelConfig(vocab_size=30, emb_size=8, hidden_size=8, feedforward_size=16,"
            " heads_num=2, layers_num=1))\nuer.checkpoint.save_model(m, sys.argv[1])\n"
            "uer.checkpoint.load_model(m, sys.argv[1])\n"
            "print(sorted({n.split('.')[1] for n in sys.modules if n.startswith('uer.')}))")
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        proc = subprocess.run([sys.executable, "-c", code, os.path.join(d, "m.bin")], capture_output=True,
                              text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["['checkpoint',", "'config',", "'errors',", "'model',", "'options',",
                                   "'registry',", "'utils']"], proc.stdout
