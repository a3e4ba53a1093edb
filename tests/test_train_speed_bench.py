"""bench/train_speed.py end to end on a few steps: each system runs in its own process, every run
times each step and probes the matmul peak between windows of steps, and the table pairs each
window with the peaks measured around it. (The figures themselves are the benchmark's business;
this checks that the command works and its bookkeeping adds up.)"""
import json
import os
import sys

import pytest
import torch

from conftest import ROOT, run_script

sys.path.insert(0, os.path.join(ROOT, "bench"))
from train_speed import StepClock, paired_mfu  # noqa: E402


def test_paired_mfu_pairs_each_window_with_the_better_peak_around_it():
    flops, secs = [10.0, 10.0, 30.0, 10.0, 10.0], [1.0, 1.0, 1.0, 2.0, 2.0]
    # probes before step 0, after 2 and after 5 steps
    assert paired_mfu(flops, secs, [(0, 10.0), (2, 20.0), (5, 5.0)]) == pytest.approx(
        [20 / 2 / 20, 50 / 5 / 20])
    assert paired_mfu(flops, secs, [(0, 10.0)]) == []


@pytest.mark.e2e
def test_the_training_benchmark_runs_and_reports_paired_mfu(tmp_path):
    out = tmp_path / "rows.json"
    proc = run_script(os.path.join(ROOT, "bench", "train_speed.py"), "--recipes", "tiny", "--targets", "mlm",
                      "--steps", "2", "--warmup", "1", "--probe_every", "1", "--no_dense", "--no_retain_row",
                      "--no_unbucketed", "--json", str(out), timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads(out.read_text())
    assert [r["system"] for r in rows] == ["uer", "HF sparse MLM head"]
    for r in rows:
        assert len(r["probe_flops_runs"]) == 1 and len(r["probe_flops_runs"][0]) == 3  # before, after 1, after 2
        assert 0.01 < r["mfu_paired"] < 1.5 and 0.01 < r["mfu"] < 1.5, r
        assert r["step_s"] == pytest.approx(r["step_s_runs"][0]) and r["real_tokens_per_s"] > 0
    assert "| tiny | mlm | uer |" in proc.stdout and "MFU paired" in proc.stdout


def test_the_step_clock_times_each_step_without_its_probes(monkeypatch):
    """On a clock that moves only when told: every step is timed from the end of the one before,
    and none of a probe's time (far longer than a step here) is in a step's time."""
    import train_speed

    now = [0.0]
    monkeypatch.setattr(train_speed.time, "perf_counter", lambda: now[0])

    def probe(*_args, **_kw):
        now[0] += 100.0
        return 1e12

    monkeypatch.setattr(train_speed, "matmul_peak", probe)
    clock = StepClock(warmup=1, steps=5, every=2, dtype=torch.float32)
    clock.mark()  # the warm-up step's end: a probe (before the first timed step)
    for seconds in (1.0, 2.0, 3.0, 4.0, 5.0):
        now[0] += seconds
        clock.mark()
    assert [timed for timed, _ in clock.probes] == [0, 2, 4, 5]
    assert clock.step_s == [1.0, 2.0, 3.0, 4.0, 5.0]


@pytest.mark.parametrize("target", ["lm", "llama"])
def test_model_flops_count_every_linear_of_the_model(target):
    """The FLOPs the bench charges a step: 2 per weight of every encoder linear and per token (GQA's
    narrower K and V, the gated feed-forward's third matrix), attention's products, the output
    layer at the predicted positions; 3x for forward + backward."""
    from train_speed import model_config, model_flops
    from uer.model import build_model

    cfg = model_config("tiny", target, 1000)
    assert (cfg.feed_forward, cfg.local_kv_heads_num) == (("gated", 3) if target == "llama" else ("dense", None))
    with torch.device("meta"):
        model = build_model(cfg, init=False)
    linear = sum(m.weight.numel() for m in model.encoder.modules() if isinstance(m, torch.nn.Linear))
    n, predicted = 50, 49
    want = 3 * (2 * linear * n + 4 * cfg.layers_num * cfg.hidden_size * n * n + 2 * cfg.hidden_size * 1000 * predicted)
    assert model_flops(cfg, [n], predicted, 1) == want


@pytest.mark.parametrize("bench, argv", [("train_speed", ["--bf16"]), ("kernels_ab", ["--bf16"]),
                                         ("bf16_weights", [])])
def test_a_bf16_bench_on_a_cpu_that_emulates_bf16_stops_at_once_and_says_why(bench, argv, monkeypatch, capsys):
    """Emulated bf16 products are ~100x slower than fp32 (an AVX2 CPU): the bf16 benches would
    run for hours measuring torch's emulation, so they refuse before any work (anything past the
    check fails the test here at once, rather than running it)."""
    import importlib

    import uer.utils
    from uer.train import precision

    module = importlib.import_module(bench)

    def past_the_check(*_args, **_kw):
        raise AssertionError("the bench went past the bf16 check")

    monkeypatch.setattr(uer.utils, "retain_freed_memory", past_the_check)  # kernels_ab, bf16_weights
    monkeypatch.setattr(importlib.import_module("train_speed"), "spell_peak", past_the_check)
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(SystemExit) as stopped:
        module.main(argv)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "--bf16: this CPU has no native bf16" in err and "--device cuda" in err
    # where the CPU has it, the same command goes on (here, to the stand-in that stops it)
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    with pytest.raises(AssertionError, match="past the bf16 check"):
        module.main(argv)
