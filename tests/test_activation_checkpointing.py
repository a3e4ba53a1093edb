"""--activation_checkpointing (uer.train.checkpointing): the same training, step for step, as
without it (dropout on, uer's CPU kernels in), with the state-dict keys unchanged."""
import pytest
import torch

from conftest import ZH_VOCAB
from uer.config import ModelConfig, TrainConfig
from uer.data.dataset import Dataset
from uer.model import build_model
from uer.train.checkpointing import apply_activation_checkpointing
from uer.train.trainer import train
from uer.vocab import Vocab

SMALL = dict(emb_size=32, hidden_size=32, feedforward_size=64, heads_num=4, layers_num=2, dropout=0.1)
MODELS = {
    "bert": {},
    "albert (one shared layer)": dict(emb_size=16, factorized_embedding_parameterization=True, parameter_sharing=True),
    "modern (pre-LN, RoPE, GQA, SwiGLU, RMSNorm)": dict(
        embedding="word", remove_embedding_layernorm=True, layernorm_positioning="pre", layernorm="rms",
        rotary_position_embedding=True, local_kv_heads_num=2, feed_forward="gated", hidden_act="silu",
        remove_transformer_bias=True),
}


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("kernels", ["auto", "stock"])
def test_checkpointed_training_equals_plain_training(tmp_path, eight, name, kernels):
    vocab = Vocab.load(ZH_VOCAB)
    mcfg = ModelConfig(vocab_size=len(vocab), target="mlm", **{**SMALL, **MODELS[name]})
    runs = {}
    for checkpointing in (False, True):
        tcfg = TrainConfig(dataset_path=eight, output_model_path=str(tmp_path / f"{checkpointing}" / "m.bin"),
                           total_steps=3, batch_size=4, report_steps=1, save_checkpoint_steps=100,
                           learning_rate=1e-3, kernels=kernels, activation_checkpointing=checkpointing)
        runs[checkpointing] = train(tcfg, mcfg, Dataset(eight), vocab.special_ids(), log=lambda *_: None,
                                    worker="none")
    plain, checkpointed = runs[False], runs[True]
    assert [h["loss"] for h in plain["history"]] == [h["loss"] for h in checkpointed["history"]]
    a, b = plain["model"].state_dict(), checkpointed["model"].state_dict()
    assert list(a) == list(b)  # the keys do not change
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=k)


def test_every_transformer_layer_is_checkpointed_once():
    cfg = ModelConfig(vocab_size=50, target="mt", tgt_vocab_size=40, **SMALL)
    model = build_model(cfg)
    assert apply_activation_checkpointing(model) == 2 + 2  # the encoder's layers and the decoder's
    assert apply_activation_checkpointing(model) == 0  # applied once
    shared = build_model(ModelConfig(vocab_size=50, target="mlm", **{**SMALL, "parameter_sharing": True}))
    assert apply_activation_checkpointing(shared) == 1


def test_the_backward_pass_runs_each_layer_again():
    """What checkpointing does: the layer's forward runs once more in the backward pass, from its input."""
    for checkpointing, calls_per_layer in ((False, 1), (True, 2)):
        torch.manual_seed(0)
        model = build_model(ModelConfig(vocab_size=50, target="mlm", **SMALL)).train()
        if checkpointing:
            apply_activation_checkpointing(model)
        calls = []
        for layer in model.encoder.transformer:
            layer.self_attn.register_forward_pre_hook(lambda *_: calls.append(1))
        src = torch.randint(5, 50, (2, 8))
        model.encode(src, torch.ones_like(src)).sum().backward()
        assert len(calls) == calls_per_layer * SMALL["layers_num"]
