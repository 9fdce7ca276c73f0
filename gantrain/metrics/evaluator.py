"""The Evaluator: the real-data side built once, then generate -> features -> statistics -> ``Metrics/*``
scalars at every due step, in one process or shared by the ranks of a process group (:class:`Shards`)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from gantrain import classes
from gantrain.errors import UserError
from gantrain.metrics import features as extractors
from gantrain.metrics import names as registry
from gantrain.metrics.backends import (
    ClassifierBackend,
    FeatureBackend,
    InceptionScoreBackend,
    PRDCBackend,
    SineBackend,
)
from gantrain.metrics.cache import Cache, fingerprint
from gantrain.metrics.names import BACKEND_OF, BACKENDS, PRDC_NAMES
from gantrain.models import sample
from gantrain.torch_utils import eval_mode, isolated_rng

log = logging.getLogger(__name__)

SAMPLE_SEED = 0x3E7A1      # latents for evaluation: the same every evaluation, every run


class Shards(Protocol):
    """The ranks of a process group as an evaluation shared by them needs them
    (gantrain.distributed.evaluation.RankShards is one)."""

    rank: int
    world: int

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        """Every rank's ``t`` (the same shape on all ranks), concatenated in rank order, on every rank."""

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj``, on every rank."""


@dataclass
class _Setup:
    """What building a backend needs: the data, its real reference samples and their cache key, the settings."""

    mcfg: Any
    data: Any
    cfg_data: Any
    real: torch.Tensor
    cache: Cache
    key: str
    device: torch.device
    batch_size: int

    def sine(self) -> SineBackend:
        return SineBackend(self.data, self.real, self.cache, self.key)

    def classifier(self) -> ClassifierBackend:
        return ClassifierBackend(self.data, self.cfg_data, self.real, self.cache, self.key, self.mcfg, self.device,
                                 self.batch_size)

    def features(self, kind: str, extractor=None) -> FeatureBackend:
        """FD/KID of ``kind`` (inception: ``extractor``, loaded by the caller; randcnn: built here)."""
        if kind == "randcnn":
            extractor = extractors.RandomCNNFeatures(self.data.shape[0]).to(self.device)
        return FeatureBackend(kind, extractor, self.real, self.cache, self.key, self.mcfg, self.batch_size)


class Evaluator:
    """Builds the real-data side once; then ``evaluate(net)`` / ``log(net, step, tb)`` at every due step.

    Every metric is computed in two separable stages, so that ranks can share the work (``shards``):
    ``features(fake)`` per sample (any subset of the samples), ``statistics(feats)`` on all of them."""

    def __init__(self, mcfg, data, cfg_data, device: torch.device):
        self.device = torch.device(device)
        self.kind, self.data_name = data.kind, data.name
        curve = data.kind == "curve"
        self.every_n_steps = int(mcfg.every_n_steps or (500 if curve else 2000))
        self.num_samples = int(mcfg.num_samples or (1024 if curve else 2048))
        self.batch_size = int(mcfg.batch_size)
        self.num_classes = len(data.class_names) if getattr(data, "labels", None) is not None else None  # G(z, c)
        names = list(mcfg.names) if mcfg.names else registry.default_names(data)
        names += [n for n in PRDC_NAMES if mcfg.prdc and n not in names]
        names += classes.default_metric(names, self.num_classes, explicit=bool(mcfg.names))
        registry.check_names(names, data, mcfg.primary)

        n_real = min(self.num_samples, data.total)
        real = data.real_samples(n_real)
        key = f"{data.name}-{'x'.join(map(str, data.shape))}-n{n_real}-{fingerprint(real)}"
        setup = _Setup(mcfg, data, cfg_data, real, Cache(mcfg.cache_dir), key, self.device, self.batch_size)
        self.backends: dict[str, Any] = {}
        self.names = self._build_backends(setup, names, explicit=bool(mcfg.names))
        self.primary = self._primary(mcfg, data)
        self.last: dict[str, float] = {}

    # ---- building
    def _build_backends(self, setup: _Setup, names: list[str], explicit: bool) -> list[str]:
        """Fills ``self.backends`` (in BACKENDS' order: PRDC after the feature space it reuses); returns the
        metric names, without those that cannot be computed here (and with the offline fallback's)."""
        for backend in [b for b in BACKENDS if any(BACKEND_OF[n] == b for n in names)]:
            if backend == "sine":
                self.backends[backend] = setup.sine()
            elif backend == "classifier":
                self.backends[backend] = setup.classifier()
            elif backend == "randcnn":
                self.backends[backend] = setup.features("randcnn")
            elif backend == "inception":
                names = self._add_inception(setup, names, explicit)
            elif backend == "prdc":
                self.backends[backend] = self._prdc(setup)
            elif backend == "is":
                names = self._add_inception_score(setup, names)
        return names

    def _add_inception(self, setup: _Setup, names: list[str], explicit: bool) -> list[str]:
        """fid/kid; without the Inception weights, the random CNN's rand_fd/rand_kid when nothing else is left
        (or a UserError under metrics.required=true)."""
        try:
            extractor = extractors.load_inception(self.device)
        except extractors.MetricUnavailable as e:
            if setup.mcfg.required:
                raise UserError(f"metrics.required=true but {e}: connect to the network once (they are "
                                "cached by torch.hub), or drop fid/kid from metrics.names, or set "
                                "metrics.required=false.") from None
            dropped = [n for n in names if BACKEND_OF[n] == "inception"]
            names = [n for n in names if BACKEND_OF[n] != "inception"]
            fallback = [] if (explicit or names) else list(BACKENDS["randcnn"])
            extractors.say_unavailable(e, "metrics: %s; carrying on without %s%s.", "/".join(dropped),
                                       f" and using the fallback {'/'.join(fallback)} instead" if fallback else "")
            if fallback:
                names += fallback
                self.backends["randcnn"] = setup.features("randcnn")
            return names
        self.backends["inception"] = setup.features("inception", extractor)
        return names

    def _add_inception_score(self, setup: _Setup, names: list[str]) -> list[str]:
        try:
            self.backends["is"] = InceptionScoreBackend(
                extractors.load_inception(self.device, "logits_unbiased"), self.batch_size)
        except extractors.MetricUnavailable as e:
            if setup.mcfg.required:
                raise UserError(f"metrics.required=true but {e}: connect to the network once, or drop "
                                "is from metrics.names.") from None
            extractors.say_unavailable(e, "metrics: %s; carrying on without is.")
            names.remove("is")
        return names

    def _prdc(self, setup: _Setup) -> PRDCBackend:
        space = registry.resolve_space(setup.mcfg.prdc_features, setup.data)
        base = None if space == "curve" else self._base(space, setup)
        if base is None and space == "inception":  # the weights cannot be fetched: the random CNN's
            space, base = "randcnn", self._base("randcnn", setup)
        backend = PRDCBackend(space, base, setup.real, int(setup.mcfg.prdc_k), self.device)
        log.info("metrics: %s in the %s feature space", "/".join(PRDC_NAMES), space)
        return backend

    def _base(self, kind: str, setup: _Setup):
        """The backend of ``kind`` whose features PRDC uses: the one computed anyway, else a new one (None when
        the Inception weights cannot be fetched)."""
        if kind in self.backends:
            return self.backends[kind]
        if kind == "classifier":
            return setup.classifier()
        if kind == "randcnn":
            return setup.features("randcnn")
        try:
            return setup.features(kind, extractors.load_inception(self.device))
        except extractors.MetricUnavailable as e:
            extractors.say_unavailable(e, "metrics: %s; precision/recall/density/coverage use the random CNN's "
                                          "features.")
            return None

    def _primary(self, mcfg, data) -> str | None:
        primary = mcfg.primary
        if primary and primary not in self.names:
            if primary in BACKEND_OF and BACKEND_OF[primary] == "inception" and not mcfg.required:
                log.warning("metrics: metrics.primary=%s is not available; using %s", primary,
                            registry.default_primary(self.names))
                primary = None
            else:
                raise UserError(f"metrics.primary={primary} is not among the metrics computed for data "
                                f"{data.name} ({', '.join(self.names)}): choose one of them.")
        return primary or registry.default_primary(self.names)

    # ---- when
    @property
    def tags(self) -> list[str]:
        return [f"Metrics/{n}" for n in self.names]

    def due(self, step: int, max_steps: int) -> bool:
        return bool(self.names) and (step % self.every_n_steps == 0 or step == max_steps)

    # ---- stage 1: generate (per rank: pass n = this rank's share and its own offset)
    def generate(self, net: nn.Module, n: int | None = None, offset: int = 0) -> torch.Tensor:
        """``n`` samples of ``net`` from fixed latents (the same every evaluation), without touching the
        training RNG streams; ``net`` is put in eval mode for the duration."""
        n = self.num_samples if n is None else n
        z_dim = net.z_dim
        z = torch.randn(offset + n, z_dim, generator=torch.Generator().manual_seed(SAMPLE_SEED))[offset:]
        with torch.no_grad(), eval_mode(net), isolated_rng(self.device):
            if getattr(self, "num_classes", None):  # sample i (of all ranks) has class i % K (class_accuracy)
                c = (torch.arange(len(z)) + offset) % self.num_classes
                return torch.cat([sample(net, zb.to(self.device), c=cb.to(self.device)).float()
                                  for zb, cb in zip(z.split(self.batch_size), c.split(self.batch_size))])
            return torch.cat([sample(net, c.to(self.device)).float() for c in z.split(self.batch_size)])

    # ---- stage 2: per-sample features (per rank)
    def features(self, fake: torch.Tensor) -> dict[str, torch.Tensor]:
        with isolated_rng(self.device):
            out: dict[str, torch.Tensor] = {}
            for name, backend in self.backends.items():  # PRDC reuses its feature space's features when computed
                source = getattr(backend, "source", None)
                out[name] = backend.from_source(out[source]) if source in out else backend.features(fake)
            return out

    # ---- stage 3: statistics over all samples' features (one rank)
    def statistics(self, feats: Mapping[str, torch.Tensor]) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, backend in self.backends.items():
            out.update(backend.statistics(feats[name].cpu(), set(self.names)))  # cheap ones compute all
        if "class_accuracy" in self.names:
            out["class_accuracy"] = classes.class_accuracy(feats["classifier"][:, -1].cpu(), self.num_classes)
        return {n: out[n] for n in self.names}

    def score(self, fake: torch.Tensor) -> dict[str, float]:
        return self.statistics(self.features(fake))

    def evaluate(self, net: nn.Module, shards: Shards | None = None) -> dict[str, float]:
        """The scores of ``net`` (also kept as ``last``). With ``shards`` every rank generates and featurises
        its share of the fixed latents (``num_samples / world`` of them at its offset, so the samples are the
        ones a single process would draw), rank 0 computes the statistics, and every rank gets the scores."""
        if shards is None or shards.world == 1:
            self.last = self.score(self.generate(net))
            return self.last
        n = self.num_samples
        share = -(-n // shards.world)
        feats = self.features(self.generate(net, share, offset=shards.rank * share))
        gathered = {name: shards.all_gather(feats[name])[:n].cpu() for name in sorted(feats)}
        self.last = shards.broadcast(self.statistics(gathered) if shards.rank == 0 else None)
        return self.last

    def log(self, net: nn.Module, step: int, tb, shards: Shards | None = None) -> dict[str, float]:
        """Evaluate ``net`` and write ``Metrics/<name>`` scalars at ``step`` (rank 0 writes, under ``shards``)."""
        if not self.names:
            return {}
        scores = self.evaluate(net, shards)
        if shards is None or shards.rank == 0:
            self.report(scores, step, tb)
        return scores

    @staticmethod
    def report(scores: Mapping[str, float], step: int, tb) -> None:
        """``Metrics/<name>`` scalars at ``step`` and one log line."""
        tb.scalars({f"Metrics/{k}": v for k, v in scores.items()}, step)
        tb.flush()
        log.info("step %d: %s", step, "  ".join(f"{k}={v:.4g}" for k, v in scores.items()))

    @property
    def primary_value(self) -> float | None:
        return self.last.get(self.primary) if self.primary else None


def build_evaluator(mcfg, data, cfg_data, device: torch.device, schedule: bool = True) -> Evaluator | None:
    """The evaluator for ``data`` as ``mcfg`` (the ``metrics`` node) says, or None when metrics are off.

    Raises UserError for bad settings, and when ``metrics.required=true`` and a metric cannot be computed.
    Never changes the global RNG streams. ``schedule``: say which metrics are computed how often (a training
    run's line; gantrain-eval leaves it out)."""
    if mcfg is None or not mcfg.get("enabled", True):
        return None
    device = torch.device(device)
    with isolated_rng(device):
        evaluator = Evaluator(mcfg, data, cfg_data, device)
    if schedule:
        log.info("metrics: %s every %d steps on %d samples (primary: %s)", ", ".join(evaluator.names) or "none",
                 evaluator.every_n_steps, evaluator.num_samples, evaluator.primary)
    return evaluator
