"""The benchmark script runs end to end (tiny timings: its figures are not checked, only its table)."""

from __future__ import annotations

import re

import pytest
import torch

from gantrain.tools import bench
from tests.utils import make_cfg


def test_bench_runs_a_case_and_prints_the_table(tmp_path, capsys, monkeypatch):
    real_mkdtemp = bench.tempfile.mkdtemp  # (multiprocessing's DataLoader workers make and remove their own)
    monkeypatch.setattr(bench.tempfile, "mkdtemp", lambda prefix=None, **kw: str(tmp_path / "bench")
                        if prefix == "gantrain-bench-" else real_mkdtemp(prefix=prefix, **kw))
    (tmp_path / "bench").mkdir()
    bench.main(["--device", "cpu", "--cases", "gan-mnist", "--seconds", "0.2", "--loop-steps", "60",
                "--extra", "data.batch_size=32,log.every_n_steps=10"])
    out = capsys.readouterr().out
    row = next(ln for ln in out.splitlines() if ln.startswith("| gan-mnist | 32 |"))
    cells = [v.strip() for v in row.strip("|").split("|")[2:]]
    loop, ceiling, baseline, r_ceiling, r_baseline, _mem, gflop, achieved = (float(v) for v in cells[:-1])
    assert min(loop, ceiling, baseline) > 0
    assert abs(r_ceiling - loop / ceiling) < 0.01 + 0.005 * r_ceiling
    assert abs(r_baseline - loop / baseline) < 0.01 + 0.005 * r_baseline
    # the MLP GAN's FLOPs per image, by hand: 3 GEMMs of G and of D, forward (2 flops/MAC) and backward (2x)
    cfg = make_cfg("model=gan", "data=mnist")
    g = [cfg.model.z_dim, *cfg.model.generator.hidden, 784]
    d = [784, *cfg.model.discriminator.hidden, 1]
    macs = lambda sizes: sum(a * b for a, b in zip(sizes, sizes[1:]))
    # D step: G forward (no grad); D forward and backward on real and on detached fakes (weight gradients,
    # input gradients but for the first layer). G step: G forward, D forward, D backward for the input
    # gradient only (D frozen), G backward (weight gradients, input gradients but for z).
    d_step = macs(g) + 2 * (macs(d) + macs(d) + macs(d) - d[0] * d[1])
    g_step = macs(g) + macs(d) + macs(d) + macs(g) + macs(g) - g[0] * g[1]
    expected = 2 * (d_step + g_step)  # 2 FLOPs per multiply-accumulate
    assert gflop == pytest.approx(expected / 1e9, rel=0.02)
    assert achieved == pytest.approx(loop * gflop, rel=0.05, abs=1)
    assert 0 < float(cells[-1].rstrip("%")) < 100
    assert re.search(r"Command: `python -m gantrain.tools.bench --device cpu --cases gan-mnist .*`", out)
    assert not (tmp_path / "bench").exists()  # the written data is removed


def test_write_section_replaces_its_own_block_and_keeps_the_rest(tmp_path):
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("# Benchmarks\n\nIntro by hand.\n")
    cpu = torch.device("cpu")
    bench.write_section(doc, "table one", cpu)
    bench.write_section(doc, "stylegan table", cpu, "stylegan")
    bench.write_section(doc, "table two", cpu)
    text = doc.read_text()
    assert "Intro by hand." in text and "table one" not in text
    assert text.count("<!-- bench:cpu:start -->") == 1 and "table two" in text
    assert "<!-- bench:cpu-stylegan:start -->\nstylegan table\n<!-- bench:cpu-stylegan:end -->" in text


def test_stylegan_flops_are_counted_with_r1_at_its_share(mnist_root):
    """StyleGAN's G forward under no_grad takes a parameter as a module input (FlopCounterMode's module
    tracker fails there); the lazy R1 term (double backward) adds its FLOPs once per r1_interval steps."""
    from gantrain.tools.flops import step_flops_per_image

    overrides = ["model=stylegan", "model.z_dim=32", "model.generator.w_dim=32", "model.mapping_layers=2",
                 "model.channel_base=512", "model.max_channels=32", "data=mnist", f"data.root={mnist_root}",
                 "data.batch_size=8", "trainer.device=cpu", "metrics.enabled=false"]
    nets, real = bench.ceiling_setup(make_cfg(*overrides), torch.device("cpu"))
    plain, every = step_flops_per_image(nets, real, 0), step_flops_per_image(nets, real, 1)
    assert every > 1.2 * plain > 0
    interval = make_cfg(*overrides).loss.r1_interval
    assert bench.measure_flops(overrides, torch.device("cpu")) == pytest.approx(plain + (every - plain) / interval)


def test_bench_memory_reports_the_tensors_and_accumulation_lowers_them(tmp_path):
    """Each K in a fresh process; with K=4 the tensors' peak (weights, optimisers, batch, activations) falls."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rows = []
    for k in (1, 4):  # the children, as main() runs them (its table is parsed from the same json)
        out = subprocess.run([sys.executable, "-m", "gantrain.tools.bench_memory", "--case", "dcgan-mnist",
                              "--batch", "512", "--device", "cpu", "--steps", "1", "--child", str(k)],
                             env={**env, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"},
                             check=True, capture_output=True, text=True, cwd=tmp_path).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    one, four = rows
    for r in rows:
        assert 0 < r["step_mib"] < r["tensors_mib"] < r["peak_mib"]
    assert four["tensors_mib"] < 0.8 * one["tensors_mib"] and four["step_mib"] < 0.6 * one["step_mib"]


def test_bench_cpu_times_the_variants_side_by_side(capsys):
    from gantrain.tools import bench_cpu

    threads = torch.get_num_threads()
    try:
        bench_cpu.main(["--cases", "dcgan-mnist", "--batch", "4", "--steps", "1", "--repeats", "1",
                        "--variant", "a:trainer.channels_last=false", "--variant", "b:model.z_dim=8"])
    finally:
        torch.set_num_threads(threads)
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| dcgan-mnist | 4 |")]
    a, b, ratio = (v.strip() for v in rows[0].strip("|").split("|")[2:])
    assert float(a) > 0 and float(b) > 0 and re.fullmatch(r"\d+\.\d\dx (faster|slower)", ratio)
