#!/usr/bin/env python3
"""Training throughput: uer's training loop against HuggingFace transformers at the same size, on
the same batches, one after the other, each system in a fresh process of its own (as a user runs
it: uer's training loop keeps freed memory for reuse, see uer.utils.retain_freed_memory; a plain
HF loop runs with glibc's defaults, and once more with uer's setting, to show what that alone is
worth).

For each (recipe, target): uer runs its real `train()` loop on a dataset built by preprocess from
the shared CLUE sample; the reference runs a plain PyTorch loop (AdamW, clipping, the same
autocast) over the very same batches:
  bert -> BertForPreTraining, mlm -> BertForMaskedLM, with the MLM head applied only to the masked
          positions ("sparse"), and the plain HF call with -100 labels ("dense");
  lm   -> GPT2LMHeadModel (full-vocabulary logits at every position, as HF computes them);
  llama -> LlamaForCausalLM: uer's LLaMA-style model (RMSNorm, SwiGLU, RoPE, no biases, half as many
          key/value heads as query heads) at the recipe's sizes, on the lm dataset.
Reported: real (non-pad) tokens/s, padded tokens/s, step time, model-FLOPs utilisation (real
tokens only; 6 x parameters-in-matmuls per token plus attention and the heads at the predicted
positions; for uer's bert and mlm, whose last layer runs only at the positions the loss reads, the
FLOPs it performs there) twice: against the best matmul peak of the whole command (measured at the
start, after each group of systems, and in every run), and "paired": every run measures the peak
again after each --probe_every timed steps (the probe's time counts in no step), each window of
steps gets its MFU against the better of the two peaks measured right before and after it, and
the figure is the median over the windows of all the system's runs. A shared machine's speed
drifts by 15-25 % between minutes, so the first figure charges a run in a slow minute with the
peak of a fast one; the paired figure compares a step with a peak measured seconds from it. Then
the peak RSS growth of the run, and the ratio to the reference.

With --device cuda the models and batches live on the GPU, the host waits for the device only
before each probe (both loops queue their steps ahead, and read their loss once at the end), the
peak is an 8192^2 product timed by CUDA events, the reference's AdamW is the fused one (HF
Trainer's default there), and the memory column is the most device memory allocated.

    python3 bench/train_speed.py --recipes tiny small --targets bert mlm lm --steps 20
    python3 bench/train_speed.py --device cuda --bf16 --recipes base --targets bert mlm --no_retain_row
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import ROOT, SHARED, refuse_emulated_bf16, table  # noqa: E402

VOCAB = os.path.join(SHARED, "models", "google_zh_vocab.txt")
CORPORA = {"bert": "CLUECorpusSmall_bert_sampled.txt", "mlm": "CLUECorpusSmall_sampled.txt",
           "lm": "CLUECorpusSmall_sampled.txt", "llama": "CLUECorpusSmall_sampled.txt"}
RECIPES = {"tiny": "bert_tiny_config.json", "small": "bert_small_config.json", "base": "bert_base_config.json"}


def matmul_peak(dtype: torch.dtype, reps: int = 10, device: str = "cpu") -> float:
    """Best FLOP/s of an n x n matmul (random data): n = 2048 with the current thread count on the
    CPU; n = 8192 on a GPU, each product timed by CUDA events."""
    cuda = device.startswith("cuda")
    n = 8192 if cuda else 2048
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(2):
        a @ b
    best = math.inf
    for _ in range(reps):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            a @ b
            end.record()
            end.synchronize()
            best = min(best, start.elapsed_time(end) / 1000)
        else:
            t = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


class StepClock:
    """Times each step of a run (mark() after every optimizer step, at least one warm-up step
    first, each step timed from the end of the one before it) and measures the matmul peak before
    the first timed step and after every `every` timed steps, so that each window of steps has a
    peak measured on both sides of it, seconds apart. A probe's own time counts in no step. On a
    GPU only the marks before a probe wait for the device (so the host queues steps ahead as in
    training): there a single step's time is its host time, and a window's total is exact."""

    def __init__(self, warmup: int, steps: int, every: int, dtype: torch.dtype, device: str = "cpu"):
        self.warmup, self.steps, self.every, self.dtype, self.device = warmup, steps, every, dtype, device
        self.marked, self.last = 0, time.perf_counter()
        self.step_s: list[float] = []  # each timed step
        self.probes: list[tuple[int, float]] = []  # (timed steps before it, FLOP/s)

    def mark(self) -> None:
        self.marked += 1
        timed = self.marked - self.warmup
        probe = timed >= 0 and (timed % self.every == 0 or timed == self.steps)
        if probe:
            synchronize(self.device)
        now = time.perf_counter()
        if timed > 0:
            self.step_s.append(now - self.last)
        self.last = now
        if probe:
            self._probe(timed)

    def _probe(self, timed: int) -> None:
        self.probes.append((timed, matmul_peak(self.dtype, reps=5, device=self.device)))
        self.last = time.perf_counter()


def paired_mfu(step_flops: list[float], step_s: list[float], probes: list[tuple[int, float]]) -> list[float]:
    """The MFU of each window of steps between two probes, against the better of the two."""
    return [sum(step_flops[a:b]) / sum(step_s[a:b]) / max(pa, pb)
            for (a, pa), (b, pb) in zip(probes, probes[1:]) if b > a]


def model_flops(cfg, lengths: list[int], predicted: int, rows: int, last_rows: list[int] | None = None) -> float:
    """Training FLOPs (forward + backward = 3 x forward) of one batch, real tokens only.
    last_rows: the positions per row at which the last layer runs (uer with a target that reads
    only some positions); None: all of them."""
    H, F, L, V = cfg.hidden_size, cfg.feedforward_size, cfg.layers_num, cfg.vocab_size
    kv = H * (cfg.local_kv_heads_num or cfg.heads_num) // cfg.heads_num  # K and V widths
    ffn = (3 if cfg.feed_forward == "gated" else 2) * H * F
    fwd = 0.0
    for i, n in enumerate(lengths):
        u = n if last_rows is None else last_rows[i]
        fwd += 2 * (L - 1) * (2 * H * H + 2 * H * kv + ffn) * n + 4 * (L - 1) * H * n * n  # linears; QK^T, AV
        fwd += 4 * H * kv * n + 2 * (2 * H * H + ffn) * u + 4 * H * u * n  # last layer: K, V at every position
    if cfg.target in ("bert", "mlm"):
        fwd += 2 * (H * H + H * V) * predicted  # transform + output layer at the masked positions
        if cfg.target == "bert":
            fwd += 2 * (H * H + 2 * H) * rows  # pooler + NSP
    else:
        fwd += 2 * H * V * predicted
    return 3 * fwd


def build_dataset(target: str, seq_length: int, work: str) -> str:
    from uer.cli import preprocess_main

    path = os.path.join(work, f"{target}.pt")
    target = "lm" if target == "llama" else target
    extra = ["--dynamic_masking"] if target != "lm" else []
    if target == "mlm":
        extra.append("--full_sentences")
    rc = preprocess_main(["--corpus_path", os.path.join(SHARED, "corpora", CORPORA[target]), "--vocab_path", VOCAB,
                          "--dataset_path", path, "--target", target, "--seq_length", str(seq_length),
                          "--processes_num", "2", *extra])
    assert rc == 0
    return path


def batches(dataset, special, batch_size: int, n: int, seed: int, length_buckets: bool = False) -> list[dict]:
    """The first n batches of a loader: those uer's training loop takes with these settings."""
    from uer.data.loader import BatchLoader

    loader = BatchLoader(dataset, special, batch_size, seed=seed, length_buckets=length_buckets)
    return [{k: (torch.as_tensor(v) if not isinstance(v, int) else v) for k, v in loader.next_arrays().items()}
            for _ in range(n)]


def batch_stats(cfg, batch: dict, uer: bool) -> tuple[int, int, float]:
    """(real tokens, padded positions, model FLOPs): uer's FLOPs count its last layer only at the
    positions the target reads (the masked ones, and position 0 for bert), as it computes them."""
    from uer.model.model import read_plan
    from uer.registry import TARGETS

    src = batch["src"]
    lengths = (src != 0).sum(1).tolist()
    key = {"bert": "mlm_tgt", "mlm": "mlm_tgt", "lm": "lm_tgt"}[cfg.target]
    last_rows = None
    reads = TARGETS[cfg.target].reads
    if uer and reads is not None:
        rows = read_plan(batch, reads)["read:rows"]
        last_rows = torch.bincount(rows // src.shape[1], minlength=src.shape[0]).tolist()
    return sum(lengths), src.numel(), model_flops(cfg, lengths, len(batch[key]), src.shape[0], last_rows)


def run_uer(mcfg, dataset_path: str, special, args, work: str, clock: StepClock, length_buckets: bool,
            compile: bool = False, kernels: str = "auto") -> None:
    """uer's own training loop (one report, at the end) with the process settings pretrain.py
    takes by default (glibc keeps freed memory, a batch worker process); the clock marks each
    optimizer step."""
    from uer.config import TrainConfig
    from uer.data.dataset import Dataset
    from uer.train.distributed import Rank
    from uer.train.trainer import train
    from uer.utils import retain_freed_memory

    retain_freed_memory()

    total = args.warmup + args.steps
    tcfg = TrainConfig(dataset_path=dataset_path, output_model_path=os.path.join(work, "m.bin"), total_steps=total,
                       report_steps=total, save_checkpoint_steps=10 ** 9, batch_size=args.batch_size,
                       learning_rate=1e-4, warmup=0.0, bf16=args.bf16, seed=args.seed,
                       length_buckets=length_buckets, compile=compile, kernels=kernels,
                       overwrite=True)  # every measured run is a new one in the same work directory
    train(tcfg, mcfg, Dataset(dataset_path), special, log=lambda line: None, rank=Rank(device=args.device),
          worker="process")


def hf_model(mcfg, target: str):
    import transformers as tf

    H, L = mcfg.hidden_size, mcfg.layers_num
    if target == "llama":
        conf = tf.LlamaConfig(vocab_size=mcfg.vocab_size, hidden_size=H, intermediate_size=mcfg.feedforward_size,
                              num_hidden_layers=L, num_attention_heads=mcfg.heads_num,
                              num_key_value_heads=mcfg.local_kv_heads_num, max_position_embeddings=512,
                              rms_norm_eps=mcfg.layernorm_eps, attn_implementation="sdpa")
        return tf.LlamaForCausalLM(conf)
    if target == "lm":
        conf = tf.GPT2Config(vocab_size=mcfg.vocab_size, n_embd=H, n_layer=L, n_head=mcfg.heads_num,
                             n_inner=mcfg.feedforward_size, n_positions=512, attn_implementation="sdpa")
        return tf.GPT2LMHeadModel(conf)
    conf = tf.BertConfig(vocab_size=mcfg.vocab_size, hidden_size=H, num_hidden_layers=L,
                         num_attention_heads=mcfg.heads_num, intermediate_size=mcfg.feedforward_size,
                         max_position_embeddings=512, type_vocab_size=2, attn_implementation="sdpa")
    return tf.BertForPreTraining(conf) if target == "bert" else tf.BertForMaskedLM(conf)


def hf_loss(model, target: str, b: dict, sparse: bool) -> torch.Tensor:
    ce = torch.nn.functional.cross_entropy
    mask = (b["src"] != 0).long()
    if target in ("lm", "llama"):
        logits = model(input_ids=b["src"], attention_mask=mask).logits
        return ce(logits.reshape(-1, logits.shape[-1])[b["lm_pos"]].float(), b["lm_tgt"])
    types = (b["seg"] == 2).long()
    if not sparse:
        labels = torch.full_like(b["src"], -100).view(-1)
        labels[b["mlm_pos"]] = b["mlm_tgt"]
        kw = {"next_sentence_label": b["label"]} if target == "bert" else {}
        return model(input_ids=b["src"], attention_mask=mask, token_type_ids=types,
                     labels=labels.view_as(b["src"]), **kw).loss
    out = model.bert(input_ids=b["src"], attention_mask=mask, token_type_ids=types)
    hidden = out.last_hidden_state
    picked = hidden.reshape(-1, hidden.shape[-1])[b["mlm_pos"]]
    loss = ce(model.cls.predictions(picked).float(), b["mlm_tgt"])
    if target == "bert":
        loss = loss + ce(model.cls.seq_relationship(out.pooler_output).float(), b["label"])
    return loss


def run_hf(mcfg, target: str, data: list[dict], args, clock: StepClock, sparse: bool, retain: bool = False) -> None:
    if retain:
        from uer.utils import retain_freed_memory

        assert retain_freed_memory()
    torch.manual_seed(args.seed)
    model = hf_model(mcfg, target).to(args.device)
    model.train()
    cuda = args.device.startswith("cuda")  # there the fused AdamW, as HF's Trainer takes by default
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, **({"fused": True} if cuda else
                                                                                 {"foreach": True}))
    ctx = (lambda: torch.autocast(torch.device(args.device).type, dtype=torch.bfloat16)) if args.bf16 else None
    total = 0.0
    for b in data:
        b = {k: v.to(args.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in b.items()}
        if ctx:
            with ctx():
                loss = hf_loss(model, target, b, sparse)
        else:
            loss = hf_loss(model, target, b, sparse)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        total = total + loss.detach()  # summed on the device, as HF's Trainer does, read once
    float(total)


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


SYSTEMS = {  # name -> ("uer", length_buckets[, --compile, --kernels]) or ("hf", sparse head, uer's malloc setting)
    "uer": ("uer", True), "uer --length_buckets false": ("uer", False), "uer --compile": ("uer", True, True),
    "uer --kernels stock": ("uer", True, False, "stock"),
    "HF sparse MLM head": ("hf", True, False), "HF sparse MLM head + uer's malloc setting": ("hf", True, True),
    "HF plain (dense head)": ("hf", False, False),
    "HF GPT2LMHeadModel": ("hf", True, False), "HF GPT2LMHeadModel + uer's malloc setting": ("hf", True, True),
    "HF LlamaForCausalLM": ("hf", True, False), "HF LlamaForCausalLM + uer's malloc setting": ("hf", True, True),
}
REFERENCES = {"lm": "HF GPT2LMHeadModel", "llama": "HF LlamaForCausalLM"}


def model_config(recipe: str, target: str, vocab_size: int):
    from uer.config import build_model_config, load_recipe

    options = {"target": target}
    if target == "lm":  # GPT-2 layout, as GPT2LMHeadModel
        options.update(mask="causal", embedding="word_pos", remove_embedding_layernorm=True,
                       layernorm_positioning="pre", tie_weights=True)
    if target == "llama":  # LLaMA layout at the recipe's sizes, as LlamaForCausalLM
        with open(os.path.join(ROOT, "models", "llama_tiny_config.json"), encoding="utf-8") as f:
            blocks = {k: v for k, v in json.load(f).items() if not isinstance(v, (int, float)) or isinstance(v, bool)}
        sizes = load_recipe(os.path.join(ROOT, "models", RECIPES[recipe]))
        options = {**blocks, "dropout": 0.0, "layernorm_eps": 1e-6, "local_kv_heads_num": sizes["heads_num"] // 2}
        return build_model_config(sizes, options, set(options), vocab_size)
    return build_model_config(load_recipe(os.path.join(ROOT, "models", RECIPES[recipe])), options, set(options),
                              vocab_size)


def run_one(job: dict, args) -> dict:
    """In a fresh process: one system's timed run -> {"step_s", "step_s_each", "probes",
    "peak_rss_growth_mib"}; the clock's probes are its peaks."""
    from uer.data.dataset import Dataset
    from uer.vocab import load_vocab

    vocab = load_vocab(VOCAB, None)
    special = vocab.special_ids()
    mcfg = model_config(job["recipe"], job["target"], len(vocab))
    kind, *options = SYSTEMS[job["system"]]
    clock = StepClock(args.warmup, args.steps, args.probe_every, peak_dtype(args), args.device)
    # every optimizer step, uer's and the reference's alike, marks the clock
    register_optimizer_step_post_hook(lambda *_: clock.mark())
    if kind == "uer":
        before = rss_mib()
        run_uer(mcfg, job["dataset"], special, args, job["work"], clock, *options)
    else:
        data = batches(Dataset(job["dataset"]), special, args.batch_size, args.warmup + args.steps, args.seed)
        before = rss_mib()
        run_hf(mcfg, job["target"], data, args, clock, *options)
    growth = rss_mib() - before
    assert len(clock.step_s) == args.steps, (len(clock.step_s), args.steps)
    return {"step_s": sum(clock.step_s) / args.steps, "step_s_each": clock.step_s, "probes": clock.probes,
            "peak_rss_growth_mib": growth,
            "peak_device_mib": torch.cuda.max_memory_allocated(args.device) / 2 ** 20
            if args.device.startswith("cuda") else None}


def peak_dtype(args) -> torch.dtype:
    return torch.bfloat16 if args.bf16 else torch.float32


def spell_peak(args) -> float:
    """The matmul peak now: the best of three measurements."""
    return max(matmul_peak(peak_dtype(args), device=args.device) for _ in range(3))


def run_job(job: dict, argv: list[str]) -> dict:
    """run_one in a fresh process (this script with --job)."""
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), *argv, "--job", json.dumps(job)],
                          capture_output=True, text=True)
    result = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not result:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"{job['system']} ({job['recipe']}, {job['target']}) failed")
    return json.loads(result[-1][len("RESULT "):])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipes", nargs="+", default=["tiny"], choices=sorted(RECIPES), help="Model sizes.")
    p.add_argument("--targets", nargs="+", default=["bert", "mlm", "lm"], choices=["bert", "mlm", "lm", "llama"],
                   help="Pre-training targets (llama: the lm target on a LLaMA-style model).")
    p.add_argument("--steps", type=int, default=64, help="Timed optimizer steps per run (64: one bucket window).")
    p.add_argument("--warmup", type=int, default=3, help="Untimed steps first.")
    p.add_argument("--batch_size", type=int, default=32, help="Instances per step.")
    p.add_argument("--seq_length", type=int, default=128, help="--seq_length of the datasets.")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast in both (default fp32).")
    p.add_argument("--device", default="cpu", help="cpu, or a GPU (cuda, cuda:N): the model, the batches and "
                                                   "the matmul peak (8192^2, timed by CUDA events) there.")
    p.add_argument("--no_dense", action="store_true", help="Skip the plain (dense-head) HF loop.")
    p.add_argument("--stock_row", action="store_true",
                   help="Also run uer with --kernels stock (PyTorch's ops only): the A/B of uer.kernels.")
    p.add_argument("--no_unbucketed", action="store_true", help="Skip the 'uer --length_buckets false' row.")
    p.add_argument("--compile", action="store_true",
                   help="Also run uer with --compile (torch.compile; its compile time is in the warm-up steps).")
    p.add_argument("--no_retain_row", action="store_true",
                   help="Skip the HF reference run with uer's malloc setting.")
    p.add_argument("--rounds", type=int, default=1,
                   help="Timed runs of every system, interleaved (all systems, then all again); a system's "
                        "step time is the median of its runs.")
    p.add_argument("--probe_every", type=int, default=8,
                   help="Measure the matmul peak after every this many timed steps in each run (for the "
                        "paired MFU; the probe's time counts in no step).")
    p.add_argument("--seed", type=int, default=7, help="Random seed.")
    p.add_argument("--json", default=None, help="Also write the rows to this JSON file.")
    p.add_argument("--job", default=None, help=argparse.SUPPRESS)  # internal: one system's run, as JSON
    args = p.parse_args(argv)
    if args.warmup < 1 or args.steps < 1 or args.probe_every < 1:
        p.error("--warmup, --steps and --probe_every must be at least 1 (a timed step is timed from "
                "the end of the step before it)")
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            p.error(f"--device {args.device}: CUDA is not available here")
        args.device = f"cuda:{torch.device(args.device).index or 0}"
    elif args.device != "cpu":
        p.error(f"--device {args.device}: expected cpu, cuda or cuda:N")
    if args.job:
        print("RESULT " + json.dumps(run_one(json.loads(args.job), args)), flush=True)
        return 0
    if args.bf16:  # once, in the command (its jobs come after it)
        refuse_emulated_bf16(p, args.device)

    from uer.data.dataset import Dataset
    from uer.vocab import load_vocab

    vocab = load_vocab(VOCAB, None)
    special = vocab.special_ids()
    peak = spell_peak(args)
    cuda = args.device.startswith("cuda")
    where = torch.cuda.get_device_name(args.device) if cuda else f"{torch.get_num_threads()} threads"
    unit, scale = ("TFLOP/s", 1e12) if cuda else ("GFLOP/s", 1e9)
    print(f"torch {torch.__version__}, {where}, matmul peak ({'bf16' if args.bf16 else 'fp32'}, "
          f"{8192 if cuda else 2048}^2): {peak / scale:.1f} {unit}", flush=True)
    rows, records = [], []
    shared = list(argv if argv is not None else sys.argv[1:])
    with tempfile.TemporaryDirectory() as work:
        for target in args.targets:
            path = build_dataset(target, args.seq_length, work)
            ds = Dataset(path)
            for recipe in args.recipes:
                mcfg = model_config(recipe, target, len(vocab))
                plain = batches(ds, special, args.batch_size, args.warmup + args.steps, args.seed)
                bucketed = batches(ds, special, args.batch_size, args.warmup + args.steps, args.seed, True)
                ref_name = REFERENCES.get(target, "HF sparse MLM head")
                names = (["uer"] + ["uer --kernels stock"] * args.stock_row
                         + ["uer --length_buckets false"] * (not args.no_unbucketed)
                         + ["uer --compile"] * args.compile + [ref_name])
                if not args.no_retain_row:
                    names.append(ref_name + " + uer's malloc setting")
                if target in ("bert", "mlm") and not args.no_dense:
                    names.append("HF plain (dense head)")
                stats, step_flops = {}, {}
                for name in names:
                    kind, buckets, *_ = SYSTEMS[name]
                    data = bucketed if kind == "uer" and buckets else plain  # the batches the system trains on
                    counted = [batch_stats(mcfg, b, kind == "uer") for b in data[args.warmup:]]
                    stats[name] = [sum(s[i] for s in counted) / args.steps for i in range(3)]
                    step_flops[name] = [s[2] for s in counted]
                runs = {name: [] for name in names}
                for _ in range(args.rounds):  # A B C, A B C: a drift in the machine's speed hits all alike
                    for name in names:
                        job = {"system": name, "recipe": recipe, "target": target, "dataset": path, "work": work}
                        runs[name].append(run_job(job, shared))
                for name in names:
                    real, padded, flops = stats[name]
                    t = statistics.median(r["step_s"] for r in runs[name])
                    rec = {"recipe": recipe, "target": target, "system": name, "step_s": t,
                           "step_s_runs": [r["step_s"] for r in runs[name]],
                           "mfu_paired": statistics.median(
                               m for r in runs[name] for m in paired_mfu(step_flops[name], r["step_s_each"],
                                                                         r["probes"])),
                           "probe_flops_runs": [[p for _, p in r["probes"]] for r in runs[name]],
                           "real_tokens_per_s": real / t, "padded_tokens_per_s": padded / t,
                           "flops_per_s": flops / t,
                           "peak_rss_growth_mib": max(r["peak_rss_growth_mib"] for r in runs[name]),
                           "peak_device_mib": max(r["peak_device_mib"] or 0 for r in runs[name]) if cuda else None}
                    records.append(rec)
                    print(json.dumps(rec), flush=True)
                group = records[-len(names):]
                for rec in group:
                    rec["reference_real_tokens_per_s"] = group[names.index(ref_name)]["real_tokens_per_s"]
                # a busy moment at the start would understate the peak (and overstate MFU): the
                # command's peak is the best of every measurement, the runs' own included
                peak = max(peak, spell_peak(args), *(p for rs in runs.values() for r in rs for _, p in r["probes"]))
    for rec in records:
        rec["mfu"] = rec["flops_per_s"] / peak
        rows.append([rec["recipe"], rec["target"], rec["system"], f"{rec['real_tokens_per_s']:,.0f}",
                     f"{rec['padded_tokens_per_s']:,.0f}", f"{rec['step_s'] * 1000:.0f}", f"{100 * rec['mfu']:.0f} %",
                     f"{100 * rec['mfu_paired']:.0f} %",
                     f"{rec['peak_device_mib'] if cuda else rec['peak_rss_growth_mib']:,.0f}",
                     f"{rec['real_tokens_per_s'] / rec['reference_real_tokens_per_s']:.2f}x"])
    probed = [p for rec in records for ps in rec["probe_flops_runs"] for p in ps]
    print()
    print(f"batch {args.batch_size} x seq {args.seq_length}, {'bf16' if args.bf16 else 'fp32'}, "
          f"{where}, {args.steps} timed steps; MFU against {peak / scale:.0f} {unit} "
          f"(the best peak of the command); paired: the median over windows of {args.probe_every} steps of "
          f"the window's MFU against the better of the peaks measured right before and after it, in the "
          f"same process ({min(probed) / scale:.0f}-{max(probed) / scale:.0f} {unit}); peak MiB: "
          + ("the most device memory allocated" if cuda else "the growth of the process's peak RSS over the run"))
    print(table(["recipe", "target", "system", "real tokens/s", "padded tokens/s", "step ms", "MFU",
                 "MFU paired", "peak MiB", "real tokens/s vs reference"], rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
