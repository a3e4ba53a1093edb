"""Fine-tune a pre-trained model as a classifier (finetune/run_classifier.py) and predict with it
(inference/run_classifier_infer.py).

The TSV files have a header (`label<TAB>text_a[<TAB>text_b]`; the label column is optional for
inference). Fine-tuning reuses the pre-training pieces: the files become `cls` datasets (the cls
instance builder), the model is the pre-trained embedding and encoder with a `cls` target, and the
one training loop runs it, evaluating the dev set every epoch and keeping the best model.
"""
from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile

import torch

from uer import components, logs
from uer.card import apply_defaults, card_problems, make_card, read_card, recipe_for, tokenizer_of
from uer.config import TrainConfig, build_model_config, tensorboard_problems
from uer.errors import ConfigError, UerError
from uer.options import parse
from uer.utils import owned_temp_dir

logger = logging.getLogger(__name__)

#: report lines in a fine-tuning run without --report_steps
REPORTS = 10

#: the most classes a head gets from the labels it sees (without --labels_num): one mistyped
#: label would otherwise make a head of a million classes
MAX_INFERRED_LABELS = 10_000


def read_tsv(path: str, need_label: bool = True) -> tuple[list[str], tuple[int, int] | None]:
    """Check a TSV: a header naming label (if needed), text_a [, text_b]; every line with as many
    fields, and an integer label. Returns the header and (largest label, its line), or None when
    the TSV has no labels. Errors name the file and the line."""
    from uer.data.corpus import MAX_LABEL

    if not os.path.isfile(path):
        raise UerError(f"{path}: " + ("a directory, not a file" if os.path.isdir(path) else "file not found"))
    largest = None
    with open(path, encoding="utf-8", errors="strict") as f:
        try:
            header = f.readline().rstrip("\r\n").split("\t")
            columns = set(header)
            if "text_a" not in columns or (need_label and "label" not in columns) or \
                    not columns <= {"label", "text_a", "text_b"}:
                raise UerError(f"{path} line 1: expected a header label<TAB>text_a[<TAB>text_b], found "
                               f"{header!r}")
            label_at = header.index("label") if "label" in header else None
            for n, line in enumerate(f, start=2):
                if not line.strip():
                    continue
                fields = line.rstrip("\r\n").split("\t")
                if len(fields) != len(header):
                    raise UerError(f"{path} line {n}: {len(fields)} tab-separated fields, the header has "
                                   f"{len(header)}")
                if label_at is not None:
                    try:
                        label = int(fields[label_at])
                        if not 0 <= label <= MAX_LABEL:
                            raise ValueError
                    except ValueError:
                        raise UerError(f"{path} line {n}: the label {fields[label_at]!r} is not an integer "
                                       f"from 0 to {MAX_LABEL}") from None
                    if largest is None or label > largest[0]:
                        largest = (label, n)
        except UnicodeDecodeError as e:
            raise UerError(f"{path}: not UTF-8 text ({e})") from None
    return header, largest


def read_tsv_header(path: str, need_label: bool = True) -> list[str]:
    return read_tsv(path, need_label)[0]


def label_problems(largest: dict[str, tuple[int, int] | None], paths: dict[str, str],
                   labels_num: int | None) -> list[str]:
    """Labels beyond --labels_num, or, when it is inferred, beyond MAX_INFERRED_LABELS classes;
    each named with its file and line."""
    p = []
    for name, found in largest.items():
        if found is None:
            continue
        label, line = found
        if labels_num is not None and label >= labels_num:
            p.append(f"--{name}_path {paths[name]} line {line}: the label {label} is beyond --labels_num "
                     f"{labels_num} (labels are 0, 1, ..., labels_num - 1)")
        elif labels_num is None and label >= MAX_INFERRED_LABELS:
            p.append(f"--{name}_path {paths[name]} line {line}: the label {label} would make a head of "
                     f"{label + 1} classes; correct the line, or give --labels_num {label + 1} if that many "
                     "classes are meant")
    return p


def to_cls_corpus(path: str, header: list[str], out_path: str) -> int:
    """Rewrite a TSV in the cls corpus layout (label first; 0 when the TSV has no label column),
    line for line: its header and blank lines stay, so that line N of the copy is line N of the
    TSV. Returns the number of examples."""
    order = [header.index(c) for c in ("label", "text_a", "text_b") if c in header]
    n = 0
    with open(path, encoding="utf-8") as f, open(out_path, "w", encoding="utf-8") as out:
        f.readline()
        out.write("\t".join(["label", "text_a", "text_b"][:len(order) + ("label" not in header)]) + "\n")
        for line in f:
            if line.strip():
                fields = line.rstrip("\r\n").split("\t")
                out.write("\t".join(([] if "label" in header else ["0"]) + [fields[i] for i in order]) + "\n")
                n += 1
            else:
                out.write("\n")
    return n


class UserPaths:
    """Fine-tuning works on files of its own in a temporary directory (removed at the end, or by the
    next run when this one was killed); its messages name the user's files instead."""

    def __init__(self, out_dir: str, tsv: dict[str, str], pretrained: str | None):
        self.work = owned_temp_dir(".uer-finetune-", out_dir)
        self.names = {os.path.join(self.work, "pretrained.bin"): f"(the encoder of) {pretrained}",
                      os.path.join(self.work, "last.bin"): "the last epoch's model"}
        for name, path in tsv.items():
            for ext in (".txt", ".pt"):
                self.names[os.path.join(self.work, name + ext)] = path

    def __call__(self, text: str) -> str:
        for temp, user in self.names.items():
            text = text.replace(temp, user)
        return text.replace(self.work, "a temporary directory")

    def log(self, line: str) -> None:
        if os.path.join(self.work, "last.bin") not in line:  # the last epoch's model is not kept
            logger.info(self(line))

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb):
        shutil.rmtree(self.work, ignore_errors=True)
        if isinstance(error, UerError):
            error.args = (self(str(error)),) + error.args[1:]
        return False


def build_cls_dataset(tsv: str, header: list[str], workdir: str, name: str, vocab, args,
                      show_progress: bool | None = False) -> str:
    from uer.data.builders import BuilderConfig
    from uer.data.preprocess import PreprocessJob, build_dataset

    corpus = os.path.join(workdir, name + ".txt")
    to_cls_corpus(tsv, header, corpus)
    out = os.path.join(workdir, name + ".pt")
    build_dataset(PreprocessJob(corpus_path=corpus, dataset_path=out, target="cls", tokenizer=args.tokenizer,
                                vocab=vocab, spm_model_path=args.spm_model_path,
                                builder=BuilderConfig(seq_length=args.seq_length), show_progress=show_progress))
    return out


def encoder_only(path: str, out: str) -> None:
    """The embedding and encoder of a checkpoint (and a cls head if it has one)."""
    from uer.checkpoint import map_later_names, read_state_dict

    state = map_later_names(read_state_dict(path))
    keep = {k: v for k, v in state.items() if k.startswith(("embedding.", "encoder."))
            or k.startswith(("target.linear_1.", "target.linear_2."))}
    if not any(k.startswith("encoder.") for k in keep):
        raise UerError(f"--pretrained_model_path {path} holds no encoder.* keys")
    torch.save(keep, out)


def run_classifier(argv=None) -> int:
    from uer.api import check_files
    from uer.data.dataset import Dataset
    from uer.data.loader import BatchLoader
    from uer.checkpoint import load_model
    from uer.model import build_model, model_problems
    from uer.train.trainer import evaluate, train
    from uer.vocab import load_vocab

    components.load()
    args, explicit = parse("finetune", argv)
    logs.setup(args.log_level)
    explicit |= {"target"}
    card = read_card(args.pretrained_model_path)
    apply_defaults(args, explicit, card, seq_length=False)
    tsv = {name: getattr(args, name + "_path") for name in ("train", "dev", "test") if getattr(args, name + "_path")}
    check_files({"--pretrained_model_path": args.pretrained_model_path, "--vocab_path": args.vocab_path},
                {"--output_model_path": args.output_model_path})
    read = {name: read_tsv(path) for name, path in tsv.items()}
    headers = {name: r[0] for name, r in read.items()}
    problems = label_problems({name: r[1] for name, r in read.items()}, tsv, args.labels_num)
    problems += tensorboard_problems(args.tensorboard_dir)
    if problems:
        raise ConfigError(problems)
    vocab = load_vocab(args.vocab_path, args.spm_model_path)
    vocab.special_ids()
    out_dir = os.path.dirname(os.path.abspath(args.output_model_path))
    os.makedirs(out_dir, exist_ok=True)
    with UserPaths(out_dir, tsv, args.pretrained_model_path) as user:
        work = user.work
        paths = {name: build_cls_dataset(getattr(args, name + "_path"), h, work, name, vocab, args,
                                         None if args.progress_bar else False)  # None: on a terminal
                 for name, h in headers.items()}
        train_ds = Dataset(paths["train"])
        labels_num = args.labels_num or max(Dataset(q).header["labels_num"] for q in paths.values())
        options = {**vars(args), "labels_num": labels_num}
        mcfg = build_model_config(recipe_for(args.config_path, explicit, card), options, explicit | {"labels_num"},
                                  len(vocab))
        problems = model_problems(mcfg) + card_problems(card, mcfg, vocab)
        if problems:
            raise ConfigError(problems)
        pretrained = None
        if args.pretrained_model_path:
            pretrained = os.path.join(work, "pretrained.bin")
            encoder_only(args.pretrained_model_path, pretrained)
            report = load_model(build_model(mcfg, init=False), pretrained, strict=False)
            wrong = report["misshaped"] + [k for k in report["missing"] if not k.startswith("target.")] + \
                report["unexpected"]
            if wrong:
                raise UerError(f"--pretrained_model_path {args.pretrained_model_path} does not fit the model of "
                               f"--config_path {args.config_path} and the model options: "
                               f"{len(wrong)} missing, unexpected or mis-shaped key(s): {'; '.join(wrong[:8])}")
        steps_per_epoch = math.ceil(len(train_ds) / args.batch_size)
        total_steps = steps_per_epoch * args.epochs_num
        report_steps = args.report_steps or max(1, round(total_steps / REPORTS))
        tcfg = TrainConfig(dataset_path=paths["train"], output_model_path=os.path.join(work, "last.bin"),
                           pretrained_model_path=pretrained, strict_load=False,
                           total_steps=total_steps, report_steps=report_steps,
                           save_checkpoint_steps=10**9, batch_size=args.batch_size, seed=args.seed,
                           learning_rate=args.learning_rate, warmup=args.warmup, bf16=args.bf16,
                           adam_bias_correction=args.adam_bias_correction,
                           dev_dataset_path=paths["dev"], dev_steps=steps_per_epoch,
                           best_model_path=args.output_model_path, log_path=args.log_path,
                           tensorboard_dir=args.tensorboard_dir)
        special = vocab.special_ids()
        logger.info(f"Fine-tuning on {len(train_ds)} examples, {labels_num} labels, {args.epochs_num} epochs of "
                    f"{steps_per_epoch} steps.")
        written = make_card(mcfg, vocab, tokenizer_of(args.tokenizer, True, args.spm_model_path), args.seq_length)
        with logs.progress_bar(args.progress_bar, total_steps) as bar:
            result = train(tcfg, mcfg, train_ds, special, log=user.log, progress=bar, card=written)
        devs = [h["dev"]["cls"]["acc"] for h in result["history"] if "dev" in h]
        logger.info(f"Dev accuracy by epoch: {' '.join(f'{a:.4f}' for a in devs)}; best {max(devs):.4f}.")
        if "test" in paths:
            model = build_model(mcfg)
            load_model(model, args.output_model_path)
            scores = evaluate(model, BatchLoader(Dataset(paths["test"]), special, args.batch_size, seed=args.seed),
                              tcfg, torch.device("cpu"))
            logger.info(f"Test accuracy {scores['cls']['acc']:.4f} ({int(scores['cls']['count'])} examples) with "
                        f"the best dev model {args.output_model_path}.")
    return 0


def run_classifier_infer(argv=None) -> int:
    from uer.api import Pretrained, check_files
    from uer.data.dataset import Dataset
    from uer.data.loader import BatchLoader
    from uer.train.precision import autocast

    components.load()
    args, explicit = parse("infer", argv)
    logs.setup(args.log_level)
    explicit |= {"target"}
    apply_defaults(args, explicit, read_card(args.load_model_path))
    check_files({"--load_model_path": args.load_model_path, "--vocab_path": args.vocab_path},
                {"--prediction_path": args.prediction_path})
    header = read_tsv_header(args.test_path, need_label=False)
    if args.labels_num is None:
        from uer.checkpoint import read_state_dict

        w = read_state_dict(args.load_model_path).get("target.linear_2.weight")
        if w is None:
            raise UerError(f"{args.load_model_path} is not a classifier (no target.linear_2.weight)")
        args.labels_num = w.shape[0]
    m = Pretrained.from_args(args, explicit | {"labels_num"})
    out = ["label" + ("\tprob" if args.output_prob else "") + "\n"]
    # the same instances as in fine-tuning: the TSV goes through the cls builder
    with UserPaths(tempfile.gettempdir(), {"test": args.test_path}, None) as user:
        dataset = Dataset(build_cls_dataset(args.test_path, header, user.work, "test", m.vocab, args))
        for batch in BatchLoader(dataset, m.special, args.batch_size).ordered():
            batch.pop("tokens")
            with torch.no_grad(), autocast(args.bf16, False, "O0", m.device):
                probs = torch.softmax(m.model.logits(batch)["cls"].float(), -1)
            for pr in probs:
                out.append(str(int(pr.argmax())) + ("\t" + " ".join(f"{x:.4f}" for x in pr.tolist())
                                                    if args.output_prob else "") + "\n")
    from uer.utils import atomic_write_text

    atomic_write_text(args.prediction_path, "".join(out))
    logger.info(f"Wrote {len(out) - 1} predictions to {args.prediction_path}.")
    return 0


def run_classifier_main(argv=None) -> int:
    """The uer-finetune console command."""
    from uer.errors import run_cli

    return run_cli(run_classifier, argv)


def run_classifier_infer_main(argv=None) -> int:
    """The uer-infer console command."""
    from uer.errors import run_cli

    return run_cli(run_classifier_infer, argv)
