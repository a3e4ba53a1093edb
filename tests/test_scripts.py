"""The manual's scripts and the Python API (issue #6): generation with a KV cache, cloze test,
features, embeddings, model averaging, dynamic vocabulary adaptation and the word-based workflow
of the manual on a jieba-segmented shared corpus."""
import json
import os

import pytest
import torch

from conftest import BERT_CORPUS, ROOT, TINY, ZH_VOCAB, assert_clean_error, run_script
from uer.api import Pretrained
from uer.card import make_card, read_card, tokenizer_of
from uer.config import ModelConfig
from uer.generate import Generator, filter_logits
from uer.model import build_model
from uer.train.checkpoint import read_state_dict, save_model
from uer.vocab import Vocab


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY))
    return str(path)


def lm_model(**kw):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=21128, target="lm", mask="causal", **{**TINY, **kw})
    return build_model(cfg).eval()


@pytest.mark.parametrize("kw", [dict(layernorm_positioning="pre"), dict(), dict(parameter_sharing=True),
                                dict(embedding="word_sinusoidalpos")])
def test_kv_cache_gives_the_logits_of_a_full_recompute(kw):
    model = lm_model(**kw)
    prompt = [101, 800, 900, 1000]
    cached = Generator(model, use_cache=True)
    full = Generator(model, use_cache=False)
    assert cached.use_cache and not full.use_cache
    ids = torch.tensor([prompt])
    a, b = cached._start(ids), full._start(ids)
    torch.testing.assert_close(a, b)
    for nxt in (5, 77, 3000):
        ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
        torch.testing.assert_close(cached._step(ids), full._step(ids), rtol=1e-5, atol=1e-5)
    assert cached.generate(prompt, 20, top_k=1) == full.generate(prompt, 20, top_k=1)


def test_sampling_filters():
    logits = torch.tensor([3.0, 2.0, 1.0, 0.0])
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [False, False, True, True]
    p = torch.softmax(logits, -1)  # 0.64, 0.24, 0.09, 0.03
    kept = ~torch.isinf(filter_logits(logits, top_p=0.8))
    assert kept.tolist() == [True, True, False, False] and p[:1].sum() < 0.8 <= p[:2].sum()
    model = lm_model(encoder="gatedcnn", embedding="word")
    out = Generator(model).generate([101, 800], 12, top_k=5, generator=torch.Generator().manual_seed(0))
    assert len(out) == 12 and out[:2] == [101, 800]


@pytest.mark.e2e
def test_generate_and_cloze_scripts(tmp_path, recipe):
    save_model(lm_model(), str(tmp_path / "lm.bin"))
    (tmp_path / "prompts.txt").write_text("今天天气\n我们\n", encoding="utf-8")
    proc = run_script("scripts/generate_lm.py", "--load_model_path", str(tmp_path / "lm.bin"), "--vocab_path",
                      ZH_VOCAB, "--config_path", recipe, "--test_path", str(tmp_path / "prompts.txt"),
                      "--prediction_path", str(tmp_path / "out.txt"), "--seq_length", "16", "--top_k", "1")
    assert proc.returncode == 0, proc.stderr
    lines = (tmp_path / "out.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2 and lines[0].startswith("今天天气") and len(lines[0]) > len("今天天气")
    torch.manual_seed(0)
    mlm = build_model(ModelConfig(vocab_size=21128, target="mlm", **TINY))
    save_model(mlm, str(tmp_path / "mlm.bin"))
    proc = run_script("scripts/cloze_test.py", "--load_model_path", str(tmp_path / "mlm.bin"), "--vocab_path",
                      ZH_VOCAB, "--config_path", recipe, "--input_path", str(tmp_path / "prompts.txt"),
                      "--output_path", str(tmp_path / "cloze.txt"), "--topn", "3")
    assert proc.returncode == 0, proc.stderr
    rows = [line.split("\t") for line in (tmp_path / "cloze.txt").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 2 and all(len(r) == 3 and len(r[2].split()) == 3 and r[1] in r[0] for r in rows)
    # an lm model is not a masked LM: a clear error
    proc = run_script("scripts/cloze_test.py", "--load_model_path", str(tmp_path / "lm.bin"), "--vocab_path",
                      ZH_VOCAB, "--config_path", recipe, "--input_path", str(tmp_path / "prompts.txt"),
                      "--output_path", str(tmp_path / "c2.txt"))
    assert_clean_error(proc, "does not fit the model")


@pytest.mark.e2e
def test_features_embeddings_and_averaging(tmp_path, recipe):
    torch.manual_seed(0)
    a = build_model(ModelConfig(vocab_size=21128, target="mlm", **TINY))
    save_model(a, str(tmp_path / "a.bin"))
    (tmp_path / "in.txt").write_text("你好\n今天天气很好\n", encoding="utf-8")
    proc = run_script("scripts/extract_features.py", "--load_model_path", str(tmp_path / "a.bin"), "--vocab_path",
                      ZH_VOCAB, "--config_path", recipe, "--target", "mlm", "--input_path", str(tmp_path / "in.txt"),
                      "--output_path", str(tmp_path / "f.pt"))
    assert proc.returncode == 0, proc.stderr
    feats = torch.load(tmp_path / "f.pt")
    api = Pretrained.load(str(tmp_path / "a.bin"), config_path=recipe, vocab_path=ZH_VOCAB, target="mlm")
    hidden, seg = api.hidden_states(["你好", "今天天气很好"])
    assert feats["lengths"].tolist() == [4, 8]
    torch.testing.assert_close(feats["hidden"][1], hidden[1])
    torch.testing.assert_close(feats["hidden"][0, :4], hidden[0, :4])
    proc = run_script("scripts/extract_embeddings.py", "--load_model_path", str(tmp_path / "a.bin"), "--vocab_path",
                      ZH_VOCAB, "--word_embedding_path", str(tmp_path / "emb.txt"))
    assert proc.returncode == 0, proc.stderr
    lines = (tmp_path / "emb.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "21128 32" and len(lines) == 21129
    tok, *vec = lines[2000].split(" ")
    torch.testing.assert_close(torch.tensor([float(x) for x in vec]),
                               a.embedding.word_embedding.weight[1999].detach(), rtol=1e-5, atol=1e-6)
    cfg = ModelConfig(vocab_size=21128, target="mlm", **TINY)
    b = build_model(cfg)
    card = make_card(cfg, Vocab.load(ZH_VOCAB), tokenizer_of("bert"), 64)
    save_model(b, str(tmp_path / "b.bin"), card, step=7)
    proc = run_script("scripts/average_models.py", "--model_list_path", str(tmp_path / "b.bin"),
                      str(tmp_path / "a.bin"), "--output_model_path", str(tmp_path / "mean.bin"))
    assert proc.returncode == 0, proc.stderr
    mean = read_state_dict(str(tmp_path / "mean.bin"))
    for k, v in a.state_dict().items():
        torch.testing.assert_close(mean[k], (v + b.state_dict()[k]) / 2)
    # the first checkpoint's model card goes along, saying what was averaged
    averaged = read_card(str(tmp_path / "mean.bin"))
    assert averaged["model"] == card["model"] and averaged["vocab"] == card["vocab"] and "path" not in \
        json.loads((tmp_path / "mean.bin.json").read_text())
    assert averaged["averaged_from"] == [str(tmp_path / "b.bin"), str(tmp_path / "a.bin")]


@pytest.mark.e2e
def test_dynamic_vocab_adapter_keeps_rows_and_ties(tmp_path):
    old = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "c"]
    new = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "c", "x", "a", "y"]
    (tmp_path / "old.txt").write_text("\n".join(old) + "\n")
    (tmp_path / "new.txt").write_text("\n".join(new) + "\n")
    for target, extra in (("mlm", {}), ("lm", {"mask": "causal", "has_lmtarget_bias": True})):
        cfg = ModelConfig(vocab_size=len(old), target=target, tie_weights=True, **TINY, **extra)
        model = build_model(cfg)
        save_model(model, str(tmp_path / "old.bin"),
                   make_card(cfg, Vocab.load(str(tmp_path / "old.txt")), tokenizer_of("space"), 16))
        proc = run_script("scripts/dynamic_vocab_adapter.py", "--old_model_path", str(tmp_path / "old.bin"),
                          "--old_vocab_path", str(tmp_path / "old.txt"), "--new_vocab_path", str(tmp_path / "new.txt"),
                          "--new_model_path", str(tmp_path / "new.bin"))
        assert proc.returncode == 0, proc.stderr
        state = read_state_dict(str(tmp_path / "new.bin"))
        fresh = build_model(cfg.replace(vocab_size=len(new)))
        fresh.load_state_dict(state, strict=True)  # every vocabulary-sized tensor was adapted
        emb_old, emb_new = model.embedding.word_embedding.weight, state["embedding.word_embedding.weight"]
        assert torch.equal(emb_new[5], emb_old[7]) and torch.equal(emb_new[7], emb_old[5])
        assert torch.equal(emb_new[:5], emb_old[:5])
        out = "target.mlm_linear_2" if target == "mlm" else "target.output_layer"
        assert torch.equal(state[out + ".weight"], emb_new)  # the tie survives
        card = read_card(str(tmp_path / "new.bin"))  # the model card names the new vocabulary
        assert card["vocab"]["size"] == len(new) and card["vocab"]["path"] == str(tmp_path / "new.txt")
        assert card["model"]["target"] == target and card["adapted_from"] == str(tmp_path / "old.bin")
        assert Pretrained.load(str(tmp_path / "new.bin")).vocab.tokens == new  # loads from its card alone
        assert state[out + ".bias"].shape == (len(new),)


@pytest.mark.e2e
def test_word_based_workflow_of_the_manual(tmp_path):
    """jieba-segment a shared corpus (BERT layout), build a word vocabulary, train a small word model,
    adapt it to a vocabulary built on more text, then continue pre-training from the adapted model."""
    import jieba

    jieba.setLogLevel(60)
    with open(BERT_CORPUS, encoding="utf-8") as f:
        lines = [next(f) for _ in range(3000)]
    seg = ["" if not line.strip() else " ".join(w for w in jieba.cut(line.strip()) if w.strip()) for line in lines]
    half = seg[:1500] + [""]
    (tmp_path / "half.txt").write_text("\n".join(half) + "\n", encoding="utf-8")
    (tmp_path / "all.txt").write_text("\n".join(seg) + "\n", encoding="utf-8")
    recipe = tmp_path / "tiny.json"
    recipe.write_text(json.dumps(TINY))

    def ok(*args):
        proc = run_script(*args, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        return proc

    for name in ("half", "all"):
        ok(os.path.join(ROOT, "scripts/build_vocab.py"), "--corpus_path", f"{name}.txt", "--vocab_path",
           f"{name}_vocab.txt", "--tokenizer", "space", "--min_count", "2", "--workers_num", "2")
        ok(os.path.join(ROOT, "preprocess.py"), "--corpus_path", f"{name}.txt", "--vocab_path", f"{name}_vocab.txt",
           "--dataset_path", f"{name}.pt", "--target", "bert", "--tokenizer", "space", "--dynamic_masking",
           "--seq_length", "64")
    common = ["--config_path", str(recipe), "--embedding", "word_pos_seg", "--encoder", "transformer", "--mask",
              "fully_visible", "--target", "bert", "--total_steps", "10", "--report_steps", "5", "--batch_size", "8",
              "--learning_rate", "1e-3"]
    ok(os.path.join(ROOT, "pretrain.py"), "--dataset_path", "half.pt", "--vocab_path", "half_vocab.txt",
       "--output_model_path", "old.bin", *common)
    ok(os.path.join(ROOT, "scripts/dynamic_vocab_adapter.py"), "--old_model_path", "old.bin", "--old_vocab_path",
       "half_vocab.txt", "--new_vocab_path", "all_vocab.txt", "--new_model_path", "adapted.bin")
    proc = ok(os.path.join(ROOT, "pretrain.py"), "--dataset_path", "all.pt", "--vocab_path", "all_vocab.txt",
              "--pretrained_model_path", "adapted.bin", "--output_model_path", "new.bin", *common)
    assert "steps|" in proc.stdout
    old_vocab = (tmp_path / "half_vocab.txt").read_text(encoding="utf-8").split("\n")
    new_vocab = (tmp_path / "all_vocab.txt").read_text(encoding="utf-8").split("\n")
    word = next(w for w in old_vocab[200:] if w in new_vocab)
    old_state, adapted = read_state_dict(str(tmp_path / "old.bin")), read_state_dict(str(tmp_path / "adapted.bin"))
    assert len(new_vocab) > len(old_vocab)
    assert torch.equal(adapted["embedding.word_embedding.weight"][new_vocab.index(word)],
                       old_state["embedding.word_embedding.weight"][old_vocab.index(word)])


@pytest.mark.e2e
def test_the_quickstart_s_python_snippets_run():
    """scripts/quickstart.sh (the README's first command) asks Python questions with `python3 -c`:
    each runs against this tree (a moved function broke one once, with no test failing)."""
    import re
    import shlex

    with open(os.path.join(ROOT, "scripts", "quickstart.sh"), encoding="utf-8") as f:
        snippets = [shlex.split(m.group(0))[2] for m in re.finditer(r'python3 -c "[^"]*"', f.read())]
    assert snippets
    for code in snippets:
        proc = run_script("-c", code)
        assert proc.returncode == 0, (code, proc.stderr)
