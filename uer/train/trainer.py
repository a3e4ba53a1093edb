"""The one training loop, for every target.

Per optimizer step: take `accumulation_steps` micro-batches, count each loss term's predictions
on the host (global-batch normalisation: every term's summed loss is divided by its count over
the whole step), run forward/backward on each, clip, step. Metrics stay on the device and are read
only at report steps. Checkpoints go to <output_model_path>-<step>, and the final model to
<output_model_path>.
"""
from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass, field

import torch

from uer.config import ModelConfig, TrainConfig
from uer.data.dataset import Dataset
from uer.data.loader import BatchLoader
from uer.data.masking import MaskingConfig
from uer.errors import UerError
from uer.model import build_model, count_parameters
from uer.train.checkpoint import load_model, save_model
from uer.train.optim import build_optimizer, build_scheduler
from uer.utils import set_seed
from uer.vocab import SpecialIds


@dataclass
class Window:
    """Metrics accumulated between two reports (device tensors, host token count)."""
    sums: dict = field(default_factory=dict)
    tokens: int = 0
    start: float = field(default_factory=time.perf_counter)

    def add(self, terms: dict) -> None:
        for name, (loss, correct, count) in terms.items():
            new = torch.stack([loss.detach().float(), correct.float(), count.float()])
            self.sums[name] = self.sums[name] + new if name in self.sums else new

    def read(self) -> dict[str, dict[str, float]]:
        out = {}
        for name, t in self.sums.items():
            loss, correct, count = t.tolist()
            out[name] = {"loss": loss / max(count, 1), "acc": correct / max(count, 1), "count": count}
        return out


def format_report(step: int, total: int, tokens_per_s: float, metrics: dict, lr: float,
                  elapsed: float) -> str:
    loss = sum(m["loss"] for m in metrics.values())
    parts = [f"| {step:8d}/{total:8d} steps", f" {tokens_per_s:10.2f} tokens/s", f" loss {loss:7.3f}"]
    if len(metrics) == 1:
        parts.append(f" acc: {next(iter(metrics.values()))['acc']:.3f}")
    else:
        parts += [f" loss_{k}: {m['loss']:.3f}" for k, m in metrics.items()]
        parts += [f" acc_{k}: {m['acc']:.3f}" for k, m in metrics.items()]
    parts += [f" lr {lr:.3e}", f" elapsed {elapsed:7.1f}s"]
    return "|".join(parts)


def pick_device(cfg: TrainConfig) -> torch.device:
    if not cfg.gpu_ranks:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UerError(f"--gpu_ranks {' '.join(map(str, cfg.gpu_ranks))} asks for GPUs, but CUDA is "
                       "not available here; leave out --gpu_ranks to train on the CPU")
    gpu = cfg.gpu_ranks[0]
    if gpu >= torch.cuda.device_count():
        raise UerError(f"--gpu_ranks {gpu}: only {torch.cuda.device_count()} GPU(s) are visible")
    return torch.device("cuda", gpu)


def autocast_context(cfg: TrainConfig, device: torch.device):
    if cfg.bf16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if cfg.fp16 and cfg.fp16_opt_level != "O0":
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def train(tcfg: TrainConfig, mcfg: ModelConfig, dataset: Dataset, special: SpecialIds,
          masking: MaskingConfig | None = None, log=print) -> dict:
    device = pick_device(tcfg)
    set_seed(tcfg.seed)
    model = build_model(mcfg)
    if tcfg.pretrained_model_path:
        load_model(model, tcfg.pretrained_model_path, strict=True)
    model.to(device)
    if tcfg.fp16 and tcfg.fp16_opt_level == "O3":
        model.half()
    loader = BatchLoader(dataset, special, tcfg.batch_size, seed=tcfg.seed, masking=masking)
    optimizer = build_optimizer(model, tcfg.learning_rate, tcfg.weight_decay, (tcfg.beta1, tcfg.beta2))
    scheduler = build_scheduler(optimizer, tcfg.total_steps, tcfg.warmup)
    scaler = torch.amp.GradScaler(device.type, enabled=tcfg.fp16 and tcfg.fp16_opt_level != "O0")
    log(f"Model: {mcfg.embedding} + {mcfg.encoder} + {mcfg.target}, "
        f"{count_parameters(model) / 1e6:.2f} M parameters; dataset {dataset.path}: "
        f"{len(dataset)} instances; device {device}.")
    with loader.prefetch(tcfg.instances_buffer_size) as batches:
        window = Window()
        t_start = time.perf_counter()
        history = []
        model.train()
        for step in range(1, tcfg.total_steps + 1):
            micro = [next(batches) for _ in range(tcfg.accumulation_steps)]
            totals: dict[str, int] = {}
            for b in micro:
                for k, v in model.target.counts(b).items():
                    totals[k] = totals.get(k, 0) + v
            for b in micro:
                window.tokens += b.pop("tokens")
                b = {k: v.to(device, non_blocking=True) for k, v in b.items()}
                with autocast_context(tcfg, device):
                    terms = model(b)
                loss = sum(terms[k][0] / max(totals[k], 1) for k in terms)
                scaler.scale(loss).backward()
                window.add(terms)
            if tcfg.max_grad_norm > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.max_grad_norm)
            lr = optimizer.param_groups[0]["lr"]  # the rate this step ran with
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            if step % tcfg.report_steps == 0 or step == tcfg.total_steps:
                metrics = window.read()
                now = time.perf_counter()
                total_loss = sum(m["loss"] for m in metrics.values())
                if not math.isfinite(total_loss):
                    raise UerError(f"step {step}: the loss is not finite ({total_loss}); training stopped. "
                                   "Try a lower --learning_rate.")
                log(format_report(step, tcfg.total_steps, window.tokens / max(now - window.start, 1e-9),
                                  metrics, lr, now - t_start))
                history.append({"step": step, "loss": total_loss, "metrics": metrics,
                                "tokens_per_s": window.tokens / max(now - window.start, 1e-9)})
                window = Window()
            if step % tcfg.save_checkpoint_steps == 0:
                save_model(model, f"{tcfg.output_model_path}-{step}")
    save_model(model, tcfg.output_model_path)
    log(f"Saved the final model to {tcfg.output_model_path}.")
    sys.stdout.flush()
    return {"history": history, "model": model}
