"""Generation from every model that generates (#28 item 6): lm (tests/test_scripts.py), prefixlm,
and the encoder-decoder models mt, t5 and bart, with their KV caches giving the logits of a full
recompute, which is the training forward; and generate_lm.py on each."""
import pytest
import torch

from conftest import EN_VOCAB, TINY, ZH_VOCAB, assert_clean_error, perturb, run_script
from uer.card import make_card, tokenizer_of
from uer.config import ModelConfig
from uer.generate import Generator, Seq2SeqGenerator
from uer.model import build_model
from uer.train.checkpoint import save_model
from uer.vocab import Vocab

SEQ2SEQ = dict(tgt_embedding="word_pos", decoder="transformer", mask="fully_visible")
BART = dict(SEQ2SEQ, embedding="word_pos", decoder_layernorm_positioning="post", share_embedding=True, tie_weights=True,
            has_lmtarget_bias=True)


def model_of(target: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    extra = {"prefixlm": dict(mask="causal_with_prefix"), "mt": dict(SEQ2SEQ, tgt_vocab_size=900),
             "t5": dict(SEQ2SEQ), "bart": BART}[target]
    model = build_model(ModelConfig(vocab_size=1200, target=target, **{**TINY, **extra, **kw})).eval()
    perturb(model, seed=1, scale=0.2)  # LayerNorms and biases off their defaults
    return model


@pytest.mark.parametrize("kw", [dict(), dict(layernorm_positioning="pre", feed_forward="gated", hidden_act="silu")])
def test_prefixlm_cache_gives_the_logits_of_a_full_recompute(kw):
    model = model_of("prefixlm", **kw)
    prompt = [101, 800, 900, 1000, 102]
    cached, full = Generator(model, use_cache=True), Generator(model, use_cache=False)
    assert cached.use_cache and not full.use_cache
    ids = torch.tensor([prompt])
    torch.testing.assert_close(cached._start(ids), full._start(ids))
    for nxt in (5, 77, 300):
        ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
        step = full._step(ids)
        torch.testing.assert_close(cached._step(ids), step, rtol=1e-5, atol=1e-5)
    # the full recompute is the training forward: prefix in segment 1, the rest in segment 2
    seg = torch.tensor([[1] * len(prompt) + [2] * 3])
    torch.testing.assert_close(step, model.target.output_layer(model.encode(ids, seg))[:, -1])
    out = cached.generate(prompt, 20, top_k=1)
    assert out == full.generate(prompt, 20, top_k=1) and out[:len(prompt)] == prompt and len(out) == 20


@pytest.mark.parametrize("target", ["mt", "t5", "bart"])
def test_encoder_decoder_cache_gives_the_logits_of_the_training_forward(target):
    model = model_of(target)
    source = [101, 800, 103, 1000, 102]
    cached, full = Seq2SeqGenerator(model), Seq2SeqGenerator(model, use_cache=False)
    assert cached.use_cache and not full.use_cache
    src = torch.tensor([source])
    for gen in (cached, full):
        gen.seg = torch.ones_like(src)
        gen.memory = model.encode(src, gen.seg)
    tgt = torch.tensor([[101]])
    first = cached._start(tgt)
    torch.testing.assert_close(first, full._start(tgt))
    for nxt in (5, 77, 300):
        tgt = torch.cat([tgt, torch.tensor([[nxt]])], 1)
        step = cached._step(tgt)
        torch.testing.assert_close(step, full._step(tgt), rtol=1e-5, atol=1e-5)
    # model.logits is the training forward (teacher forcing over tgt_in)
    batch = {"src": src, "seg": torch.ones_like(src), "tgt_in": tgt, "tgt_seg": torch.ones_like(tgt)}
    torch.testing.assert_close(step, model.logits(batch)[target][:, -1], rtol=1e-5, atol=1e-5)
    assert first.shape[-1] == (900 if target == "mt" else 1200)
    out = cached.generate(source, 16, start_id=101, top_k=1)
    assert out == full.generate(source, 16, start_id=101, top_k=1) and len(out) == 15
    sampled = cached.generate(source, 16, start_id=101, top_p=0.9, generator=torch.Generator().manual_seed(0))
    assert len(sampled) == 15 and max(sampled) < first.shape[-1]


@pytest.mark.e2e
def test_generate_script_on_every_generating_model(tmp_path):
    zh, en = Vocab.load(ZH_VOCAB), Vocab.load(EN_VOCAB)
    (tmp_path / "in.txt").write_text("今天天气\n我们[MASK]学习\n", encoding="utf-8")
    common = ["--test_path", str(tmp_path / "in.txt"), "--top_k", "1", "--seq_length", "24"]
    for target, extra in (("prefixlm", dict(mask="causal_with_prefix")),
                          ("mt", dict(SEQ2SEQ, tgt_vocab_size=len(en))), ("t5", SEQ2SEQ), ("gsg", SEQ2SEQ),
                          ("bart", BART)):
        torch.manual_seed(0)
        cfg = ModelConfig(vocab_size=len(zh), target=target, **{**TINY, **extra})
        path = str(tmp_path / f"{target}.bin")
        # the card names the model, its vocabularies and tokenizer: no other option needed
        save_model(build_model(cfg), path, make_card(cfg, zh, tokenizer_of("bert"), 64,
                                                     en if target == "mt" else None))
        out = tmp_path / f"{target}.txt"
        proc = run_script("scripts/generate_lm.py", "--load_model_path", path, "--prediction_path", str(out),
                          "--tgt_seq_length", "12", *common)
        assert proc.returncode == 0, proc.stderr
        lines = out.read_text(encoding="utf-8").splitlines()
        assert len(lines) == 2 and all(lines), lines
        if target == "mt":  # words of the target-side (English) vocabulary, none of the Chinese one
            assert not any("\u4e00" <= c <= "\u9fff" for c in "".join(lines)), lines
    proc = run_script("scripts/generate_lm.py", "--load_model_path", str(tmp_path / "mt.bin"), "--prediction_path",
                      str(tmp_path / "x.txt"), "--tgt_seq_length", "4000", *common)
    assert_clean_error(proc, "--tgt_seq_length 4000 is beyond the position table")


@pytest.mark.e2e
def test_generation_bench_runs(tmp_path):
    proc = run_script("bench/generation.py", "--recipe", "bert_tiny", "--source_length", "8", "--new_tokens", "4")
    assert proc.returncode == 0, proc.stderr
    assert [line.split()[0] for line in proc.stdout.splitlines()[2:]] == ["lm", "prefixlm", "mt", "t5"]
