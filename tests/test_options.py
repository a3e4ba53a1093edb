import re

import pytest

from conftest import SHARED
from uer.config import ModelConfig, merge
from uer.options import build_pretrain_parser, explicit_dests

MANUAL = f"{SHARED}/seed/000_7bd7c665b653ebb3.txt"
# SPEC 2.1 defaults, with the decisions of SPEC 8 (tgt_embedding defaults to one that works)
DEFAULTS = {"dataset_path": "dataset.pt", "config_path": "models/bert_base_config.json",
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
        if choices:
            assert list(actions[flag].choices)[:len(choices.split(","))] == choices.split(","), flag
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
