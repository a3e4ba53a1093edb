import pytest
import torch

from uer.config import ModelConfig
from uer.errors import UerError
from uer.model import build_model
from uer.train.checkpoint import load_model, save_model

CFG = ModelConfig(vocab_size=120, emb_size=16, hidden_size=16, feedforward_size=32, heads_num=2,
                  layers_num=2, dropout=0.0)


def test_round_trip_and_module_prefix(tmp_path):
    a = build_model(CFG)
    path = tmp_path / "m.bin"
    save_model(a, str(path))
    b = build_model(CFG)
    load_model(b, str(path))
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(v, w), k
    prefixed = {"module." + k: v for k, v in torch.load(path).items()}
    torch.save(prefixed, tmp_path / "ddp.bin")
    c = build_model(CFG)
    load_model(c, str(tmp_path / "ddp.bin"))
    assert torch.equal(c.state_dict()["target.mlm_linear_2.bias"], a.state_dict()["target.mlm_linear_2.bias"])


def test_strict_loading_lists_every_mismatch(tmp_path):
    state = build_model(CFG).state_dict()
    del state["target.nsp_linear_2.bias"]
    state["encoder.extra.weight"] = torch.zeros(1)
    state["embedding.word_embedding.weight"] = torch.zeros(99, 16)
    torch.save(state, tmp_path / "bad.bin")
    with pytest.raises(UerError) as e:
        load_model(build_model(CFG), str(tmp_path / "bad.bin"))
    msg = str(e.value)
    assert "1 missing key(s)" in msg and "target.nsp_linear_2.bias" in msg
    assert "1 unexpected key(s)" in msg and "encoder.extra.weight" in msg
    assert "embedding.word_embedding.weight: checkpoint (99, 16), model (120, 16)" in msg
    report = load_model(build_model(CFG), str(tmp_path / "bad.bin"), strict=False)
    assert report["missing"] == ["target.nsp_linear_2.bias"]


def test_unreadable_checkpoint(tmp_path):
    (tmp_path / "junk.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(UerError, match="cannot read checkpoint"):
        load_model(build_model(CFG), str(tmp_path / "junk.bin"))
