"""CPU threads (gantrain/threads.py): each run takes cores // (gantrain runs alive), OMP_NUM_THREADS wins, the share
follows runs that start and end, and a starved run warns once with the fix."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch

from gantrain import threads


@pytest.fixture
def registry(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "cores", lambda: 4)
    before = torch.get_num_threads()
    yield tmp_path / "runs"
    torch.set_num_threads(before)


@pytest.fixture
def other_run(registry):
    """Another live process registered as a gantrain CPU run."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    registry.mkdir(parents=True, exist_ok=True)
    (registry / str(proc.pid)).touch()
    yield proc
    proc.kill()
    proc.wait()


def test_a_run_takes_its_share_and_gets_the_cores_back_when_the_other_ends(registry, other_run):
    (registry / "999999999").touch()  # a run that died without removing its file: not counted, removed
    share = threads.CoreShare(torch.device("cpu"), deterministic=False, registry=registry)
    assert torch.get_num_threads() == 2  # 4 cores, 2 runs
    assert not (registry / "999999999").exists()
    other_run.kill()
    other_run.wait()
    share.at_log(10)
    assert torch.get_num_threads() == 4
    share.close()
    assert list(registry.iterdir()) == []


def test_omp_num_threads_and_deterministic_runs_keep_their_count(registry, other_run, monkeypatch):
    torch.set_num_threads(3)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    share = threads.CoreShare(torch.device("cpu"), deterministic=False, registry=registry)
    share.at_log(10)
    assert torch.get_num_threads() == 3 and len(list(registry.iterdir())) == 2  # counted by the others
    share.close()
    monkeypatch.delenv("OMP_NUM_THREADS")
    share = threads.CoreShare(torch.device("cpu"), deterministic=True, registry=registry)
    assert torch.get_num_threads() == 2  # shared at the start ...
    other_run.kill()
    other_run.wait()
    share.at_log(10)
    assert torch.get_num_threads() == 2  # ... and fixed for the run
    share.close()


def test_a_starved_run_warns_once_with_the_fix(registry, monkeypatch, caplog):
    clock = {"wall": 0.0, "cpu": 0.0}
    monkeypatch.setattr(threads.time, "perf_counter", lambda: clock["wall"])
    monkeypatch.setattr(threads, "_cpu_seconds", lambda: clock["cpu"])
    share = threads.CoreShare(torch.device("cpu"), deterministic=False, registry=registry)
    assert torch.get_num_threads() == 4

    def interval(cores_got: float) -> None:
        clock["wall"] += 10.0
        clock["cpu"] += 10.0 * cores_got
        share.at_log(50)

    with caplog.at_level(logging.WARNING, logger="gantrain.threads"):
        interval(3.5)
        interval(1.0)  # 1 of 4 threads' worth: starved once, no warning yet
        assert not caplog.records
        interval(3.9)  # recovered: the count starts again
        interval(1.0)
        interval(1.2)
        interval(0.5)
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert "4 CPU threads got 1.2 cores" in message and "OMP_NUM_THREADS=2" in message
    share.close()


def test_a_starved_one_thread_run_is_not_told_to_use_one_thread(registry, monkeypatch, caplog):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    clock = {"wall": 0.0, "cpu": 0.0}
    monkeypatch.setattr(threads.time, "perf_counter", lambda: clock["wall"])
    monkeypatch.setattr(threads, "_cpu_seconds", lambda: clock["cpu"])
    share = threads.CoreShare(torch.device("cpu"), deterministic=False, registry=registry)
    with caplog.at_level(logging.WARNING, logger="gantrain.threads"):
        for _ in range(2):
            clock["wall"] += 10.0
            clock["cpu"] += 2.0
            share.at_log(50)
    message = caplog.records[0].getMessage()
    assert "1 CPU threads got 0.2 cores" in message and "OMP_NUM_THREADS" not in message
    assert "Run fewer programs at once" in message
    share.close()


def test_nothing_is_shared_on_a_gpu(registry):
    share = threads.CoreShare(torch.device("cuda", 0), deterministic=False, registry=registry)
    share.at_log(10)
    assert not registry.exists() and share.file is None


def test_an_unwritable_registry_leaves_the_run_alone(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    before = torch.get_num_threads()
    try:
        share = threads.CoreShare(torch.device("cpu"), deterministic=False, registry=blocker / "runs")
        share.at_log(10)
        assert share.file is None and torch.get_num_threads() == threads.cores()
        share.close()
    finally:
        torch.set_num_threads(before)


def test_a_lone_run_uses_torchs_default_not_every_hyperthread(monkeypatch):
    monkeypatch.setattr(threads, "_affinity", lambda: 8)
    monkeypatch.setattr(threads, "_TORCH_DEFAULT", 4)  # 4 physical cores, 8 hyperthreads
    assert threads.cores() == 4
    monkeypatch.setattr(threads, "_affinity", lambda: 2)  # taskset to 2 of them
    assert threads.cores() == 2
