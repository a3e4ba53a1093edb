"""--fsdp: torch's FSDP2 (torch.distributed.fsdp.fully_shard), applied from outside the model.

Each transformer layer (encoder and decoder) is a unit of its own, gathered for its forward and
backward and freed after; the whole model is the last unit (embedding, target, the rest). Every
rank keeps 1/world of the parameters, gradients and AdamW moments (--fsdp_hybrid: 1/node, the
shards replicated across nodes). The final model (and the best one) is gathered and written as
by any run, a zoo-format file. Intermediate checkpoints are distributed checkpoints (DCP): the
directory <out>-<step>, where every rank wrote its shards, beside the usual <out>-<step>.state;
DCP reshards on loading, so they continue under DDP, in one process, or sharded again.
"""
from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist
from torch import nn


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def shard(model: nn.Module, device: torch.device, world_size: int, per_node: int, hybrid: bool) -> None:
    """fully_shard each transformer layer, then the model. A layer reused by --parameter_sharing
    stays in the model's unit (it runs several times a step). The shards and their all-gathers stay
    in the weights' dtype: --bf16 is autocast, as without FSDP (bf16 gathered weights would meet
    autocast's fp32 LayerNorm inputs, which the CPU kernels refuse)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from uer.model.decoders import TransformerDecoderLayer
    from uer.model.layers import TransformerLayer

    if hybrid:
        mesh = init_device_mesh(device.type, (world_size // per_node, per_node), mesh_dim_names=("replicate", "shard"))
    else:
        mesh = init_device_mesh(device.type, (world_size,))
    shared = getattr(model.encoder, "parameter_sharing", False)
    for module in model.modules():
        if isinstance(module, TransformerDecoderLayer) or (isinstance(module, TransformerLayer) and not shared):
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)


def gradient_sync(model: nn.Module, sync: bool, distributed: bool):
    """The context of one micro-step's forward and backward: gradients are reduced over the ranks
    only when `sync` (the step's last micro-batch), under DDP and FSDP alike."""
    if is_sharded(model):
        model.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()
    if distributed and not sync:
        return model.no_sync()
    return contextlib.nullcontext()


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of a parameter (the whole of it when it is not sharded)."""
    return t.to_local() if hasattr(t, "to_local") else t


def full_value(t: torch.Tensor) -> torch.Tensor:
    """A sharded scalar (a gradient norm) as a plain tensor."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def all_finite(model: nn.Module) -> bool:
    """Whether every weight is finite, on every rank's shard (a collective when sharded)."""
    ok = torch.stack([torch.isfinite(local(p)).all() for p in model.parameters()]).all()
    if is_sharded(model):
        ok = ok.to(torch.int32)
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok)


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole state dict on the CPU: under FSDP gathered from the shards (a collective; the
    values reach rank 0 alone, the others get {})."""
    if not is_sharded(model):
        module = getattr(model, "module", model)
        return {k: v.detach().cpu() for k, v in module.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """An optimizer state saved by an unsharded run (optimizer.state_dict(), parameters numbered in
    group order) into this run's optimizer: under FSDP every rank takes its shard of it."""
    if not is_sharded(model):
        optimizer.load_state_dict(saved)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    name_of = {id(p): name for name, p in model.named_parameters()}
    names = [name_of[id(p)] for g in optimizer.param_groups for p in g["params"]]
    state = {"state": {names[i]: v for i, v in saved["state"].items()},
             "param_groups": [dict(g, params=[names[i] for i in g["params"]]) for g in saved["param_groups"]]}
    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def load_full_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """A whole state dict (every key of the model, the right shapes) into a sharded model."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=False))


# -- distributed checkpoints (torch.distributed.checkpoint) ------------------------------------------

def save_distributed(path: str, model: nn.Module, optimizer: torch.optim.Optimizer, is_main: bool) -> None:
    """The weights and the optimizer state as a DCP directory at `path`: every rank writes its own
    shards (no gathering), into <path>.partial, which rank 0 renames when all have written (a
    collective; the directory must be on a filesystem every rank sees)."""
    import shutil

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    partial = path + ".partial"
    if is_main and os.path.exists(partial):  # a save that was cut short
        shutil.rmtree(partial)
    dist.barrier()
    weights, moments = get_state_dict(model, optimizer)
    dcp.save({"model": weights, "optimizer": moments}, checkpoint_id=partial)
    dist.barrier()  # every shard written
    if is_main:
        if os.path.isdir(path):
            shutil.rmtree(path)
        os.replace(partial, path)
    dist.barrier()


class BackgroundSaves:
    """--async_checkpoint: distributed checkpoints written while training goes on. save() copies
    every rank's shards to memory and returns; the files are written by a thread, whose collectives
    run on a process group of their own. A checkpoint becomes complete (renamed from .partial, its
    .state written by `finish` on rank 0) in wait(): before the next one, before the final model,
    at a stop."""

    def __init__(self, is_main: bool):
        self.is_main = is_main
        self.group = dist.new_group(backend="gloo")
        self.pending = None

    def save(self, path: str, model: nn.Module, optimizer: torch.optim.Optimizer, finish) -> None:
        import shutil

        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        self.wait()
        partial = path + ".partial"
        if self.is_main and os.path.exists(partial):
            shutil.rmtree(partial)
        dist.barrier()
        weights, moments = get_state_dict(model, optimizer)
        future = dcp.async_save({"model": weights, "optimizer": moments}, checkpoint_id=partial,
                                process_group=self.group)
        self.pending = (future, path, finish)

    def wait(self) -> None:
        if self.pending is None:
            return
        import shutil

        future, path, finish = self.pending
        self.pending = None
        future.result()
        dist.barrier(group=self.group)  # every rank's shards written
        if self.is_main:
            if os.path.isdir(path):
                shutil.rmtree(path)
            os.replace(path + ".partial", path)
            finish()
        dist.barrier(group=self.group)


def load_distributed(path: str, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """A DCP directory written by save_distributed into this run's model and optimizer, sharded or
    not (DCP reshards to any topology)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    module = getattr(model, "module", model)  # DDP: the module the optimizer's parameters belong to
    weights, moments = get_state_dict(module, optimizer)
    state = {"model": weights, "optimizer": moments}
    dcp.load(state, checkpoint_id=path)
    set_state_dict(module, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def is_distributed_checkpoint(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, ".metadata"))
