"""Every command-line option, defined once and shared by the CLIs.

Names, choices and defaults follow the user's manual (SPEC 2.1) with the decisions of SPEC 8.
Component choices are the manual's names plus whatever is registered; a name of the manual whose
component is not built yet is parsed and then rejected by validation with a clear message.
"""
from __future__ import annotations

import argparse
import os
import sys

from uer.config import BATCH_WORKERS, KERNELS, POOLINGS

EMBEDDINGS = ("word", "word_pos", "word_pos_seg", "word_sinusoidalpos")
ENCODERS = ("transformer", "rnn", "lstm", "gru", "birnn", "bilstm", "bigru", "gatedcnn")
DECODERS = ("transformer",)
TARGETS = ("bert", "lm", "mlm", "bilm", "albert", "mt", "t5", "cls")
TOKENIZERS = ("bert", "char", "space")

DEFAULT_CONFIG_PATH = "models/bert_base_config.json"


def _choices(manual: tuple[str, ...], registered) -> list[str]:
    return list(manual) + sorted(set(registered) - set(manual))


def _bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    invoked = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if invoked.startswith("uer-"):  # a console command (uer-preprocess, ...) names itself
        prog = invoked
    return argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=False,
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def add_vocab_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("vocabulary")
    g.add_argument("--vocab_path", default=None, help="Vocabulary file, one token a line.")
    g.add_argument("--spm_model_path", default=None,
                   help="SentencePiece model; its pieces are the vocabulary (wins over --vocab_path).")
    g.add_argument("--tgt_vocab_path", default=None, help="Target-side vocabulary (mt).")
    g.add_argument("--tgt_spm_model_path", default=None, help="Target-side SentencePiece model (mt).")


def add_masking_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("masking")
    g.add_argument("--span_masking", action="store_true", help="Mask spans of geometric length.")
    g.add_argument("--span_geo_prob", type=float, default=0.2,
                   help="p of the geometric span-length distribution.")
    g.add_argument("--span_max_length", type=int, default=10, help="Longest masked span.")


def build_preprocess_parser() -> argparse.ArgumentParser:
    from uer.data.builders import INSTANCE_BUILDERS
    from uer.tokenizers import TOKENIZERS as REGISTERED_TOKENIZERS

    p = _parser("preprocess.py", "Turn a text corpus into a dataset file for one pre-training target.")
    p.add_argument("--corpus_path", required=True, help="UTF-8 corpus in the target's format.")
    add_vocab_options(p)
    p.add_argument("--dataset_path", default="dataset.pt", help="Output dataset file.")
    p.add_argument("--tokenizer", choices=_choices(TOKENIZERS, REGISTERED_TOKENIZERS), default="bert",
                   help="bert: basic + WordPiece (or sentencepiece); char: characters; space: words.")
    p.add_argument("--do_lower_case", type=_bool, default=True, metavar="{true,false}",
                   help="Lower-case and strip accents in the bert tokenizer.")
    p.add_argument("--processes_num", type=int, default=1, help="Worker processes.")
    p.add_argument("--target", choices=_choices(TARGETS, INSTANCE_BUILDERS), default="bert",
                   help="Pre-training target the dataset is built for.")
    p.add_argument("--docs_buffer_size", type=int, default=100000,
                   help="Documents per buffer: the pool random next sentences are drawn from.")
    p.add_argument("--seq_length", type=int, default=128, help="Sequence length S.")
    p.add_argument("--tgt_seq_length", type=int, default=128, help="Target sequence length (mt, t5).")
    p.add_argument("--dup_factor", type=int, default=5,
                   help="Copies of each instance, each with its own static mask (1 with --dynamic_masking).")
    p.add_argument("--short_seq_prob", type=float, default=0.1,
                   help="Probability of a shorter target length for a document (bert).")
    p.add_argument("--full_sentences", action="store_true",
                   help="mlm: concatenate documents before cutting them into sequences.")
    p.add_argument("--seed", type=int, default=7, help="Random seed.")
    p.add_argument("--dynamic_masking", action="store_true",
                   help="Store unmasked instances; mask in the training loader instead.")
    add_masking_options(p)
    return p


def add_model_options(p: argparse.ArgumentParser) -> None:
    """The model slots and their switches (pretrain.py and the inference scripts)."""
    from uer.model.registry import DECODERS as REG_DEC, EMBEDDINGS as REG_EMB, ENCODERS as REG_ENC, \
        TARGETS as REG_TGT

    m = p.add_argument_group("model")
    m.add_argument("--embedding", choices=_choices(EMBEDDINGS, REG_EMB), default="word_pos_seg",
                   help="Embedding layer.")
    m.add_argument("--remove_embedding_layernorm", action="store_true",
                   help="Drop the LayerNorm after the embedding.")
    m.add_argument("--encoder", choices=_choices(ENCODERS, REG_ENC), default="transformer", help="Encoder.")
    m.add_argument("--mask", choices=["fully_visible", "causal"], default="fully_visible",
                   help="Transformer attention mask.")
    m.add_argument("--layernorm_positioning", choices=["pre", "post"], default="post",
                   help="LayerNorm before (GPT-2) or after (BERT) each sub-layer.")
    m.add_argument("--bidirectional", action="store_true", help="Bidirectional rnn/lstm/gru.")
    m.add_argument("--factorized_embedding_parameterization", action="store_true",
                   help="Embedding size E projected to hidden size H (ALBERT).")
    m.add_argument("--parameter_sharing", action="store_true",
                   help="One transformer layer applied layers_num times (ALBERT).")
    m.add_argument("--tgt_embedding", choices=_choices(EMBEDDINGS, REG_EMB), default="word_pos",
                   help="Decoder input embedding (mt, t5).")
    m.add_argument("--decoder", choices=_choices(DECODERS, REG_DEC), default="transformer",
                   help="Decoder (mt, t5).")
    m.add_argument("--pooling", choices=list(POOLINGS), default="first", help="Pooling (cls target).")
    m.add_argument("--target", choices=_choices(TARGETS, REG_TGT), default="bert", help="Target.")
    m.add_argument("--tie_weights", action="store_true",
                   help="Share the word embedding with the output projection.")
    m.add_argument("--has_lmtarget_bias", action="store_true", help="Bias on the lm/mt/t5 output layer.")


def build_pretrain_parser() -> argparse.ArgumentParser:
    p = _parser("pretrain.py", "Pre-train a model assembled from an embedding, an encoder, an "
                               "optional target embedding and decoder, and a target.")
    io = p.add_argument_group("files")
    io.add_argument("--dataset_path", default="dataset.pt", help="Dataset built by preprocess.py.")
    add_vocab_options(p)
    io.add_argument("--pretrained_model_path", default=None, help="Checkpoint to start from.")
    io.add_argument("--strict_load", type=_bool, default=True, metavar="{true,false}",
                    help="false: load what fits from --pretrained_model_path, list the rest, and give the "
                         "missing parameters the N(0, 0.02) init.")
    io.add_argument("--resume", action="store_true",
                    help="Continue exactly from the newest complete <output_model_path>-<step> checkpoint "
                         "(and its .state file), if there is one.")
    io.add_argument("--output_model_path", required=True,
                    help="Final model path; checkpoints go to <path>-<step>.")
    io.add_argument("--config_path", default=DEFAULT_CONFIG_PATH,
                    help="JSON model recipe; explicitly given options win over it.")
    io.add_argument("--dev_dataset_path", default=None,
                    help="A dataset built by preprocess.py (same target and vocabulary) from held-out text, "
                         "evaluated every --dev_steps steps: loss, accuracy, perplexity.")
    io.add_argument("--dev_steps", type=int, default=None,
                    help="Evaluate the dev dataset every N steps (default: --save_checkpoint_steps).")
    io.add_argument("--log_path", default=None, help="Also append every log line to this file (rank 0).")
    io.add_argument("--metrics_path", default=None,
                    help="CSV of the metrics (step, split, term, loss, acc, ppl, count, tokens_per_s, lr); "
                         "scripts/plot_log.py draws it.")
    t = p.add_argument_group("training")
    t.add_argument("--total_steps", type=int, default=100000, help="Optimizer steps.")
    t.add_argument("--save_checkpoint_steps", type=int, default=10000, help="Save every N steps.")
    t.add_argument("--report_steps", type=int, default=100, help="Report every N steps.")
    t.add_argument("--accumulation_steps", type=int, default=1, help="Micro-batches per optimizer step.")
    t.add_argument("--batch_size", type=int, default=32, help="Instances per micro-batch and process.")
    t.add_argument("--instances_buffer_size", type=int, default=25600,
                   help="Instances the loader prepares ahead of training (background thread; 16 batches at most).")
    t.add_argument("--length_buckets", type=_bool, default=True, metavar="{true,false}",
                   help="Batch instances of similar length (sorted within windows of 64 batches), so "
                        "little padding is computed.")
    t.add_argument("--labels_num", type=int, default=None, help="Number of labels (cls target).")
    t.add_argument("--dropout", type=float, default=0.1, help="Dropout probability.")
    t.add_argument("--seed", type=int, default=7, help="Random seed.")
    add_model_options(p)
    add_masking_options(p)
    o = p.add_argument_group("optimizer")
    o.add_argument("--learning_rate", type=float, default=2e-5, help="Peak learning rate.")
    o.add_argument("--warmup", type=float, default=0.1, help="Warm-up fraction of total_steps.")
    o.add_argument("--weight_decay", type=float, default=0.01,
                   help="AdamW weight decay on all but biases and LayerNorm.")
    o.add_argument("--max_grad_norm", type=float, default=1.0,
                   help="Clip the global gradient norm (0 disables).")
    o.add_argument("--beta1", type=float, default=0.9, help="Adam beta1.")
    o.add_argument("--beta2", type=float, default=0.999, help="Adam beta2.")
    x = p.add_argument_group("precision and devices")
    x.add_argument("--fp16", action="store_true", help="fp16 autocast with a gradient scaler (CUDA).")
    x.add_argument("--fp16_opt_level", choices=["O0", "O1", "O2", "O3"], default="O1",
                   help="O0 disables --fp16; O1/O2 autocast; O3 also keeps weights in fp16.")
    x.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA, or CPUs with bf16).")
    x.add_argument("--compile", action="store_true",
                   help="torch.compile the model for training: a minute or more of compiling at the start "
                        "(and once more when the batch shape first changes), then fused kernels; pays on "
                        "GPUs and in long runs.")
    x.add_argument("--kernels", choices=list(KERNELS), default="auto",
                   help="auto: uer's CPU kernels (dropout, attention with dropout) where they pay "
                        "(training on a CPU without --compile, fp32 or --bf16); stock: PyTorch's ops "
                        "everywhere.")
    x.add_argument("--batch_worker", choices=list(BATCH_WORKERS), default="process",
                   help="What builds batches ahead: a forked process (numpy only, so the training loop's "
                        "host never waits for the interpreter lock), a thread, or none (the loop itself).")
    x.add_argument("--keep_freed_memory", type=_bool, default=True, metavar="{true,false}",
                   help="Let glibc keep the memory a step frees for the next step (no fresh, zeroed pages "
                        "every step); false: glibc's defaults.")
    x.add_argument("--progress_bar", type=_bool, default=True, metavar="{true,false}",
                   help="A progress bar on a terminal (never when stderr is not one).")
    x.add_argument("--world_size", type=int, default=1, help="Total number of processes.")
    x.add_argument("--gpu_ranks", type=int, nargs="+", default=[],
                   help="Global ranks of the processes on this node (one GPU each).")
    x.add_argument("--master_ip", default="tcp://localhost:12345", help="tcp://host:port of rank 0.")
    x.add_argument("--backend", choices=["nccl", "gloo"], default="nccl",
                   help="torch.distributed backend (gloo also runs several processes on the CPU).")
    x.add_argument("--dist_timeout", type=int, default=300,
                   help="Seconds to wait for every process to join, and for any collective.")
    return p


def explicit_dests(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The dests of the options that appear on the command line (for CLI > recipe precedence)."""
    by_flag = {}
    for action in parser._actions:
        for s in action.option_strings:
            by_flag[s] = action.dest
    found = set()
    for token in argv:
        if token == "--":
            break
        flag = token.split("=", 1)[0]
        if flag in by_flag:
            found.add(by_flag[flag])
    return found
