"""transformers model directories (uer.hf): written from a uer model with its config.json and
tokenizer files, loaded by from_pretrained with uer's logits, read back to the same uer model; a
model transformers cannot represent is refused with the measured difference."""
import json
import os

import pytest
import torch
import transformers

from conftest import DOC_CORPUS, EN_VOCAB, SHARED, ZH_VOCAB, assert_clean_error, perturb, run_script
from uer.api import Pretrained
from uer.card import make_card, tokenizer_of
from uer.config import ModelConfig
from uer.errors import UerError
from uer.hf import export, hf_tokenizer, import_dir
from uer.model import build_model
from uer.tokenizers import build_tokenizer
from uer.train.checkpoint import save_model
from uer.vocab import Vocab

SMALL = dict(emb_size=32, hidden_size=32, feedforward_size=64, heads_num=4, layers_num=2, dropout=0.0,
             max_seq_length=64)
SYSTEMS = {  # name: (uer options, the Auto class from_pretrained is called on)
    "bert untied": (dict(target="bert", layernorm_eps=1e-12), "AutoModelForPreTraining"),
    "bert tied": (dict(target="bert", tie_weights=True, layernorm_eps=1e-12), "AutoModelForPreTraining"),
    "mlm (RoBERTa-style)": (dict(target="mlm"), "AutoModelForMaskedLM"),
    "gpt2": (dict(target="lm", embedding="word_pos", remove_embedding_layernorm=True, mask="causal",
                  layernorm_positioning="pre", hidden_act="gelu_fast", layernorm_eps=1e-5, tie_weights=True),
             "AutoModelForCausalLM"),
    "llama": (dict(target="lm", embedding="word", remove_embedding_layernorm=True, mask="causal",
                   layernorm_positioning="pre", layernorm="rms", feed_forward="gated", hidden_act="silu",
                   rotary_position_embedding=True, remove_transformer_bias=True, local_kv_heads_num=2),
              "AutoModelForCausalLM"),
    "albert": (dict(target="albert", emb_size=16, factorized_embedding_parameterization=True,
                    parameter_sharing=True, layernorm_eps=1e-12), "AutoModelForPreTraining"),
}
TERMS = {"bert": (("mlm", "prediction_logits"), ("nsp", "seq_relationship_logits")), "mlm": (("mlm", "logits"),),
         "lm": (("lm", "logits"),), "albert": (("mlm", "prediction_logits"), ("sop", "sop_logits"))}


def lines(path, n, column=None):
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            text = line.rstrip("\n").split("\t")[column] if column is not None else line.rstrip("\n")
            if text.strip():
                out.append(text)
            if len(out) == n:
                return out
    return out


def uer_model(tmp_path, options, seed=0, **extra):
    """A uer model file with random weights everywhere (LayerNorms and biases too) and its card."""
    vocab = Vocab.load(ZH_VOCAB)
    cfg = ModelConfig(vocab_size=len(vocab), **{**SMALL, **options, **extra})
    torch.manual_seed(seed)
    model = perturb(build_model(cfg), seed)
    path = str(tmp_path / "m.bin")
    save_model(model, path, make_card(cfg, vocab, tokenizer_of("bert"), 64))
    return path, cfg, vocab, model


@pytest.mark.parametrize("system", sorted(SYSTEMS))
def test_a_directory_gives_uers_logits_and_reads_back(tmp_path, system):
    options, auto = SYSTEMS[system]
    path, cfg, vocab, model = uer_model(tmp_path, options)
    diff = export(path, str(tmp_path / "hf"), cfg, vocab, tokenizer_of("bert"))
    assert diff is not None and diff < 1e-5
    conf = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert conf["tie_word_embeddings"] is cfg.tie_weights
    hf = getattr(transformers, auto).from_pretrained(str(tmp_path / "hf")).eval()
    # the word embedding is uer's, tied or not (an untied decoder never lands in it)
    torch.testing.assert_close(hf.get_input_embeddings().weight, model.embedding.word_embedding.weight,
                               rtol=0, atol=0)
    m = Pretrained(model, cfg, vocab, build_tokenizer("bert", vocab))
    batch = m.encode(lines(DOC_CORPUS, 3), seq_length=40)
    real = batch["seg"] > 0
    with torch.no_grad():
        ours = model.logits(batch)
        kw = {} if cfg.target == "lm" else {"token_type_ids": torch.zeros_like(batch["src"])}
        out = hf(input_ids=batch["src"], attention_mask=real.long(), **kw)
    for term, field in TERMS[cfg.target]:
        want, got = ours[term], getattr(out, field)
        if want.dim() == 3:
            want, got = want[real], got[real]
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=f"{system}: {term}")
    # and back: the directory's config.json is the recipe, and the weights are the same
    recipe, state, tokenizer = import_dir(str(tmp_path / "hf"))
    assert ModelConfig(vocab_size=len(vocab), **recipe) == cfg
    for k, v in model.state_dict().items():
        if k == "embedding.segment_embedding.weight":  # row 0 is the padding's, which transformers has not
            state[k], v = state[k][1:], v[1:]
        torch.testing.assert_close(state[k], v, rtol=0, atol=0, msg=k)
    assert tokenizer == {"name": "bert", "do_lower_case": True, "spm_model_path": None}


@pytest.mark.parametrize("name,vocab_path,texts", [
    ("bert", ZH_VOCAB, lines(DOC_CORPUS, 150) + lines(os.path.join(SHARED, "datasets", "book_review", "train.tsv"),
                                                       150, column=1)),
    ("bert", EN_VOCAB, lines(os.path.join(SHARED, "corpora", "news-commentary-v13-en-zh_sampled.txt"), 200, 0)),
    ("space", EN_VOCAB, lines(os.path.join(SHARED, "corpora", "news-commentary-v13-en-zh_sampled.txt"), 200, 0)),
    ("char", ZH_VOCAB, lines(DOC_CORPUS, 200)),
])
def test_the_directorys_tokenizer_gives_uers_ids(tmp_path, name, vocab_path, texts):
    from uer.hf import write_tokenizer

    vocab = Vocab.load(vocab_path)
    assert write_tokenizer(str(tmp_path), vocab, name, True, 512)
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    ours = build_tokenizer(name, vocab)
    special = vocab.special_ids()
    for text in texts:
        ids = ours.encode(text)
        assert tok(text, add_special_tokens=False)["input_ids"] == ids, text
        assert tok(text)["input_ids"] == [special.cls] + ids + [special.sep], text
    assert hf_tokenizer(vocab, name, spm=True) is None  # sentencepiece: no tokenizer files


def test_a_model_transformers_cannot_represent_is_refused_with_the_difference(tmp_path):
    path, cfg, vocab, _ = uer_model(tmp_path, {"target": "mlm", "layernorm": "uer"})
    out = tmp_path / "hf"
    with pytest.raises(UerError) as e:
        export(path, str(out), cfg, vocab, tokenizer_of("bert"))
    text = str(e.value)
    assert "BertForMaskedLM cannot represent this model exactly (--layernorm uer" in text
    measured = float(text.split("differ from uer's by up to ")[1].split(" ")[0])
    assert measured > 1e-4 and "give --approximate" in text
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".uer-export")]
    assert export(path, str(out), cfg, vocab, tokenizer_of("bert"), approximate=True) == pytest.approx(measured, rel=1e-2)
    assert (out / "config.json").exists()
    # the MLM head's activation: gelu in uer, hidden_act in transformers
    path, cfg, vocab, _ = uer_model(tmp_path, {"target": "mlm", "hidden_act": "relu"})
    with pytest.raises(UerError, match=r"uer's MLM head applies gelu, transformers' the model's hidden_act \(relu\)"):
        export(path, str(tmp_path / "relu"), cfg, vocab, tokenizer_of("bert"))
    # no transformers class at all
    path, cfg, vocab, _ = uer_model(tmp_path, {"target": "mlm", "layernorm_positioning": "pre"})
    with pytest.raises(UerError, match="layernorm_positioning is 'pre'; a BertForMaskedLM needs 'post'"):
        export(path, str(tmp_path / "pre"), cfg, vocab, tokenizer_of("bert"))


@pytest.mark.e2e
def test_the_converters_and_pretrain_write_and_read_directories(tmp_path, tiny_mlm):
    """pretrain.py --export_hf, then the converter back to uer with --input_dir and again to a
    directory with --output_dir: the same logits all the way."""
    proc = run_script("pretrain.py", "--dataset_path", str(tiny_mlm / "d.pt"), "--vocab_path", ZH_VOCAB,
                      "--config_path", str(tiny_mlm / "tiny.json"), "--target", "mlm", "--output_model_path",
                      str(tmp_path / "m.bin"), "--total_steps", "2", "--batch_size", "4", "--export_hf",
                      str(tmp_path / "hf"))
    assert proc.returncode == 0, proc.stderr
    assert f"Wrote {tmp_path / 'hf'}: a BertForMaskedLM" in proc.stdout and "differ from uer's by at most" in proc.stdout
    proc = run_script("scripts/convert_bert_from_huggingface_to_uer.py", "--input_dir", str(tmp_path / "hf"),
                      "--output_model_path", str(tmp_path / "back.bin"))
    assert proc.returncode == 0, proc.stderr
    card = json.loads((tmp_path / "back.bin.json").read_text())
    assert card["model"]["target"] == "mlm" and card["vocab"]["path"] == str(tmp_path / "hf" / "vocab.txt")
    proc = run_script("scripts/convert_bert_from_uer_to_huggingface.py", "--input_model_path",
                      str(tmp_path / "back.bin"), "--output_dir", str(tmp_path / "hf2"))
    assert proc.returncode == 0, proc.stderr
    texts = lines(DOC_CORPUS, 2)
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf2"))
    enc = tok(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    m = Pretrained.load(str(tmp_path / "m.bin"))
    with torch.no_grad():
        want = m.model.logits({"src": enc["input_ids"], "seg": enc["attention_mask"]})["mlm"]
        got = transformers.AutoModelForMaskedLM.from_pretrained(str(tmp_path / "hf2"))(**enc).logits
    real = enc["attention_mask"].bool()
    torch.testing.assert_close(got[real], want[real], rtol=1e-5, atol=1e-5)
    # a model of another family, and a directory in place of a file, are clear errors
    assert_clean_error(run_script("scripts/convert_gpt2_from_uer_to_huggingface.py", "--input_model_path",
                                  str(tmp_path / "m.bin"), "--output_dir", str(tmp_path / "x")),
                       "is a model of target 'mlm' (bert), not a gpt2 model")
    assert_clean_error(run_script("scripts/convert_bert_from_uer_to_huggingface.py", "--input_model_path",
                                  str(tmp_path / "m.bin")), "give --output_model_path or --output_dir")
