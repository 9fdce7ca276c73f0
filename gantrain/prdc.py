"""Precision, recall, density, coverage and the Inception Score: the formulas, and their metric backends.

* ``precision`` / ``recall``: improved precision and recall (Kynkaanniemi et al. 2019): the share of generated
  samples inside the real manifold (the union of balls around each real feature with the radius of its k-th
  nearest real neighbour), and the share of real samples inside the generated manifold. k = 3.
* ``density`` / ``coverage`` (Naeem et al. 2020): how many real balls contain each generated sample, / k,
  averaged (1 for matching distributions, can exceed 1); and the share of real balls that contain at least
  one generated sample.
* ``is``: the Inception Score exp(E KL(p(y|x) || p(y))) on Inception-v3's logits, as torchmetrics computes it
  (mean over ``splits`` groups), without its random shuffle (the samples come from fixed latents already).

The formulas are those of the reference implementation ``prdc`` (Naeem et al.'s code: strict ``<`` against
the radii, the k-th neighbour not counting the point itself); tests compare them with it. Distances are
computed in chunks of at most ``chunk_elems`` entries on the features' device, so memory stays bounded for
any sample count. All four values are higher-is-better.

The feature space (``metrics.prdc_features``): ``auto`` is the raw curves for sine data, the MNIST-like
classifier's 128-d features for mnist/fashion_mnist, and Inception's 2048-d pool features for other images
(the random CNN's 128-d ones when the Inception weights cannot be fetched); or name one of ``curve``,
``classifier``, ``inception``, ``randcnn``. The values depend on the feature space: compare like with like.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from gantrain.errors import UserError

PRDC_NAMES = ("precision", "recall", "density", "coverage")
SPACES = ("auto", "curve", "classifier", "inception", "randcnn")
MNIST_LIKE = ("mnist", "fashion_mnist")
CHUNK_ELEMS = 1 << 24        # distance entries per chunk (64 MiB in float32)


def _rows(n_cols: int, chunk_elems: int) -> int:
    return max(1, chunk_elems // max(n_cols, 1))


def knn_radii(x: torch.Tensor, k: int, chunk_elems: int = CHUNK_ELEMS) -> torch.Tensor:
    """The distance from each row of ``x`` (N, D) to its k-th nearest other row, (N,)."""
    if x.shape[0] <= k:
        raise ValueError(f"{x.shape[0]} samples are too few for the {k}-th nearest neighbour")
    return torch.cat([torch.cdist(c, x).kthvalue(k + 1, dim=1).values  # k + 1: the point itself is at 0
                      for c in x.split(_rows(x.shape[0], chunk_elems))])


def prdc(real: torch.Tensor, fake: torch.Tensor, k: int = 3, real_radii: torch.Tensor | None = None,
         chunk_elems: int = CHUNK_ELEMS) -> dict[str, float]:
    """Precision, recall, density and coverage of ``fake`` (M, D) against ``real`` (N, D).

    ``real_radii`` (from :func:`knn_radii`) may be passed in when the real side is reused."""
    fake = fake.to(real.device, real.dtype)
    r_real = knn_radii(real, k, chunk_elems) if real_radii is None else real_radii.to(real.device, real.dtype)
    r_fake = knn_radii(fake, k, chunk_elems)
    inside = torch.zeros(fake.shape[0], dtype=torch.bool, device=real.device)   # fake in the real manifold
    count = torch.zeros(fake.shape[0], dtype=torch.float64, device=real.device)  # real balls around a fake
    recalled = torch.zeros(real.shape[0], dtype=torch.bool, device=real.device)  # real in the fake manifold
    nearest = torch.full((real.shape[0],), float("inf"), dtype=real.dtype, device=real.device)
    rows = _rows(real.shape[0], chunk_elems)
    for start in range(0, fake.shape[0], rows):
        d = torch.cdist(fake[start:start + rows], real)                          # (m, N)
        in_ball = d < r_real[None]
        inside[start:start + rows] = in_ball.any(1)
        count[start:start + rows] = in_ball.sum(1, dtype=torch.float64)
        recalled |= (d < r_fake[start:start + rows, None]).any(0)
        nearest = torch.minimum(nearest, d.min(0).values)
    return {"precision": float(inside.double().mean()), "recall": float(recalled.double().mean()),
            "density": float(count.mean() / k), "coverage": float((nearest < r_real).double().mean())}


def inception_score(logits: torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """Mean and standard deviation over ``splits`` groups of exp(E_x KL(p(y|x) || p(y))) (torchmetrics')."""
    logits = logits.double()
    prob, log_prob = logits.softmax(1), logits.log_softmax(1)
    scores = []
    for p, log_p in zip(prob.chunk(splits), log_prob.chunk(splits)):
        marginal = p.mean(0, keepdim=True)
        scores.append((p * (log_p - marginal.log())).sum(1).mean().exp())
    scores = torch.stack(scores)
    return float(scores.mean()), float(scores.std()) if len(scores) > 1 else 0.0


# ============================================================================================== backends
def resolve_space(space: str, data, inception_available: bool | None = None) -> str:
    """The feature space ``metrics.prdc_features`` names for ``data`` (``auto``: see the module's text), or a
    UserError for a space that does not fit the data."""
    if space not in SPACES:
        raise UserError(f"metrics.prdc_features={space} is unknown: choose one of {', '.join(SPACES)}.")
    curve = data.kind == "curve"
    if space == "auto":
        return "curve" if curve else "classifier" if data.name in MNIST_LIKE else "inception"
    if curve != (space == "curve"):
        raise UserError(f"metrics.prdc_features={space} does not fit {data.name} data: use "
                        f"{'curve' if curve else 'classifier, inception or randcnn'} (or auto).")
    if space == "classifier" and data.name not in MNIST_LIKE:
        raise UserError(f"metrics.prdc_features=classifier needs labelled MNIST-like data, not {data.name}: "
                        "use inception or randcnn (or auto).")
    return space


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
        self.real_radii = knn_radii(self.real, k)

    @torch.no_grad()
    def features(self, fake: torch.Tensor) -> torch.Tensor:
        feats = fake.flatten(1) if self.base is None else self.base.features(fake)
        return self.select(feats).float()

    def from_source(self, source_feats: torch.Tensor) -> torch.Tensor:
        return self.select(source_feats).float()

    def statistics(self, feats: torch.Tensor, wanted: set[str] | None = None) -> dict[str, float]:
        return prdc(self.real, feats.to(self.device), self.k, self.real_radii)


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
        return {"is": inception_score(feats, self.splits)[0]}
