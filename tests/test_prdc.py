"""Precision, recall, density, coverage and the Inception Score: hand-checkable cases, the reference
implementations (prdc, torchmetrics), chunking, the evaluator's feature spaces and the offline skip of ``is``."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from gantrain import metrics
from gantrain.config import MetricsConfig
from gantrain.data import build_dataset
from gantrain.errors import UserError
from gantrain.metrics import PRDC_NAMES, MetricUnavailable, build_evaluator, inception_score, knn_radii, prdc
from gantrain.metrics import features as metric_features
from tests.test_metrics import collapsed, digit_root  # noqa: F401 (a fixture)

CPU = torch.device("cpu")


def mcfg(tmp_path: Path, **kw):
    return OmegaConf.merge(OmegaConf.structured(MetricsConfig), {"cache_dir": str(tmp_path / "mcache"), **kw})


def test_identical_sets_score_one_and_disjoint_sets_zero():
    x = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
    assert prdc(x, x.clone()) == {"precision": 1.0, "recall": 1.0, "density": pytest.approx(1.0, abs=0.2),
                                  "coverage": 1.0}
    assert prdc(x, x + 100.0) == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_a_collapsed_generator_keeps_precision_and_loses_recall_and_coverage():
    x = torch.randn(200, 4, generator=torch.Generator().manual_seed(1))
    s = prdc(x[:100], x[100:101].expand(100, 4))   # one real-like sample repeated
    assert s["recall"] <= 0.05 and s["coverage"] <= 0.05


def test_matches_the_reference_implementation_and_chunking_changes_nothing():
    prdc_ref = pytest.importorskip("prdc")
    g = torch.Generator().manual_seed(2)
    real, fake = torch.randn(120, 10, generator=g, dtype=torch.float64), \
        torch.randn(90, 10, generator=g, dtype=torch.float64) * 1.3 + 0.3
    ref = prdc_ref.compute_prdc(real.numpy(), fake.numpy(), nearest_k=3)
    ours = prdc(real, fake, k=3)
    assert ours == pytest.approx({k: float(v) for k, v in ref.items()}, abs=1e-12)
    assert 0 < ours["precision"] < 1 and 0 < ours["recall"] < 1
    # distances in chunks of 7 rows-worth: the same values
    assert prdc(real, fake, k=3, chunk_elems=7 * 120) == ours
    # cdist's matrix-product path may round a row differently with another number of rows (BLAS blocking
    # differs by CPU): the radii agree to the last few bits, not bit for bit
    torch.testing.assert_close(knn_radii(real, 3, chunk_elems=5 * 120), knn_radii(real, 3), rtol=0, atol=1e-12)


def test_inception_score_matches_torchmetrics():
    from torchmetrics.image.inception import InceptionScore

    class Logits(torch.nn.Module):
        def forward(self, x):
            return x.float().flatten(1)[:, :12] / 40.0

    images = torch.randint(0, 256, (64, 3, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    ref = InceptionScore(feature=Logits(), splits=1)
    ref.update(images)
    assert inception_score(Logits()(images), splits=1)[0] == pytest.approx(float(ref.compute()[0]), rel=1e-6)
    uniform = torch.zeros(20, 10)
    assert inception_score(uniform, splits=2)[0] == pytest.approx(1.0)       # no class confidence: 1
    assert inception_score(torch.eye(10).repeat(2, 1) * 50, splits=2)[0] == pytest.approx(10.0, rel=1e-3)


def test_sine_prdc_on_the_curves_ranks_real_above_collapse(tmp_path, data_cfg):
    data = build_dataset(data_cfg("sine", size=2048), device=CPU)
    ev = build_evaluator(mcfg(tmp_path, num_samples=256, prdc=True), data, None, CPU)
    assert ev.names == [*metrics.BACKENDS["sine"], *PRDC_NAMES] and ev.primary == "sine_ks"
    assert ev.backends["prdc"].space == "curve"
    real, flat = ev.score(data.batch(3, 256)), ev.score(collapsed(data.batch(3, 256)))
    assert real["precision"] > 0.8 and real["recall"] > 0.8 and real["coverage"] > 0.8
    assert flat["recall"] < 0.05 and flat["coverage"] < 0.05


def test_mnist_prdc_reuses_the_classifier_features(tmp_path, data_cfg, digit_root, monkeypatch):  # noqa: F811
    cfg_data = data_cfg("mnist", root=str(digit_root))
    data = build_dataset(cfg_data, device=CPU)
    ev = build_evaluator(mcfg(tmp_path, num_samples=200, classifier_steps=60, prdc=True), data, cfg_data, CPU)
    assert ev.backends["prdc"].space == "classifier" and ev.backends["prdc"].base is ev.backends["classifier"]
    fake = data.batch(1, 200)
    feats = ev.features(fake)
    assert torch.equal(feats["prdc"], feats["classifier"][:, :-1])
    monkeypatch.setattr(ev.backends["prdc"], "features", lambda x: pytest.fail("classifier features computed twice"))
    real, flat = ev.score(fake), ev.score(collapsed(fake))
    assert real["precision"] > 0.8 and real["recall"] > 0.8 and flat["coverage"] < 0.2
    # asked for alone, it builds the classifier itself: the same values
    ev2 = build_evaluator(mcfg(tmp_path, num_samples=200, classifier_steps=60, names=["precision", "recall"]),
                          data, cfg_data, CPU)
    assert ev2.score(fake) == {k: real[k] for k in ("precision", "recall")}


def test_image_prdc_falls_back_to_the_random_cnn_and_is_is_skipped_offline(tmp_path, data_cfg, image_folder,
                                                                            monkeypatch, caplog):
    def offline(device, feature="2048"):
        raise MetricUnavailable("the Inception weights for FID/KID are not available (URLError: no network)")

    monkeypatch.setattr(metric_features, "load_inception", offline)
    cfg_data = data_cfg("folder", root=str(image_folder), resolution=8)
    data = build_dataset(cfg_data, device=CPU, progress=False)
    with caplog.at_level(logging.WARNING, logger="gantrain.metrics"):
        ev = build_evaluator(mcfg(tmp_path, num_samples=12, names=["rand_fd", "precision", "is"]), data, cfg_data, CPU)
    assert ev.names == ["rand_fd", "precision"] and ev.backends["prdc"].space == "randcnn"
    assert any("without is" in r.getMessage() for r in caplog.records)
    assert ev.score(data.real_samples(12))["precision"] == 1.0
    with pytest.raises(UserError, match="metrics.required=true but the Inception weights"):
        build_evaluator(mcfg(tmp_path, num_samples=12, names=["is"], required=True), data, cfg_data, CPU)


def test_is_with_a_stand_in_inception(tmp_path, data_cfg, image_folder, monkeypatch):
    seen = []

    def stand_in(device, feature="2048"):
        seen.append(feature)
        return lambda x: x.float().flatten(1)[:, :10]

    monkeypatch.setattr(metric_features, "load_inception", stand_in)
    cfg_data = data_cfg("folder", root=str(image_folder), resolution=8)
    data = build_dataset(cfg_data, device=CPU, progress=False)
    ev = build_evaluator(mcfg(tmp_path, num_samples=12, names=["is"]), data, cfg_data, CPU)
    assert seen == ["logits_unbiased"] and ev.primary is None
    assert ev.score(data.real_samples(12))["is"] >= 1.0
    from gantrain.protocol import describe

    lines = describe(ev, data, "EMA")
    assert any(line.startswith("is: ") and "299x299" in line and "antialias=True" in line for line in lines)


def test_bad_prdc_settings_give_one_sentence(tmp_path, data_cfg):
    data = build_dataset(data_cfg("sine", size=256), device=CPU)
    for kw, fragment in (({"prdc_features": "pixels"}, "prdc_features=pixels is unknown"),
                         ({"prdc_features": "classifier"}, "does not fit sine data")):
        with pytest.raises(UserError, match=fragment):
            build_evaluator(mcfg(tmp_path, num_samples=64, prdc=True, **kw), data, None, CPU)


def test_gantrain_eval_reports_prdc_and_states_its_protocol(tmp_path, capsys):
    import json

    from gantrain import evaluate
    from gantrain.training.loop import train
    from tests.utils import FAST, make_cfg, tiny

    train(make_cfg(*FAST, *tiny("gan"), "data.size=256", "data.batch_size=32", "trainer.max_steps=2"),
          tmp_path / "run")
    out = tmp_path / "eval.json"
    evaluate.main([str(tmp_path / "run" / "checkpoints" / "last.pt"), "-n", "64", "--prdc", "--protocol",
                   "--device", "cpu", "--cache-dir", str(tmp_path / "mc"), "--json", str(out)])
    text = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert set(PRDC_NAMES) <= set(result["metrics"]) and set(PRDC_NAMES) <= set(result["higher_is_better"])
    assert all(0.0 <= result["metrics"][n] for n in PRDC_NAMES)
    assert "precision" in text and "protocol:" in text
    assert "real reference samples: 64 of 256" in text and "generated samples: 64 from the EMA" in text
    assert "k=3 nearest neighbours" in text and "the raw curves" in text
