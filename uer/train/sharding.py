"""--fsdp: torch's FSDP2 (torch.distributed.fsdp.fully_shard), applied from outside the model.

Each transformer layer (encoder and decoder) is a unit of its own, gathered for its forward and
backward and freed after; the whole model is the last unit (embedding, target, the rest). Every
rank keeps 1/world of the parameters, gradients and AdamW moments (--fsdp_hybrid: 1/node, the
shards replicated across nodes). What leaves a sharded run is what leaves any run: the zoo-format
model file and a training state whose optimizer part is numbered as an unsharded optimizer's, so
a checkpoint continues under any topology.
"""
from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
from torch import nn


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def shard(model: nn.Module, device: torch.device, world_size: int, per_node: int, hybrid: bool,
          bf16: bool) -> None:
    """fully_shard each transformer layer, then the model. A layer reused by --parameter_sharing
    stays in the model's unit (it runs several times a step). bf16: the gathered parameters are
    bf16 (half the traffic), the gradients reduced in fp32."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from uer.model.decoders import TransformerDecoderLayer
    from uer.model.layers import TransformerLayer

    if hybrid:
        mesh = init_device_mesh(device.type, (world_size // per_node, per_node), mesh_dim_names=("replicate", "shard"))
    else:
        mesh = init_device_mesh(device.type, (world_size,))
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else None, reduce_dtype=torch.float32)
    shared = getattr(model.encoder, "parameter_sharing", False)
    for module in model.modules():
        if isinstance(module, TransformerDecoderLayer) or (isinstance(module, TransformerLayer) and not shared):
            fully_shard(module, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)


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


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """optimizer.state_dict() as an unsharded run's (parameters numbered in group order); under
    FSDP gathered from the shards, a collective whose values reach rank 0 alone."""
    if not is_sharded(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    full = get_optimizer_state_dict(model, optimizer,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if "param_groups" not in full:  # (not rank 0)
        return {}
    ids: dict[str, int] = {}
    groups = [dict(g, params=[ids.setdefault(name, len(ids)) for name in g["params"]]) for g in full["param_groups"]]
    return {"state": {ids[name]: v for name, v in full["state"].items()}, "param_groups": groups}


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """The inverse of optimizer_state: every rank takes its shard of the saved (whole) state."""
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
