"""The metric backends: each turns samples into per-sample features (``features``, any subset of the samples,
so ranks can share the work) and all samples' features into metric values (``statistics``), against the
real data's side computed once when it is built (and cached on disk when it costs).

* ``SineBackend``: ``sine_*`` from least-squares sine fits of the curves;
* ``FeatureBackend``: FD and KID on an extractor's features (``fid``/``kid``, ``rand_fd``/``rand_kid``);
* ``ClassifierBackend``: ``classifier_fd`` and ``class_coverage`` with the MNIST-like classifier;
* ``PRDCBackend``: precision, recall, density, coverage in another backend's feature space;
* ``InceptionScoreBackend``: ``is`` on Inception's logits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from gantrain.metrics import features as extractors
from gantrain.metrics import stats
from gantrain.metrics.cache import Cache, fingerprint
from gantrain.metrics.names import BACKENDS, PRDC_NAMES

log = logging.getLogger(__name__)


def _batched(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.cat([fn(chunk) for chunk in x.split(batch)])


class SineBackend:
    names = BACKENDS["sine"]

    def __init__(self, data, real: torch.Tensor, cache: Cache, key: str):
        self.x = getattr(data, "x", None)
        if self.x is None:
            self.x = torch.linspace(-1, 1, data.shape[-1])
        self.x = self.x.detach().cpu()
        entry, self.cache_hit = cache.get(f"real-{key}-sine", lambda: self._real(real))
        self.real_amplitude, self.real_phase = entry["amplitude"], entry["phase"]

    def _real(self, real: torch.Tensor) -> dict[str, Any]:
        amplitude, phase, residual = stats.fit_sinusoids(real, self.x)
        return {"amplitude": amplitude, "phase": phase, "residual": residual.mean()}

    def features(self, fake: torch.Tensor) -> torch.Tensor:
        amplitude, phase, residual = stats.fit_sinusoids(fake, self.x)
        return torch.stack([amplitude, phase, residual], 1)

    def statistics(self, feats: torch.Tensor, wanted: set[str] | None = None) -> dict[str, float]:
        amp_ks = stats.ks_statistic(feats[:, 0], self.real_amplitude)
        phase_ks = stats.kuiper_statistic(feats[:, 1], self.real_phase)
        return {"sine_residual": float(feats[:, 2].mean()), "sine_amp_ks": amp_ks, "sine_phase_ks": phase_ks,
                "sine_ks": (amp_ks + phase_ks) / 2}


class FeatureBackend:
    """FD and KID on the features of ``extractor``: real statistics (mean, covariance and the features
    themselves for KID) come from the cache."""

    def __init__(self, kind: str, extractor: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor,
                 cache: Cache, key: str, mcfg, batch_size: int):
        self.names = BACKENDS[kind]
        self.extractor, self.batch_size = extractor, batch_size
        self.kid_subsets, self.kid_subset_size = int(mcfg.kid_subsets), int(mcfg.kid_subset_size)
        entry, self.cache_hit = cache.get(f"real-{key}-{extractor.key}", lambda: self._real(real))
        self.mu, self.sigma, self.real_features = entry["mu"], entry["sigma"], entry["features"]

    def _real(self, real: torch.Tensor) -> dict[str, Any]:
        feats = self.features(real)
        mu, sigma = stats.gaussian_stats(feats)
        return {"mu": mu, "sigma": sigma, "features": feats.float().cpu()}

    @torch.no_grad()
    def features(self, fake: torch.Tensor) -> torch.Tensor:
        return _batched(self.extractor, fake, self.batch_size).float()

    def statistics(self, feats: torch.Tensor, wanted: set[str] | None = None) -> dict[str, float]:
        """FD and KID, or only those in ``wanted`` (KID's subsets cost seconds on a CPU)."""
        fd_name, kid_name = self.names
        out = {}
        if wanted is None or fd_name in wanted:
            mu, sigma = stats.gaussian_stats(feats)
            out[fd_name] = stats.frechet_distance(mu, sigma, self.mu, self.sigma)
        if wanted is None or kid_name in wanted:
            out[kid_name] = stats.kernel_distance(self.real_features, feats, self.kid_subsets, self.kid_subset_size)
        return out


class ClassifierBackend:
    names = BACKENDS["classifier"]

    def __init__(self, data, cfg_data, real: torch.Tensor, cache: Cache, key: str, mcfg, device, batch_size):
        self.device, self.batch_size = device, batch_size
        train_x, train_y, test_x, test_y = extractors.load_labelled(cfg_data, data.name, data.shape[-1])
        ckey = (f"classifier{extractors.CLASSIFIER_VERSION}-{data.name}-{data.shape[-1]}px-s{int(mcfg.classifier_steps)}-"
                f"{fingerprint(train_x, train_y)}")
        entry, self.classifier_cached = cache.get(
            ckey, lambda: extractors.train_classifier(train_x, train_y, test_x, test_y, int(mcfg.classifier_steps), device))
        self.num_classes = int(entry["num_classes"])
        self.net = extractors.Classifier(data.shape[0], self.num_classes)
        self.net.load_state_dict(entry["state_dict"])
        self.net.to(device).eval().requires_grad_(False)
        self.accuracy = float(entry["test_accuracy"])
        log.info("metrics: %s classifier %s (test accuracy %.3f)", data.name,
                 "loaded from the cache" if self.classifier_cached else "trained", self.accuracy)
        stats, self.cache_hit = cache.get(f"real-{key}-{ckey}", lambda: self._real(real))
        self.mu, self.sigma = stats["mu"], stats["sigma"]

    def _real(self, real: torch.Tensor) -> dict[str, Any]:
        mu, sigma = stats.gaussian_stats(self.features(real)[:, :-1])
        return {"mu": mu, "sigma": sigma}

    @torch.no_grad()
    def features(self, fake: torch.Tensor) -> torch.Tensor:
        """(N, 129): the 128 features and the predicted class."""
        def one(x):
            f = self.net.features(x.to(self.device).float())
            return torch.cat([f, self.net.head(f).argmax(1, keepdim=True).float()], 1)
        return _batched(one, fake, self.batch_size)

    def statistics(self, feats: torch.Tensor, wanted: set[str] | None = None) -> dict[str, float]:
        mu, sigma = stats.gaussian_stats(feats[:, :-1])
        return {"classifier_fd": stats.frechet_distance(mu, sigma, self.mu, self.sigma),
                "class_coverage": stats.class_coverage(feats[:, -1], self.num_classes)}


class PRDCBackend:
    """PRDC in the feature space of ``base`` (another metric backend, or None for raw curves).

    ``select`` maps the base's per-sample features to the vectors compared (the classifier's features carry
    the predicted class in their last column). When the evaluator computes the base backend anyway, its
    features are reused (``source``) and nothing is extracted twice."""

    names = PRDC_NAMES

    def __init__(self, space: str, base: Any, real: torch.Tensor, k: int, device: torch.device):
        self.space, self.base, self.k = space, base, k
        # the classifier's features end with the predicted class: drop it
        self.select = (lambda f: f[:, :-1]) if space == "classifier" else (lambda f: f)
        self.source = space if base is not None else None
        self.device = device
        self.real = self.features(real).to(device)
        self.real_radii = stats.knn_radii(self.real, k)

    @torch.no_grad()
    def features(self, fake: torch.Tensor) -> torch.Tensor:
        feats = fake.flatten(1) if self.base is None else self.base.features(fake)
        return self.select(feats).float()

    def from_source(self, source_feats: torch.Tensor) -> torch.Tensor:
        return self.select(source_feats).float()

    def statistics(self, feats: torch.Tensor, wanted: set[str] | None = None) -> dict[str, float]:
        return stats.prdc(self.real, feats.to(self.device), self.k, self.real_radii)


class InceptionScoreBackend:
    """``is`` on the logits of ``extractor`` (torchmetrics' Inception-v3 with torch-fidelity's weights, its
    ``logits_unbiased`` output); needs no real data."""

    names = ("is",)

    def __init__(self, extractor: Callable[[torch.Tensor], torch.Tensor], batch_size: int, splits: int = 10):
        self.extractor, self.batch_size, self.splits = extractor, batch_size, splits

    @torch.no_grad()
    def features(self, fake: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.extractor(c).float() for c in fake.split(self.batch_size)])

    def statistics(self, feats: torch.Tensor, wanted: set[str] | None = None) -> dict[str, float]:
        return {"is": stats.inception_score(feats, self.splits)[0]}
