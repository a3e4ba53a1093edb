#!/usr/bin/env python3
"""Per-rank memory of a training step under DDP, --fsdp and --fsdp with --activation_checkpointing:
the parameters, gradients and AdamW moments each rank holds, and the activations its forward pass
keeps for the backward pass (the parameters themselves apart), counted in bytes of the tensors
themselves (each storage once, after FSDP has freed what it frees), on --world CPU processes
(gloo).

The shapes: BERT-base (mlm) and a LLaMA-style model of 1.1 B parameters (TinyLlama's: 22 layers,
2048 wide, SwiGLU 5632, 32 heads, 4 KV heads, vocabulary 32000). The large one is built with 1 and
2 layers and its 22-layer figures extrapolated (base + 22 x the per-layer difference), which is
exact for the parameters and their state and, per layer, for the activations.

    python3 bench/sharding_memory.py --world 2 --batch_size 4 --seq_length 128
"""
from __future__ import annotations

import argparse
import os
import socket
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

LLAMA_1B = {"emb_size": 2048, "hidden_size": 2048, "feedforward_size": 5632, "heads_num": 32, "local_kv_heads_num": 4,
            "hidden_act": "silu", "dropout": 0.0, "max_seq_length": 2048, "layernorm": "rms", "feed_forward": "gated",
            "remove_transformer_bias": True, "rotary_position_embedding": True, "embedding": "word",
            "remove_embedding_layernorm": True, "mask": "causal", "layernorm_positioning": "pre", "target": "lm",
            "vocab_size": 32000}
MODES = {"DDP": {}, "FSDP": {"fsdp": True}, "FSDP + checkpointing": {"fsdp": True, "checkpointing": True}}


def measure(rank: int, world: int, port: int, shape: dict, mode: dict, batch: int, seq: int, out) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from uer.config import ModelConfig
    from uer.model import build_model
    from uer.train.optim import build_optimizer
    from uer.train.sharding import local, shard

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = build_model(ModelConfig(**shape))
    if mode.get("checkpointing"):
        from uer.train.checkpointing import apply_activation_checkpointing

        apply_activation_checkpointing(model)
    if mode.get("fsdp"):
        shard(model, torch.device("cpu"), world, world, False)
        inner = model
    else:
        model = DDP(model)
        inner = model.module
    optimizer = build_optimizer(inner, 1e-4, 0.01)
    V = shape["vocab_size"]
    g = torch.Generator().manual_seed(rank)
    src = torch.randint(1000, V, (batch, seq), generator=g)
    n = batch * seq
    tgt_key = "lm" if shape["target"] == "lm" else "mlm"
    pos = torch.arange(n) if tgt_key == "lm" else torch.arange(0, n, 7)  # mlm: about 15 % of the positions
    batch_dict = {"src": src, "seg": torch.ones_like(src), f"{tgt_key}_pos": pos,
                  f"{tgt_key}_tgt": torch.randint(1000, V, (len(pos),), generator=g)}
    saved = {}

    def pack(t):
        saved.setdefault(t.untyped_storage().data_ptr(), t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out_terms = model(batch_dict)
    # a weight saved for the backward pass is counted as a parameter (DDP); FSDP's gathered copies are
    # freed after each unit's forward, except the root's (embedding and head), which is held
    own = {local(p).untyped_storage().data_ptr() for p in model.parameters()}
    activations = sum(t.untyped_storage().nbytes() for k, t in saved.items() if k not in own)
    loss = sum(v[0] for v in out_terms.values()) / len(pos)
    saved.clear()
    loss.backward()
    grads = sum(local(p.grad).numel() * local(p.grad).element_size() for p in model.parameters() if p.grad is not None)
    optimizer.step()
    params = sum(local(p).numel() * local(p).element_size() for p in model.parameters())
    moments = sum(local(v).numel() * local(v).element_size() for s in optimizer.state.values()
                  for v in s.values() if torch.is_tensor(v) and v.dim() > 0)
    if rank == 0:
        out.put({"params": params, "grads": grads, "moments": moments, "activations": activations,
                 "count": sum(p.numel() for p in model.parameters())})
    dist.destroy_process_group()


def run(world: int, shape: dict, mode: dict, batch: int, seq: int) -> dict:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=measure, args=(r, world, port, shape, mode, batch, seq, queue)) for r in range(world)]
    for p in procs:
        p.start()
    result = queue.get()
    for p in procs:
        p.join()
    return result


def gib(x: float) -> str:
    return f"{x / 2**30:.2f}" if x >= 2**28 else f"{x / 2**20:.0f} MiB"


def main() -> None:
    import platform

    import torch

    from uer.config import load_recipe

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--batch_size", type=int, default=4)
    ap.add_argument("--seq_length", type=int, default=128)
    ap.add_argument("--shapes", nargs="+", default=["bert_base", "llama_1b"], choices=["bert_base", "llama_1b"])
    args = ap.parse_args()
    print(f"{platform.machine()}, torch {torch.__version__}, {args.world} processes (gloo), batch {args.batch_size} "
          f"x {args.seq_length} per rank, fp32; per rank, GiB unless marked")
    print("| shape | mode | parameters | gradients | AdamW moments | activations | total |")
    print("|---|---|---|---|---|---|---|")
    for name in args.shapes:
        for mode_name, mode in MODES.items():
            if name == "bert_base":
                rec = load_recipe("bert_base")
                shape = {**rec, "vocab_size": 21128, "target": "mlm", "dropout": 0.0}
                r = run(args.world, shape, mode, args.batch_size, args.seq_length)
                label = f"BERT-base ({r['count'] / 1e6:.0f} M)"
            else:
                one, two = (run(args.world, {**LLAMA_1B, "layers_num": n}, mode, args.batch_size, args.seq_length)
                            for n in (1, 2))
                r = {k: one[k] + 21 * (two[k] - one[k]) for k in one}  # 22 layers
                label = f"LLaMA-style 22 layers ({r['count'] / 1e9:.2f} B)"
            total = sum(r[k] for k in ("params", "grads", "moments", "activations"))
            print(f"| {label} | {mode_name} | {gib(r['params'])} | {gib(r['grads'])} | {gib(r['moments'])} | "
                  f"{gib(r['activations'])} | {gib(total)} |", flush=True)


if __name__ == "__main__":
    main()
