"""Modern transformer blocks (issue #29): RMSNorm, RoPE, gated feed-forward, grouped-query
attention, no-bias layers, the LLaMA-style and modern-encoder recipes, and parity with
transformers' LlamaForCausalLM both ways (logits, and greedy generation with the KV cache).
Nothing is downloaded: the transformers models are small and random."""
import json
import os

import pytest
import torch
import transformers  # a test dependency (pyproject [test]): parity must run, never skip

from conftest import ROOT, ZH_VOCAB, assert_clean_error, run_script
from conftest import perturb as shared_perturb
from uer.config import ModelConfig, build_model_config, load_recipe
from uer.convert import (llama_config_to_hf, llama_from_hf, llama_recipe_from_hf, llama_to_hf, read_hf_dir,
                         write_hf_dir)
from uer.errors import UerError
from uer.generate import Generator
from uer.model import build_model, count_parameters, model_problems
from uer.model.layers import LayerNorm, MultiHeadedAttention, RotaryEmbedding

V, H, L, HEADS, KV, FF = 96, 32, 2, 4, 2, 48
LLAMA = dict(vocab_size=V, emb_size=H, hidden_size=H, feedforward_size=FF, heads_num=HEADS, local_kv_heads_num=KV,
             layers_num=L, hidden_act="silu", dropout=0.0, max_seq_length=64, layernorm="rms", layernorm_eps=1e-6,
             feed_forward="gated", remove_transformer_bias=True, rotary_position_embedding=True, rope_base=500.0,
             embedding="word", remove_embedding_layernorm=True, mask="causal", layernorm_positioning="pre",
             target="lm")


def perturb(model, seed=0):
    return shared_perturb(model, seed, scale=0.1)


def hf_llama(tie=False, bias=False, seed=0):
    torch.manual_seed(seed)
    conf = transformers.LlamaConfig(vocab_size=V, hidden_size=H, intermediate_size=FF, num_hidden_layers=L,
                                    num_attention_heads=HEADS, num_key_value_heads=KV, max_position_embeddings=64,
                                    rms_norm_eps=1e-6, rope_theta=500.0, tie_word_embeddings=tie,
                                    attention_bias=bias, mlp_bias=bias, bos_token_id=1, eos_token_id=2,
                                    pad_token_id=0)
    return perturb(transformers.LlamaForCausalLM(conf), seed)


def ids(n=11, rows=2, seed=1):
    return torch.randint(3, V, (rows, n), generator=torch.Generator().manual_seed(seed))


def uer_logits(model, src):
    with torch.no_grad():
        return model.logits({"src": src, "seg": torch.ones_like(src)})["lm"]


# -- the blocks, each against its definition ----------------------------------------------------

def test_rmsnorm_is_llamas():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    x = torch.randn(3, 5, 16) * 3 + 1
    theirs = LlamaRMSNorm(16, eps=1e-5)
    ours = LayerNorm(16, 1e-5, "rms")
    with torch.no_grad():
        theirs.weight.uniform_(0.5, 1.5)
        ours.gamma.copy_(theirs.weight)
    assert [n for n, _ in ours.named_parameters()] == ["gamma"]  # no beta
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours(x), ours.gamma * x / (x.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt())


def test_rope_is_llamas_and_keeps_relative_positions():
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    d, base = 8, 500.0
    conf = transformers.LlamaConfig(hidden_size=4 * d, num_attention_heads=4, rope_theta=base)
    q, k = torch.randn(2, 7, 4, d), torch.randn(2, 7, 4, d)
    pos = torch.arange(3, 10)
    cos, sin = LlamaRotaryEmbedding(conf)(q, pos[None].expand(2, -1))
    want_q, want_k = apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
    rope = RotaryEmbedding(d, base)
    torch.testing.assert_close(rope(q, pos), want_q.transpose(1, 2), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(rope(k, pos[None].expand(2, -1)), want_k.transpose(1, 2), rtol=1e-6, atol=1e-6)
    # q_m . k_n depends on m - n only
    a = (rope(q, pos) * rope(k, pos)).sum(-1)
    b = (rope(q, pos + 100) * rope(k, pos + 100)).sum(-1)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kernel", [False, True])
def test_grouped_query_attention_is_attention_with_shared_heads(kernel):
    """K/V head j serves query heads j*g .. j*g+g-1: the same as full attention whose K and V
    weights repeat each head g times, with the stock op and with uer's CPU kernel (dropout on)."""
    from uer.kernels import use_kernels

    torch.manual_seed(0)
    gqa = MultiHeadedAttention(32, 8, 0.2 if kernel else 0.0, kv_heads=2, bias=False)
    full = MultiHeadedAttention(32, 8, 0.2 if kernel else 0.0, bias=False)
    assert gqa.linear_layers[1].weight.shape == (8, 32)  # 2 heads of 4
    with torch.no_grad():
        full.linear_layers[0].weight.copy_(gqa.linear_layers[0].weight)
        full.final_linear.weight.copy_(gqa.final_linear.weight)
        for j in (1, 2):
            w = gqa.linear_layers[j].weight.view(2, 4, 32)
            full.linear_layers[j].weight.copy_(w.repeat_interleave(4, 0).reshape(32, 32))
    if kernel:
        assert use_kernels(gqa) == use_kernels(full) == ["CpuAttention"]
    gqa.train(kernel), full.train(kernel)
    x = torch.randn(2, 9, 32)
    mask = torch.tensor([[1] * 9, [1] * 6 + [0] * 3], dtype=torch.bool)[:, None, None, :]
    for m, causal in ((mask, False), (None, True)):
        torch.manual_seed(5)
        a = gqa(x, x, m, causal)
        torch.manual_seed(5)
        b = full(x, x, m, causal)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_gated_feed_forward_and_no_bias_keys():
    model = build_model(ModelConfig(**LLAMA))
    keys = set(model.state_dict())
    layer = "encoder.transformer.0."
    assert {layer + f"feed_forward.{n}.weight" for n in ("linear_gate", "linear_1", "linear_2")} <= keys
    assert not [k for k in keys if k.endswith(".bias") or k.endswith(".beta")]
    assert model.state_dict()[layer + "self_attn.linear_layers.1.weight"].shape == (KV * H // HEADS, H)
    ff = model.encoder.transformer[0].feed_forward
    x = torch.randn(3, H)
    torch.testing.assert_close(ff(x), ff.linear_2(torch.nn.functional.silu(ff.linear_gate(x)) * ff.linear_1(x)))


def test_recipes_build_and_the_7b_shape_is_llama_2_7b():
    for name in ("llama_tiny", "modern_bert_tiny"):
        cfg = build_model_config(load_recipe(os.path.join(ROOT, "models", f"{name}_config.json")), {}, set(), 21128)
        assert model_problems(cfg) == []
    cfg = build_model_config(load_recipe(os.path.join(ROOT, "models", "llama_7b_config.json")), {}, set(), 32000)
    assert model_problems(cfg) == []
    with torch.device("meta"):  # built, not allocated
        model = build_model(cfg, init=False)
    assert count_parameters(model) == 6_738_415_616  # LLaMA-2-7B's count
    assert llama_config_to_hf(cfg)["intermediate_size"] == 11008


@pytest.mark.parametrize("mask", ["causal", "fully_visible"])
def test_modern_blocks_never_look_ahead_and_ignore_padding(mask):
    cfg = ModelConfig(**{**LLAMA, "mask": mask, "target": "lm" if mask == "causal" else "mlm"})
    torch.manual_seed(0)
    model = perturb(build_model(cfg))
    src = ids(10)
    seg = torch.ones_like(src)
    seg[1, 7:], src[1, 7:] = 0, 0
    with torch.no_grad():
        out = model.encode(src, seg)
        changed = src.clone()
        changed[:, 5:7] = 4
        after = model.encode(changed, seg)
        if mask == "causal":
            torch.testing.assert_close(after[:, :5], out[:, :5])
        else:
            assert not torch.allclose(after[:, :5], out[:, :5])
            pad = torch.zeros(2, 4, dtype=torch.long)
            longer = model.encode(torch.cat([src, pad], 1), torch.cat([seg, pad], 1))
            torch.testing.assert_close(longer[1, :7], out[1, :7], rtol=1e-5, atol=1e-5)


def test_modern_encoder_last_layer_at_the_read_rows_with_rope():
    """mlm reads the masked positions: the last layer runs there alone, with each query rotated by
    its own position, and loss and gradients equal the whole layer's."""
    from uer.model.model import first_positions

    cfg = build_model_config(load_recipe(os.path.join(ROOT, "models", "modern_bert_tiny_config.json")),
                             {"layers_num": 2, "dropout": 0.0, "local_kv_heads_num": 2}, {"layers_num", "dropout",
                                                                                        "local_kv_heads_num"}, V)
    torch.manual_seed(0)
    model = perturb(build_model(cfg))
    src = ids(16, rows=3)
    seg = torch.ones_like(src)
    seg[2, 10:], src[2, 10:] = 0, 0
    batch = {"src": src, "seg": seg, "mlm_pos": torch.tensor([3, 7, 16 + 15, 32 + 2, 32 + 9]),
             "mlm_tgt": torch.tensor([5, 6, 7, 8, 9])}
    out = model(batch)["mlm"]
    hidden = model.encode(src, seg)
    whole = model.target(hidden.reshape(-1, cfg.hidden_size), {**batch, "first_pos": first_positions(batch)})["mlm"]
    torch.testing.assert_close(out[0], whole[0])
    params = list(model.parameters())
    for a, b in zip(torch.autograd.grad(out[0], params), torch.autograd.grad(whole[0], params)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))


def test_save_reload_and_kv_cache_generation():
    torch.manual_seed(0)
    model = perturb(build_model(ModelConfig(**LLAMA)))
    prompt = ids(5, rows=1)[0].tolist()
    cached = Generator(model).generate(prompt, 25, top_k=1)
    assert Generator(model).use_cache
    assert cached == Generator(model, use_cache=False).generate(prompt, 25, top_k=1)
    assert len(cached) == 25


def test_every_problem_of_the_blocks_in_one_list():
    def problems(**kw):
        return model_problems(ModelConfig(**{**LLAMA, **kw}))

    p = problems(embedding="word_pos", local_kv_heads_num=3, hidden_size=36, emb_size=36, heads_num=6,
                 rope_base=0.5)
    text = " | ".join(p)
    assert "--embedding word_pos adds positions too: use --embedding word" in text
    assert "--local_kv_heads_num 3 must be a positive divisor of heads_num 6" not in text  # 3 divides 6
    assert "head size hidden_size / heads_num = 6" not in text
    assert "--rope_base must be greater than 1" in text
    p = " | ".join(problems(local_kv_heads_num=3, hidden_size=20, emb_size=20, heads_num=4))
    assert "--local_kv_heads_num 3 must be a positive divisor of heads_num 4" in p
    assert "head size hidden_size / heads_num = 5 must be even" in p
    p = " | ".join(problems(encoder="lstm", mask="fully_visible", target="mlm", embedding="word"))
    for flag in ("--rotary_position_embedding", "--remove_transformer_bias", "--feed_forward gated",
                 "--local_kv_heads_num"):
        assert f"{flag} applies to --encoder transformer only" in p, p
    p = " | ".join(problems(target="t5", mask="fully_visible", local_kv_heads_num=None))
    assert "--rotary_position_embedding applies to the encoder" in p
    assert problems(target="t5", mask="fully_visible", rotary_position_embedding=False) == []  # decoder blocks
    assert "layernorm must be one of torch, uer, rms" in " | ".join(problems(layernorm="rmsnorm"))


# -- LLaMA parity both ways ---------------------------------------------------------------------

@pytest.mark.parametrize("tie,bias", [(False, False), (True, False), (False, True)])
def test_llama_from_transformers(tmp_path, tie, bias):
    hf = hf_llama(tie, bias)
    hf.save_pretrained(tmp_path / "hf")
    conf, state = read_hf_dir(str(tmp_path / "hf"))
    recipe = llama_recipe_from_hf(conf)
    assert recipe["tie_weights"] == tie and recipe["local_kv_heads_num"] == KV and recipe["rope_base"] == 500.0
    ours = build_model(build_model_config(recipe, {}, set(), V), init=False).eval()
    ours.load_state_dict(llama_from_hf(state, recipe), strict=True)
    src = ids()
    with torch.no_grad():
        want = hf(input_ids=src).logits
    torch.testing.assert_close(uer_logits(ours, src), want, rtol=1e-5, atol=1e-5)
    prompt = src[:1, :4]
    with torch.no_grad():
        theirs = hf.generate(prompt, max_new_tokens=20, do_sample=False, min_new_tokens=20)[0].tolist()
    assert Generator(ours).generate(prompt[0].tolist(), 24, top_k=1) == theirs


@pytest.mark.parametrize("tie", [False, True])
def test_llama_to_transformers(tmp_path, tie):
    cfg = ModelConfig(**LLAMA, tie_weights=tie)
    torch.manual_seed(3)
    ours = perturb(build_model(cfg), seed=3)
    write_hf_dir(str(tmp_path / "hf"), llama_config_to_hf(cfg), llama_to_hf(ours.state_dict(), cfg))
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert hf.config.num_key_value_heads == KV and hf.config.tie_word_embeddings == tie
    src = ids(13)
    with torch.no_grad():
        want = hf(input_ids=src).logits
    torch.testing.assert_close(uer_logits(ours, src), want, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        theirs = hf.generate(src[:1, :3], max_new_tokens=20, do_sample=False, min_new_tokens=20)[0].tolist()
    assert Generator(ours).generate(src[0, :3].tolist(), 23, top_k=1) == theirs


def test_what_transformers_or_uer_cannot_represent_is_refused():
    conf = llama_config_to_hf(ModelConfig(**LLAMA))
    bad = {**conf, "rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0},
           "attention_bias": True, "hidden_act": "tanh", "head_dim": 16}
    with pytest.raises(UerError) as e:
        llama_recipe_from_hf(bad)
    for needle in ("RoPE scaling 'llama3'", "attention_bias True and mlp_bias False", "hidden_act 'tanh'",
                   "head_dim 16 x num_attention_heads 4 differs from hidden_size 32"):
        assert needle in str(e.value)
    with pytest.raises(UerError) as e:
        llama_config_to_hf(ModelConfig(**{**LLAMA, "layernorm": "torch", "embedding": "word_pos",
                                          "rotary_position_embedding": False}))
    for needle in ("layernorm is 'torch'", "embedding is 'word_pos'", "rotary_position_embedding is False"):
        assert needle in str(e.value)


@pytest.mark.e2e
def test_llama_scripts_round_trip(tmp_path):
    """transformers dir -> uer file + recipe -> transformers dir: the same tensors and config."""
    hf = hf_llama()
    hf.save_pretrained(tmp_path / "hf")
    proc = run_script("scripts/convert_llama_from_huggingface_to_uer.py", "--input_dir", str(tmp_path / "hf"),
                      "--output_model_path", str(tmp_path / "llama.bin"))
    assert proc.returncode == 0, proc.stderr
    recipe = tmp_path / "llama_config.json"
    assert json.loads(recipe.read_text())["local_kv_heads_num"] == KV
    proc = run_script("scripts/convert_llama_from_uer_to_huggingface.py", "--input_model_path",
                      str(tmp_path / "llama.bin"), "--config_path", str(recipe), "--output_dir", str(tmp_path / "back"))
    assert proc.returncode == 0, proc.stderr
    back = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "back")
    for k, v in hf.state_dict().items():
        torch.testing.assert_close(back.state_dict()[k], v, rtol=0, atol=0)
    proc = run_script("scripts/convert_llama_from_huggingface_to_uer.py", "--input_dir", str(tmp_path),
                      "--output_model_path", str(tmp_path / "x.bin"))
    assert_clean_error(proc, "has no config.json")
    proc = run_script("scripts/convert_llama_from_uer_to_huggingface.py", "--input_model_path",
                      str(tmp_path / "llama.bin"), "--config_path", os.path.join(ROOT, "models", "bert_tiny_config.json"),
                      "--output_dir", str(tmp_path / "no"))
    assert_clean_error(proc, "not a LLaMA-style model", "layernorm is 'torch'")


@pytest.mark.e2e
def test_pretrain_lists_every_problem_of_the_blocks(tmp_path, bert_dataset):
    """From the command line: the blocks' problems and the others, in one message, before training."""
    proc = run_script("pretrain.py", "--dataset_path", bert_dataset, "--vocab_path", ZH_VOCAB,
                      "--output_model_path", str(tmp_path / "m.bin"),
                      "--config_path", os.path.join(ROOT, "models", "llama_tiny_config.json"),
                      "--embedding", "word_pos", "--local_kv_heads_num", "4", "--rope_base", "1")
    assert_clean_error(proc, "--embedding word_pos adds positions too: use --embedding word",
                       "--local_kv_heads_num 4 must be a positive divisor of heads_num 6",
                       "--rope_base must be greater than 1", "built for target 'bert', not 'lm'")
    assert not (tmp_path / "m.bin").exists()
