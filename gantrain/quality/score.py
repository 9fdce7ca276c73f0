"""Scoring with gantrain's own offline metrics (gantrain.metrics), the same scorer for every loop.

* sine: gantrain's sine evaluator on the default sine data (sine_ks, sine_amp_ks, sine_phase_ks,
  sine_residual), plus ``residual_ratio``: the residual over that of fresh curves of the family.
* digits: gantrain's MNIST-like evaluator built on the *held-out* digit set (``digits-heldout``): its
  classifier is trained by gantrain's metrics code on the held-out train split (and tested on its t10k
  split), and the real statistics are those of held-out images, so the GAN's own training images are never
  the reference; plus ``confidence``, the classifier's mean top softmax on the generated digits.
* shapes: gantrain's random-CNN features (rand_fd, rand_kid) against the held-out shapes folder.
"""

from __future__ import annotations

import torch
from torch import nn

from gantrain.classes import class_accuracy
from gantrain.cli import compose
from gantrain.data import build_dataset
from gantrain.metrics import build_evaluator

HIGHER_IS_BETTER = {"class_coverage", "confidence"}


class Scorer:
    def __init__(self, overrides: list[str], device: torch.device, extra: dict | None = None):
        cfg = compose(overrides)
        self.kind = cfg.data.name
        self.data = build_dataset(cfg.data, device=device, progress=False)
        self.evaluator = build_evaluator(cfg.metrics, self.data, cfg.data, device)
        self.extra = extra or {}
        self.fresh_residual = None
        if self.data.kind == "curve":
            from gantrain.data.sine import make_curves

            _, fresh, _, _ = make_curves(self.evaluator.num_samples, self.data.shape[0],
                                         tuple(cfg.data.amplitude), tuple(cfg.data.phase), float(cfg.data.noise),
                                         data_seed=12345)
            self.fresh = fresh
            self.fresh_residual = self.evaluator.score(fresh)["sine_residual"]

    @property
    def primary(self) -> str:
        return self.evaluator.primary

    def score_samples(self, fake: torch.Tensor, num_classes: int | None = None) -> dict[str, float]:
        """The metrics of ``fake``; with ``num_classes`` (a conditional G's samples, sample i generated for
        class i % K) also ``class_accuracy``."""
        out = self.evaluator.score(fake)
        if self.fresh_residual:
            out["residual_ratio"] = out["sine_residual"] / self.fresh_residual
        clf = self.evaluator.backends.get("classifier")
        if clf is not None:
            with torch.no_grad():
                p = torch.cat([clf.net(c.to(clf.device).float()).softmax(1) for c in fake.split(256)])
            out["confidence"] = float(p.max(1).values.mean())
            if num_classes:
                out["class_accuracy"] = class_accuracy(p.argmax(1).cpu(), num_classes)
        return out

    def score(self, G: nn.Module) -> dict[str, float]:
        """Scores of ``G``'s samples; a class-conditional G is sampled with balanced labels (class i % K)."""
        k = getattr(G, "num_classes", None)
        if not k:
            return self.score_samples(self.evaluator.generate(G))
        kept, self.evaluator.num_classes = self.evaluator.num_classes, k
        try:
            fake = self.evaluator.generate(G)
        finally:
            self.evaluator.num_classes = kept
        return self.score_samples(fake, k)

    def reference(self) -> dict[str, float]:
        """The same metrics for real samples the evaluator has not seen: fresh sine curves, or the training
        images of ``extra['train_overrides']`` (what a perfect generator of the training set would score)."""
        if self.data.kind == "curve":
            return self.score_samples(self.fresh)
        cfg = compose(self.extra["train_overrides"])
        train = build_dataset(cfg.data, device=self.evaluator.device, progress=False)
        out = self.score_samples(train.real_samples(min(self.evaluator.num_samples, train.total)))
        clf = self.evaluator.backends.get("classifier")
        if clf is not None:  # the scoring classifier's accuracy on the held-out set's t10k split
            out["classifier_accuracy"] = clf.accuracy
        return out
