"""HuggingFace parity (issue #6): small randomly initialised transformers models converted by the
scripts, both directions, give the same logits as transformers. Nothing is downloaded."""
import json

import pytest
import torch
import transformers  # a test dependency (pyproject [test]): parity must run, never skip

from conftest import assert_clean_error, perturb, run_script
from uer.config import ModelConfig
from uer.model import build_model
from uer.train.checkpoint import load_model, save_model

pytestmark = pytest.mark.e2e  # every test here runs uer in child processes

V, H, L, HEADS, FF = 120, 32, 2, 4, 64


def batch():
    g = torch.Generator().manual_seed(1)
    src = torch.randint(5, V, (2, 9), generator=g)
    seg = torch.tensor([[1] * 4 + [2] * 5, [1] * 6 + [0] * 3])
    src[1, 6:] = 0
    return src, seg


def convert(tmp_path, script, state, *extra):
    torch.save(state, tmp_path / "in.bin")
    proc = run_script(f"scripts/{script}.py", "--input_model_path", str(tmp_path / "in.bin"),
                      "--output_model_path", str(tmp_path / "out.bin"), *extra)
    assert proc.returncode == 0, proc.stderr
    return torch.load(tmp_path / "out.bin")


BERT_UER = dict(vocab_size=V, emb_size=H, hidden_size=H, feedforward_size=FF, heads_num=HEADS, layers_num=L,
                dropout=0.0, layernorm_eps=1e-12, hidden_act="gelu")


def hf_bert_config():
    return transformers.BertConfig(vocab_size=V, hidden_size=H, num_hidden_layers=L, num_attention_heads=HEADS,
                                   intermediate_size=FF, hidden_act="gelu", layer_norm_eps=1e-12)


@pytest.mark.parametrize("target", ["bert", "mlm"])
def test_bert_parity_both_directions(tmp_path, target):
    hf_cls = transformers.BertForPreTraining if target == "bert" else transformers.BertForMaskedLM
    hf = perturb(hf_cls(hf_bert_config()))
    state = convert(tmp_path, "convert_bert_from_huggingface_to_uer", hf.state_dict(), "--target", target)
    ours = build_model(ModelConfig(**BERT_UER, target=target)).eval()
    ours.load_state_dict(state, strict=True)
    src, seg = batch()
    with torch.no_grad():
        out = hf(input_ids=src, token_type_ids=(seg - 1).clamp(min=0), attention_mask=(seg > 0).long())
        mine = ours.logits({"src": src, "seg": seg})
    real = seg > 0
    hf_mlm = out.prediction_logits if target == "bert" else out.logits
    torch.testing.assert_close(mine["mlm"][real], hf_mlm[real], rtol=1e-4, atol=1e-4)
    if target == "bert":
        torch.testing.assert_close(mine["nsp"], out.seq_relationship_logits, rtol=1e-4, atol=1e-4)
    # and back: uer -> HF loads strictly and gives the same logits
    # transformers ties the decoder to the word embeddings, so the uer model is tied too
    ours2 = perturb(build_model(ModelConfig(**BERT_UER, target=target, tie_weights=True)), seed=3)
    hf2 = hf_cls(hf_bert_config()).eval()
    missing, unexpected = hf2.load_state_dict(convert(tmp_path, "convert_bert_from_uer_to_huggingface",
                                                      ours2.state_dict(), "--target", target), strict=False)
    assert not unexpected and all("position_ids" in k for k in missing)
    with torch.no_grad():
        out = hf2(input_ids=src, token_type_ids=(seg - 1).clamp(min=0), attention_mask=(seg > 0).long())
        mine = ours2.logits({"src": src, "seg": seg})
    hf_mlm = out.prediction_logits if target == "bert" else out.logits
    torch.testing.assert_close(mine["mlm"][real], hf_mlm[real], rtol=1e-4, atol=1e-4)


GPT2_UER = dict(vocab_size=V, emb_size=H, hidden_size=H, feedforward_size=4 * H, heads_num=HEADS, layers_num=L,
                dropout=0.0, layernorm_eps=1e-5, hidden_act="gelu_fast", embedding="word_pos",
                remove_embedding_layernorm=True, mask="causal", layernorm_positioning="pre", target="lm",
                tie_weights=True, max_seq_length=64)


def hf_gpt2():
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=V, n_embd=H, n_layer=L, n_head=HEADS, n_positions=64, bos_token_id=0, eos_token_id=0))


def test_gpt2_parity_both_directions(tmp_path):
    hf = perturb(hf_gpt2())
    hf.tie_weights()
    state = convert(tmp_path, "convert_gpt2_from_huggingface_to_uer", hf.state_dict(), "--max_seq_length", "64")
    ours = build_model(ModelConfig(**GPT2_UER)).eval()
    ours.load_state_dict(state, strict=True)
    src, _ = batch()
    seg = torch.ones_like(src)
    with torch.no_grad():
        want = hf(input_ids=src).logits
        got = ours.logits({"src": src, "seg": seg})["lm"]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    ours2 = perturb(build_model(ModelConfig(**GPT2_UER)), seed=4)
    hf2 = hf_gpt2().eval()
    missing, unexpected = hf2.load_state_dict(convert(tmp_path, "convert_gpt2_from_uer_to_huggingface",
                                                      ours2.state_dict()), strict=False)
    assert not unexpected and not [k for k in missing if not k.endswith(("attn.bias", "masked_bias"))]
    with torch.no_grad():
        torch.testing.assert_close(ours2.logits({"src": src, "seg": seg})["lm"], hf2(input_ids=src).logits,
                                   rtol=1e-4, atol=1e-4)


ALBERT_UER = dict(vocab_size=V, emb_size=16, hidden_size=H, feedforward_size=FF, heads_num=HEADS, layers_num=3,
                  dropout=0.0, layernorm_eps=1e-12, hidden_act="gelu", factorized_embedding_parameterization=True,
                  parameter_sharing=True, target="albert")


def hf_albert():
    return transformers.AlbertForPreTraining(transformers.AlbertConfig(
        vocab_size=V, embedding_size=16, hidden_size=H, num_hidden_layers=3, num_attention_heads=HEADS,
        intermediate_size=FF, hidden_act="gelu", layer_norm_eps=1e-12, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, classifier_dropout_prob=0.0))


def test_albert_parity_both_directions(tmp_path):
    hf = perturb(hf_albert())
    state = convert(tmp_path, "convert_albert_from_huggingface_to_uer", hf.state_dict())
    ours = build_model(ModelConfig(**ALBERT_UER)).eval()
    ours.load_state_dict(state, strict=True)
    src, seg = batch()
    real = seg > 0
    with torch.no_grad():
        out = hf(input_ids=src, token_type_ids=(seg - 1).clamp(min=0), attention_mask=(seg > 0).long())
        mine = ours.logits({"src": src, "seg": seg})
    torch.testing.assert_close(mine["mlm"][real], out.prediction_logits[real], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(mine["sop"], out.sop_logits, rtol=1e-4, atol=1e-4)
    ours2 = perturb(build_model(ModelConfig(**ALBERT_UER, tie_weights=True)), seed=5)
    hf2 = hf_albert().eval()
    missing, unexpected = hf2.load_state_dict(convert(tmp_path, "convert_albert_from_uer_to_huggingface",
                                                      ours2.state_dict()), strict=False)
    assert not unexpected and all("position_ids" in k for k in missing)
    with torch.no_grad():
        out = hf2(input_ids=src, token_type_ids=(seg - 1).clamp(min=0), attention_mask=(seg > 0).long())
        mine = ours2.logits({"src": src, "seg": seg})
    torch.testing.assert_close(mine["mlm"][real], out.prediction_logits[real], rtol=1e-4, atol=1e-4)


def test_converted_zoo_sized_model_loads_with_the_shipped_recipe(tmp_path):
    """A converted BERT in the reference layout loads strictly with models/bert_tiny_config.json."""
    hf = transformers.BertForPreTraining(transformers.BertConfig(
        vocab_size=21128, hidden_size=384, num_hidden_layers=3, num_attention_heads=6, intermediate_size=1536))
    convert(tmp_path, "convert_bert_from_huggingface_to_uer", hf.state_dict())
    with open("models/bert_tiny_config.json") as f:
        recipe = json.load(f)
    model = build_model(ModelConfig(vocab_size=21128, **recipe))
    load_model(model, str(tmp_path / "out.bin"))  # strict


def test_wrong_checkpoint_kind_is_a_clear_error(tmp_path):
    save_model(build_model(ModelConfig(**BERT_UER)), str(tmp_path / "uer.bin"))
    proc = run_script("scripts/convert_gpt2_from_huggingface_to_uer.py", "--input_model_path",
                      str(tmp_path / "uer.bin"), "--output_model_path", str(tmp_path / "x.bin"))
    assert_clean_error(proc, "no layer keys matching")
    proc = run_script("scripts/convert_bert_from_uer_to_huggingface.py", "--input_model_path",
                      str(tmp_path / "uer.bin"), "--output_model_path", str(tmp_path / "x.bin"), "--layers_num", "5")
    assert_clean_error(proc, "--layers_num 5, but the checkpoint has 2 layers")
