"""Downstream (issue #10): fine-tune on book_review, keep the best dev model, score the test set,
predict with the inference script; any encoder; a model converted from HuggingFace; bad TSVs."""
import json
import os

import pytest
import torch

from conftest import SHARED, ZH_VOCAB, assert_clean_error, run_script
from uer.config import ModelConfig
from uer.model import build_model
from uer.train.checkpoint import save_model

pytestmark = pytest.mark.e2e  # every test here runs uer in child processes

BOOK = os.path.join(SHARED, "datasets", "book_review")
TINY = {"emb_size": 64, "hidden_size": 64, "feedforward_size": 128, "heads_num": 4, "layers_num": 2,
        "dropout": 0.1}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("book")
    for name, n in (("train", 2000), ("dev", 400), ("test", 400)):
        with open(os.path.join(BOOK, f"{name}.tsv"), encoding="utf-8") as f:
            (d / f"{name}.tsv").write_text("".join(next(f) for _ in range(n + 1)), encoding="utf-8")
    (d / "tiny.json").write_text(json.dumps(TINY))
    return d


def finetune(d, out, *extra):
    return run_script("finetune/run_classifier.py", "--vocab_path", ZH_VOCAB, "--config_path", str(d / "tiny.json"),
                      "--train_path", str(d / "train.tsv"), "--dev_path", str(d / "dev.tsv"), "--test_path",
                      str(d / "test.tsv"), "--seq_length", "64", "--batch_size", "32", "--learning_rate", "1e-3",
                      "--output_model_path", str(out), *extra)


def accuracy(line: str) -> float:
    return float(line.split("accuracy")[1].split()[0])


def test_finetune_keeps_the_best_model_and_beats_the_majority_class(tmp_path, data):
    torch.manual_seed(0)
    save_model(build_model(ModelConfig(vocab_size=21128, target="mlm", **TINY)), str(tmp_path / "pre.bin"))
    # the work directory of a killed fine-tune (a process of this host that is gone) is removed
    import socket
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".uer-finetune-{socket.gethostname().replace('-', '_')}-{int(dead.stdout)}-x"
    stale.mkdir()
    proc = finetune(data, tmp_path / "ft.bin", "--epochs_num", "2", "--pretrained_model_path", str(tmp_path / "pre.bin"))
    assert proc.returncode == 0, proc.stderr
    assert ".uer-finetune" not in proc.stdout + proc.stderr  # no message names a temporary file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ft.bin", "ft.bin.json", "pre.bin"]
    lines = proc.stdout.splitlines()
    assert sum(" dev|" in line for line in lines) == 2  # one evaluation per epoch
    reports = [line for line in lines if " steps|" in line and " dev|" not in line]
    assert len(reports) == 10, reports  # 126 steps, no --report_steps: every 13 and the last
    head = "the new cls head, from N(0, 0.02): target.linear_1.weight, target.linear_1.bias, target.linear_2.weight"
    assert any(line.startswith(f"Partial load of (the encoder of) {tmp_path / 'pre.bin'}; {head}") for line in lines)
    test_line = next(line for line in lines if line.startswith("Test accuracy"))
    majority = max(sum(1 for line in open(data / "test.tsv", encoding="utf-8") if line.startswith(c)) for c in "01")
    assert accuracy(test_line) > majority / 400 + 0.05, proc.stdout
    # the model card beside ft.bin gives the recipe, the vocabulary, the labels and --seq_length 64
    proc = run_script("inference/run_classifier_infer.py", "--load_model_path", str(tmp_path / "ft.bin"),
                      "--test_path", str(data / "test.tsv"), "--prediction_path", str(tmp_path / "pred.tsv"),
                      "--output_prob")
    assert proc.returncode == 0, proc.stderr
    pred = (tmp_path / "pred.tsv").read_text().splitlines()
    gold = [line.split("\t")[0] for line in (data / "test.tsv").read_text(encoding="utf-8").splitlines()[1:]]
    assert pred[0] == "label\tprob" and len(pred) == 401
    agree = sum(p.split("\t")[0] == g for p, g in zip(pred[1:], gold)) / 400
    assert agree == pytest.approx(accuracy(test_line), abs=1e-6)  # the same encoding as in training
    proc = run_script("inference/run_classifier_infer.py", "--load_model_path", str(tmp_path / "ft.bin"),
                      "--test_path", str(data / "test.tsv"), "--prediction_path", str(tmp_path / "bf16.tsv"), "--bf16")
    assert proc.returncode == 0, proc.stderr
    same = sum(a.split("\t")[0] == b for a, b in zip(pred[1:], (tmp_path / "bf16.tsv").read_text().splitlines()[1:]))
    assert same >= 0.95 * 400  # bf16 autocast: the same labels but for the closest calls


def test_the_model_card_carries_the_model_from_pretraining_to_fine_tuning(tmp_path, data, tiny_mlm):
    """pretrain.py writes a card beside its model; fine-tuning and continued pre-training read it
    instead of --config_path, and refuse a command line that disagrees, listing every difference."""
    proc = run_script("pretrain.py", "--dataset_path", str(tiny_mlm / "d.pt"), "--vocab_path", ZH_VOCAB,
                      "--config_path", str(tiny_mlm / "tiny.json"), "--target", "mlm", "--layernorm_positioning", "pre",
                      "--output_model_path", str(tmp_path / "pre.bin"), "--total_steps", "2", "--batch_size", "4",
                      "--save_checkpoint_steps", "100")
    assert proc.returncode == 0, proc.stderr
    card = json.loads((tmp_path / "pre.bin.json").read_text())
    assert card["model"]["layernorm_positioning"] == "pre" and card["seq_length"] == 32 and card["step"] == 2
    proc = finetune(data, tmp_path / "ft.bin", "--epochs_num", "1", "--pretrained_model_path", str(tmp_path / "pre.bin"),
                    "--config_path", "bert_tiny")
    # the recipe's fields go over the card's (bert_tiny says nothing of the LayerNorm's place)
    assert_clean_error(proc, f"the model card {tmp_path / 'pre.bin.json'} and this command line disagree on 5 thing(s)",
                       "layers_num: 2 in the card, 3 here", "hidden_size: 32 in the card, 384 here")
    proc = run_script("finetune/run_classifier.py", "--pretrained_model_path", str(tmp_path / "pre.bin"),
                      "--train_path", str(data / "dev.tsv"), "--dev_path", str(data / "dev.tsv"), "--epochs_num", "1",
                      "--seq_length", "32", "--output_model_path", str(tmp_path / "ft.bin"))
    assert proc.returncode == 0, proc.stderr
    card = json.loads((tmp_path / "ft.bin.json").read_text())
    assert (card["model"]["target"], card["model"]["labels_num"], card["model"]["layernorm_positioning"],
            card["seq_length"]) == ("cls", 2, "pre", 32)
    # the scripts read it too: the vocabulary of extract_embeddings, the head of the converter
    proc = run_script("scripts/extract_embeddings.py", "--load_model_path", str(tmp_path / "pre.bin"),
                      "--word_embedding_path", str(tmp_path / "emb.txt"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "emb.txt").read_text(encoding="utf-8").split("\n", 1)[0] == "21128 32"
    proc = run_script("scripts/convert_bert_from_uer_to_huggingface.py", "--input_model_path", str(tmp_path / "pre.bin"),
                      "--output_model_path", str(tmp_path / "hf.bin"))
    assert proc.returncode == 0, proc.stderr
    hf = torch.load(tmp_path / "hf.bin", weights_only=True)
    assert "cls.predictions.decoder.weight" in hf and not any("seq_relationship" in k for k in hf)  # mlm, no NSP
    proc = run_script("pretrain.py", "--dataset_path", str(tiny_mlm / "d.pt"), "--vocab_path", ZH_VOCAB,
                      "--pretrained_model_path", str(tmp_path / "pre.bin"), "--hidden_act", "relu",
                      "--output_model_path", str(tmp_path / "more.bin"), "--total_steps", "1")
    assert_clean_error(proc, "disagree on 1 thing(s)", "hidden_act: 'gelu' in the card, 'relu' here")


@pytest.mark.parametrize("options", [["--encoder", "bilstm", "--embedding", "word"],
                                     ["--encoder", "gatedcnn", "--embedding", "word", "--pooling", "mean"]])
def test_any_encoder(tmp_path, data, options):
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({**TINY, "kernel_size": 3, "block_size": 2}))
    proc = finetune(data, tmp_path / "ft.bin", "--epochs_num", "1", *options, "--config_path", str(recipe))
    assert proc.returncode == 0, proc.stderr
    assert "Test accuracy" in proc.stdout


def test_a_model_converted_from_huggingface(tmp_path, data):
    import transformers

    hf = transformers.BertForPreTraining(transformers.BertConfig(
        vocab_size=21128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128))
    torch.save(hf.state_dict(), tmp_path / "hf.bin")
    proc = run_script("scripts/convert_bert_from_huggingface_to_uer.py", "--input_model_path", str(tmp_path / "hf.bin"),
                      "--output_model_path", str(tmp_path / "uer.bin"))
    assert proc.returncode == 0, proc.stderr
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({**TINY, "layernorm_eps": 1e-12}))
    proc = finetune(data, tmp_path / "ft.bin", "--epochs_num", "1", "--pretrained_model_path", str(tmp_path / "uer.bin"),
                    "--config_path", str(recipe))
    assert proc.returncode == 0, proc.stderr
    # a checkpoint of another size is refused, naming the keys
    proc = finetune(data, tmp_path / "ft.bin", "--epochs_num", "1", "--pretrained_model_path", str(tmp_path / "uer.bin"),
                    "--config_path", os.path.join("models", "bert_tiny_config.json"))
    assert_clean_error(proc, "does not fit the model", "embedding.word_embedding.weight: checkpoint (21128, 64)")


@pytest.mark.parametrize("text,needle", [
    ("1\tgood book\n", "line 1: expected a header label<TAB>text_a"),
    ("label\ttext_a\n1\tgood\n0\tbad\textra\n", "line 3: 3 tab-separated fields, the header has 2"),
    ("label\ttext_a\n1\tgood\nx\tbad\n", "line 3: the label 'x' is not an integer"),
])
def test_bad_tsv_is_a_clear_error(tmp_path, data, text, needle):
    bad = tmp_path / "bad.tsv"
    bad.write_text(text, encoding="utf-8")
    proc = run_script("finetune/run_classifier.py", "--vocab_path", ZH_VOCAB, "--config_path", str(data / "tiny.json"),
                      "--train_path", str(bad), "--dev_path", str(data / "dev.tsv"))
    assert_clean_error(proc, str(bad), needle)
