"""BART (--target bart): the noising of its dataset, and the conversion to and from transformers'
BartForConditionalGeneration, checked on the logits both ways (1e-5)."""
import json

import numpy as np
import pytest
import torch

from uer.config import ModelConfig
from uer.convert import bart_config_to_hf, bart_from_hf, bart_recipe_from_hf, bart_to_hf, dir_cli
from uer.data.builders import BartBuilder, BuilderConfig
from uer.errors import UerError
from uer.model import build_model, model_problems
from uer.vocab import SpecialIds

transformers = pytest.importorskip("transformers")
SIZES = dict(vocab_size=97, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
             decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, max_position_embeddings=40)


def scramble(module: torch.nn.Module, seed: int) -> None:
    """Weights far from any initialisation (LayerNorm gains around 1), so that a wrong map, a
    missing bias or a transposed matrix shows in the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g) * 0.3
            p.copy_(1 + noise if name.endswith(("gamma", "layer_norm.weight", "layernorm_embedding.weight"))
                    else noise)
        for name, b in module.named_buffers():
            if name == "final_logits_bias":
                b.copy_(torch.randn(b.shape, generator=g))


def batches(V: int):
    g = torch.Generator().manual_seed(1)
    src = torch.randint(4, V, (2, 11), generator=g)
    seg = torch.ones_like(src)
    src[1, 7:], seg[1, 7:] = 1, 0  # the second source padded: its padding must stay invisible
    tgt = torch.randint(4, V, (2, 9), generator=g)
    return src, seg, tgt


def uer_logits(model, src, seg, tgt):
    with torch.no_grad():
        return model.eval().logits({"src": src, "seg": seg, "tgt_in": tgt, "tgt_seg": torch.ones_like(tgt)})["bart"]


def hf_logits(hf, src, seg, tgt):
    with torch.no_grad():
        return hf.eval()(input_ids=src, attention_mask=seg, decoder_input_ids=tgt).logits


def test_hf_bart_becomes_the_same_uer_model():
    hf = transformers.BartForConditionalGeneration(transformers.BartConfig(**SIZES))
    scramble(hf, 0)
    recipe = bart_recipe_from_hf(hf.config.to_dict())
    cfg = ModelConfig(vocab_size=SIZES["vocab_size"], **recipe)
    assert model_problems(cfg) == []
    model = build_model(cfg, init=False)
    model.load_state_dict(bart_from_hf(hf.state_dict(), recipe), strict=True)
    src, seg, tgt = batches(SIZES["vocab_size"])
    ours, theirs = uer_logits(model, src, seg, tgt), hf_logits(hf, src, seg, tgt)
    assert theirs.std() > 0.5  # logits of a size where a wrong weight would show
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    # one table for the encoder, the decoder and the output layer, as in BART
    assert model.embedding.word_embedding.weight is model.target.embedding.word_embedding.weight
    assert model.target.output_layer.weight is model.embedding.word_embedding.weight


def test_uer_bart_becomes_the_same_hf_model(tmp_path):
    with open("models/bart_base_config.json", encoding="utf-8") as f:
        recipe = {**json.load(f), "emb_size": 32, "hidden_size": 32, "feedforward_size": 48, "heads_num": 4,
                  "layers_num": 2, "max_seq_length": 40}
    cfg = ModelConfig(vocab_size=97, **recipe)
    model = build_model(cfg)
    scramble(model, 1)
    special = SpecialIds(pad=0, unk=1, cls=2, sep=3, mask=4)
    conf = bart_config_to_hf(cfg, special)
    hf = transformers.BartForConditionalGeneration(transformers.BartConfig(**conf))
    missing, unexpected = hf.load_state_dict(bart_to_hf(model.state_dict(), cfg), strict=False)
    assert unexpected == [] and missing == []
    src, seg, tgt = batches(97)
    ours, theirs = uer_logits(model, src, seg, tgt), hf_logits(hf, src, seg, tgt)
    assert theirs.std() > 0.5
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
    assert (conf["decoder_start_token_id"], conf["eos_token_id"], conf["pad_token_id"]) == (2, 3, 0)


def test_the_converter_scripts_round_trip(tmp_path, zh_vocab):
    """transformers directory -> uer model + recipe -> transformers directory: the same logits."""
    V = len(zh_vocab)
    hf = transformers.BartForConditionalGeneration(transformers.BartConfig(**{**SIZES, "vocab_size": V}))
    scramble(hf, 2)
    hf.save_pretrained(tmp_path / "hf")
    assert dir_cli("bart", "from_huggingface_to_uer", ["--input_dir", str(tmp_path / "hf"), "--output_model_path",
                                                       str(tmp_path / "m.bin")]) == 0
    assert dir_cli("bart", "from_uer_to_huggingface", [
        "--input_model_path", str(tmp_path / "m.bin"), "--config_path", str(tmp_path / "m_config.json"),
        "--vocab_path", zh_vocab.source, "--output_dir", str(tmp_path / "back")]) == 0
    back = transformers.BartForConditionalGeneration.from_pretrained(tmp_path / "back")
    src, seg, tgt = batches(V)
    torch.testing.assert_close(hf_logits(back, src, seg, tgt), hf_logits(hf, src, seg, tgt), atol=1e-6, rtol=0)
    assert back.config.decoder_start_token_id == zh_vocab.special_ids().cls


def test_what_uer_cannot_build_is_refused_in_one_error():
    conf = transformers.BartConfig(**{**SIZES, "decoder_layers": 3, "scale_embedding": True,
                                      "activation_function": "gelu_accurate"}).to_dict()
    with pytest.raises(UerError) as e:
        bart_recipe_from_hf(conf, "x/config.json")
    msg = str(e.value)
    assert "decoder_layers 3" in msg and "scale_embedding" in msg and "gelu_accurate" in msg
    cfg = ModelConfig(vocab_size=97, target="bart", tgt_embedding="word_pos")
    with pytest.raises(UerError, match="share_embedding is False"):
        bart_config_to_hf(cfg)


def test_share_embedding_needs_a_decoder_and_one_vocabulary():
    p = model_problems(ModelConfig(vocab_size=50, target="mlm", share_embedding=True,
                                   decoder_layernorm_positioning="post"))
    assert any("--share_embedding: --target mlm has no decoder" in x for x in p)
    assert any("--decoder_layernorm_positioning post: --target mlm has no decoder" in x for x in p)
    p = model_problems(ModelConfig(vocab_size=50, tgt_vocab_size=60, target="mt", share_embedding=True))
    assert any("one vocabulary" in x for x in p)


def noised(ratio=0.3, lam=3.0, seq_length=64, seed=0, permute=True):
    sp = SpecialIds(pad=0, unk=1, cls=2, sep=3, mask=4)
    b = BartBuilder(BuilderConfig(seq_length=seq_length, infilling_ratio=ratio, poisson_lambda=lam,
                                  sentence_permutation=permute), sp, 1000)
    return b, sp, np.random.default_rng(seed)


@pytest.mark.parametrize("n,ratio,lam", [(50, 0.3, 3.0), (62, 0.3, 1.0), (7, 0.5, 3.0), (40, 0.9, 0.5),
                                         (20, 0.0, 3.0)])
def test_text_infilling_hides_the_ratio_in_spans_of_one_mask_each(n, ratio, lam):
    b, sp, rng = noised(ratio, lam)
    ids = np.arange(100, 100 + n)
    for _ in range(200):
        out = b.infill(ids, rng).tolist()
        kept = [t for t in out if t != sp.mask]
        assert len(out) <= 62
        assert n - len(kept) == round(ratio * n)  # exactly that many tokens hidden
        assert kept == sorted(kept)  # the rest in order
        assert all(not (a == b_ == sp.mask) for a, b_ in zip(out, out[1:]))  # never two spans side by side
        if ratio == 0:
            assert out == ids.tolist()


def test_span_lengths_follow_the_poisson_mean():
    b, sp, rng = noised(0.3, 3.0)
    ids = np.arange(100, 600)
    spans, hidden = 0, 0
    for _ in range(100):
        out = b.infill(ids, rng).tolist()
        spans += out.count(sp.mask)
        hidden += 500 - (len(out) - out.count(sp.mask))
    assert 2.6 < hidden / spans < 3.4  # the mean span length is lambda (the last span of each run is cut)


def test_bart_instances_rebuild_the_original_run(tmp_path, zh_vocab):
    from test_targets import build, first_batch

    sp = zh_vocab.special_ids()
    chars = "一二三四五六七八九十百千万甲乙丙丁戊己庚辛壬癸天地人"
    sentences = [chars[k:k + 3] for k in range(0, 27, 3)]
    text = "\n".join(sentences[:7]) + "\n\n" + "\n".join(sentences[7:]) + "\n"
    ds = build(tmp_path, text, "bart", zh_vocab, seq_length=14, dup_factor=3)
    assert len(ds) == 9 and ds.header["dup_factor"] == 3  # 3 runs (4 + 3 and 2 sentences), 3 copies each
    runs = [sentences[:4], sentences[4:7], sentences[7:]]
    sources = set()
    for i in range(9):
        run = runs[i % 3]
        src, tgt = ds.ragged("tokens", i).tolist(), ds.ragged("tgt_tokens", i).tolist()
        original = [zh_vocab.w2i[c] for s in run for c in s]
        assert tgt == [sp.cls] + original + [sp.sep]
        body = src[1:-1]
        kept = [t for t in body if t != sp.mask]
        assert src[0] == sp.cls and src[-1] == sp.sep and set(kept) <= set(original)
        assert len(original) - len(kept) == round(0.3 * len(original))
        sources.add(tuple(src))
    assert len(sources) == 9  # every copy with noise of its own
    b = first_batch(ds, zh_vocab)  # the decoder reads [CLS] + the run and predicts the run + [SEP]
    rows = len(b["tgt_in"])
    assert b["tgt_in"][:, 0].tolist() == [sp.cls] * rows and b["dec_tgt"].tolist().count(sp.sep) == rows


def test_export_hf_writes_a_bart_directory_with_its_logits_checked(tmp_path, zh_vocab):
    """pretrain.py --export_hf's path: the model file -> a BartForConditionalGeneration directory
    with the tokenizer files, loaded back by transformers and measured against uer."""
    from uer.card import tokenizer_of
    from uer.hf import export
    from uer.train.checkpoint import save_model

    with open("models/bart_base_config.json", encoding="utf-8") as f:
        recipe = {**json.load(f), "emb_size": 32, "hidden_size": 32, "feedforward_size": 48, "heads_num": 4,
                  "layers_num": 2, "max_seq_length": 40}
    cfg = ModelConfig(vocab_size=len(zh_vocab), **recipe)
    model = build_model(cfg)
    scramble(model, 3)
    save_model(model, str(tmp_path / "m.bin"))
    diff = export(str(tmp_path / "m.bin"), str(tmp_path / "hf"), cfg, zh_vocab, tokenizer_of("bert"))
    assert diff is not None and diff < 1e-5
    back = transformers.BartForConditionalGeneration.from_pretrained(tmp_path / "hf")
    src, seg, tgt = batches(len(zh_vocab))
    torch.testing.assert_close(hf_logits(back, src, seg, tgt), uer_logits(model, src, seg, tgt), atol=1e-5, rtol=0)
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tok.convert_ids_to_tokens([back.config.decoder_start_token_id, back.config.eos_token_id]) == ["[CLS]",
                                                                                                         "[SEP]"]


def test_the_noise_options_are_for_their_targets_only(tmp_path):
    from conftest import BERT_CORPUS, ZH_VOCAB
    from uer.data.preprocess import preprocess_problems
    from uer.options import parse

    argv = ["--corpus_path", BERT_CORPUS, "--vocab_path", ZH_VOCAB, "--dataset_path", str(tmp_path / "d.pt")]
    args, explicit = parse("preprocess", argv + ["--target", "mlm", "--infilling_ratio", "0.2",
                                                 "--gap_sentence_ratio", "0.5"])
    p = preprocess_problems(args, frozenset(explicit))
    assert "--infilling_ratio is read by --target bart only, not mlm" in p
    assert "--gap_sentence_ratio is read by --target gsg only, not mlm" in p
    args, explicit = parse("preprocess", argv + ["--target", "bart", "--infilling_ratio", "1.5",
                                                 "--poisson_lambda", "0", "--sentence_permutation", "false"])
    p = preprocess_problems(args, frozenset(explicit))
    assert p == ["--infilling_ratio must be in [0, 1), got 1.5", "--poisson_lambda must be positive, got 0.0"]


def test_dynamic_noise_is_drawn_afresh_for_every_batch(tmp_path, zh_vocab):
    """--dynamic_masking: the dataset keeps each run as it is (and its sentences' lengths); every
    batch noises it anew, hiding the ratio, and the decoder's target is the run."""
    from test_targets import build

    from uer.data.loader import BatchLoader

    sp = zh_vocab.special_ids()
    chars = "一二三四五六七八九十百千万甲乙丙丁戊己庚辛壬癸天地人"
    sentences = [chars[k:k + 3] for k in range(0, 27, 3)]
    text = "\n".join(sentences[:7]) + "\n\n" + "\n".join(sentences[7:]) + "\n"
    ds = build(tmp_path, text, "bart", zh_vocab, seq_length=14, dynamic_masking=True, dup_factor=3)
    assert len(ds) == 3 and ds.header["dup_factor"] == 1  # the runs once: the copies are the epochs
    runs = [sentences[:4], sentences[4:7], sentences[7:]]
    assert [ds.ragged("sent_lengths", i).tolist() for i in range(3)] == [[3] * 4, [3] * 3, [3, 2]]
    loader = BatchLoader(ds, sp, batch_size=3)
    seen = set()
    for epoch in range(4):
        b = loader.batch(np.full(3, epoch), np.arange(3))
        width = b["tgt_in"].shape[1]
        for r, run in enumerate(runs):
            original = [zh_vocab.w2i[c] for s in run for c in s]
            src = [t for t in b["src"][r].tolist() if t != sp.pad]
            kept = [t for t in src[1:-1] if t != sp.mask]
            assert src[0] == sp.cls and src[-1] == sp.sep and set(kept) <= set(original)
            assert len(original) - len(kept) == round(0.3 * len(original))
            dec = [t for p, t in zip(b["dec_pos"].tolist(), b["dec_tgt"].tolist()) if p // width == r]
            assert dec == original + [sp.sep]
            seen.add((r, tuple(src)))
    assert len(seen) > 6  # the noise differs from batch to batch
