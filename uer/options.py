"""Every command-line option of uer, declared once: name, type, default, help, choices.

OPTIONS holds the declarations; COMMANDS says which options each command (preprocess, pretrain,
finetune, the inference and conversion scripts) takes, in which groups, and where a command differs
from the declaration (a default, required, the help). `build_parser` makes an argparse parser from
them, and the typed configs (uer.config) take their defaults from OPTIONS. The choices of a
component slot are the names registered in uer.registry, read when the parser is built (the entry
points register uer's components first: uer.components.load). Names and defaults follow the user's
manual (SPEC 2.1) with the decisions of SPEC 8.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, replace
from typing import Any, Callable

from uer.registry import REGISTRIES


def _bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


@dataclass(frozen=True)
class Option:
    name: str
    help: str
    default: Any = None
    type: Callable[[str], Any] | None = None  # None: the text as given
    choices: tuple[str, ...] | None = None
    registry: str | None = None  # the choices are the names registered in uer.registry's kind
    flag: bool = False           # present or absent (store_true)
    nargs: str | None = None
    required: bool = False

    def add_to(self, group) -> None:
        kw: dict[str, Any] = {"help": self.help}
        if self.flag:
            group.add_argument(f"--{self.name}", action="store_true", **kw)
            return
        if self.required:
            kw["required"] = True
        else:
            kw["default"] = self.default
        if self.type is _bool:
            kw["metavar"] = "{true,false}"
        if self.type is not None:
            kw["type"] = self.type
        if self.nargs:
            kw["nargs"] = self.nargs
        choices = self.choices
        if self.registry:
            choices = tuple(REGISTRIES[self.registry])
            if not choices:
                raise RuntimeError(f"--{self.name}: no {self.registry} is registered; call "
                                   "uer.components.load() before building a parser")
        if choices is not None:
            kw["choices"] = list(choices)
        group.add_argument(f"--{self.name}", **kw)


POOLINGS = ("mean", "max", "first", "last")
DEFAULT_CONFIG_PATH = "bert_base"  # the packaged recipe (uer/recipes)

_DECLARED = [
    # files and vocabularies
    Option("corpus_path", "UTF-8 corpus in the target's format (one document a line, or sentences a line with "
                          "blank lines between documents; see the README)."),
    Option("dataset_path", "Dataset file built by preprocess.py.", "dataset.pt"),
    Option("dev_dataset_path", "A dataset built by preprocess.py (same target and vocabulary) from held-out text, "
                               "evaluated every --dev_steps steps: loss, accuracy, perplexity."),
    Option("vocab_path", "Vocabulary file, one token a line."),
    Option("spm_model_path", "SentencePiece model; its pieces are the vocabulary (wins over --vocab_path)."),
    Option("tgt_vocab_path", "Target-side vocabulary (mt)."),
    Option("tgt_spm_model_path", "Target-side SentencePiece model (mt)."),
    Option("config_path", "JSON model recipe: a file, or a packaged recipe's name (bert_base, bert_tiny, "
                         "albert_base, llama_tiny, ...); explicitly given options win over it.", DEFAULT_CONFIG_PATH),
    Option("pretrained_model_path", "Checkpoint to start from."),
    Option("strict_load", "false: load what fits from --pretrained_model_path, list the rest, and give the missing "
                          "parameters the N(0, 0.02) init.", True, _bool),
    Option("resume", "Continue exactly from the newest complete <output_model_path>-<step> checkpoint (and its "
                     ".state file), if there is one.", flag=True),
    Option("overwrite", "Start a new run even though --output_model_path holds another run's checkpoints or "
                        "final model: its checkpoints are deleted at start, its final model replaced at the end.",
           flag=True),
    Option("output_model_path", "Where the model goes."),
    Option("load_model_path", "The model checkpoint."),
    Option("input_model_path", "The checkpoint to read."),
    Option("input_dir", "A transformers model directory (config.json and model.safetensors or its shards)."),
    Option("output_dir", "Where the transformers model directory goes (config.json, model.safetensors)."),
    Option("approximate", "Write the transformers directory even where its logits differ from uer's (the "
                          "difference is reported).", flag=True),
    Option("export_hf", "After training, also write the final model as a transformers model directory here "
                        "(config.json, model.safetensors, tokenizer files), its logits checked against uer's."),
    Option("output_config_path", "Where the uer recipe of the converted model goes (default: "
                                 "<output_model_path without extension>_config.json)."),
    Option("log_path", "Also append every log line to this file (rank 0), with time, level and module."),
    Option("log_level", "The least severe messages shown: debug, info, warning or error.", "info",
           choices=("debug", "info", "warning", "error")),
    Option("tensorboard_dir", "Write the train and dev scalars (each term's loss and accuracy, perplexity, learning "
                              "rate, real tokens/s, gradient norm) here for TensorBoard (needs tensorboard)."),
    Option("metrics_path", "CSV of the metrics (step, split, term, loss, acc, ppl, count, tokens_per_s, lr); "
                           "scripts/plot_log.py draws it."),
    Option("input_path", "Text, one item a line."),
    Option("output_path", "Output file."),
    Option("train_path", "Training TSV: a header line (label, text_a[, text_b]), then label<TAB>text lines."),
    Option("dev_path", "Dev TSV (same layout), scored after every epoch; the best epoch's model is kept."),
    Option("test_path", "Test TSV (same layout), scored once with the best dev model."),
    Option("prediction_path", "Where the predictions go: a header, then one label a line."),
    # preprocessing
    Option("tokenizer", "bert: basic + WordPiece (or sentencepiece); char: characters; space: words.", "bert",
           registry="tokenizer"),
    Option("do_lower_case", "Lower-case and strip accents in the bert tokenizer.", True, _bool),
    Option("processes_num", "Worker processes.", 1, int),
    Option("docs_buffer_size", "Documents per buffer: the pool random next sentences are drawn from.", 100000, int),
    Option("seq_length", "Sequence length S: the longest input in tokens, [CLS] and [SEP] included.", 128, int),
    Option("tgt_seq_length", "Target sequence length (mt, t5, gsg, bart).", 128, int),
    Option("sentence_selection_strategy", "gsg: which sentences become gaps, the first ones (lead) or any (random).",
           "random", choices=("lead", "random")),
    Option("gap_sentence_ratio", "gsg: the fraction of a run's sentences that become gaps (at least one, and one "
                                 "stays).", 0.3, float),
    Option("infilling_ratio", "bart: the fraction of a run's tokens that text infilling hides, in spans that each "
                              "become one [MASK].", 0.3, float),
    Option("poisson_lambda", "bart: the mean length of text infilling's spans (Poisson; a span of length 0 inserts "
                             "a [MASK]).", 3.0, float),
    Option("sentence_permutation", "bart: shuffle the sentences of each run before text infilling.", True, _bool),
    Option("sentinel_tokens", "t5: T5's span corruption: each run of masked tokens becomes one sentinel in the source "
                              "(the vocabulary's [unused1], [unused2], ... in turn), and the decoder writes each "
                              "sentinel followed by its run.", flag=True),
    Option("dup_factor", "Copies of each instance, each with its own static mask (1 with --dynamic_masking).", 5,
           int),
    Option("short_seq_prob", "Probability of a shorter target length for a document (bert).", 0.1, float),
    Option("full_sentences", "mlm: concatenate documents before cutting them into sequences.", flag=True),
    Option("dynamic_masking", "Store unmasked instances; mask in the training loader instead.", flag=True),
    Option("span_masking", "Mask spans of geometric length.", flag=True),
    Option("span_geo_prob", "p of the geometric span-length distribution.", 0.2, float),
    Option("span_max_length", "Longest masked span.", 10, int),
    Option("whole_word_masking", "Mask whole words: all the pieces of a chosen word together (English words from "
                                 "WordPiece's ## pieces, Chinese words from jieba; bert, mlm, albert and t5).",
           flag=True),
    Option("user_dict_path", "A jieba user dictionary for --whole_word_masking (one word a line, optionally a "
                             "frequency and a tag)."),
    Option("seed", "Random seed.", 7, int),
    # the model
    Option("embedding", "Embedding layer.", "word_pos_seg", registry="embedding"),
    Option("remove_embedding_layernorm", "Drop the LayerNorm after the embedding.", flag=True),
    Option("encoder", "Encoder.", "transformer", registry="encoder"),
    Option("mask", "Transformer attention mask (causal_with_prefix: the first segment seen whole, the rest causal; "
                   "for --target prefixlm).", "fully_visible", choices=("fully_visible", "causal", "causal_with_prefix")),
    Option("layernorm_positioning", "LayerNorm before (GPT-2) or after (BERT) each sub-layer.", "post",
           choices=("pre", "post")),
    Option("layernorm", "Normalisation: torch (F.layer_norm), uer (the reference formula with the unbiased std "
                        "added to eps), rms (RMSNorm, LLaMA's).", "torch", choices=("torch", "uer", "rms")),
    Option("hidden_act", "Feed-forward activation (with --feed_forward gated: silu gives SwiGLU, gelu GeGLU).",
           "gelu", choices=("gelu", "gelu_fast", "relu", "silu")),
    Option("feed_forward", "Transformer feed-forward: dense (linear, activation, linear) or gated "
                           "(act(linear_gate(x)) * linear_1(x), then linear_2).", "dense",
           choices=("dense", "gated")),
    Option("remove_transformer_bias", "No bias in the transformer layers' linear layers and LayerNorms.", flag=True),
    Option("rotary_position_embedding", "Rotary position embedding (RoPE) on each layer's queries and keys; "
                                        "takes an embedding without positions (--embedding word).", flag=True),
    Option("rope_base", "RoPE's base (LLaMA: 10000; LLaMA 3: 500000).", 10000.0, float),
    Option("relative_position_embedding", "T5's relative position bias: a learned scalar per head and bucket of "
                                          "key-query distance, added to the attention scores of every layer (one "
                                          "table for the encoder, one for the decoder); takes embeddings without "
                                          "positions (--embedding word, --tgt_embedding word).", flag=True),
    Option("relative_attention_buckets_num", "--relative_position_embedding: the distance buckets (half for each "
                                             "direction in the encoder; exact below half of them, log-spaced above).",
           32, int),
    Option("relative_attention_max_distance", "--relative_position_embedding: the distance where the last bucket "
                                              "begins.", 128, int),
    Option("remove_attention_scale", "Attention scores without the 1/sqrt(head size) factor (T5's, which folds it "
                                     "into the initialisation).", flag=True),
    Option("local_kv_heads_num", "Key/value heads (grouped-query attention; must divide heads_num; default: "
                                 "heads_num).", None, int),
    Option("bidirectional", "Bidirectional rnn/lstm/gru.", flag=True),
    Option("factorized_embedding_parameterization", "Embedding size E projected to hidden size H (ALBERT).",
           flag=True),
    Option("parameter_sharing", "One transformer layer applied layers_num times (ALBERT).", flag=True),
    Option("tgt_embedding", "Decoder input embedding (mt, t5, gsg, bart).", "word_pos", registry="embedding"),
    Option("decoder", "Decoder (mt, t5, gsg, bart).", "transformer", registry="decoder"),
    Option("decoder_layernorm_positioning", "The decoder's LayerNorm: before each sub-layer, without dropout (pre, "
                                            "the reference mt/t5 decoder), or after it, with --dropout (post, "
                                            "BART's).", "pre", choices=("pre", "post")),
    Option("decoder_final_layernorm", "A LayerNorm after the decoder's last layer (T5's; the reference mt/t5 decoder "
                                      "has none).", flag=True),
    Option("share_embedding", "The decoder reads the encoder's word embedding: one table for both sides (BART); "
                              "needs one vocabulary for source and target.", flag=True),
    Option("pooling", "Pooling (cls target).", "first", choices=POOLINGS),
    Option("target", "Pre-training target.", "bert", registry="target"),
    Option("tie_weights", "Share the word embedding with the output projection.", flag=True),
    Option("has_lmtarget_bias", "Bias on the lm/mt/t5 output layer.", flag=True),
    Option("labels_num", "Number of labels (cls target).", None, int),
    Option("dropout", "Dropout probability.", 0.1, float),
    # training
    Option("total_steps", "Optimizer steps.", 100000, int),
    Option("save_checkpoint_steps", "Save every N steps.", 10000, int),
    Option("keep_checkpoints", "Keep only the newest N step checkpoints (model and .state); older ones are removed "
                               "once a newer one is complete. 0: keep all.", 0, int),
    Option("report_steps", "Report every N steps.", 100, int),
    Option("dev_steps", "Evaluate the dev dataset every N steps (default: --save_checkpoint_steps).", None, int),
    Option("accumulation_steps", "Micro-batches per optimizer step.", 1, int),
    Option("batch_size", "Instances per micro-batch and process.", 32, int),
    Option("instances_buffer_size", "Instances the loader prepares ahead of training (16 batches at most).",
           25600, int),
    Option("length_buckets", "Batch instances of similar length (sorted within windows of 64 batches), so little "
                             "padding is computed.", True, _bool),
    Option("learning_rate", "Peak learning rate.", 2e-5, float),
    Option("warmup", "Warm-up fraction of total_steps.", 0.1, float),
    Option("weight_decay", "AdamW weight decay on all but biases and LayerNorm.", 0.01, float),
    Option("max_grad_norm", "Clip the global gradient norm (0 disables).", 1.0, float),
    Option("beta1", "Adam beta1.", 0.9, float),
    Option("beta2", "Adam beta2.", 0.999, float),
    Option("adam_bias_correction", "torch's bias-corrected AdamW update. Default: UER-py's and Google BERT's update, "
                                   "without bias correction (p -= lr*m/(sqrt(v)+eps)), for which the manual's "
                                   "learning rates were tuned; the corrected one takes 3-5x smaller steps early "
                                   "on.", flag=True),
    # precision and devices
    Option("fp16", "fp16 autocast with a gradient scaler (CUDA).", flag=True),
    Option("fp16_opt_level", "O0 disables --fp16; O1/O2 autocast; O3 also keeps weights in fp16.", "O1",
           choices=("O0", "O1", "O2", "O3")),
    Option("bf16", "bf16 autocast (CUDA, or CPUs with bf16).", flag=True),
    Option("activation_checkpointing", "Keep only each transformer layer's input for the backward pass and "
                                       "recompute the rest there: less activation memory for about a third more "
                                       "compute; the same gradients.", flag=True),
    Option("fsdp", "Shard the parameters, gradients and optimizer state over the processes (torch's FSDP2: each "
                   "transformer layer, then the whole model), instead of a whole copy on every rank (DDP); the "
                   "model files are written whole, as always.", flag=True),
    Option("fsdp_hybrid", "With --fsdp: shard within each node and replicate across nodes (HSDP), so that only "
                          "gradients cross the nodes.", flag=True),
    Option("async_checkpoint", "With --fsdp: write the step checkpoints in the background while training goes on "
                               "(each rank's shards are first copied to memory); one is complete once written.",
           flag=True),
    Option("compile", "torch.compile the model for training: a minute or more of compiling at the start (and once "
                      "more when the batch shape first changes), then fused kernels; pays on GPUs and in long "
                      "runs.", flag=True),
    Option("kernels", "auto: uer's CPU kernels (dropout, attention with dropout) where they pay (training on a "
                      "CPU without --compile, fp32 or --bf16); stock: PyTorch's ops everywhere.", "auto",
           choices=("auto", "stock")),
    Option("batch_worker", "What builds batches ahead: a forked DataLoader worker process, or none (the training "
                           "loop itself).", "process", choices=("process", "none")),
    Option("keep_freed_memory", "Let glibc keep the memory a step frees for the next step (no fresh, zeroed pages "
                                "every step; the process keeps its peak memory); false: glibc's defaults.", True,
           _bool),
    Option("progress_bar", "A progress bar on a terminal (never when stderr is not one).", True, _bool),
    Option("world_size", "Total number of processes.", 1, int),
    Option("gpu_ranks", "Global ranks of the processes on this node (one GPU each).", [], int, nargs="+"),
    Option("master_ip", "tcp://host:port of rank 0.", "tcp://localhost:12345"),
    Option("backend", "torch.distributed backend (gloo also runs several processes on the CPU).", "nccl",
           choices=("nccl", "gloo")),
    Option("dist_timeout", "Seconds to wait for every process to join, and for any collective.", 300, int),
    # fine-tuning and inference
    Option("epochs_num", "Passes over the training set.", 3, int),
    Option("output_prob", "Also write the class probabilities.", flag=True),
    Option("topn", "Predictions per masked token.", 10, int),
    Option("features", "tokens: every position; first: the [CLS] vector; mean: the mean over real tokens.",
           "tokens", choices=("tokens", "first", "mean")),
    Option("top_k", "Sample among the k best (1: greedy; 0: all).", 70, int),
    Option("top_p", "Nucleus sampling threshold (0: off).", 0.0, float),
    Option("temperature", "Divide the logits by this before sampling (1: unchanged).", 1.0, float),
    Option("word_embedding_path", "Output, word2vec text format."),
    # the other scripts
    Option("model_list_path", "Checkpoints to average.", nargs="+"),
    Option("workers_num", "Counting processes.", 1, int),
    Option("min_count", "Keep tokens seen at least this often.", 1, int),
    Option("old_model_path", "The model trained with --old_vocab_path."),
    Option("old_vocab_path", "The vocabulary of --old_model_path."),
    Option("new_vocab_path", "The vocabulary the new model will use."),
    Option("new_model_path", "Where the adapted model goes."),
    Option("documents", "Number of documents.", 3000, int),
    Option("layers_num", "Number of layers (read from the checkpoint when left out).", None, int),
    Option("max_seq_length", "Rows of the position table to keep (the recipe's max_seq_length).", 512, int),
]
OPTIONS: dict[str, Option] = {o.name: o for o in _DECLARED}
assert len(OPTIONS) == len(_DECLARED), "an option is declared twice"


def default(name: str):
    """The declared default of an option (the typed configs read theirs here)."""
    o = OPTIONS[name]
    if o.flag:
        return False
    return tuple(o.default) if isinstance(o.default, list) else o.default


@dataclass(frozen=True)
class Command:
    prog: str
    description: str
    groups: tuple[tuple[str, str], ...]   # (title, the option names, space-separated)
    changes: dict[str, dict]              # option name -> the fields of its declaration this command changes


VOCAB = "vocab_path spm_model_path tgt_vocab_path tgt_spm_model_path"
MODEL = ("embedding remove_embedding_layernorm encoder mask layernorm_positioning layernorm hidden_act "
         "feed_forward remove_transformer_bias rotary_position_embedding rope_base relative_position_embedding "
         "relative_attention_buckets_num relative_attention_max_distance remove_attention_scale local_kv_heads_num "
         "bidirectional "
         "factorized_embedding_parameterization parameter_sharing tgt_embedding decoder decoder_layernorm_positioning "
         "decoder_final_layernorm share_embedding pooling target "
         "tie_weights has_lmtarget_bias")
INFERENCE = (("model", f"load_model_path config_path {VOCAB} tokenizer labels_num {MODEL}"),)
MASKING = "span_masking span_geo_prob span_max_length whole_word_masking user_dict_path"
_MLM = {"target": {"default": "mlm"}}

COMMANDS: dict[str, Command] = {
    "preprocess": Command("preprocess.py", "Turn a text corpus into a dataset file for one pre-training target.", (
        ("files", f"corpus_path {VOCAB} dataset_path log_level"),
        ("instances", "tokenizer do_lower_case processes_num target docs_buffer_size seq_length tgt_seq_length "
                      f"dup_factor short_seq_prob full_sentences seed dynamic_masking {MASKING} "
                      "sentence_selection_strategy gap_sentence_ratio infilling_ratio poisson_lambda "
                      "sentence_permutation sentinel_tokens")),
        {"corpus_path": {"required": True}, "dataset_path": {"help": "Output dataset file."},
         "target": {"registry": "instance_builder", "help": "Pre-training target the dataset is built for."}}),
    "pretrain": Command("pretrain.py", "Pre-train a model assembled from an embedding, an encoder, an optional "
                                       "target embedding and decoder, and a target.", (
        ("files", f"dataset_path {VOCAB} pretrained_model_path strict_load resume overwrite output_model_path "
                  "config_path "
                  "dev_dataset_path dev_steps log_path log_level metrics_path tensorboard_dir export_hf approximate"),
        ("training", "total_steps save_checkpoint_steps keep_checkpoints report_steps accumulation_steps batch_size "
                     "instances_buffer_size length_buckets labels_num dropout seed"),
        ("model", MODEL), ("masking", MASKING),
        ("optimizer", "learning_rate warmup weight_decay max_grad_norm beta1 beta2 adam_bias_correction"),
        ("precision and devices", "fp16 fp16_opt_level bf16 activation_checkpointing fsdp fsdp_hybrid async_checkpoint "
                                  "compile kernels "
                                  "batch_worker "
                                  "keep_freed_memory progress_bar world_size gpu_ranks master_ip backend "
                                  "dist_timeout")),
        {"output_model_path": {"required": True,
                               "help": "Final model path; checkpoints go to <path>-<step>."}}),
    "finetune": Command("run_classifier.py", "Fine-tune a pre-trained model as a classifier: train on --train_path, "
                                             "keep the best model on --dev_path, score --test_path.", (
        ("files", "pretrained_model_path output_model_path train_path dev_path test_path log_path log_level "
                  "tensorboard_dir"),
        ("training", "epochs_num learning_rate warmup adam_bias_correction report_steps seed bf16 seq_length "
                      "batch_size progress_bar"),
        ("model", f"config_path {VOCAB} tokenizer labels_num {MODEL}")),
        {"pretrained_model_path": {"help": "Pre-trained checkpoint; its embedding and encoder are loaded "
                                           "(none: random init)."},
         "output_model_path": {"default": "models/finetuned_model.bin", "help": "The best model (dev)."},
         "train_path": {"required": True}, "dev_path": {"required": True},
         "labels_num": {"help": "Classes (default: from the training labels)."},
         "batch_size": {"help": "Examples per step."}, "target": {"default": "cls"},
         "report_steps": {"default": None, "help": "Report every N steps (default: about 10 reports in the run)."}}),
    "infer": Command("run_classifier_infer.py", "Predict the labels of a TSV (header text_a[<TAB>text_b]) with a "
                                                "fine-tuned classifier.", (
        ("files", "load_model_path test_path prediction_path output_prob seq_length batch_size bf16 log_level"),
        ("model", f"config_path {VOCAB} tokenizer labels_num {MODEL}")),
        {"load_model_path": {"required": True,
                             "help": "The fine-tuned classifier (run_classifier.py --output_model_path)."},
         "test_path": {"required": True, "help": "TSV to predict: a header (text_a[, text_b]; a label column is "
                                                 "ignored), then one example a line."},
         "prediction_path": {"required": True}, "target": {"default": "cls"}}),
    "cloze_test": Command("cloze_test.py", "", INFERENCE + (("input", "input_path output_path topn seq_length seed"),),
                          {"load_model_path": {"required": True}, "input_path": {"required": True},
                           "output_path": {"required": True, "help": "Where the filled-in sentences go."}, **_MLM}),
    "extract_features": Command("extract_features.py", "", INFERENCE + (
        ("input", "input_path output_path seq_length batch_size features"),),
        {"load_model_path": {"required": True}, "input_path": {"required": True},
         "output_path": {"required": True, "help": "Where the features go (a torch tensor file)."},
         "batch_size": {"default": 64, "help": "Sentences per forward pass."}}),
    "generate_lm": Command("generate_lm.py", "", INFERENCE + (
        ("generation", "test_path prediction_path seq_length tgt_seq_length top_k top_p temperature seed "
                       "sentinel_tokens"),),
        {"load_model_path": {"required": True}, "test_path": {"required": True, "help": "Prompts, one a line."},
         "prediction_path": {"required": True, "help": "Output: each prompt with its continuation (lm), or the "
                                                       "generated target (prefixlm, mt, t5, gsg, bart)."},
         "seq_length": {"help": "Total length, prompt included (lm, prefixlm); the longest source (mt, t5, gsg, "
                                "bart)."},
         "tgt_seq_length": {"help": "mt, t5, gsg, bart: the longest generated target, its start token included."},
         "sentinel_tokens": {"help": "t5 models pre-trained with --sentinel_tokens: the line's k-th [MASK] becomes "
                                     "the k-th sentinel ([unused1], [unused2], ...)."},
         "target": {"default": "lm"}, "mask": {"default": "causal"}}),
    "extract_embeddings": Command("extract_embeddings.py", "", (
        ("files", f"load_model_path {VOCAB} word_embedding_path"),),
        {"load_model_path": {"required": True, "help": "The model whose word embedding is written."},
         "word_embedding_path": {"required": True}}),
    "average_models": Command("average_models.py", "", (("files", "model_list_path output_model_path"),),
                              {"model_list_path": {"required": True},
                               "output_model_path": {"required": True, "help": "Where the averaged model goes."}}),
    "build_vocab": Command("build_vocab.py", "", (("files", "corpus_path vocab_path workers_num min_count tokenizer"),),
                           {"corpus_path": {"required": True}, "vocab_path": {"required": True,
                                                                               "help": "Output vocabulary file."},
                            "tokenizer": {"registry": None, "choices": ("char", "space"), "default": "space",
                                          "help": "How to split lines."}}),
    "dynamic_vocab_adapter": Command("dynamic_vocab_adapter.py", "", (
        ("files", "old_model_path old_vocab_path new_vocab_path new_model_path seed"),),
        {**{n: {"required": True} for n in ("old_model_path", "old_vocab_path", "new_vocab_path", "new_model_path")},
         "seed": {"help": "Random seed for the rows of new tokens."}}),
    "make_demo_corpus": Command("make_demo_corpus.py", "", (("files", "output_path documents seed"),),
                                {"output_path": {"required": True, "help": "Where the corpus goes."},
                                 "seed": {"default": 1}}),
    "plot_log": Command("plot_log.py", "", (("files", "metrics_path output_path"),),
                        {"metrics_path": {"required": True, "help": "CSV written by pretrain.py --metrics_path."},
                         "output_path": {"required": True, "help": "PNG file."}}),
}
for _family in ("bert", "gpt2", "albert"):
    for _source, _dest in (("huggingface", "uer"), ("uer", "huggingface")):
        _names = "input_model_path output_model_path" + (" layers_num" if _family != "albert" else "") + \
                 (" target" if _family == "bert" else "") + (" max_seq_length" if _source == "huggingface" else "")
        _names += " input_dir" if _source == "huggingface" else \
            " output_dir config_path vocab_path spm_model_path tokenizer approximate"
        COMMANDS[f"convert_{_family}_from_{_source}_to_{_dest}"] = Command(
            f"convert_{_family}_from_{_source}_to_{_dest}.py",
            f"Convert a {_family} checkpoint from {_source} to {_dest}: a state-dict file, or a transformers "
            "model directory (--input_dir / --output_dir).", (("files", _names),),
            {"input_model_path": {"help": "The checkpoint to read (or --input_dir)." if _source == "huggingface"
                                  else "The uer model to read."},
             "output_model_path": {"help": "Where the state dict goes (or --output_dir)." if _dest == "huggingface"
                                   else "Where the uer model goes (its model card beside it)."},
             "target": {"registry": None, "choices": ("bert", "mlm"),
                        "help": "bert: BertForPreTraining (MLM + NSP); mlm: BertForMaskedLM (default: the model "
                                "card's)."},
             "config_path": {"default": None, "help": "The model's recipe, for a model without a model card."},
             "output_dir": {"help": "Write a transformers model directory: config.json, model.safetensors, the "
                                    "tokenizer files; its logits are checked against uer's."}})


#: the families converted as transformers model directories with a recipe (uer.convert.DIR_FAMILIES):
#: (the transformers class, what the uer model is, whether its directory takes the vocabulary's special ids)
_DIR_FAMILIES = {"llama": ("LlamaForCausalLM", "a LLaMA-style uer model", False),
                 "bart": ("BartForConditionalGeneration", "a uer bart model", True),
                 "t5": ("T5ForConditionalGeneration", "a uer T5 v1.1 model (--target t5)", True)}
for _family, (_class, _model, _special) in _DIR_FAMILIES.items():
    COMMANDS[f"convert_{_family}_from_huggingface_to_uer"] = Command(
        f"convert_{_family}_from_huggingface_to_uer.py", f"Convert a transformers {_class} directory to a uer model "
                                                         "file and its recipe.",
        (("files", "input_dir output_model_path output_config_path"),),
        {"input_dir": {"required": True}, "output_model_path": {"required": True}})
    COMMANDS[f"convert_{_family}_from_uer_to_huggingface"] = Command(
        f"convert_{_family}_from_uer_to_huggingface.py", f"Convert {_model} to a transformers {_class} directory.",
        (("files", "input_model_path config_path " + ("vocab_path " if _special else "") + "output_dir"),),
        {"input_model_path": {"required": True}, "output_dir": {"required": True},
         "config_path": {"required": True, "help": "The model's recipe (JSON)."},
         "vocab_path": {"help": "The model's vocabulary: its [CLS], [SEP] and [PAD] become the directory's decoder "
                                "start, end and padding tokens (for generation in transformers)."}})


def build_parser(command: str, description: str | None = None, prog: str | None = None) -> argparse.ArgumentParser:
    cmd = COMMANDS[command]
    invoked = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    prog = prog or (invoked if invoked.startswith("uer-") else cmd.prog)  # a console command names itself
    p = argparse.ArgumentParser(prog=prog, description=description or cmd.description, allow_abbrev=False,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for title, names in cmd.groups:
        group = p.add_argument_group(title)
        for n in names.split():
            replace(OPTIONS[n], **cmd.changes.get(n, {})).add_to(group)
    return p


def parse(command: str, argv: list[str] | None = None, description: str | None = None, prog: str | None = None):
    """(namespace, the names of the options given on the command line)."""
    parser = build_parser(command, description, prog)
    argv = sys.argv[1:] if argv is None else argv
    return parser.parse_args(argv), explicit_dests(parser, argv)


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
