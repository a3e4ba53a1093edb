"""Keeping the numbers (issue #9): --log_path, --metrics_path CSV with train and dev rows,
scripts/plot_log.py turns it into a PNG; dev evaluation reports perplexity."""
import csv
import glob
import json
import os
import re
import sys

import pytest

from conftest import MINI_DOC, ROOT, ZH_VOCAB, assert_clean_error, run_script


@pytest.mark.e2e
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


SCRIPTS = ["preprocess.py", "pretrain.py", "finetune/run_classifier.py", "inference/run_classifier_infer.py"] + \
    sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "scripts", "*.py")))


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_option_has_a_one_line_help(script, monkeypatch):
    """--help explains every option of every command in one line."""
    import argparse
    import runpy

    class Parsed(Exception):
        pass

    def capture(self, *args, **kwargs):
        raise Parsed(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    monkeypatch.setattr(sys, "argv", [script])
    with pytest.raises(Parsed) as caught:
        runpy.run_path(os.path.join(ROOT, script), run_name="__main__")
    parser = caught.value.args[0]
    assert parser.description, f"{script} has no description"
    missing = [a.option_strings or a.dest for a in parser._actions
               if not isinstance(a, argparse._HelpAction) and (not a.help or "\n" in a.help)]
    assert not missing, f"{script}: options without a one-line help: {missing}"


def run_in_terminal(args, timeout=300):
    """Run a repo script with stderr on a pseudo-terminal (stdout a pipe); returns (rc, stdout, stderr)."""
    import pty
    import select
    import subprocess

    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a new pty has 0 columns
    p = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=slave, text=True)
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], timeout)
        if not ready:
            p.kill()
            raise TimeoutError(args)
        try:
            data = os.read(master, 1 << 16)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    out = p.stdout.read()
    return p.wait(), out, b"".join(chunks).decode(errors="replace")


@pytest.mark.e2e
def test_progress_bars_on_a_terminal_only(tmp_path):
    ds = tmp_path / "d.pt"
    pre = ["preprocess.py", "--corpus_path", MINI_DOC, "--vocab_path", ZH_VOCAB, "--dataset_path", str(ds),
           "--target", "mlm", "--seq_length", "32"]
    rc, out, err = run_in_terminal(pre)
    assert rc == 0, err
    assert "tokenize" in err and "build" in err and "100%" in err, err  # bytes read, documents built
    train = ["pretrain.py", "--dataset_path", str(ds), "--vocab_path", ZH_VOCAB, "--target", "mlm",
             "--config_path", os.path.join(ROOT, "models", "bert_tiny_config.json"), "--output_model_path",
             str(tmp_path / "m.bin"), "--total_steps", "6", "--report_steps", "3", "--batch_size", "4"]
    rc, out, err = run_in_terminal(train)
    assert rc == 0, err
    assert "6/6" in err and ("step/s" in err or "s/step" in err) and "<" in err, err  # steps, rate, time left
    assert out.count(" steps|") == 2, out  # the report lines, on stdout above the bar
    # a terminal, but the bar turned off (and the other process-wide settings of the command line)
    rc, out, err = run_in_terminal([*train[:-6], "--output_model_path", str(tmp_path / "o.bin"), "--total_steps",
                                    "2", "--report_steps", "1", "--batch_size", "4", "--progress_bar", "false",
                                    "--batch_worker", "none", "--keep_freed_memory", "false"])
    assert rc == 0, err
    assert "step/s" not in err and "s/step" not in err and out.count(" steps|") == 2, err + out
    # not a terminal: no bar at all
    proc = run_script(*train[:-6], "--output_model_path", str(tmp_path / "n.bin"), "--total_steps", "2",
                      "--report_steps", "1", "--batch_size", "4")
    assert proc.returncode == 0 and "step/s" not in proc.stderr and "s/step" not in proc.stderr, proc.stderr
    proc = run_script(*pre[:-6], "--dataset_path", str(tmp_path / "e.pt"), "--target", "mlm", "--seq_length", "32")
    assert proc.returncode == 0 and "tokenize" not in proc.stderr, proc.stderr


@pytest.mark.e2e
def test_console_commands_are_installed():
    """pip install gives the uer-* commands: every entry point loads, and the main ones run
    (tests/test_package.py runs six of them for real from a wheel in a fresh environment)."""
    import shutil
    import subprocess
    from importlib.metadata import entry_points

    commands = {e.name: e for e in entry_points(group="console_scripts") if e.name.startswith("uer-")}
    assert set(commands) >= {"uer-preprocess", "uer-pretrain", "uer-finetune", "uer-infer"}, commands
    for name, entry in commands.items():
        assert callable(entry.load())
        if name not in ("uer-preprocess", "uer-pretrain", "uer-finetune", "uer-infer", "uer-generate"):
            continue  # each start costs an import of torch: the others' entry points loaded above
        exe = shutil.which(name) or os.path.join(os.path.dirname(sys.executable), name)
        proc = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and proc.stdout.startswith(f"usage: {name} "), proc.stdout[:200] + proc.stderr


def test_chinese_usage_matches_the_readme():
    """README.zh.md (the usage section in Chinese) runs exactly the commands of README.md."""
    def commands(name):
        with open(os.path.join(ROOT, name), encoding="utf-8") as f:
            text = f.read().replace("\\\n", " ")
        return {" ".join(line.split()) for line in text.splitlines()
                if line.strip().startswith(("python3 ", "bash ", "torchrun "))}

    zh, en = commands("README.zh.md"), commands("README.md")
    assert len(zh) >= 30
    assert zh <= en, zh - en
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        assert "README.zh.md" in f.read()


def _train_eight(tmp_path, eight, **kw):
    from uer.config import ModelConfig, TrainConfig
    from uer.data.dataset import Dataset
    from uer.train.trainer import train
    from uer.vocab import Vocab

    mcfg = ModelConfig(vocab_size=21128, target="mlm", emb_size=32, hidden_size=32, feedforward_size=64, heads_num=4,
                       layers_num=1)
    tcfg = TrainConfig(dataset_path=eight, output_model_path=str(tmp_path / "m.bin"), total_steps=3, report_steps=1,
                       batch_size=4, save_checkpoint_steps=100, **kw)
    return train(tcfg, mcfg, Dataset(eight), Vocab.load(ZH_VOCAB).special_ids(), worker="none")


def test_tensorboard_gets_the_train_and_dev_scalars(tmp_path, eight, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = _train_eight(tmp_path, eight, tensorboard_dir=str(tmp_path / "tb"), dev_dataset_path=eight, dev_steps=2,
                          max_grad_norm=0.0)
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/loss_mlm", "train/acc_mlm", "train/lr", "train/tokens_per_s", "train/grad_norm",
            "dev/loss_mlm", "dev/acc_mlm", "dev/ppl_mlm"} <= tags, tags
    train_rows = [h for h in result["history"] if "loss" in h]
    assert [e.step for e in events.Scalars("train/loss_mlm")] == [1, 2, 3]
    for e, h in zip(events.Scalars("train/loss_mlm"), train_rows):
        assert e.value == pytest.approx(h["metrics"]["mlm"]["loss"], rel=1e-6)
    norms = [e.value for e in events.Scalars("train/grad_norm")]
    assert all(n > 0 for n in norms) and norms == pytest.approx([h["grad_norm"] for h in train_rows], rel=1e-6)
    assert [e.step for e in events.Scalars("dev/ppl_mlm")] == [2, 3]
    assert "steps|" in capsys.readouterr().out  # the console still gets the report lines


def test_messages_go_through_logging_with_level_rank_and_file(tmp_path, eight, capsys):
    import logging

    from uer import logs

    try:
        logs.setup("warning")
        _train_eight(tmp_path / "quiet", eight)
        assert "steps|" not in capsys.readouterr().out  # --log_level warning: no report lines
        logs.setup("info", rank=1, world_size=2)
        logging.getLogger("uer.train.trainer").info("a line")
        assert capsys.readouterr().out == "[rank 1/2] a line\n"
        logs.setup("info")
        _train_eight(tmp_path, eight, log_path=str(tmp_path / "train.log"))
        out = capsys.readouterr().out
        assert "steps|" in out and not out.startswith("[rank")
        lines = (tmp_path / "train.log").read_text(encoding="utf-8").splitlines()
        report = next(line for line in lines if "steps|" in line)
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d INFO uer\.train\.trainer: \|.*", report), report
        assert not logging.getLogger("uer").handlers[1:], "the run's file handler is removed at its end"
    finally:
        logs.setup()


def test_a_progress_bar_on_a_terminal_keeps_the_lines_above_it(monkeypatch, capsys):
    import logging

    from uer import logs

    with logs.progress_bar(True, 4) as bar:
        assert bar is None  # stderr is not a terminal here
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    with logs.progress_bar(False, 4) as bar:
        assert bar is None  # --progress_bar false
    with logs.progress_bar(True, 4) as bar:
        assert logs.Console.bar is bar and bar.total == 4
        logging.getLogger("uer.train.trainer").info("a report line")
        bar.update(4)
    assert logs.Console.bar is None
    assert "a report line\n" in capsys.readouterr().out


def test_fine_tuning_shows_a_bar_while_the_data_is_read(tmp_path, monkeypatch, capsys):
    import argparse

    from uer.finetune import build_cls_dataset
    from uer.vocab import Vocab

    (tmp_path / "t.tsv").write_text("label\ttext_a\n1\t很好\n0\t不好\n", encoding="utf-8")
    args = argparse.Namespace(tokenizer="bert", spm_model_path=None, seq_length=16)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    build_cls_dataset(str(tmp_path / "t.tsv"), ["label", "text_a"], str(tmp_path), "train", Vocab.load(ZH_VOCAB), args,
                      show_progress=None)
    assert "tokenize" in capsys.readouterr().err


def test_the_partial_load_message_names_the_new_head():
    from uer.train.trainer import partial_load_message

    report = {"missing": ["target.linear_1.weight", "target.linear_1.bias", "encoder.x"], "unexpected": ["target.sop"],
              "misshaped": []}
    assert partial_load_message("p.bin", "cls", report) == (
        "Partial load of p.bin; the new cls head, from N(0, 0.02): target.linear_1.weight, target.linear_1.bias; "
        "missing outside the head, from N(0, 0.02): encoder.x; unexpected, not used: target.sop.")
