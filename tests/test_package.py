"""The installed package: packaged recipes, a console command for every script, and a wheel that
works in a fresh virtual environment from an empty directory."""
import importlib
import json
import os
import shutil
import subprocess
import sys
import tomllib

import pytest

from conftest import ROOT
from uer.config import RECIPES_DIR, load_recipe, recipe_names, resolve_recipe
from uer.errors import UerError
from uer.options import DEFAULT_CONFIG_PATH

with open(os.path.join(ROOT, "pyproject.toml"), "rb") as _f:
    PYPROJECT = tomllib.load(_f)
CONSOLE = PYPROJECT["project"]["scripts"]


def test_recipes_are_package_data_and_named_by_their_name():
    assert PYPROJECT["tool"]["setuptools"]["package-data"]["uer"] == ["recipes/*.json"]
    assert {"bert_base", "bert_tiny", "albert_xxlarge", "llama_tiny", "gatedcnn_9"} <= set(recipe_names())
    # the default is the packaged BERT-base, wherever the command runs
    assert resolve_recipe(DEFAULT_CONFIG_PATH) == os.path.join(RECIPES_DIR, "bert_base_config.json")
    assert load_recipe("bert_tiny")["layers_num"] == 3
    assert load_recipe("albert_xxlarge_config.json") == load_recipe("albert_xxlarge")


def test_the_manuals_recipe_paths_are_the_packaged_files():
    """models/*_config.json of a checkout (the manual's paths) are the packaged recipes themselves."""
    for name in recipe_names():
        path = os.path.join(ROOT, "models", f"{name}_config.json")
        assert os.path.samefile(path, os.path.join(RECIPES_DIR, f"{name}_config.json")), path
        assert resolve_recipe(path) == path


def test_a_missing_recipe_names_the_packaged_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no models/ here
    with pytest.raises(UerError, match="--config_path bert_base names the packaged recipe"):
        resolve_recipe("models/bert_base_config.json")
    with pytest.raises(UerError, match="the packaged recipes are albert_base, .*bert_base"):
        resolve_recipe("bert_huge")
    (tmp_path / "bert_base").write_text(json.dumps({"layers_num": 1}))
    assert load_recipe("bert_base") == {"layers_num": 1}  # a file of that name wins


def test_every_script_is_a_console_command():
    """scripts/NAME.py runs uer/tools/NAME.py's cli (or a converter), and a uer-* command runs the same."""
    targets = {value for value in CONSOLE.values()}
    for value in targets:
        module, function = value.split(":")
        assert callable(getattr(importlib.import_module(module), function)), value
    for name in sorted(os.listdir(os.path.join(ROOT, "scripts"))):
        stem, ext = os.path.splitext(name)
        if ext != ".py":
            continue
        if stem.startswith("convert_"):
            assert CONSOLE["uer-convert"] == "uer.convert:convert_main"
        else:
            assert f"uer.tools.{stem}:cli" in targets, f"scripts/{name} has no console command"
    assert {"uer-preprocess", "uer-pretrain", "uer-finetune", "uer-infer", "uer-convert", "uer-build-vocab",
            "uer-generate"} <= set(CONSOLE)


def test_uer_convert_dispatches_to_each_converter(capsys):
    from uer.convert import convert_main

    assert convert_main(["bert", "sideways"]) == 2
    assert "expected a model family and a direction, got bert sideways" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        convert_main(["gpt2", "to-hf", "--help"])
    assert done.value.code == 0
    assert "usage: uer-convert gpt2 to-hf" in capsys.readouterr().out


def _sh(args, cwd, env, timeout=600):
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.mark.e2e
def test_a_wheel_in_a_fresh_venv_works_from_an_empty_directory(tmp_path):
    """Build a wheel of the package, install it into a new virtual environment (which reuses the
    installed torch and the other dependencies, offline), and run the commands from a directory
    that holds nothing of uer: no recipe, no script, no source."""
    src = tmp_path / "src"  # built from a copy: nothing is written into the checkout
    shutil.copytree(os.path.join(ROOT, "uer"), src / "uer", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), src / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    _sh([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
         str(tmp_path / "wheels"), str(src)], tmp_path, env)
    wheel = next((tmp_path / "wheels").glob("uer-*.whl"))
    venv = tmp_path / "venv"
    # without a pip of its own: ensurepip would bring an old setuptools that hides the installed one
    _sh([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], tmp_path, env)
    _sh([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-index", str(wheel)], tmp_path, env)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    work = tmp_path / "empty"
    work.mkdir()
    where = _sh(["python", "-c", "import uer; print(uer.__file__)"], work, env).stdout.strip()
    assert where.startswith(str(venv)), f"uer came from {where}, not the wheel"

    _sh(["uer-make-demo-corpus", "--output_path", "corpus.txt", "--documents", "120"], work, env)
    _sh(["uer-build-vocab", "--corpus_path", "corpus.txt", "--vocab_path", "vocab.txt", "--tokenizer", "space"],
        work, env)
    _sh(["uer-preprocess", "--corpus_path", "corpus.txt", "--vocab_path", "vocab.txt", "--tokenizer", "space",
         "--dataset_path", "dataset.pt", "--target", "bert", "--seq_length", "32", "--dup_factor", "1"], work, env)
    _sh(["uer-pretrain", "--dataset_path", "dataset.pt", "--vocab_path", "vocab.txt", "--config_path", "bert_tiny",
         "--output_model_path", "model.bin", "--total_steps", "3", "--report_steps", "1", "--batch_size", "8",
         "--save_checkpoint_steps", "100", "--learning_rate", "1e-3"], work, env)
    _sh(["uer-convert", "bert", "to-hf", "--input_model_path", "model.bin", "--output_model_path", "hf.bin"],
        work, env)
    sentences = [line for line in (work / "corpus.txt").read_text().splitlines() if line][:40]
    rows = "".join(f"{i % 2}\t{s}\n" for i, s in enumerate(sentences))
    for name in ("train", "dev"):
        (work / f"{name}.tsv").write_text("label\ttext_a\n" + rows)
    _sh(["uer-finetune", "--pretrained_model_path", "model.bin", "--vocab_path", "vocab.txt", "--tokenizer",
         "space", "--config_path", "bert_tiny", "--train_path", "train.tsv", "--dev_path", "dev.tsv",
         "--output_model_path", "classifier.bin", "--epochs_num", "1", "--batch_size", "8", "--seq_length", "32"],
        work, env)
    assert {"model.bin", "hf.bin", "classifier.bin"} <= set(os.listdir(work))
