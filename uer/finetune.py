"""Fine-tune a pre-trained model as a classifier (finetune/run_classifier.py) and predict with it
(inference/run_classifier_infer.py).

The TSV files have a header (`label<TAB>text_a[<TAB>text_b]`; the label column is optional for
inference). Fine-tuning reuses the pre-training pieces: the files become `cls` datasets (the cls
instance builder), the model is the pre-trained embedding and encoder with a `cls` target, and the
one training loop runs it, evaluating the dev set every epoch and keeping the best model.
"""
from __future__ import annotations

import math
import os
import tempfile

import torch

from uer import components
from uer.config import TrainConfig, build_model_config, load_recipe
from uer.errors import ConfigError, UerError
from uer.options import parse


def read_tsv_header(path: str, need_label: bool = True) -> list[str]:
    """Check a TSV: a header naming label (if needed), text_a [, text_b]; every line with as many
    fields, and an integer label. Errors name the file and the line."""
    if not os.path.isfile(path):
        raise UerError(f"{path}: file not found")
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
                        if int(fields[label_at]) < 0:
                            raise ValueError
                    except ValueError:
                        raise UerError(f"{path} line {n}: the label {fields[label_at]!r} is not an integer "
                                       ">= 0") from None
        except UnicodeDecodeError as e:
            raise UerError(f"{path}: not UTF-8 text ({e})") from None
    return header


def to_cls_corpus(path: str, header: list[str], out_path: str) -> int:
    """Rewrite a TSV in the cls corpus layout (label first; 0 when the TSV has no label column);
    returns the number of lines."""
    order = [header.index(c) for c in ("label", "text_a", "text_b") if c in header]
    n = 0
    with open(path, encoding="utf-8") as f, open(out_path, "w", encoding="utf-8") as out:
        f.readline()
        for line in f:
            if line.strip():
                fields = line.rstrip("\r\n").split("\t")
                out.write("\t".join(([] if "label" in header else ["0"]) + [fields[i] for i in order]) + "\n")
                n += 1
    return n


def build_cls_dataset(tsv: str, header: list[str], workdir: str, name: str, vocab, args) -> str:
    from uer.data.builders import BuilderConfig
    from uer.data.preprocess import PreprocessJob, build_dataset

    corpus = os.path.join(workdir, name + ".txt")
    to_cls_corpus(tsv, header, corpus)
    out = os.path.join(workdir, name + ".pt")
    build_dataset(PreprocessJob(corpus_path=corpus, dataset_path=out, target="cls", tokenizer=args.tokenizer,
                                vocab=vocab, spm_model_path=args.spm_model_path,
                                builder=BuilderConfig(seq_length=args.seq_length), show_progress=False))
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
    from uer.data.dataset import Dataset
    from uer.data.loader import BatchLoader
    from uer.checkpoint import load_model
    from uer.model import build_model, model_problems
    from uer.train.trainer import evaluate, train
    from uer.vocab import load_vocab

    components.load()
    args, explicit = parse("finetune", argv)
    explicit |= {"target"}
    headers = {name: read_tsv_header(getattr(args, name + "_path"))
               for name in ("train", "dev", "test") if getattr(args, name + "_path")}
    vocab = load_vocab(args.vocab_path, args.spm_model_path)
    vocab.special_ids()
    out_dir = os.path.dirname(os.path.abspath(args.output_model_path))
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".uer-finetune-", dir=out_dir) as work:
        paths = {name: build_cls_dataset(getattr(args, name + "_path"), h, work, name, vocab, args)
                 for name, h in headers.items()}
        train_ds = Dataset(paths["train"])
        labels_num = args.labels_num or max(Dataset(q).header["labels_num"] for q in paths.values())
        options = {**vars(args), "labels_num": labels_num}
        mcfg = build_model_config(load_recipe(args.config_path), options, explicit | {"labels_num"}, len(vocab))
        problems = model_problems(mcfg)
        for name, q in paths.items():
            if Dataset(q).header["labels_num"] > labels_num:
                problems.append(f"--{name}_path has labels up to {Dataset(q).header['labels_num'] - 1}, but "
                                f"--labels_num is {labels_num}")
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
        tcfg = TrainConfig(dataset_path=paths["train"], output_model_path=os.path.join(work, "last.bin"),
                           pretrained_model_path=pretrained, strict_load=False,
                           total_steps=steps_per_epoch * args.epochs_num, report_steps=args.report_steps,
                           save_checkpoint_steps=10**9, batch_size=args.batch_size, seed=args.seed,
                           learning_rate=args.learning_rate, warmup=args.warmup, bf16=args.bf16,
                           dev_dataset_path=paths["dev"], dev_steps=steps_per_epoch,
                           best_model_path=args.output_model_path)
        special = vocab.special_ids()
        print(f"Fine-tuning on {len(train_ds)} examples, {labels_num} labels, {args.epochs_num} epochs of "
              f"{steps_per_epoch} steps.")
        result = train(tcfg, mcfg, train_ds, special)
        devs = [h["dev"]["cls"]["acc"] for h in result["history"] if "dev" in h]
        print(f"Dev accuracy by epoch: {' '.join(f'{a:.4f}' for a in devs)}; best {max(devs):.4f}.")
        if "test" in paths:
            model = build_model(mcfg)
            load_model(model, args.output_model_path)
            scores = evaluate(model, BatchLoader(Dataset(paths["test"]), special, args.batch_size, seed=args.seed),
                              tcfg, torch.device("cpu"))
            print(f"Test accuracy {scores['cls']['acc']:.4f} ({int(scores['cls']['count'])} examples) with "
                  f"the best dev model {args.output_model_path}.")
    return 0


def run_classifier_infer(argv=None) -> int:
    from uer.api import Pretrained
    from uer.data.dataset import Dataset
    from uer.data.loader import BatchLoader

    components.load()
    args, explicit = parse("infer", argv)
    explicit |= {"target"}
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
    with tempfile.TemporaryDirectory(prefix=".uer-infer-") as work:
        dataset = Dataset(build_cls_dataset(args.test_path, header, work, "test", m.vocab, args))
        for batch in BatchLoader(dataset, m.special, args.batch_size).ordered():
            batch.pop("tokens")
            with torch.no_grad():
                probs = torch.softmax(m.model.logits(batch)["cls"].float(), -1)
            for pr in probs:
                out.append(str(int(pr.argmax())) + ("\t" + " ".join(f"{x:.4f}" for x in pr.tolist())
                                                    if args.output_prob else "") + "\n")
    from uer.utils import atomic_write_text

    atomic_write_text(args.prediction_path, "".join(out))
    print(f"Wrote {len(out) - 1} predictions to {args.prediction_path}.")
    return 0


def run_classifier_main(argv=None) -> int:
    """The uer-finetune console command."""
    from uer.errors import run_cli

    return run_cli(run_classifier, argv)


def run_classifier_infer_main(argv=None) -> int:
    """The uer-infer console command."""
    from uer.errors import run_cli

    return run_cli(run_classifier_infer, argv)
