"""The benchmark script runs end to end (tiny timings: its figures are not checked, only its table)."""

from __future__ import annotations

import re

import torch

from gantrain import bench


def test_bench_runs_a_case_and_prints_the_table(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench.tempfile, "mkdtemp", lambda prefix: str(tmp_path / "bench"))
    (tmp_path / "bench").mkdir()
    bench.main(["--device", "cpu", "--cases", "gan-mnist", "--seconds", "0.2", "--loop-steps", "60",
                "--extra", "data.batch_size=32,log.every_n_steps=10"])
    out = capsys.readouterr().out
    row = next(ln for ln in out.splitlines() if ln.startswith("| gan-mnist | 32 |"))
    loop, ceiling, baseline, r_ceiling, r_baseline, _peak = (float(v) for v in row.strip("|").split("|")[2:])
    assert min(loop, ceiling, baseline) > 0
    assert abs(r_ceiling - loop / ceiling) < 0.01 + 0.005 * r_ceiling
    assert abs(r_baseline - loop / baseline) < 0.01 + 0.005 * r_baseline
    assert re.search(r"Command: `python -m gantrain.bench --device cpu --cases gan-mnist .*`", out)
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
