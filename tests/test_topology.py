"""Resume on another topology (#30 item 4): one global sample order, whatever the number of
processes and the way each cuts its part of a step into micro-batches; masks drawn per instance; a
run checkpointed with 2 DDP processes continues with 3 FSDP ones, whose checkpoint continues as one
plain process, and that one's as 2 FSDP processes, the loss curve staying the uninterrupted run's;
a changed global batch is refused with the batch sizes that would keep it."""
import csv
import os
import shutil

import numpy as np
import pytest
import torch

from conftest import ZH_VOCAB, free_port, run_script
from uer.config import ModelConfig, TrainConfig
from uer.data.dataset import Dataset
from uer.data.loader import BatchLoader, BatchSampler
from uer.train.checkpoint import read_state_dict
from uer.train.run import record, resume_changes
from uer.vocab import Vocab

# (processes, batch_size, accumulation_steps) sharing a global batch of 12
TOPOLOGIES = [(1, 12, 1), (1, 6, 2), (2, 6, 1), (2, 3, 2), (3, 4, 1), (3, 2, 2), (1, 4, 3)]


def step_samples(n, world, batch, accumulation, steps, start=0, lengths=None):
    """Each optimizer step's (epoch, instance) pairs, over all ranks and micro-batches."""
    samplers = [BatchSampler(n, batch, 7, rank=r, world_size=world, accumulation_steps=accumulation,
                             lengths=lengths) for r in range(world)]
    for s in samplers:
        s.start = start * accumulation
    streams = [iter(s) for s in samplers]
    out = []
    for _ in range(steps):
        pairs = [np.stack(next(it), 1) for it in streams for _ in range(accumulation)]
        out.append(np.concatenate(pairs))
    return out


@pytest.mark.parametrize("buckets", [False, True])
def test_every_topology_of_a_global_batch_takes_the_same_samples(buckets):
    n = 50  # not a multiple of 12: steps straddle the epochs
    lengths = np.random.default_rng(0).integers(5, 128, n).astype(np.int32)
    get = (lambda: lengths) if buckets else None
    reference = step_samples(n, 1, 12, 1, 20, lengths=get)
    for topology in TOPOLOGIES[1:]:
        got = step_samples(n, *topology, 20, lengths=get)
        for k, (a, b) in enumerate(zip(reference, got)):
            assert sorted(map(tuple, a)) == sorted(map(tuple, b)), (topology, k)
        # resumed at step 7 on this topology: the steps the reference had from there
        for a, b in zip(reference[7:], step_samples(n, *topology, 13, start=7, lengths=get)):
            assert sorted(map(tuple, a)) == sorted(map(tuple, b)), topology
    stream = np.concatenate(reference)  # 240 samples: epochs 0..3, then part of 4
    for epoch in range(4):  # no sample seen twice or skipped: each epoch every instance once
        assert sorted(stream[stream[:, 0] == epoch, 1].tolist()) == list(range(n))
    if buckets:  # a step's instances are of similar length (but for the one a new epoch starts in)
        within = [s for s in reference if len(set(s[:, 0].tolist())) == 1]
        assert len(within) >= 15 and np.mean([lengths[s[:, 1]].std() for s in within]) < lengths.std() / 3


def test_an_instance_is_masked_the_same_in_any_batch(tiny_mlm):
    """Dynamic masks are seeded by (seed, epoch, instance): one process's micro-batch of 12 and three
    processes' batches of 4 give each instance the same masked row."""
    ds, sp = Dataset(str(tiny_mlm / "d.pt")), Vocab.load(ZH_VOCAB).special_ids()

    def rows(world, batch):
        out = {}
        for r in range(world):
            loader = BatchLoader(ds, sp, batch, rank=r, world_size=world, seed=3)
            loader.seek(5)  # a step well into the run
            epochs, instances = next(iter(loader.sampler))
            arrays = loader.batch(epochs, instances)
            for b, i in enumerate(instances.tolist()):
                src = arrays["src"][b]
                targets = arrays["mlm_pos"] // src.shape[0] == b
                out[i] = (src[src != sp.pad].tolist(), (arrays["mlm_pos"][targets] % src.shape[0]).tolist(),
                          arrays["mlm_tgt"][targets].tolist())
        return out

    one, three = rows(1, 12), rows(3, 4)
    assert one == three and len(one) == 12
    assert any(pos for _, pos, _ in one.values())  # masked positions, predicted


def _cfg(world, batch, accumulation, **kw):
    return TrainConfig(dataset_path="d.pt", output_model_path="m.bin", world_size=world, batch_size=batch,
                       accumulation_steps=accumulation, **kw)


def test_the_topology_may_change_the_global_batch_may_not():
    mcfg = ModelConfig(vocab_size=100)
    saved = record({"id": "x", "host": "h", "started": "t"}, _cfg(2, 6, 1), mcfg, 2)
    refused, applied = resume_changes(saved, _cfg(3, 2, 2), mcfg, 3)
    assert refused == [] and {"world_size: 2 -> 3", "batch_size: 6 -> 2", "accumulation_steps: 1 -> 2"} <= set(applied)
    refused, _ = resume_changes(saved, _cfg(3, 6, 1), mcfg, 3)
    assert len(refused) == 1 and "global batch" in refused[0] and "12 (6 x 1 x 2) -> 18 (6 x 1 x 3)" in refused[0]
    assert "--batch_size 4 or --batch_size 2 --accumulation_steps 2" in refused[0]
    refused, _ = resume_changes(saved, _cfg(5, 2, 1), mcfg, 5)
    assert "5 processes cannot share 12 instances a step evenly" in refused[0]
    # a record written before the order was global (no global_batch or sample_order in its shape)
    old = dict(saved, shape={k: v for k, v in saved["shape"].items() if k not in ("global_batch", "sample_order")})
    refused, applied = resume_changes(old, _cfg(2, 6, 1), mcfg, 2)
    assert refused == [] and any(a.startswith("sample order:") for a in applied)


# -- end to end -------------------------------------------------------------------------------------

def _pretrain(d, out, world, batch, accumulation, *extra):
    dist = [] if world == 1 else ["--world_size", str(world), "--gpu_ranks", *map(str, range(world)), "--backend",
                                  "gloo", "--master_ip", f"tcp://127.0.0.1:{free_port()}"]
    proc = run_script(os.path.join("pretrain.py"), "--dataset_path", str(d / "d.pt"), "--vocab_path", ZH_VOCAB,
                      "--config_path", str(d / "tiny.json"), "--dropout", "0", "--target", "mlm",
                      "--output_model_path", str(out), "--total_steps", "12", "--save_checkpoint_steps", "3",
                      "--report_steps", "1", "--learning_rate", "1e-3", "--batch_size", str(batch),
                      "--accumulation_steps", str(accumulation), "--metrics_path", str(out) + ".csv", "--resume",
                      *dist, *extra, timeout=400)
    assert proc.returncode == 0, proc.stderr
    with open(str(out) + ".csv", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "train" and r["term"] == "mlm"]
    return proc.stdout, {int(r["step"]): (float(r["loss"]), int(r["count"])) for r in rows}


def _continue(source, step, out):
    out.parent.mkdir()
    for suffix in ("", ".state"):
        copy = shutil.copytree if os.path.isdir(f"{source}-{step}{suffix}") else shutil.copy
        copy(f"{source}-{step}{suffix}", f"{out}-{step}{suffix}")


@pytest.mark.e2e
def test_a_run_continues_on_another_topology_with_the_same_curve(tmp_path, tiny_mlm):
    """2 DDP processes (batch 6) to step 3; from there 3 FSDP processes (batch 4) to step 6; from
    their distributed checkpoint one plain process (batch 6 x 2 accumulated) to step 9; from its
    checkpoint 2 FSDP processes (batch 3 x 2) to step 12: the loss of every step and the final
    weights are the uninterrupted 2-process run's."""
    full = tmp_path / "full" / "m.bin"
    _, reference = _pretrain(tiny_mlm, full, 2, 6, 1)
    assert sorted(reference) == list(range(1, 13))
    curve, source = {}, full
    for step, name, topology, extra in ((3, "fsdp3", (3, 4, 1), ["--fsdp"]), (6, "plain", (1, 6, 2), []),
                                        (9, "fsdp2", (2, 3, 2), ["--fsdp"])):
        out = tmp_path / name / "m.bin"
        _continue(source, step, out)
        said, part = _pretrain(tiny_mlm, out, *topology, *extra)
        assert f"at step {step}" in said, said
        assert sorted(part) == list(range(step + 1, 13))
        curve.update({k: v for k, v in part.items() if k <= step + 3})
        source = out
    assert "world_size: 1 -> 2" in said and "batch_size: 6 -> 3" in said, said
    assert os.path.isfile(f"{tmp_path / 'fsdp3' / 'm.bin'}-6/.metadata")  # a distributed checkpoint, 3 ranks'
    assert sorted(curve) == list(range(4, 13))
    for step, (loss, count) in curve.items():
        assert count == reference[step][1], step  # the same samples, the same masks
        assert loss == pytest.approx(reference[step][0], rel=1e-5, abs=1e-6), step
    a, b = read_state_dict(str(full)), read_state_dict(str(source))
    for k in a:
        # (fp32 summation order: Adam's update m / sqrt(v) magnifies it where a rare id's v is tiny)
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=5e-5, msg=k)
