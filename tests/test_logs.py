"""Keeping the numbers (issue #9): --log_path, --metrics_path CSV with train and dev rows,
scripts/plot_log.py turns it into a PNG; dev evaluation reports perplexity."""
import csv
import json
import os

from conftest import MINI_DOC, ROOT, ZH_VOCAB, assert_clean_error, run_script


def test_log_file_metrics_csv_dev_and_plot(tmp_path):
    for name, corpus in (("train", os.path.join(ROOT, "..", "shared", "corpora", "CLUECorpusSmall_sampled.txt")),
                         ("dev", MINI_DOC)):
        proc = run_script("preprocess.py", "--corpus_path", corpus, "--vocab_path", ZH_VOCAB, "--dataset_path",
                          str(tmp_path / f"{name}.pt"), "--target", "lm", "--seq_length", "32")
        assert proc.returncode == 0, proc.stderr
    (tmp_path / "tiny.json").write_text(json.dumps({"emb_size": 32, "hidden_size": 32, "feedforward_size": 64,
                                                    "heads_num": 4, "layers_num": 1}))
    proc = run_script("pretrain.py", "--dataset_path", str(tmp_path / "train.pt"), "--vocab_path", ZH_VOCAB,
                      "--config_path", str(tmp_path / "tiny.json"), "--target", "lm", "--mask", "causal",
                      "--output_model_path", str(tmp_path / "m.bin"), "--total_steps", "6", "--report_steps", "2",
                      "--dev_dataset_path", str(tmp_path / "dev.pt"), "--dev_steps", "3", "--batch_size", "8",
                      "--log_path", str(tmp_path / "train.log"), "--metrics_path", str(tmp_path / "m.csv"))
    assert proc.returncode == 0, proc.stderr
    log = (tmp_path / "train.log").read_text(encoding="utf-8")
    assert log.count("steps|") == 3 + 2 and "dev|" in log and "Saved the final model" in log
    rows = list(csv.DictReader(open(tmp_path / "m.csv", encoding="utf-8")))
    assert [(r["step"], r["split"]) for r in rows] == [("2", "train"), ("3", "dev"), ("4", "train"),
                                                       ("6", "train"), ("6", "dev")]
    dev = rows[1]
    assert float(dev["ppl"]) > 1 and int(dev["count"]) > 1000
    proc = run_script("scripts/plot_log.py", "--metrics_path", str(tmp_path / "m.csv"), "--output_path",
                      str(tmp_path / "curves.png"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    proc = run_script("scripts/plot_log.py", "--metrics_path", str(tmp_path / "train.log"), "--output_path",
                      str(tmp_path / "x.png"))
    assert_clean_error(proc, "not a metrics CSV")
