"""Embeddings and encoders (issue #3): keys and shapes of SPEC 4, causality by perturbation,
padding invariance, parameter counts, save/reload, and validation of flag combinations."""
import json
import os

import pytest
import torch

from conftest import reference_attention, ROOT, ZH_VOCAB, assert_clean_error, layer_keys, run_script
from uer.config import ModelConfig
from uer.model import model_problems
from uer.model import build_model, count_parameters
from uer.model.layers import MultiHeadedAttention
from uer.train.checkpoint import load_model, save_model
from uer.train.precision import Precision

V = 21128
SMALL = dict(vocab_size=97, emb_size=16, hidden_size=16, feedforward_size=32, heads_num=2, layers_num=3,
             dropout=0.0, kernel_size=3, block_size=2)


def recipe(name, **kw):
    with open(os.path.join(ROOT, "models", name), encoding="utf-8") as f:
        return ModelConfig(**{**json.load(f), **kw})


def shapes(model):
    return {k: list(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("bias", [False, True])
def test_gpt2_keys_spec_42(bias):
    model = build_model(recipe("bert_base_config.json", vocab_size=V, embedding="word_pos",
                               remove_embedding_layernorm=True, mask="causal", layernorm_positioning="pre",
                               target="lm", tie_weights=True, has_lmtarget_bias=bias))
    want = {"embedding.word_embedding.weight": [V, 768], "embedding.position_embedding.weight": [512, 768]}
    for i in range(12):
        want.update(layer_keys(f"encoder.transformer.{i}.", 768, 3072))
    want.update({"encoder.layer_norm.gamma": [768], "encoder.layer_norm.beta": [768],
                 "target.output_layer.weight": [V, 768]})
    if bias:
        want["target.output_layer.bias"] = [V]
    assert shapes(model) == want and len(want) == 197 + bias
    sd = model.state_dict()  # both tied keys are written, with the same values
    assert torch.equal(sd["target.output_layer.weight"], sd["embedding.word_embedding.weight"])


def test_albert_keys_and_size_spec_43():
    model = build_model(recipe("albert_base_config.json", vocab_size=V, factorized_embedding_parameterization=True,
                               parameter_sharing=True, target="albert"))
    want = {"embedding.word_embedding.weight": [V, 128], "embedding.position_embedding.weight": [512, 128],
            "embedding.segment_embedding.weight": [3, 128], "embedding.layer_norm.gamma": [128],
            "embedding.layer_norm.beta": [128], "encoder.linear.weight": [768, 128], "encoder.linear.bias": [768]}
    want.update(layer_keys("encoder.transformer.", 768, 3072))
    want.update({"target.mlm_linear_1.weight": [128, 768], "target.mlm_linear_1.bias": [128],
                 "target.layer_norm.gamma": [128], "target.layer_norm.beta": [128],
                 "target.mlm_linear_2.weight": [V, 128], "target.mlm_linear_2.bias": [V],
                 "target.sop_linear_1.weight": [768, 768], "target.sop_linear_1.bias": [768],
                 "target.sop_linear_2.weight": [2, 768], "target.sop_linear_2.bias": [2]})
    assert shapes(model) == want and len(want) == 33
    assert round(count_parameters(model) / 1e6, 2) == 13.37


def test_parameter_sharing_has_one_layer():
    shared = build_model(ModelConfig(**{**SMALL, "layers_num": 6}, parameter_sharing=True))
    one = build_model(ModelConfig(**{**SMALL, "layers_num": 1}))
    assert count_parameters(shared) == count_parameters(one)
    assert not any(k.startswith("encoder.transformer.0.") for k in shared.state_dict())


@pytest.mark.parametrize("kind,gates", [("lstm", 4), ("gru", 3), ("rnn", 1)])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_rnn_keys_spec_44(kind, gates, bidirectional):
    model = build_model(recipe("rnn_config.json", vocab_size=V, embedding="word", encoder=kind,
                               bidirectional=bidirectional, target="mlm"))
    H = 256 if bidirectional else 512
    want = {"embedding.word_embedding.weight": [V, 512], "embedding.layer_norm.gamma": [512],
            "embedding.layer_norm.beta": [512]}
    for k in range(2):
        inp = 512 if k == 0 else (2 * H if bidirectional else H)
        for suffix in ([""] + (["_reverse"] if bidirectional else [])):
            want.update({f"encoder.rnn.weight_ih_l{k}{suffix}": [gates * H, inp],
                         f"encoder.rnn.weight_hh_l{k}{suffix}": [gates * H, H],
                         f"encoder.rnn.bias_ih_l{k}{suffix}": [gates * H],
                         f"encoder.rnn.bias_hh_l{k}{suffix}": [gates * H]})
    got = shapes(model)
    assert {k: v for k, v in got.items() if not k.startswith("target.")} == want


def test_bilstm_bilm_keys_spec_44():
    model = build_model(recipe("birnn_config.json", vocab_size=V, embedding="word", encoder="bilstm",
                               target="bilm"))
    got = shapes(model)
    for side in ("forward", "backward"):
        assert got[f"encoder.rnn_{side}.weight_ih_l0"] == [3072, 512]
        assert got[f"encoder.rnn_{side}.weight_hh_l0"] == [3072, 768]
        assert got[f"encoder.rnn_{side}.weight_ih_l1"] == [3072, 768]
    assert got["target.output_layer.weight"] == [V, 768] and got["target.output_layer.bias"] == [V]
    assert not any(".rnn." in k for k in got)


@pytest.mark.parametrize("name,H,L", [("gatedcnn_9_config.json", 807, 9), ("gatedcnn_13_config.json", 1268, 13)])
def test_gatedcnn_keys_spec_44(name, H, L):
    got = shapes(build_model(recipe(name, vocab_size=V, embedding="word", encoder="gatedcnn", target="lm")))
    want = {"encoder.conv_1.weight": [H, 1, 4, 128], "encoder.conv_1.bias": [H],
            "encoder.gate_1.weight": [H, 1, 4, 128], "encoder.gate_1.bias": [H],
            "encoder.conv_b1": [1, H, 1, 1], "encoder.gate_b1": [1, H, 1, 1]}
    for i in range(L - 1):
        want.update({f"encoder.conv.{i}.weight": [H, H, 4, 1], f"encoder.conv.{i}.bias": [H],
                     f"encoder.gate.{i}.weight": [H, H, 4, 1], f"encoder.gate.{i}.bias": [H],
                     f"encoder.conv_b.{i}": [1, H, 1, 1], f"encoder.gate_b.{i}": [1, H, 1, 1]})
    assert {k: v for k, v in got.items() if k.startswith("encoder.")} == want


def test_sinusoidal_positions_by_position_and_not_saved():
    model = build_model(ModelConfig(**SMALL, embedding="word_sinusoidalpos")).eval()
    assert "embedding.pe" not in model.state_dict()
    src = torch.randint(5, 97, (3, 6))
    emb = model.embedding(src, torch.ones_like(src))
    word = model.embedding.word_embedding(src) * 4.0  # sqrt(16)
    pe = emb - word
    torch.testing.assert_close(pe[0], pe[2])  # every row gets the encoding of its positions
    torch.testing.assert_close(pe[0, 0], torch.tensor([0.0, 1.0] * 8))  # position 0: sin 0, cos 0
    assert not torch.allclose(pe[0, 1], pe[0, 0])


def test_attention_module_matches_plain_softmax():
    torch.manual_seed(0)
    attn = MultiHeadedAttention(16, 4, 0.0).eval()
    x = torch.randn(2, 7, 16)
    keep = torch.tensor([[1] * 5 + [0] * 2, [1] * 7], dtype=torch.bool)[:, None, None, :]

    def by_hand(mask=None, causal=False):
        q, k, v = (lin(x).view(2, 7, 4, 4).transpose(1, 2) for lin in attn.linear_layers)
        out = reference_attention(q, k, v, mask, causal)
        return attn.final_linear(out.transpose(1, 2).reshape(2, 7, 16))

    torch.testing.assert_close(attn(x, x, keep), by_hand(keep))
    torch.testing.assert_close(attn(x, x, None, True), by_hand(causal=True))


# -- behaviour of every encoder ------------------------------------------------------------------

ENCODER_CASES = {
    "transformer causal": dict(encoder="transformer", mask="causal"),
    "transformer causal pre": dict(encoder="transformer", mask="causal", layernorm_positioning="pre"),
    "transformer fully_visible": dict(encoder="transformer"),
    "transformer fully_visible pre shared": dict(encoder="transformer", layernorm_positioning="pre",
                                                 parameter_sharing=True),
    "transformer factorized": dict(encoder="transformer", emb_size=8, factorized_embedding_parameterization=True),
    "rnn": dict(encoder="rnn"), "lstm": dict(encoder="lstm"), "gru": dict(encoder="gru"),
    "rnn bidirectional": dict(encoder="rnn", bidirectional=True),
    "lstm bidirectional": dict(encoder="lstm", bidirectional=True),
    "gru bidirectional": dict(encoder="gru", bidirectional=True),
    "birnn": dict(encoder="birnn"), "bilstm": dict(encoder="bilstm"), "bigru": dict(encoder="bigru"),
    "gatedcnn": dict(encoder="gatedcnn"),
}


def small_model(case, **kw):
    cfg = ModelConfig(**{**SMALL, "target": "mlm", **ENCODER_CASES[case], **kw})
    assert model_problems(cfg) == []
    torch.manual_seed(0)
    return build_model(cfg).eval()


def encode(model, src, seg):
    with torch.no_grad():
        return model.encode(src, seg)


@pytest.mark.parametrize("case", list(ENCODER_CASES))
def test_no_look_ahead_and_padding_invariance(case):
    model = small_model(case, embedding="word_pos")
    direction = type(model.encoder).direction(model.cfg)
    torch.manual_seed(1)
    src = torch.randint(5, 97, (2, 10))
    seg = torch.ones_like(src)
    seg[1, 7:] = 0  # row 1: 7 real tokens, then padding
    src[1, 7:] = 0
    out = encode(model, src, seg)
    t = 4
    changed = src.clone()
    changed[:, t + 1:7] = torch.randint(5, 97, (2, 2))
    after = encode(model, changed, seg)
    H = out.shape[-1]
    if direction == "causal":
        torch.testing.assert_close(after[:, :t + 1], out[:, :t + 1])
    elif direction == "split":  # the forward half never looks ahead, the backward half never back
        torch.testing.assert_close(after[:, :t + 1, :H // 2], out[:, :t + 1, :H // 2])
        changed = src.clone()
        changed[:, :t] = torch.randint(5, 97, (2, t))
        before = encode(model, changed, seg)
        torch.testing.assert_close(before[:, t:7, H // 2:], out[:, t:7, H // 2:])
        assert not torch.allclose(after[:, :t + 1], out[:, :t + 1])
    else:
        assert not torch.allclose(after[:, :t + 1], out[:, :t + 1])  # it does look ahead
    # results for a sequence do not change when more padding is appended
    pad = torch.zeros(2, 5, dtype=torch.long)
    longer = encode(model, torch.cat([src, pad], 1), torch.cat([seg, pad], 1))
    torch.testing.assert_close(longer[0, :10], out[0])
    torch.testing.assert_close(longer[1, :7], out[1, :7])
    alone = encode(model, src[1:, :7], seg[1:, :7])  # and the padded row equals the row alone
    torch.testing.assert_close(alone[0], out[1, :7])


EMBEDDINGS = ["word", "word_pos", "word_pos_seg", "word_sinusoidalpos"]


@pytest.mark.parametrize("embedding", EMBEDDINGS)
@pytest.mark.parametrize("remove_ln", [False, True])
@pytest.mark.parametrize("case", list(ENCODER_CASES))
def test_builds_trains_saves_and_reloads(tmp_path, embedding, remove_ln, case):
    model = small_model(case, embedding=embedding, remove_embedding_layernorm=remove_ln, dropout=0.1).train()
    has_ln = any(k.startswith("embedding.layer_norm") for k in model.state_dict())
    assert has_ln == (not remove_ln and embedding != "word_sinusoidalpos")
    src = torch.randint(5, 97, (3, 8))
    seg = torch.ones_like(src)
    seg[2, 5:] = 0
    batch = {"src": src, "seg": seg, "mlm_pos": torch.tensor([1, 9, 17]), "mlm_tgt": torch.tensor([7, 8, 9])}
    loss = model(batch)["mlm"][0]
    loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "mlm" not in n or "linear" in n)
    path = str(tmp_path / "m.bin")
    save_model(model, path)
    again = small_model(case, embedding=embedding, remove_embedding_layernorm=remove_ln)
    load_model(again, path)  # strict
    model.eval()
    torch.testing.assert_close(encode(again, src, seg), encode(model, src, seg))


@pytest.mark.parametrize("act", ["gelu", "gelu_fast", "relu"])
@pytest.mark.parametrize("ln", ["torch", "uer"])
def test_recipe_activation_and_layernorm(act, ln):
    model = small_model("transformer fully_visible", hidden_act=act, layernorm=ln, layernorm_eps=1e-5)
    layer = model.encoder.transformer[0]
    assert layer.layer_norm_1.kind == ln and layer.layer_norm_1.eps == 1e-5
    x = torch.linspace(-3, 3, 32).view(1, 2, 16)
    want = {"gelu": torch.nn.functional.gelu(x), "relu": torch.relu(x),
            "gelu_fast": torch.nn.functional.gelu(x, approximate="tanh")}[act]
    torch.testing.assert_close(layer.feed_forward.act(x), want)
    assert encode(model, torch.randint(5, 97, (1, 4)), torch.ones(1, 4, dtype=torch.long)).isfinite().all()


@pytest.mark.e2e
def test_invalid_combinations_are_listed_together(tmp_path, bert_dataset):
    """One clear message that lists every problem, before any training."""
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"emb_size": 33, "hidden_size": 64, "feedforward_size": 64, "heads_num": 4,
                               "layers_num": 1, "max_seq_length": 100}))
    proc = run_script("pretrain.py", "--dataset_path", bert_dataset, "--vocab_path", ZH_VOCAB,
                      "--output_model_path", str(tmp_path / "m.bin"), "--config_path", str(bad),
                      "--embedding", "word_sinusoidalpos")
    assert_clean_error(proc, "emb_size 33 differs from hidden_size 64", "needs an even emb_size, got 33",
                       "seq_length 128, beyond the position table")
    assert not (tmp_path / "m.bin").exists()
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps({"emb_size": 16, "hidden_size": 15, "layers_num": 1}))
    proc = run_script("pretrain.py", "--dataset_path", bert_dataset, "--vocab_path", ZH_VOCAB,
                      "--output_model_path", str(tmp_path / "m.bin"), "--config_path", str(odd),
                      "--encoder", "lstm", "--bidirectional", "--target", "mlm")
    assert_clean_error(proc, "it must be even, got 15",
                       "dataset", "built for target 'bert', not 'mlm'")


def test_combinations_rejected_by_validation():
    def problems(**kw):
        return " | ".join(model_problems(ModelConfig(**{**SMALL, **kw})))

    assert "sees the future" in problems(target="lm")  # fully_visible transformer
    assert "sees the future" in problems(target="lm", encoder="lstm", bidirectional=True)
    assert problems(target="lm", encoder="gatedcnn") == ""
    assert "needs two independent directions" in problems(target="bilm", encoder="lstm")
    assert "applies to --encoder rnn, lstm or gru" in problems(encoder="bilstm", bidirectional=True)
    assert "applies to --encoder transformer only" in problems(encoder="gru", parameter_sharing=True)
    assert "reads 16 features" in problems(target="lm", mask="causal", emb_size=8,
                                           factorized_embedding_parameterization=True, tie_weights=True)
    assert "has no output layer" in problems(target="cls", labels_num=2, tie_weights=True)
    assert "cannot use --factorized" in problems(target="bert", emb_size=8,
                                                 factorized_embedding_parameterization=True)


@pytest.mark.parametrize("target,tgt_vocab", [("mt", 5000), ("t5", None)])
@pytest.mark.parametrize("tgt_embedding", ["word_pos", "word_pos_seg", "word_sinusoidalpos"])
def test_decoder_keys_spec_44(target, tgt_vocab, tgt_embedding):
    model = build_model(recipe("bert_tiny_config.json", vocab_size=V, target=target, tgt_vocab_size=tgt_vocab,
                               tgt_embedding=tgt_embedding, has_lmtarget_bias=True))
    got = {k: v for k, v in shapes(model).items() if k.startswith("target.")}
    Vt, H = tgt_vocab or V, 384
    want = {"target.embedding.word_embedding.weight": [Vt, H]}
    if tgt_embedding != "word_sinusoidalpos":
        want.update({"target.embedding.position_embedding.weight": [512, H],
                     "target.embedding.layer_norm.gamma": [H], "target.embedding.layer_norm.beta": [H]})
    if tgt_embedding == "word_pos_seg":
        want["target.embedding.segment_embedding.weight"] = [3, H]
    for i in range(3):
        p = f"target.decoder.transformer_decoder.{i}."
        for attn in ("self_attn", "context_attn"):
            for j in range(3):
                want[f"{p}{attn}.linear_layers.{j}.weight"] = [H, H]
                want[f"{p}{attn}.linear_layers.{j}.bias"] = [H]
            want[f"{p}{attn}.final_linear.weight"] = [H, H]
            want[f"{p}{attn}.final_linear.bias"] = [H]
        for n in (1, 2, 3):
            want[f"{p}layer_norm_{n}.gamma"] = [H]
            want[f"{p}layer_norm_{n}.beta"] = [H]
        want.update({f"{p}feed_forward.linear_1.weight": [1536, H], f"{p}feed_forward.linear_1.bias": [1536],
                     f"{p}feed_forward.linear_2.weight": [H, 1536], f"{p}feed_forward.linear_2.bias": [H]})
    want.update({"target.output_layer.weight": [Vt, H], "target.output_layer.bias": [Vt]})
    assert got == want


def test_cls_keys_spec_44():
    got = shapes(build_model(recipe("bert_tiny_config.json", vocab_size=V, target="cls", labels_num=5)))
    assert {k: v for k, v in got.items() if k.startswith("target.")} == {
        "target.linear_1.weight": [384, 384], "target.linear_1.bias": [384],
        "target.linear_2.weight": [5, 384], "target.linear_2.bias": [5]}


def test_decoder_never_looks_ahead_and_ignores_source_padding():
    model = build_model(ModelConfig(**{**SMALL, "target": "t5"})).eval()
    torch.manual_seed(0)
    memory = torch.randn(2, 6, 16)
    src_seg = torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    tgt = torch.randint(5, 97, (2, 5))
    emb = model.target.embedding(tgt, torch.ones_like(tgt))
    with torch.no_grad():
        out = model.target.decoder(emb, memory, src_seg)
        changed = emb.clone()
        changed[:, 3:] += 1.0
        torch.testing.assert_close(model.target.decoder(changed, memory, src_seg)[:, :3], out[:, :3])
        noisy = memory.clone()
        noisy[1, 4:] = 100.0  # the source padding of row 1
        torch.testing.assert_close(model.target.decoder(emb, noisy, src_seg)[1], out[1])


def test_gatedcnn_matches_the_conv2d_formulation():
    """SPEC 3.3 computed literally with the Conv2d modules over the left-padded [L+k-1, E] image."""
    model = small_model("gatedcnn", layers_num=5, embedding="word")
    enc, k = model.encoder, 3
    torch.manual_seed(2)
    for p in (enc.conv_b1, enc.gate_b1, *enc.conv_b, *enc.gate_b):
        p.data.normal_()
    emb = torch.randn(2, 7, 16)
    x = torch.cat([torch.zeros(2, k - 1, 16), emb], 1).unsqueeze(1)  # [B, 1, L+k-1, E]
    h = (enc.conv_1(x) + enc.conv_b1) * torch.sigmoid(enc.gate_1(x) + enc.gate_b1)  # [B, H, L, 1]
    res = h
    for i in range(4):
        hp = torch.cat([torch.zeros(2, 16, k - 1, 1), h], 2)
        h = (enc.conv[i](hp) + enc.conv_b[i]) * torch.sigmoid(enc.gate[i](hp) + enc.gate_b[i])
        if (i + 1) % 2 == 0:
            h = h + res
            res = h
    with torch.no_grad():
        torch.testing.assert_close(enc(emb, torch.ones(2, 7)), h.squeeze(3).transpose(1, 2))


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("encoder", ["lstm", "bilstm", "gru"])
def test_recurrent_encoders_run_under_cpu_bf16_autocast(encoder, padded):
    """--bf16 on a CPU without bf16 RNN kernels (no AVX-512 BF16: oneDNN cannot create its bf16
    LSTM primitive, which torch uses when every row has the same length) runs the RNN in fp32;
    where the kernels exist, in bf16. Either way the output is the fp32 one to bf16 precision."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=50, emb_size=32, hidden_size=32, layers_num=2, dropout=0.0, embedding="word",
                      encoder=encoder, target="bilm" if encoder == "bilstm" else "lm")
    model = build_model(cfg)
    src = torch.randint(1, 50, (3, 9))
    seg = torch.ones_like(src)
    if padded:
        seg[1, 6:] = 0
    want = model.encoder(model.embedding(src, seg), seg)
    Precision(True, False, "O1", torch.device("cpu")).prepare(model)  # what --bf16 does to the model
    with torch.autocast("cpu", dtype=torch.bfloat16):  # training mode, with gradients: what --bf16 runs
        got = model.encoder(model.embedding(src, seg), seg)
    got.float().sum().backward()
    torch.testing.assert_close(got.float(), want, rtol=0.05, atol=0.05)
