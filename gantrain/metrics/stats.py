"""The metrics' formulas, on tensors only (no models, no files): Frechet distance, KID, the KS and Kuiper
statistics, the sine fit, class coverage, precision/recall/density/coverage and the Inception Score.

PRDC follows the reference implementation ``prdc`` (Naeem et al.'s code: strict ``<`` against the radii, the
k-th neighbour not counting the point itself); tests compare them with it. Distances are computed in chunks of
at most ``chunk_elems`` entries on the features' device, so memory stays bounded for any sample count.
"""

from __future__ import annotations

import math

import torch

CHUNK_ELEMS = 1 << 24        # distance entries per chunk (64 MiB in float32)


# --------------------------------------------------------------------------- Frechet distance and KID
def gaussian_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (unbiased) covariance of (N, D) features, in float64."""
    f = features.double()
    return f.mean(0), torch.cov(f.T).reshape(f.shape[1], f.shape[1])


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2), as torchmetrics computes it (eigenvalues of S1 S2)."""
    mu1, sigma1, mu2, sigma2 = (t.double().cpu() for t in (mu1, sigma1, mu2, sigma2))
    a = (mu1 - mu2).square().sum()
    b = sigma1.trace() + sigma2.trace()
    c = torch.linalg.eigvals(sigma1 @ sigma2).sqrt().real.sum()
    return float(a + b - 2 * c)


def kernel_distance(real: torch.Tensor, fake: torch.Tensor, subsets: int = 50, subset_size: int = 1000,
                    seed: int = 0) -> float:
    """KID: the unbiased MMD^2 with the cubic polynomial kernel (f.g/D + 1)^3, averaged over random subsets
    (torchmetrics' KernelInceptionDistance with a fixed seed for the subsets)."""
    real, fake = real.double().cpu(), fake.double().cpu()
    m = min(subset_size, real.shape[0], fake.shape[0])
    if m < 2:
        return float("nan")
    g = torch.Generator().manual_seed(seed)
    gamma = 1.0 / real.shape[1]
    values = []
    for _ in range(subsets):
        x = real[torch.randperm(real.shape[0], generator=g)[:m]]
        y = fake[torch.randperm(fake.shape[0], generator=g)[:m]]
        k_xx, k_yy, k_xy = ((a @ b.T * gamma + 1.0) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        value = ((k_xx.sum() - k_xx.diagonal().sum()) + (k_yy.sum() - k_yy.diagonal().sum())) / (m * (m - 1))
        values.append(value - 2 * k_xy.sum() / m**2)
    return float(torch.stack(values).mean())


# ---------------------------------------------------------------------------------- sine curves
def _ecdf_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.double().cpu().sort().values, b.double().cpu().sort().values
    points = torch.cat([a, b])
    fa = torch.searchsorted(a, points, right=True).double() / a.numel()
    fb = torch.searchsorted(b, points, right=True).double() / b.numel()
    return fa - fb


def ks_statistic(a: torch.Tensor, b: torch.Tensor) -> float:
    """Two-sample Kolmogorov-Smirnov statistic sup |F_a - F_b| (0: same distribution, 1: disjoint)."""
    return float(_ecdf_diff(a, b).abs().max())


def kuiper_statistic(a: torch.Tensor, b: torch.Tensor) -> float:
    """Kuiper's statistic max(F_a - F_b) + max(F_b - F_a): KS for circular data (invariant to the cut)."""
    d = _ecdf_diff(a, b)
    return float(d.max().clamp_min(0) + (-d).max().clamp_min(0))


def fit_sinusoids(y: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Least-squares fit of ``A sin(pi x + phi)`` to each curve of ``y`` (N, L) at ``x`` (L,).

    Returns amplitude A >= 0, phase phi in [0, 2 pi) and the RMS residual, each (N,), float64 on the CPU."""
    y, x = y.double().cpu().reshape(y.shape[0], -1), x.double().cpu()
    basis = torch.stack([torch.sin(math.pi * x), torch.cos(math.pi * x)], 1)          # (L, 2)
    coef = y @ torch.linalg.pinv(basis).T                                               # (N, 2): A cos, A sin
    residual = (y - coef @ basis.T).square().mean(1).sqrt()
    amplitude = coef.norm(dim=1)
    phase = torch.atan2(coef[:, 1], coef[:, 0]) % (2 * math.pi)
    return amplitude, phase, residual


# ---------------------------------------------------------------------------------- classes
def class_coverage(predicted: torch.Tensor, num_classes: int, share: float = 0.1) -> float:
    """Share of classes predicted for at least ``share`` of their uniform share of the samples."""
    counts = torch.bincount(predicted.long().cpu(), minlength=num_classes).double()
    return float((counts >= share * predicted.numel() / num_classes).double().mean())


# ------------------------------------------------------------- precision, recall, density, coverage
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


# --------------------------------------------------------------------------------- Inception Score
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
