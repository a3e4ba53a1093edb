import re

import pytest

from conftest import SHARED
from uer import components
from uer.config import ModelConfig, merge
from uer.options import build_parser, explicit_dests

components.load()


def build_pretrain_parser():
    return build_parser("pretrain")

MANUAL = f"{SHARED}/seed/000_7bd7c665b653ebb3.txt"
# SPEC 2.1 defaults, with the decisions of SPEC 8 (tgt_embedding defaults to one that works)
DEFAULTS = {"dataset_path": "dataset.pt", "config_path": "bert_base",
            "total_steps": 100000, "save_checkpoint_steps": 10000, "report_steps": 100,
            "accumulation_steps": 1, "batch_size": 32, "instances_buffer_size": 25600,
            "labels_num": None, "dropout": 0.1, "seed": 7, "embedding": "word_pos_seg",
            "encoder": "transformer", "mask": "fully_visible", "layernorm_positioning": "post",
            "tgt_embedding": "word_pos", "decoder": "transformer", "pooling": "first", "target": "bert",
            "span_geo_prob": 0.2, "span_max_length": 10, "learning_rate": 2e-5, "warmup": 0.1,
            "fp16_opt_level": "O1", "beta1": 0.9, "beta2": 0.999, "world_size": 1, "gpu_ranks": [],
            "master_ip": "tcp://localhost:12345", "backend": "nccl"}


def manual_usage():
    text = open(MANUAL, encoding="utf-8").read()
    usage = text.split("```")[1]
    assert usage.lstrip().startswith("usage: pretrain.py")
    return re.findall(r"\[?(--\w+)(?: \{([^}]*)\}| [A-Z_]+)?", usage)


def test_every_manual_option_with_its_choices():
    parser = build_pretrain_parser()
    actions = {s: a for a in parser._actions for s in a.option_strings}
    found = manual_usage()
    assert len(found) == 44  # every option of the usage block
    for flag, choices in found:
        assert flag in actions, f"{flag} missing"
        if choices:  # every choice of the manual is accepted (the order of --help is the registries')
            assert set(choices.split(",")) <= set(actions[flag].choices), flag
    help_text = parser.format_help()
    for flag, _ in found:
        assert flag in help_text


def test_defaults():
    args = build_pretrain_parser().parse_args(["--output_model_path", "x.bin"])
    for k, v in DEFAULTS.items():
        assert getattr(args, k) == v, k


def test_command_line_wins_over_recipe():
    parser = build_pretrain_parser()
    argv = ["--output_model_path", "x", "--dropout", "0.3", "--target=mlm"]
    args = parser.parse_args(argv)
    explicit = explicit_dests(parser, argv)
    defaults = {"dropout": 0.1, "target": "bert", "hidden_size": 768, "encoder": "transformer"}
    merged = merge(defaults, {"dropout": 0.0, "hidden_size": 384, "target": "lm", "encoder": "lstm"},
                   vars(args), explicit)
    assert merged == {"dropout": 0.3, "target": "mlm", "hidden_size": 384, "encoder": "lstm"}
    assert ModelConfig(vocab_size=5).dropout == 0.1


@pytest.mark.parametrize("flag", ["--gpu_ranks", "--world_size", "--fp16", "--span_masking",
                                  "--tie_weights", "--parameter_sharing"])
def test_later_features_parse(flag):
    extra = {"--gpu_ranks": ["0", "1"], "--world_size": ["2"]}.get(flag, [])
    build_pretrain_parser().parse_args(["--output_model_path", "x", flag, *extra])


def test_every_option_is_declared_in_the_schema_alone():
    """No parser outside uer/options.py: every command's options come from OPTIONS."""
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1]
    sources = [p for d in ("uer", "scripts", "finetune", "inference") for p in (root / d).rglob("*.py")]
    sources += [root / "preprocess.py", root / "pretrain.py"]
    offenders = [str(p.relative_to(root)) for p in sources
                 if p.name != "options.py" and ("add_argument(" in p.read_text() or "ArgumentParser(" in p.read_text())]
    assert offenders == []


@pytest.mark.parametrize("command", sorted(__import__("uer.options").options.COMMANDS))
def test_each_command_parser_follows_the_schema(command):
    """A command takes each option with its declared type, help and default, except where the
    command's entry says it differs; --help works."""
    from uer.options import COMMANDS, OPTIONS

    parser = build_parser(command)
    actions = {a.dest: a for a in parser._actions if a.option_strings and a.dest != "help"}
    changes = COMMANDS[command].changes
    assert actions, command
    for name, action in actions.items():
        declared, changed = OPTIONS[name], changes.get(name, {})
        if not declared.flag and not changed.get("required", declared.required):
            assert action.default == changed.get("default", declared.default), (command, name)
        assert action.help == changed.get("help", declared.help), (command, name)
    parser.format_help()


def test_typed_configs_take_their_defaults_from_the_schema():
    from dataclasses import MISSING, fields

    from uer.config import TrainConfig
    from uer.data.builders import BuilderConfig
    from uer.data.masking import MASKING_FIELDS, MaskingConfig
    from uer.options import OPTIONS, default

    checked = 0
    for cls in (ModelConfig, TrainConfig, BuilderConfig, MaskingConfig):
        for f in fields(cls):
            # TrainConfig's masking options are None: "as the dataset was built"; the sizes are the recipe's
            if f.name in OPTIONS and not (cls is TrainConfig and f.name in MASKING_FIELDS) and \
                    f.name not in ("layers_num", "max_seq_length", "masking") and f.default is not MISSING:
                assert f.default == default(f.name), (cls.__name__, f.name)
                checked += 1
    assert checked >= 55


def test_a_registered_component_is_a_choice_of_every_command_with_that_slot():
    """A new tokenizer registers once and preprocess, finetune and the inference scripts offer it."""
    from uer.registry import ENCODERS, TOKENIZERS

    class Tiny:
        pass

    TOKENIZERS["tiny"] = ENCODERS["tiny_encoder"] = Tiny
    try:
        for command in ("preprocess", "finetune", "infer", "cloze_test", "extract_features", "generate_lm"):
            actions = {a.dest: a for a in build_parser(command)._actions}
            assert "tiny" in actions["tokenizer"].choices, command
            if "encoder" in actions:
                assert "tiny_encoder" in actions["encoder"].choices, command
        assert "tiny" not in {a.dest: a for a in build_parser("build_vocab")._actions}["tokenizer"].choices
    finally:
        del TOKENIZERS["tiny"], ENCODERS["tiny_encoder"]


def test_builder_settings_round_trip_through_the_dataset_header():
    from uer.data.builders import BuilderConfig, builder_config_from_header
    from uer.data.masking import MaskingConfig

    cfg = BuilderConfig(seq_length=64, dup_factor=2, short_seq_prob=0.3, full_sentences=True, dynamic_masking=True,
                        docs_buffer_size=7, tgt_seq_length=32, masking=MaskingConfig(True, 0.5, 4))
    header = {"target": "mlm", **cfg.settings()}
    assert builder_config_from_header(header) == cfg
    # a header written before some options were recorded: those took their defaults
    old = {k: v for k, v in header.items() if k not in ("short_seq_prob", "docs_buffer_size", "tgt_seq_length")}
    assert builder_config_from_header(old) == BuilderConfig(
        seq_length=64, dup_factor=2, full_sentences=True, dynamic_masking=True, masking=MaskingConfig(True, 0.5, 4))


@pytest.mark.e2e
def test_options_and_config_import_no_component_module():
    """The options/config floor of DESIGN.md stands on the ground floor alone."""
    import subprocess
    import sys

    code = ("import sys, uer.options, uer.config\n"
            "print(sorted(n for n in sys.modules if n.startswith('uer.')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["['uer.config',", "'uer.errors',", "'uer.options',", "'uer.registry']"], \
        proc.stdout
