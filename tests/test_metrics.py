"""Sample-quality metrics: each metric ranks real data above noise and a collapsed generator, the caches
are reused, the Inception path works with a stand-in extractor (offline), the degradation without
Inception, train() returning the primary metric to a sweep, and gantrain-eval."""

from __future__ import annotations

import json
import logging
import math
import os
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.experimental.callback import Callback
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gantrain import metrics
from gantrain.config import MetricsConfig
from gantrain.data import build_dataset
from gantrain.errors import UserError
from gantrain.metrics import (
    Cache,
    MetricUnavailable,
    build_evaluator,
    frechet_distance,
    gaussian_stats,
    kernel_distance,
)
from gantrain.metrics import features as metric_features
from gantrain.metrics import stats as metric_stats
from gantrain.training.loop import train
from tests.conftest import write_idx
from tests.utils import FAST as _FAST
from tests.utils import ROOT, gantrain, make_cfg, tiny

FAST = [*_FAST, "metrics=default"]  # these tests are about metrics: keep them on

CPU = torch.device("cpu")


def mcfg(tmp_path: Path, **kw):
    return OmegaConf.merge(OmegaConf.structured(MetricsConfig), {"cache_dir": str(tmp_path / "mcache"), **kw})


def collapsed(real: torch.Tensor) -> torch.Tensor:
    """A generator that lost every mode but one: the same sample repeated."""
    return real[:1].expand_as(real).clone()


class StandIn(torch.nn.Module):
    """A small fixed feature extractor standing in for Inception (the real weights are downloaded)."""

    key = "standin"
    num_features = 16

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 0.3)

    @torch.no_grad()
    def forward(self, x):
        x = x.float()
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        h = torch.relu(self.conv(x))
        return torch.cat([h.mean((2, 3)), h.amax((2, 3))], 1)


# ------------------------------------------------------------------------------------- the statistics
def test_frechet_and_kernel_distance_match_torchmetrics():
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    g = torch.Generator().manual_seed(1)
    real, fake = torch.rand(40, 3, 12, 12, generator=g), torch.rand(40, 3, 12, 12, generator=g) * 0.7
    net = StandIn()
    fr, ff = net(real), net(fake)
    fid = FrechetInceptionDistance(feature=net, normalize=True)
    fid.update(real, real=True)
    fid.update(fake, real=False)
    ours = frechet_distance(*gaussian_stats(ff), *gaussian_stats(fr))
    assert ours == pytest.approx(float(fid.compute()), rel=1e-4)
    assert ours > 0.01
    kid = KernelInceptionDistance(feature=net, normalize=True, subsets=1, subset_size=40)
    kid.update(real, real=True)
    kid.update(fake, real=False)
    assert kernel_distance(fr, ff, subsets=1, subset_size=40) == pytest.approx(float(kid.compute()[0]), rel=1e-4)


# ------------------------------------------------------------------------------------------- sine
def test_sine_metrics_rank_real_above_noise_and_collapse(tmp_path, data_cfg):
    data = build_dataset(data_cfg("sine", size=4096), device=CPU)
    ev = build_evaluator(mcfg(tmp_path, num_samples=512), data, None, CPU)
    assert ev.primary == "sine_ks" and ev.names == list(metrics.BACKENDS["sine"])
    real = ev.score(data.batch(3, 512))                      # other real curves than the reference ones
    noise = ev.score(torch.randn(512, data.shape[0], generator=torch.Generator().manual_seed(0)) * 0.5)
    flat = ev.score(collapsed(data.batch(3, 512)))
    assert real["sine_residual"] < 0.03                     # the data's own noise is 0.02
    assert real["sine_amp_ks"] < 0.1 and real["sine_phase_ks"] < 0.15 and real["sine_ks"] < 0.1
    assert noise["sine_residual"] > 10 * real["sine_residual"] and noise["sine_ks"] > 0.5
    assert flat["sine_ks"] > 0.45 and flat["sine_amp_ks"] > 0.45


# ----------------------------------------------------------------------------------------- MNIST-like
def digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable 'digits': class k is a bright bar at rows 3+2k, on faint noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    x = rng.integers(0, 40, size=(n, 28, 28), dtype=np.uint8)
    for i, k in enumerate(labels):
        x[i, 3 + 2 * k: 5 + 2 * k, 4 + rng.integers(0, 4): 22 + rng.integers(0, 4)] = 255
    return x, labels


@pytest.fixture
def digit_root(tmp_path):
    root = tmp_path / "digits"
    for split, n, seed in (("train", 300, 0), ("t10k", 100, 1)):
        x, y = digits(n, seed)
        write_idx(root / "MNIST" / "raw" / f"{split}-images-idx3-ubyte", x)
        write_idx(root / "MNIST" / "raw" / f"{split}-labels-idx1-ubyte", y)
    return root


def test_classifier_metrics_and_cache_reuse(tmp_path, data_cfg, digit_root, monkeypatch):
    cfg_data = data_cfg("mnist", root=str(digit_root))
    data = build_dataset(cfg_data, device=CPU)
    m = mcfg(tmp_path, num_samples=200, classifier_steps=60)
    ev = build_evaluator(m, data, cfg_data, CPU)
    backend = ev.backends["classifier"]
    assert not backend.classifier_cached and backend.accuracy > 0.9
    assert ev.primary == "classifier_fd"
    real = ev.score(data.batch(1, 200))
    noise = ev.score(torch.rand(200, *data.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    flat = ev.score(collapsed(data.batch(1, 200)))
    assert real["class_coverage"] == 1.0 and flat["class_coverage"] <= 0.2
    assert noise["classifier_fd"] > 5 * real["classifier_fd"] and flat["classifier_fd"] > 5 * real["classifier_fd"]
    # the cache holds the classifier and the real statistics, readable with weights_only=True
    files = sorted(p.name for p in (tmp_path / "mcache").glob("*.pt"))
    assert any(f.startswith(f"classifier{metrics.CLASSIFIER_VERSION}-mnist-28px") for f in files) and any(f.startswith("real-") for f in files)
    for f in (tmp_path / "mcache").glob("*.pt"):
        torch.load(f, weights_only=True)
    # the second evaluator reuses both: training the classifier again would fail here
    monkeypatch.setattr(metric_features, "train_classifier", lambda *a, **k: pytest.fail("classifier trained again"))
    ev2 = build_evaluator(m, data, cfg_data, CPU)
    assert ev2.backends["classifier"].classifier_cached and ev2.backends["classifier"].cache_hit
    assert ev2.score(data.batch(1, 200)) == pytest.approx(real)


# --------------------------------------------------------------------------------- images: Inception
HALF = 96


@pytest.fixture
def faces(tmp_path):
    """2 * HALF small PNGs: a random colour, a bright disc at a random place (a folder of 'faces')."""
    from PIL import Image

    rng = np.random.default_rng(5)
    root = tmp_path / "faces"
    root.mkdir()
    yy, xx = np.mgrid[:16, :16]
    for i in range(2 * HALF):
        img = np.zeros((16, 16, 3)) + rng.uniform(0, 120, size=3)
        cy, cx = rng.uniform(4, 12, size=2)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < 12] = 230
        Image.fromarray(img.astype(np.uint8)).save(root / f"{i:03d}.png")
    return root


def real_halves(data):
    """The evaluator's reference examples and the other, disjoint half of the data set."""
    other = data._fixed_indices(2 * HALF)[HALF:]
    return data.real_samples(HALF), data._gather(other)


def rank_images(ev, data, fd: str, kid: str) -> None:
    same, other = real_halves(data)
    real = ev.score(other)
    noise = ev.score(torch.rand(HALF, *data.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    flat = ev.score(collapsed(other))
    assert abs(ev.score(same)[fd]) < 1e-4 * noise[fd]          # the reference against itself: 0
    assert noise[fd] > 5 * real[fd] and flat[fd] > 3 * real[fd]
    assert noise[kid] > 5 * abs(real[kid]) and flat[kid] > 3 * abs(real[kid])


def test_inception_path_with_a_stand_in_extractor(tmp_path, data_cfg, faces, monkeypatch):
    monkeypatch.setattr(metric_features, "load_inception", lambda device: StandIn())
    cfg_data = data_cfg("folder", root=str(faces), resolution=16)
    data = build_dataset(cfg_data, device=CPU, progress=False)
    m = mcfg(tmp_path, num_samples=HALF)
    ev = build_evaluator(m, data, cfg_data, CPU)
    assert ev.names == ["fid", "kid"] and ev.primary == "fid"
    assert not ev.backends["inception"].cache_hit
    rank_images(ev, data, "fid", "kid")
    assert build_evaluator(m, data, cfg_data, CPU).backends["inception"].cache_hit   # real stats from disk


def test_fallback_without_inception_says_so_and_carries_on(tmp_path, data_cfg, faces, monkeypatch, caplog):
    def offline(device):
        raise MetricUnavailable("the Inception weights for FID/KID are not available (URLError: no network)")

    monkeypatch.setattr(metric_features, "load_inception", offline)
    cfg_data = data_cfg("folder", root=str(faces), resolution=16)
    data = build_dataset(cfg_data, device=CPU, progress=False)
    with caplog.at_level(logging.WARNING, logger="gantrain.metrics"):
        ev = build_evaluator(mcfg(tmp_path, num_samples=HALF), data, cfg_data, CPU)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "no network" in warnings[0] and "rand_fd" in warnings[0]
    assert ev.names == ["rand_fd", "rand_kid"] and ev.primary == "rand_fd"
    rank_images(ev, data, "rand_fd", "rand_kid")


def test_only_the_metrics_asked_for_are_computed(tmp_path, data_cfg, faces, monkeypatch):
    """names=[rand_fd]: KID's subset estimates (seconds per evaluation on a CPU) are not computed at all."""
    monkeypatch.setattr(metric_features, "load_inception", lambda device: (_ for _ in ()).throw(
        MetricUnavailable("the Inception weights for FID/KID are not available (no network)")))
    cfg_data = data_cfg("folder", root=str(faces), resolution=16)
    data = build_dataset(cfg_data, device=CPU, progress=False)
    ev = build_evaluator(mcfg(tmp_path, num_samples=HALF, names=["rand_fd"]), data, cfg_data, CPU)
    monkeypatch.setattr(metric_stats, "kernel_distance", lambda *a, **k: pytest.fail("KID computed but not asked for"))
    scores = ev.score(data.real_samples(HALF))
    assert list(scores) == ["rand_fd"] and math.isfinite(scores["rand_fd"])


def test_required_inception_offline_stops_before_training(tmp_path, image_folder, monkeypatch):
    def offline(device):
        raise MetricUnavailable("the Inception weights for FID/KID are not available (URLError: no network)")

    monkeypatch.setattr(metric_features, "load_inception", offline)
    cfg = make_cfg(*FAST, *tiny("gan"), "data=folder", f"data.root={image_folder}", "data.resolution=8",
                   "trainer.max_steps=2", "metrics.required=true", f"metrics.cache_dir={tmp_path / 'mc'}")
    with pytest.raises(UserError, match=r"metrics.required=true but the Inception weights"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_failed_inception_download_is_caught_and_tried_once(monkeypatch):
    calls = []

    def no_network(device, feature="2048"):
        calls.append(device)
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(metric_features, "_INCEPTION_ERROR", None)
    monkeypatch.setattr(metric_features, "InceptionFeatures", no_network)
    for _ in range(2):
        with pytest.raises(MetricUnavailable, match="Name or service not known"):
            metrics.load_inception(CPU)
    assert len(calls) == 1


def test_cache_is_written_atomically_and_recomputed_when_damaged(tmp_path):
    cache = Cache(tmp_path)
    _, hit = cache.get("x", lambda: {"a": torch.arange(3)})
    assert not hit and torch.equal(torch.load(tmp_path / "x.pt", weights_only=True)["a"], torch.arange(3))
    assert cache.get("x", lambda: pytest.fail("recomputed"))[1]
    (tmp_path / "x.pt").write_bytes(b"garbage")
    assert torch.equal(cache.get("x", lambda: {"a": torch.ones(2)})[0]["a"], torch.ones(2))
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_bad_metric_settings_give_one_sentence(tmp_path, data_cfg):
    data = build_dataset(data_cfg("sine", size=256), device=CPU)
    for kw, fragment in (({"names": ["fid"]}, "is for images"), ({"names": ["nope"]}, "unknown metric nope"),
                         ({"primary": "class_coverage"}, "higher-is-better"),
                         ({"primary": "rand_fd"}, "not among the metrics")):
        with pytest.raises(UserError, match=fragment):
            build_evaluator(mcfg(tmp_path, num_samples=64, **kw), data, None, CPU)


# ------------------------------------------------------------------------------------- in training
def test_training_logs_metrics_returns_primary_and_keeps_the_rng_stream(tmp_path):
    common = [*FAST, *tiny("gan"), "data.size=512", "data.batch_size=32", "trainer.max_steps=4",
              "log.every_n_steps=2", f"metrics.cache_dir={tmp_path / 'mc'}"]
    value = train(make_cfg(*common, "metrics.every_n_steps=2", "metrics.num_samples=128"), tmp_path / "on")
    acc = EventAccumulator(str(tmp_path / "on"), size_guidance={"scalars": 0, "tensors": 0}).Reload()
    for name in metrics.BACKENDS["sine"]:
        assert [e.step for e in acc.Scalars(f"Metrics/{name}")] == [2, 4]
    assert value == pytest.approx(acc.Scalars("Metrics/sine_ks")[-1].value, rel=1e-6)
    hparams = acc.PluginTagToContent("hparams")
    assert b"Metrics/sine_ks" in b"".join(hparams.values())      # the HParams entry lists the metric tags
    # metrics never touch the training RNG streams: the same weights with them off
    off = train(make_cfg(*common, "metrics=off"), tmp_path / "off")
    on_ckpt = torch.load(tmp_path / "on" / "checkpoints" / "last.pt", weights_only=True)
    off_ckpt = torch.load(tmp_path / "off" / "checkpoints" / "last.pt", weights_only=True)
    for k, v in on_ckpt["G"].items():
        assert torch.equal(v, off_ckpt["G"][k]), k
    assert off == pytest.approx(acc.Scalars("Loss/G")[-1].value, rel=1e-5)   # metrics off: the final Loss/G


class RecordReturn(Callback):
    """Writes each job's return value (what the launcher hands the sweeper) next to the sweep."""

    def __init__(self, path: str):
        self.path = path

    def on_job_end(self, config, job_return, **kwargs) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"num": config.hydra.job.num, "value": job_return.return_value}) + "\n")


def test_two_job_sweep_returns_the_primary_metric_and_gantrain_eval_agrees(tmp_path):
    record = tmp_path / "returns.jsonl"
    sweep = gantrain("-m", "seed=0,1", *FAST, *tiny("gan"), "data.size=256", "data.batch_size=32",
                     "trainer.max_steps=2", "metrics.num_samples=64", f"metrics.cache_dir={tmp_path / 'mc'}",
                     f"hydra.sweep.dir={tmp_path / 'sweep'}", "hydra.sweep.subdir=${hydra.job.num}",
                     "+hydra.callbacks.record._target_=tests.test_metrics.RecordReturn",
                     f"+hydra.callbacks.record.path={record}",
                     env={"PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}, cwd=tmp_path)
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    returns = sorted((json.loads(line) for line in record.read_text().splitlines()), key=lambda r: r["num"])
    assert [r["num"] for r in returns] == [0, 1]
    for r in returns:
        acc = EventAccumulator(str(tmp_path / "sweep" / str(r["num"])), size_guidance={"scalars": 0}).Reload()
        assert isinstance(r["value"], float) and r["value"] == pytest.approx(acc.Scalars("Metrics/sine_ks")[-1].value)
    # gantrain-eval on job 0's checkpoint: the same fixed latents give the same value, as a table and JSON
    out = tmp_path / "eval.json"
    ev = gantrain(str(tmp_path / "sweep" / "0" / "checkpoints" / "last.pt"), "-n", "64", "--json", str(out),
                  "--cache-dir", str(tmp_path / "mc"), "--device", "cpu", cmd="gantrain-eval")
    assert ev.returncode == 0, ev.stderr[-2000:]
    assert "sine_ks" in ev.stdout and "primary" in ev.stdout
    result = json.loads(out.read_text())
    assert result["primary"] == "sine_ks" and result["num_samples"] == 64
    assert result["metrics"]["sine_ks"] == pytest.approx(returns[0]["value"], rel=1e-6)


def test_hparams_search_examples_compose():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from gantrain.cli import config_dir

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("config", overrides=["+hparams_search=grid"], return_hydra_config=True)
    assert set(cfg.hydra.sweeper.params) == {"optim.generator.lr", "optim.discriminator.lr", "seed"}
    text = (Path(config_dir()) / "hparams_search" / "optuna.yaml").read_text()
    assert "override /hydra/sweeper: optuna" in text and "direction: minimize" in text


def test_image_metrics_keep_the_training_rng_stream(tmp_path, image_folder):
    """The random-CNN backend initialises its layers from torch's global generator (the sine metrics above
    draw nothing): built and evaluated inside the run, it must still leave the training stream as it was."""
    common = [*FAST, *tiny("dcgan"), "data=folder", f"data.root={image_folder}", "data.resolution=16",
              "data.batch_size=4", "trainer.max_steps=4", "log.every_n_steps=2",
              f"metrics.cache_dir={tmp_path / 'mc'}"]
    train(make_cfg(*common, "metrics.enabled=true", "metrics.names=[rand_fd]", "metrics.every_n_steps=2",
                   "metrics.num_samples=16"), tmp_path / "on")
    train(make_cfg(*common), tmp_path / "off")
    acc = EventAccumulator(str(tmp_path / "on"), size_guidance={"scalars": 0}).Reload()
    assert [e.step for e in acc.Scalars("Metrics/rand_fd")] == [2, 4]
    on = torch.load(tmp_path / "on" / "checkpoints" / "last.pt", weights_only=True)["G"]
    off = torch.load(tmp_path / "off" / "checkpoints" / "last.pt", weights_only=True)["G"]
    assert all(torch.equal(v, off[k]) for k, v in on.items())


def test_offline_inception_is_said_once_per_process_in_gantrains_words(tmp_path, data_cfg, faces, monkeypatch,
                                                                        capsys, caplog):
    """torch.hub's raw 'Downloading: "https://..."' line becomes gantrain's own; the fallback warning is given
    by the first evaluator of the process only (a sweep's later jobs), not by every job."""
    import sys

    def no_network(device, feature="2048"):
        sys.stdout.write('Downloading: "https://example.org/pt_inception.pth" to /nowhere/pt_inception.pth\n')
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(metric_features, "_INCEPTION_ERROR", None)
    monkeypatch.setattr(metric_features, "InceptionFeatures", no_network)
    cfg_data = data_cfg("folder", root=str(faces), resolution=16)
    data = build_dataset(cfg_data, device=CPU, progress=False)
    with caplog.at_level(logging.INFO, logger="gantrain.metrics"):
        for _ in range(2):  # two jobs of a sweep in one process
            ev = build_evaluator(mcfg(tmp_path, num_samples=HALF), data, cfg_data, CPU)
            assert ev.names == ["rand_fd", "rand_kid"]
    out = capsys.readouterr()
    assert 'Downloading: "' not in out.out + out.err
    said = [r.getMessage() for r in caplog.records]
    assert sum("downloading the Inception-v3 weights" in m for m in said) == 1, said
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "rand_fd" in warnings[0], warnings
