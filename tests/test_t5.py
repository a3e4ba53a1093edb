"""T5 as later trained (#28 item 5): the relative position bias, no attention scale, T5 v1.1's
gated-GELU feed-forward without biases and RMS LayerNorm, and the conversion to and from
transformers' T5ForConditionalGeneration, checked on the logits both ways (1e-5)."""
import json

import pytest
import torch

from uer.config import ModelConfig
from uer.convert import dir_cli, t5_config_to_hf, t5_from_hf, t5_recipe_from_hf, t5_to_hf
from uer.errors import UerError
from uer.generate import Seq2SeqGenerator
from uer.model import build_model, model_problems
from uer.model.layers import RelativePositionBias
from uer.vocab import SpecialIds

transformers = pytest.importorskip("transformers")
# 8 buckets reaching 20: sequences of 11 and 9 tokens have distances in the log-spaced buckets too
SIZES = dict(vocab_size=97, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4, feed_forward_proj="gated-gelu",
             relative_attention_num_buckets=8, relative_attention_max_distance=20, tie_word_embeddings=False)


def scramble(module: torch.nn.Module, seed: int) -> None:
    """Weights far from any initialisation (norm gains around 1), so that a wrong map shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g) * 0.3
            norm = name.endswith(("gamma", "layer_norm.weight"))
            p.copy_(1 + noise if norm else noise * (3 if "relative" in name else 1))


def batches(V: int):
    g = torch.Generator().manual_seed(1)
    src = torch.randint(4, V, (2, 11), generator=g)
    seg = torch.ones_like(src)
    src[1, 7:], seg[1, 7:] = 0, 0
    return src, seg, torch.randint(4, V, (2, 9), generator=g)


def uer_logits(model, src, seg, tgt):
    with torch.no_grad():
        return model.eval().logits({"src": src, "seg": seg, "tgt_in": tgt, "tgt_seg": torch.ones_like(tgt)})["t5"]


def hf_logits(hf, src, seg, tgt):
    with torch.no_grad():
        return hf.eval()(input_ids=src, attention_mask=seg, decoder_input_ids=tgt).logits


def uer_t5(V: int = 97, **kw) -> torch.nn.Module:
    with open("models/t5_v1_1_base_config.json", encoding="utf-8") as f:
        recipe = {**json.load(f), "emb_size": 32, "hidden_size": 32, "feedforward_size": 48, "heads_num": 4,
                  "layers_num": 2, "relative_attention_buckets_num": 8, "relative_attention_max_distance": 20, **kw}
    cfg = ModelConfig(vocab_size=V, **recipe)
    assert model_problems(cfg) == []
    return build_model(cfg)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_relative_position_buckets_are_t5s(bidirectional):
    from transformers.models.t5.modeling_t5 import T5Attention

    relative = torch.arange(-300, 300)[None, :]
    ours = RelativePositionBias(4, 32, 128, bidirectional).bucket(relative)
    theirs = T5Attention._relative_position_bucket(relative, bidirectional=bidirectional, num_buckets=32,
                                                   max_distance=128)
    assert torch.equal(ours, theirs)


def test_hf_t5_becomes_the_same_uer_model():
    hf = transformers.T5ForConditionalGeneration(transformers.T5Config(**SIZES))
    scramble(hf, 0)
    recipe = t5_recipe_from_hf(hf.config.to_dict())
    state = t5_from_hf(hf.state_dict(), recipe)
    cfg = ModelConfig(vocab_size=97, **recipe)
    assert model_problems(cfg) == []
    model = build_model(cfg, init=False)
    model.load_state_dict(state, strict=True)
    src, seg, tgt = batches(97)
    ours, theirs = uer_logits(model, src, seg, tgt), hf_logits(hf, src, seg, tgt)
    assert theirs.std() > 0.5
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    # a file whose lm_head is a table of its own keeps it apart
    own = {**hf.state_dict(), "lm_head.weight": torch.randn(97, 32)}
    recipe = t5_recipe_from_hf(hf.config.to_dict())
    state = t5_from_hf(own, recipe)
    assert recipe["tie_weights"] is False and torch.equal(state["target.output_layer.weight"], own["lm_head.weight"])


def test_uer_t5_becomes_the_same_hf_model():
    model = uer_t5()
    scramble(model, 1)
    cfg = model.cfg
    conf = t5_config_to_hf(cfg, SpecialIds(pad=0, unk=1, cls=2, sep=3, mask=4))
    hf = transformers.T5ForConditionalGeneration(transformers.T5Config(**conf))
    missing, unexpected = hf.load_state_dict(t5_to_hf(model.state_dict(), cfg), strict=False)
    assert missing == [] and unexpected == []
    src, seg, tgt = batches(97)
    ours, theirs = uer_logits(model, src, seg, tgt), hf_logits(hf, src, seg, tgt)
    assert theirs.std() > 0.5
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)


def test_the_converter_scripts_round_trip(tmp_path, zh_vocab):
    V = len(zh_vocab)
    hf = transformers.T5ForConditionalGeneration(transformers.T5Config(**{**SIZES, "vocab_size": V}))
    scramble(hf, 2)
    hf.save_pretrained(tmp_path / "hf")
    assert dir_cli("t5", "from_huggingface_to_uer", ["--input_dir", str(tmp_path / "hf"), "--output_model_path",
                                                     str(tmp_path / "m.bin")]) == 0
    assert dir_cli("t5", "from_uer_to_huggingface", [
        "--input_model_path", str(tmp_path / "m.bin"), "--config_path", str(tmp_path / "m_config.json"),
        "--vocab_path", zh_vocab.source, "--output_dir", str(tmp_path / "back")]) == 0
    back = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "back")
    src, seg, tgt = batches(V)
    # (within 1e-5 of the logits, |x| up to ~5: from_pretrained may take another attention
    # implementation than the constructor, and the thread count changes the order of the sums)
    torch.testing.assert_close(hf_logits(back, src, seg, tgt), hf_logits(hf, src, seg, tgt), atol=1e-5, rtol=1e-5)


def test_what_uer_cannot_build_is_refused_in_one_error():
    conf = transformers.T5Config(**{**SIZES, "d_kv": 16, "num_decoder_layers": 3, "tie_word_embeddings": True,
                                    "feed_forward_proj": "gated-gelu_10"}).to_dict()
    with pytest.raises(UerError) as e:
        t5_recipe_from_hf(conf, "x/config.json")
    msg = str(e.value)
    assert "d_kv 16 x num_heads 4" in msg and "num_decoder_layers 3" in msg and "d_model^-0.5" in msg
    assert "'gelu_10'" in msg
    with pytest.raises(UerError, match="relative_position_embedding is False"):
        t5_config_to_hf(ModelConfig(vocab_size=97, target="t5", tgt_embedding="word"))
    with pytest.raises(UerError, match="tanh approximation"):
        t5_config_to_hf(uer_t5(hidden_act="gelu").cfg)


def test_relative_positions_refuse_position_tables():
    p = model_problems(ModelConfig(vocab_size=50, embedding="word_pos", relative_position_embedding=True,
                                   target="t5", tgt_embedding="word_pos", decoder_final_layernorm=True))
    assert any("--embedding word_pos adds positions too" in x for x in p)
    assert any("--tgt_embedding word_pos adds positions" in x for x in p)
    p = model_problems(ModelConfig(vocab_size=50, target="mlm", decoder_final_layernorm=True))
    assert any("--decoder_final_layernorm: --target mlm has no decoder" in x for x in p)


def test_generation_cache_gives_the_logits_of_the_training_forward():
    """The position bias of each new decoder position, and of a causal encoder's (an lm), comes
    out the same with the KV cache as in a full recompute."""
    from uer.generate import Generator

    torch.manual_seed(0)
    model = uer_t5().eval()
    scramble(model, 4)
    source = [2, 40, 4, 50, 3]
    cached, full = Seq2SeqGenerator(model), Seq2SeqGenerator(model, use_cache=False)
    src = torch.tensor([source])
    for gen in (cached, full):
        gen.seg = torch.ones_like(src)
        gen.memory = model.encode(src, gen.seg)
    tgt = torch.tensor([[2]])
    torch.testing.assert_close(cached._start(tgt), full._start(tgt))
    for nxt in (5, 77, 30, 12, 60, 7):
        tgt = torch.cat([tgt, torch.tensor([[nxt]])], 1)
        step = cached._step(tgt)
        # fp32 rounding at logits up to ~5 (scrambled weights) reaches 1.8e-5 with one thread (the
        # sums' order follows the thread count); a wrong position bias is off by 0.1 or more
        torch.testing.assert_close(step, full._step(tgt), rtol=1e-5, atol=5e-5)
    batch = {"src": src, "seg": torch.ones_like(src), "tgt_in": tgt, "tgt_seg": torch.ones_like(tgt)}
    torch.testing.assert_close(step, model.logits(batch)["t5"][:, -1], rtol=1e-5, atol=5e-5)
    lm = build_model(ModelConfig(vocab_size=97, emb_size=32, hidden_size=32, feedforward_size=48, heads_num=4,
                                 layers_num=2, embedding="word", mask="causal", layernorm_positioning="pre",
                                 relative_position_embedding=True, relative_attention_buckets_num=8,
                                 relative_attention_max_distance=20, target="lm")).eval()
    scramble(lm, 5)
    ids = torch.tensor([[2, 10, 11, 12]])
    gen_c, gen_f = Generator(lm, use_cache=True), Generator(lm, use_cache=False)
    torch.testing.assert_close(gen_c._start(ids), gen_f._start(ids))
    for nxt in (5, 77, 30, 12, 60):
        ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
        torch.testing.assert_close(gen_c._step(ids), gen_f._step(ids), rtol=1e-5, atol=1e-5)


def test_export_hf_writes_a_t5_directory_with_its_logits_checked(tmp_path, zh_vocab):
    from uer.card import tokenizer_of
    from uer.hf import export
    from uer.train.checkpoint import save_model

    model = uer_t5(len(zh_vocab))
    scramble(model, 3)
    save_model(model, str(tmp_path / "m.bin"))
    diff = export(str(tmp_path / "m.bin"), str(tmp_path / "hf"), model.cfg, zh_vocab, tokenizer_of("bert"))
    assert diff is not None and diff < 1e-5
    back = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "hf")
    src, seg, tgt = batches(len(zh_vocab))
    torch.testing.assert_close(hf_logits(back, src, seg, tgt), uer_logits(model, src, seg, tgt), atol=1e-5, rtol=0)
    assert back.config.decoder_start_token_id == zh_vocab.special_ids().cls


@pytest.mark.parametrize("dynamic", [False, True])
def test_sentinels_replace_each_masked_run_and_the_decoder_writes_them(tmp_path, zh_vocab, dynamic):
    """--sentinel_tokens: the source with each run of masked positions replaced by the next
    sentinel ([unused1], [unused2], ...); the decoder reads [CLS] s0 run0 s1 run1 ... s_k and
    predicts it shifted, [SEP] last; the two together give back the instance."""
    from test_targets import build, first_batch

    from uer.data.masking import MaskingConfig
    from uer.data.preprocess import sentinel_ids

    sp = zh_vocab.special_ids()
    sentinels = sentinel_ids(zh_vocab)
    assert [zh_vocab.tokens[i] for i in sentinels[:3]] == ["[unused1]", "[unused2]", "[unused3]"]
    chars = "一二三四五六七八九十百千万甲乙丙丁戊己庚辛壬癸天地人东南西北春夏秋冬"
    text = "".join(chars[k:] + chars[:k] + "\n" for k in range(0, 30, 3))
    ds = build(tmp_path, text, "t5", zh_vocab, seq_length=40, tgt_seq_length=40, sentinel_tokens=True,
               masking=MaskingConfig(span_masking=True), dynamic_masking=dynamic, dup_factor=1)
    assert list(ds.header["sentinel_ids"]) == list(sentinels)
    b = first_batch(ds, zh_vocab)
    width = b["tgt_in"].shape[1]
    got = {}
    for p, t in zip(b["dec_pos"].tolist(), b["dec_tgt"].tolist()):
        got.setdefault(p // width, []).append(t)
    from uer.data.loader import builder_for

    builder, runs_seen = builder_for(ds, sp), 0
    for r in range(len(ds)):
        original = builder.instance_tokens(ds, [r])[0].tolist()
        src = [t for t in b["src"][r].tolist() if t != sp.pad]
        dec_in = [t for t in b["tgt_in"][r].tolist() if t != 0]
        assert dec_in[0] == sp.cls and got[r] == dec_in[1:] + [sp.sep]  # teacher forcing, [SEP] last
        body = dec_in[1:]
        used = [t for t in src if t in sentinels]
        assert used == list(sentinels[:len(used)])  # in turn, each once
        assert body.count(sentinels[len(used)]) == 1 and body[-1] == sentinels[len(used)]
        rebuilt, spans = [], {}
        for t in body:  # sentinel -> its run
            if t in sentinels:
                cur = spans.setdefault(t, [])
            else:
                cur.append(t)
        for t in src:
            rebuilt += spans[t] if t in sentinels else [t]
        assert rebuilt == original and all(spans[s] for s in used)
        runs_seen += len(used)
    assert runs_seen >= len(ds)  # every instance lost at least one run to a sentinel


def test_sentinels_are_for_t5_only(tmp_path):
    from conftest import DOC_CORPUS, ZH_VOCAB
    from uer.data.preprocess import preprocess_problems
    from uer.options import parse

    args, _ = parse("preprocess", ["--corpus_path", DOC_CORPUS, "--vocab_path", ZH_VOCAB, "--target", "mlm",
                                   "--sentinel_tokens", "--dataset_path", str(tmp_path / "d.pt")])
    assert "--sentinel_tokens is T5's span corruption: for --target t5, not mlm" in preprocess_problems(args)


def test_generation_input_takes_the_sentinels(zh_vocab):
    """generate_lm.py --sentinel_tokens: the line's k-th [MASK] is the k-th sentinel, as in the
    source a model pre-trained with --sentinel_tokens saw; without it, the mask token."""
    from uer.api import Pretrained
    from uer.data.preprocess import sentinel_ids
    from uer.tokenizers import build_tokenizer
    from uer.tools.generate_lm import source_ids

    m = Pretrained(uer_t5(len(zh_vocab)), None, zh_vocab, build_tokenizer("bert", zh_vocab))
    sentinels = sentinel_ids(zh_vocab)
    ids = source_ids(m, "今天[MASK]好[MASK]", sentinels)
    tok = [zh_vocab.w2i[c] for c in "今天好"]
    assert ids == tok[:2] + [sentinels[0], tok[2], sentinels[1]]
    assert source_ids(m, "今天[MASK]好[MASK]") == tok[:2] + [zh_vocab.special_ids().mask, tok[2],
                                                              zh_vocab.special_ids().mask]
