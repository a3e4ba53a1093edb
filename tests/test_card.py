"""The model card (uer.card): the JSON beside every model file the trainer writes, read back by the
commands that load a model; disagreements in one error; model files without one load as before."""
import argparse
import json
import os
import shutil

import pytest
import torch

from conftest import EN_VOCAB, ZH_VOCAB
from uer.api import Pretrained
from uer.card import apply_defaults, card_path, make_card, read_card, tokenizer_of
from uer.config import ModelConfig, TrainConfig
from uer.data.dataset import Dataset
from uer.errors import ConfigError, UerError
from uer.train.trainer import train
from uer.vocab import Vocab

# fields away from their defaults: a model built without the card would not fit these weights
BODY = dict(emb_size=32, hidden_size=32, feedforward_size=64, heads_num=4, layers_num=2, dropout=0.0,
            layernorm_positioning="pre", hidden_act="relu", max_seq_length=64)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, eight):
    """4 steps on 8 instances, a checkpoint every 2 steps, the newest one kept."""
    out = tmp_path_factory.mktemp("card") / "m.bin"
    vocab = Vocab.load(ZH_VOCAB)
    mcfg = ModelConfig(vocab_size=len(vocab), target="mlm", **BODY)
    tcfg = TrainConfig(dataset_path=eight, output_model_path=str(out), total_steps=4, save_checkpoint_steps=2,
                       keep_checkpoints=1, batch_size=4, report_steps=2)
    card = make_card(mcfg, vocab, tokenizer_of("bert"), Dataset(eight).header["seq_length"])
    result = train(tcfg, mcfg, Dataset(eight), vocab.special_ids(), log=lambda *_: None, worker="none", card=card)
    return out, mcfg, result["model"].eval()


def test_every_model_file_the_trainer_writes_has_its_card(trained):
    out, mcfg, _ = trained
    assert sorted(os.listdir(out.parent)) == ["m.bin", "m.bin-4", "m.bin-4.json", "m.bin-4.state", "m.bin.json"]
    card = read_card(str(out))
    assert card["step"] == 4 and json.load(open(str(out) + "-4.json"))["step"] == 4
    assert card["model"]["layernorm_positioning"] == "pre" and card["model"]["target"] == "mlm"
    assert ModelConfig(vocab_size=card["vocab"]["size"], **card["model"]) == mcfg  # the resolved config
    vocab = Vocab.load(ZH_VOCAB)
    assert card["vocab"] == {"size": len(vocab), "fingerprint": vocab.fingerprint(), "path": ZH_VOCAB}
    assert card["tokenizer"] == {"name": "bert", "do_lower_case": True, "spm_model_path": None}
    assert card["seq_length"] == 64 and card["uer_version"] == __import__("uer").__version__


def test_a_model_loads_from_its_card_alone(trained):
    """No recipe, no model options, no vocabulary: the card says them all."""
    out, _, model = trained
    m = Pretrained.load(str(out))
    assert m.cfg.layernorm_positioning == "pre" and m.cfg.hidden_act == "relu" and m.vocab.source == ZH_VOCAB
    batch = m.encode(["今天天气很好", "你好"])
    torch.testing.assert_close(m.model.logits(batch)["mlm"], model.logits(batch)["mlm"], rtol=0, atol=0)
    # the head's options may change (here dropout); so may a recipe that agrees with the card
    assert Pretrained.load(str(out), dropout=0.3).cfg.dropout == 0.3


def test_every_disagreement_with_the_card_is_listed_in_one_error(trained, tmp_path):
    out, _, _ = trained
    with pytest.raises(ConfigError) as e:
        Pretrained.load(str(out), config_path="bert_tiny", vocab_path=EN_VOCAB, layernorm_positioning="post")
    text = str(e.value)
    assert f"the model card {out}.json and this command line disagree on 8 thing(s)" in text
    for line in ("emb_size: 32 in the card, 384 here", "layers_num: 2 in the card, 3 here",
                 "layernorm_positioning: 'pre' in the card, 'post' here", "hidden_act: 'relu' in the card, 'gelu' here",
                 "vocabulary: 21128 tokens"):
        assert line in text, text
    assert f"30522 tokens here ({EN_VOCAB}" in text
    assert "max_seq_length" not in text  # bert_tiny leaves it out: the card's holds


def test_a_model_without_a_card_loads_as_before(trained, tmp_path):
    out, mcfg, model = trained
    zoo = tmp_path / "zoo.bin"
    shutil.copy(out, zoo)
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps(BODY))
    m = Pretrained.load(str(zoo), config_path=str(recipe), vocab_path=ZH_VOCAB, target="mlm")
    batch = m.encode(["你好"])
    torch.testing.assert_close(m.model.logits(batch)["mlm"], model.logits(batch)["mlm"], rtol=0, atol=0)
    with pytest.raises(UerError, match="does not fit the model"):  # the default recipe: BERT-base
        Pretrained.load(str(zoo), vocab_path=ZH_VOCAB, target="mlm")


def test_a_bad_card_or_a_vanished_vocabulary_is_a_clear_error(trained, tmp_path):
    out, _, _ = trained
    copy = tmp_path / "m.bin"
    shutil.copy(out, copy)
    with open(card_path(str(copy)), "w") as f:
        f.write('{"model": 3}')
    with pytest.raises(UerError, match=f"model card {copy}.json: expected a JSON object with 'model'"):
        Pretrained.load(str(copy))
    vocab = tmp_path / "vocab.txt"
    shutil.copy(ZH_VOCAB, vocab)
    card = json.load(open(f"{out}.json"))
    card["vocab"]["path"] = str(vocab)
    with open(card_path(str(copy)), "w") as f:
        json.dump(card, f)
    assert Pretrained.load(str(copy)).vocab.source == str(vocab)
    os.remove(vocab)
    with pytest.raises(UerError, match=f"trained with the vocabulary {vocab}, which is gone: pass --vocab_path"):
        Pretrained.load(str(copy))
    assert Pretrained.load(str(copy), vocab_path=ZH_VOCAB).cfg.layers_num == 2


def test_the_card_answers_the_options_left_out(trained):
    out, _, _ = trained
    card = read_card(str(out))
    args = argparse.Namespace(vocab_path=None, spm_model_path=None, tokenizer="space", seq_length=128)
    apply_defaults(args, set(), card)
    assert (args.vocab_path, args.tokenizer, args.seq_length) == (ZH_VOCAB, "bert", 64)
    args = argparse.Namespace(vocab_path=EN_VOCAB, spm_model_path=None, tokenizer="space", seq_length=32)
    apply_defaults(args, {"vocab_path", "tokenizer", "seq_length"}, card)
    assert (args.vocab_path, args.tokenizer, args.seq_length) == (EN_VOCAB, "space", 32)
