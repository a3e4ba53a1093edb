"""--fsdp (#30 item 1): FSDP2 over two CPU processes (gloo) trains as DDP does, to fp32 tolerance,
with each rank holding half of the parameters (and of their gradients and AdamW moments), with
gradient accumulation, clipping, activation checkpointing, the hybrid layout, a decoder and a
shared layer; its checkpoints are distributed ones (every rank writes its shards), and continue
under FSDP and DDP, and a DDP one under FSDP; its final model is the usual single file."""
import os
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import DOC_CORPUS, ROOT, TINY, ZH_VOCAB, free_port, pretrain_args
from uer.config import ModelConfig, TrainConfig
from uer.data.builders import BuilderConfig
from uer.data.dataset import Dataset
from uer.data.preprocess import PreprocessJob, build_dataset
from uer.train.checkpoint import load_training_state, read_state_dict
from uer.train.distributed import Rank, finish, init, run_ranks
from uer.train.trainer import train
from uer.vocab import Vocab

pytestmark = pytest.mark.e2e  # two processes each


def _worker(rank: Rank, tcfg, mcfg, path):
    init(rank, tcfg)
    try:
        lines = []
        train(tcfg, mcfg, Dataset(path), Vocab.load(ZH_VOCAB).special_ids(), log=lines.append, rank=rank)
        if rank.is_main:
            with open(tcfg.output_model_path + ".log", "w", encoding="utf-8") as f:
                f.write("\n".join(map(str, lines)))
    finally:
        finish(rank)


def run(tmp_path, name, mcfg, dataset, **kw) -> str:
    out = tmp_path / name / "m.bin"
    out.parent.mkdir(exist_ok=True)
    options = dict(dataset_path=dataset, output_model_path=str(out), total_steps=4, save_checkpoint_steps=2,
                   report_steps=2, batch_size=2, accumulation_steps=2, learning_rate=1e-3, max_grad_norm=0.05,
                   seed=5, world_size=2, gpu_ranks=(0, 1), backend="gloo",
                   master_ip=f"tcp://127.0.0.1:{free_port()}")
    cfg = TrainConfig(**{**options, **kw})
    run_ranks(cfg, _worker, cfg, mcfg, dataset)
    return str(out)


def assert_same_model(a: str, b: str, atol=1e-6):
    x, y = read_state_dict(a), read_state_dict(b)
    assert x.keys() == y.keys()
    for k in x:
        assert y[k].dtype == x[k].dtype == torch.float32, k  # written in fp32 whatever the compute
        torch.testing.assert_close(y[k], x[k], rtol=1e-5, atol=atol, msg=k)


@pytest.fixture(scope="module")
def seven(tmp_path_factory):
    d = tmp_path_factory.mktemp("seven")
    with open(DOC_CORPUS, encoding="utf-8") as f:
        (d / "c.txt").write_text("".join(next(f)[:40] + "\n" for _ in range(7)), encoding="utf-8")
    build_dataset(PreprocessJob(corpus_path=str(d / "c.txt"), dataset_path=str(d / "d.pt"), target="mlm",
                                tokenizer="bert", vocab=Vocab.load(ZH_VOCAB), spm_model_path=None,
                                builder=BuilderConfig(seq_length=64, dup_factor=1)))
    assert len(Dataset(str(d / "d.pt"))) == 7
    return str(d / "d.pt")


@pytest.fixture(scope="module")
def t5_dataset(tmp_path_factory, eight):
    d = tmp_path_factory.mktemp("t5")
    with open(Dataset(eight).header["corpus"]["path"], encoding="utf-8") as f:
        (d / "c.txt").write_text(f.read(), encoding="utf-8")
    build_dataset(PreprocessJob(corpus_path=str(d / "c.txt"), dataset_path=str(d / "d.pt"), target="t5",
                                tokenizer="bert", vocab=Vocab.load(ZH_VOCAB), spm_model_path=None,
                                builder=BuilderConfig(seq_length=64, dup_factor=1, dynamic_masking=True,
                                                      tgt_seq_length=24)))
    return str(d / "d.pt")


def test_fsdp_trains_as_ddp_and_its_checkpoints_continue_either_way(tmp_path, eight):
    mcfg = ModelConfig(vocab_size=21128, target="mlm", **{**TINY, "dropout": 0.1})
    ddp = run(tmp_path, "ddp", mcfg, eight)
    fsdp = run(tmp_path, "fsdp", mcfg, eight, fsdp=True)
    assert_same_model(ddp, fsdp)
    background = run(tmp_path, "async", mcfg, eight, fsdp=True, async_checkpoint=True)  # written while training
    assert_same_model(ddp, background)
    # --bf16 (autocast, as under DDP): close to fp32, the weights kept and written in fp32
    assert_same_model(ddp, run(tmp_path, "bf16", mcfg, eight, fsdp=True, bf16=True), atol=2e-2)
    for out in (fsdp, background):
        for step in (2, 4):  # FSDP's checkpoints are distributed ones: a directory of both ranks' shards
            shards = sorted(os.listdir(f"{out}-{step}"))
            assert ".metadata" in shards and len([f for f in shards if f.endswith(".distcp")]) == 2, shards
            state = load_training_state(f"{out}-{step}.state")
            assert state["optimizer"] is None and state["step"] == step  # (the moments are in the shards)
        assert not [p for p in os.listdir(os.path.dirname(out)) if p.endswith(".partial")]
    log = open(fsdp + ".log", encoding="utf-8").read()
    held, total = (float(x) for x in log.split("rank 0 holds ")[1].split(" M parameters")[0].split(" M of the "))
    assert abs(held / total - 0.5) < 0.01, log  # half the parameters (and so of their gradients and moments)
    # an FSDP checkpoint continues under FSDP and DDP, a DDP one under FSDP: the uninterrupted run's weights
    for source, name, kw in ((background, "again", {"fsdp": True}), (fsdp, "as_ddp", {}),
                             (ddp, "as_fsdp", {"fsdp": True})):
        (tmp_path / name).mkdir()
        for suffix in ("", ".state"):
            copy = shutil.copytree if os.path.isdir(f"{source}-2{suffix}") else shutil.copy
            copy(f"{source}-2{suffix}", tmp_path / name / f"m.bin-2{suffix}")
        assert_same_model(ddp, run(tmp_path, name, mcfg, eight, resume=True, keep_checkpoints=1, **kw))
        kept = sorted(p for p in os.listdir(tmp_path / name) if not p.endswith(".log"))
        assert kept == ["m.bin", "m.bin-4", "m.bin-4.state"]  # the older one pruned, a directory too


@pytest.mark.parametrize("case", ["decoder, checkpointing", "shared layer, dev"])
def test_fsdp_with_a_decoder_checkpointing_a_shared_layer_and_dev(tmp_path, eight, seven, t5_dataset, case):
    if case == "shared layer, dev":
        mcfg = ModelConfig(vocab_size=21128, target="mlm", parameter_sharing=True,
                           factorized_embedding_parameterization=True, **{**TINY, "emb_size": 16})
        # dev shares of 3 and 4 instances, in batches of 3: one rank has a batch more to evaluate
        dataset, kw = eight, {"dev_dataset_path": seven, "batch_size": 3, "best_model_path": str(tmp_path / "best.bin"),
                              "dev_steps": 2, "dist_timeout": 120}
    else:
        mcfg = ModelConfig(vocab_size=21128, target="t5", tgt_embedding="word_pos", decoder="transformer", **TINY)
        # (the hybrid layout on one node: a mesh of 1 x 2; test_hybrid_... runs two nodes)
        dataset, kw = t5_dataset, {"activation_checkpointing": True, "fsdp_hybrid": True}
    ddp_kw = {k: v for k, v in kw.items() if k in ("dev_dataset_path", "batch_size", "dev_steps")}
    assert_same_model(run(tmp_path, "ddp", mcfg, dataset, **ddp_kw), run(tmp_path, "fsdp", mcfg, dataset, fsdp=True,
                                                                         **kw))
    assert os.path.exists(tmp_path / "fsdp" / "m.bin-2.state")
    if "best_model_path" in kw:  # gathered from the shards like every model file
        assert read_state_dict(kw["best_model_path"]).keys() == read_state_dict(str(tmp_path / "ddp" / "m.bin")).keys()


@pytest.mark.slow  # four processes; the 2-D mesh code path runs in the decoder case above
def test_hybrid_shards_within_nodes_and_replicates_across(tmp_path, eight):
    """Two "nodes" of two processes on this machine: --fsdp_hybrid ends where DDP does."""
    outs = {}
    for mode, extra in (("ddp", []), ("hsdp", ["--fsdp", "--fsdp_hybrid"])):
        master = f"tcp://127.0.0.1:{free_port()}"
        procs = [subprocess.Popen([sys.executable, *pretrain_args(
            eight, tmp_path / f"{mode}.bin", "--world_size", "4", "--gpu_ranks", *ranks, "--backend", "gloo",
            "--master_ip", master, "--dist_timeout", "120", *extra)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for ranks in (("0", "1"), ("2", "3"))]
        outs[mode] = [p.communicate(timeout=300) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outs[mode]
    assert "FSDP over 4 processes (sharded within nodes of 2)" in outs["hsdp"][0][0]
    assert_same_model(str(tmp_path / "ddp.bin"), str(tmp_path / "hsdp.bin"))
