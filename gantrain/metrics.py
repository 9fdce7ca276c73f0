"""Sample-quality metrics: generated samples against the real data, lower is better (except coverage).

    evaluator = build_evaluator(cfg.metrics, data, cfg.data, device)   # None when metrics.enabled=false
    scores = evaluator.log(G_ema, step, tb)      # generate -> features -> statistics -> Metrics/* scalars

Every metric is computed in two separable stages so that, under DDP, each rank can generate and
featurise its share and one rank computes the statistic:

* ``Evaluator.features(fake)``   -> ``{backend: tensor}``   (per sample, any subset of the samples)
* ``Evaluator.statistics(feats)`` -> ``{metric: float}``    (on all features together)

Backends and their metrics:

* ``sine`` (curves): each curve is fitted by least squares with ``a*sin(pi*x) + b*cos(pi*x)`` (the data's
  frequency); ``sine_residual`` is the mean RMS fit residual, ``sine_amp_ks`` the two-sample
  Kolmogorov-Smirnov statistic between the fitted amplitudes of generated and real curves,
  ``sine_phase_ks`` Kuiper's variant of it for the fitted phases (phase is circular; Kuiper's statistic
  does not depend on where the circle is cut) and ``sine_ks`` their mean (the primary metric).
* ``classifier`` (MNIST, Fashion-MNIST): a small CNN trained once on the real training set (cached per
  data set, resolution and data fingerprint); ``classifier_fd`` is the Frechet distance in its 128-d
  penultimate features, ``class_coverage`` the share of classes that receive at least a tenth of their
  uniform share of the samples' predicted labels (mode collapse shows as missing classes; higher is better).
* ``inception`` (any images): ``fid`` and ``kid`` on torchmetrics' Inception-v3 features (torch-fidelity
  weights, downloaded once by the library into torch's hub cache). The statistics are computed here with
  the same formulas as torchmetrics (tests compare them), so real-data statistics can be cached on disk.
* ``randcnn`` (any images, no download): ``rand_fd`` and ``rand_kid``, the same statistics on the 128-d
  features of a fixed-seed random convolutional network: the fallback for folders and CelebA when the
  Inception weights cannot be fetched. Only comparable between runs at the same resolution.

Real-data statistics are computed once per data set, resolution, sample count and feature extractor, and
cached under ``metrics.cache_dir`` (default ``~/.cache/gantrain/metrics``), written atomically and read
with ``torch.load(weights_only=True)``; a file lock keeps parallel sweep jobs from computing them twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import math
import os
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gantrain import checkpoint, classes, prdc
from gantrain.errors import UserError
from gantrain.models import sample

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = "~/.cache/gantrain/metrics"
SAMPLE_SEED = 0x3E7A1      # latents for evaluation: the same every evaluation, every run
BACKENDS: dict[str, tuple[str, ...]] = {
    "sine": ("sine_residual", "sine_amp_ks", "sine_phase_ks", "sine_ks"),
    "classifier": ("classifier_fd", "class_coverage"),
    "inception": ("fid", "kid"),
    "randcnn": ("rand_fd", "rand_kid"),
    "prdc": prdc.PRDC_NAMES,       # in a feature space of the above (gantrain/prdc.py)
    "is": ("is",),
}
BACKEND_OF = {name: backend for backend, names in BACKENDS.items() for name in names}
BACKEND_OF["class_accuracy"] = "classifier"   # conditional runs only (gantrain/classes.py)
HIGHER_IS_BETTER = frozenset({"class_coverage", "class_accuracy", *prdc.PRDC_NAMES, "is"})
MNIST_LIKE = prdc.MNIST_LIKE
CLASSIFIER_VERSION = 2
RANDCNN_VERSION = 2


class MetricUnavailable(Exception):
    """A metric's requirements (the Inception weights) cannot be met here; the message says why.
    ``repeated``: this process was told so before (a sweep's later jobs): not warned about again."""

    def __init__(self, message: str, repeated: bool = False):
        super().__init__(message)
        self.repeated = repeated


def _unavailable(e: MetricUnavailable, message: str, *args) -> None:
    """The warning for a metric that cannot be computed (``message``'s first %s is ``e``): once per process,
    a debug line after that."""
    log.log(logging.DEBUG if getattr(e, "repeated", False) else logging.WARNING, message, e, *args)


# =============================================================================================== statistics
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


def class_coverage(predicted: torch.Tensor, num_classes: int, share: float = 0.1) -> float:
    """Share of classes predicted for at least ``share`` of their uniform share of the samples."""
    counts = torch.bincount(predicted.long().cpu(), minlength=num_classes).double()
    return float((counts >= share * predicted.numel() / num_classes).double().mean())


# ============================================================================================== the caches
class Cache:
    """Tensors on disk: atomic writes (temp file + os.replace), ``torch.load(weights_only=True)``, and a file
    lock so that concurrent sweep jobs compute a missing entry once."""

    def __init__(self, root: str | os.PathLike | None):
        self.root = Path(os.path.expanduser(str(root or DEFAULT_CACHE_DIR)))

    def get(self, name: str, compute: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], bool]:
        """The cached entry ``name`` (a dict of tensors and plain values), computing it when absent.

        Returns ``(entry, hit)``."""
        from filelock import FileLock

        path = self.root / f"{name}.pt"
        try:  # a cache that cannot be written (read-only, a file, a full disk) costs time, not the run
            self.root.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(path) + ".lock")
            lock.acquire()
        except OSError as e:
            log.warning("metrics.cache_dir=%s cannot be used (%s): computing %s without caching it; set "
                        "metrics.cache_dir to a writable folder to keep it", self.root, e.strerror or e, name)
            return compute(), False
        try:
            if path.is_file():
                try:
                    return torch.load(path, map_location="cpu", weights_only=True), True
                except Exception as e:  # noqa: BLE001 - a truncated or foreign file: compute it again
                    log.warning("metrics cache %s is unreadable (%s); recomputing it", path, e)
            entry = compute()
            try:
                checkpoint.save(entry, path, full_fix="free some space to cache it next time",  # atomic
                                unwritable_fix="set metrics.cache_dir to a writable folder to cache it")
            except UserError as e:
                log.warning("the metrics cache was not written, the run goes on (%s)", str(e).rstrip("."))
            return entry, False
        finally:
            lock.release()


def fingerprint(*tensors: torch.Tensor) -> str:
    h = hashlib.sha1()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:12]


# ======================================================================================= feature extractors
def to_uint8_rgb(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images (N, C, H, W) -> uint8 (N, 3, H, W), greyscale repeated to three channels."""
    x = ((images.float() + 1) * 127.5).round_().clamp_(0, 255).to(torch.uint8)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x[:, :3]


class InceptionFeatures:
    """torchmetrics' Inception-v3 (torch-fidelity's FID weights), 2048-d pool features of uint8 images (or
    another of its outputs, e.g. ``logits_unbiased`` for the Inception Score)."""

    def __init__(self, device: torch.device, feature: str = "2048"):
        from torchmetrics.image.fid import NoTrainInceptionV3

        self.key = f"inception{feature}"
        self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=[feature]).to(device)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(to_uint8_rgb(images)).float()


_INCEPTION_ERROR: str | None = None


def load_inception(device: torch.device, feature: str = "2048") -> Callable[[torch.Tensor], torch.Tensor]:
    """The Inception feature extractor, or :class:`MetricUnavailable` (missing package, no network).

    A failure is remembered for the process, so a sweep without network tries once."""
    global _INCEPTION_ERROR
    if _INCEPTION_ERROR is not None:
        raise MetricUnavailable(_INCEPTION_ERROR, repeated=True)
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(30)      # the weights' download must not hang a run on a black-holed network
    try:
        with _download_said_by_gantrain():
            return InceptionFeatures(device, feature)
    except Exception as e:            # ModuleNotFoundError, URLError, HTTPError, a corrupt download ...
        reason = str(getattr(e, "reason", None) or e).strip() or type(e).__name__
        _INCEPTION_ERROR = (f"the Inception weights for FID/KID are not available ({type(e).__name__}: "
                            f"{reason[:200]})")
        raise MetricUnavailable(_INCEPTION_ERROR) from e
    finally:
        socket.setdefaulttimeout(old_timeout)


@contextlib.contextmanager
def _download_said_by_gantrain():
    """torch.hub's raw 'Downloading: "https://..." to ...' line (torch-fidelity sends it to stderr) is said in
    gantrain's words instead; the download's progress bar still shows."""
    import sys

    class Quiet:
        def __init__(self, stream):
            self.stream = stream

        def write(self, text: str) -> int:
            if text.startswith('Downloading: "'):
                log.info("metrics: downloading the Inception-v3 weights for FID/KID (about 100 MB, once: they are "
                         "kept in torch's hub cache %s)", torch.hub.get_dir())
                return len(text)
            return self.stream.write(text)

        def __getattr__(self, name):
            return getattr(self.stream, name)

    with contextlib.redirect_stdout(Quiet(sys.stdout)), contextlib.redirect_stderr(Quiet(sys.stderr)):
        yield


class RandomCNNFeatures(nn.Module):
    """A fixed-seed random conv net (no download): 128-d features (global average pooling).

    128 dimensions rather than more: the Frechet distance's estimation bias grows with dimensions/samples."""

    def __init__(self, channels: int):
        super().__init__()
        self.key = f"randcnn{RANDCNN_VERSION}c{channels}"
        g = torch.Generator().manual_seed(1234 + channels)
        widths = [channels, 32, 64, 128]
        self.convs = nn.ModuleList()
        for cin, cout in itertools.pairwise(widths):
            conv = nn.Conv2d(cin, cout, 3, stride=2, padding=1)
            with torch.no_grad():   # drawn from our own generator: the same weights on every machine
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * math.sqrt(2.0 / (cin * 9)))
                conv.bias.zero_()
            self.convs.append(conv)
        self.requires_grad_(False).eval()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        for conv in self.convs:
            x = torch.nn.functional.leaky_relu(conv(x), 0.2)
        return x.mean((2, 3))


class Classifier(nn.Module):
    """A small CNN for MNIST-like data at any resolution; ``features`` are its 128-d penultimate layer."""

    def __init__(self, channels: int = 1, num_classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(32 * 16, 128), nn.ReLU())
        self.head = nn.Linear(128, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


# =============================================================================================== backends
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
        amplitude, phase, residual = fit_sinusoids(real, self.x)
        return {"amplitude": amplitude, "phase": phase, "residual": residual.mean()}

    def features(self, fake: torch.Tensor) -> torch.Tensor:
        amplitude, phase, residual = fit_sinusoids(fake, self.x)
        return torch.stack([amplitude, phase, residual], 1)

    def statistics(self, feats: torch.Tensor, wanted: set[str] | None = None) -> dict[str, float]:
        amp_ks = ks_statistic(feats[:, 0], self.real_amplitude)
        phase_ks = kuiper_statistic(feats[:, 1], self.real_phase)
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
        mu, sigma = gaussian_stats(feats)
        return {"mu": mu, "sigma": sigma, "features": feats.float().cpu()}

    @torch.no_grad()
    def features(self, fake: torch.Tensor) -> torch.Tensor:
        return _batched(self.extractor, fake, self.batch_size).float()

    def statistics(self, feats: torch.Tensor, wanted: set[str] | None = None) -> dict[str, float]:
        """FD and KID, or only those in ``wanted`` (KID's subsets cost seconds on a CPU)."""
        fd_name, kid_name = self.names
        out = {}
        if wanted is None or fd_name in wanted:
            mu, sigma = gaussian_stats(feats)
            out[fd_name] = frechet_distance(mu, sigma, self.mu, self.sigma)
        if wanted is None or kid_name in wanted:
            out[kid_name] = kernel_distance(self.real_features, feats, self.kid_subsets, self.kid_subset_size)
        return out


class ClassifierBackend:
    names = BACKENDS["classifier"]

    def __init__(self, data, cfg_data, real: torch.Tensor, cache: Cache, key: str, mcfg, device, batch_size):
        self.device, self.batch_size = device, batch_size
        train_x, train_y, test_x, test_y = load_labelled(cfg_data, data.name, data.shape[-1])
        ckey = (f"classifier{CLASSIFIER_VERSION}-{data.name}-{data.shape[-1]}px-s{int(mcfg.classifier_steps)}-"
                f"{fingerprint(train_x, train_y)}")
        entry, self.classifier_cached = cache.get(
            ckey, lambda: train_classifier(train_x, train_y, test_x, test_y, int(mcfg.classifier_steps), device))
        self.num_classes = int(entry["num_classes"])
        self.net = Classifier(data.shape[0], self.num_classes)
        self.net.load_state_dict(entry["state_dict"])
        self.net.to(device).eval().requires_grad_(False)
        self.accuracy = float(entry["test_accuracy"])
        log.info("metrics: %s classifier %s (test accuracy %.3f)", data.name,
                 "loaded from the cache" if self.classifier_cached else "trained", self.accuracy)
        stats, self.cache_hit = cache.get(f"real-{key}-{ckey}", lambda: self._real(real))
        self.mu, self.sigma = stats["mu"], stats["sigma"]

    def _real(self, real: torch.Tensor) -> dict[str, Any]:
        mu, sigma = gaussian_stats(self.features(real)[:, :-1])
        return {"mu": mu, "sigma": sigma}

    @torch.no_grad()
    def features(self, fake: torch.Tensor) -> torch.Tensor:
        """(N, 129): the 128 features and the predicted class."""
        def one(x):
            f = self.net.features(x.to(self.device).float())
            return torch.cat([f, self.net.head(f).argmax(1, keepdim=True).float()], 1)
        return _batched(one, fake, self.batch_size)

    def statistics(self, feats: torch.Tensor, wanted: set[str] | None = None) -> dict[str, float]:
        mu, sigma = gaussian_stats(feats[:, :-1])
        return {"classifier_fd": frechet_distance(mu, sigma, self.mu, self.sigma),
                "class_coverage": class_coverage(feats[:, -1], self.num_classes)}


def load_labelled(cfg_data, name: str, resolution: int):
    """MNIST-like train and test images (float [-1, 1], (N, 1, R, R)) and labels, read (and checked) by the
    data stage's loader."""
    from gantrain.data.mnist import fit_resolution, load_mnist_like
    from gantrain.torch_utils import from_uint8

    out = []
    for split in ("train", "test"):
        x, y = load_mnist_like(cfg_data, name, split=split)
        out += [from_uint8(fit_resolution(x.unsqueeze(1), resolution)), y]
    return tuple(out)


def train_classifier(x: torch.Tensor, y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, steps: int,
                     device: torch.device, batch: int = 128, max_epochs: int = 20) -> dict[str, Any]:
    """Adam for ``steps`` steps (at most ``max_epochs`` epochs) on (x, y); deterministic (own generator)."""
    num_classes = int(max(int(y.max()), int(test_y.max() if test_y.numel() else 0)) + 1)
    g = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        net = Classifier(x.shape[1], num_classes).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    steps = max(1, min(steps, math.ceil(max_epochs * x.shape[0] / batch)))
    net.train()
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (min(batch, x.shape[0]),), generator=g)
        loss = nn.functional.cross_entropy(net(x[idx].to(device)), y[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        pred = torch.cat([net(c.to(device)).argmax(1).cpu() for c in test_x.split(512)]) if test_x.numel() else None
    accuracy = float((pred == test_y).float().mean()) if pred is not None else float("nan")
    return {"state_dict": {k: v.cpu() for k, v in net.state_dict().items()}, "num_classes": num_classes,
            "test_accuracy": accuracy, "steps": steps}


# ============================================================================================== evaluator
def default_names(data) -> list[str]:
    if data.kind == "curve":
        return list(BACKENDS["sine"])
    if data.name in MNIST_LIKE:
        return list(BACKENDS["classifier"])
    return list(BACKENDS["inception"])


def default_primary(names: list[str]) -> str | None:
    for name in ("sine_ks", "fid", "classifier_fd", "rand_fd"):
        if name in names:
            return name
    return next((n for n in names if n not in HIGHER_IS_BETTER), None)


class Evaluator:
    """Builds the real-data side once; then ``evaluate(net)`` / ``log(net, step, tb)`` at every due step."""

    def __init__(self, mcfg, data, cfg_data, device: torch.device):
        self.device = torch.device(device)
        self.kind, self.data_name = data.kind, data.name
        curve = data.kind == "curve"
        self.every_n_steps = int(mcfg.every_n_steps or (500 if curve else 2000))
        self.num_samples = int(mcfg.num_samples or (1024 if curve else 2048))
        self.batch_size = int(mcfg.batch_size)
        names = list(mcfg.names) if mcfg.names else default_names(data)
        names += [n for n in prdc.PRDC_NAMES if mcfg.prdc and n not in names]
        self.num_classes = len(data.class_names) if getattr(data, "labels", None) is not None else None  # G(z, c)
        names += classes.default_metric(names, self.num_classes, explicit=bool(mcfg.names))
        self._check_names(names, data, mcfg)
        explicit_names = bool(mcfg.names)

        cache = Cache(mcfg.cache_dir)
        n_real = min(self.num_samples, data.total)
        real = data.real_samples(n_real)
        key = f"{data.name}-{'x'.join(map(str, data.shape))}-n{n_real}-{fingerprint(real)}"
        self.backends: dict[str, Any] = {}
        wanted = [b for b in BACKENDS if any(BACKEND_OF[n] == b for n in names)]
        for backend in wanted:
            if backend == "sine":
                self.backends[backend] = SineBackend(data, real, cache, key)
            elif backend == "classifier":
                self.backends[backend] = ClassifierBackend(data, cfg_data, real, cache, key, mcfg, self.device,
                                                           self.batch_size)
            elif backend == "randcnn":
                self.backends[backend] = FeatureBackend("randcnn", RandomCNNFeatures(data.shape[0]).to(self.device),
                                                        real, cache, key, mcfg, self.batch_size)
            elif backend == "inception":
                try:
                    extractor = load_inception(self.device)
                except MetricUnavailable as e:
                    if mcfg.required:
                        raise UserError(f"metrics.required=true but {e}: connect to the network once (they are "
                                        "cached by torch.hub), or drop fid/kid from metrics.names, or set "
                                        "metrics.required=false.") from None
                    dropped = [n for n in names if BACKEND_OF[n] == "inception"]
                    names = [n for n in names if BACKEND_OF[n] != "inception"]
                    fallback = [] if (explicit_names or names) else list(BACKENDS["randcnn"])
                    _unavailable(e, "metrics: %s; carrying on without %s%s.", "/".join(dropped),
                                f" and using the fallback {'/'.join(fallback)} instead" if fallback else "")
                    if fallback:
                        names += fallback
                        self.backends["randcnn"] = FeatureBackend(
                            "randcnn", RandomCNNFeatures(data.shape[0]).to(self.device), real, cache, key, mcfg,
                            self.batch_size)
                    continue
                self.backends[backend] = FeatureBackend("inception", extractor, real, cache, key, mcfg,
                                                        self.batch_size)
            elif backend == "prdc":
                space = prdc.resolve_space(mcfg.prdc_features, data)
                base = None if space == "curve" else self._base(space, data, cfg_data, real, cache, key, mcfg)
                if base is None and space == "inception":  # the weights cannot be fetched: the random CNN's
                    space, base = "randcnn", self._base("randcnn", data, cfg_data, real, cache, key, mcfg)
                self.backends[backend] = prdc.PRDCBackend(space, base, real, int(mcfg.prdc_k), self.device)
                log.info("metrics: %s in the %s feature space", "/".join(prdc.PRDC_NAMES), space)
            elif backend == "is":
                try:
                    self.backends[backend] = prdc.InceptionScoreBackend(
                        load_inception(self.device, "logits_unbiased"), self.batch_size)
                except MetricUnavailable as e:
                    if mcfg.required:
                        raise UserError(f"metrics.required=true but {e}: connect to the network once, or drop "
                                        "is from metrics.names.") from None
                    _unavailable(e, "metrics: %s; carrying on without is.")
                    names.remove("is")
        self.names = names
        primary = mcfg.primary
        if primary and primary not in names:
            if primary in BACKEND_OF and BACKEND_OF[primary] == "inception" and not mcfg.required:
                log.warning("metrics: metrics.primary=%s is not available; using %s", primary,
                            default_primary(names))
                primary = None
            else:
                raise UserError(f"metrics.primary={primary} is not among the metrics computed for data "
                                f"{data.name} ({', '.join(names)}): choose one of them.")
        self.primary = primary or default_primary(names)
        self.last: dict[str, float] = {}
        log.info("metrics: %s every %d steps on %d samples (primary: %s)", ", ".join(names) or "none",
                 self.every_n_steps, self.num_samples, self.primary)

    def _base(self, kind: str, data, cfg_data, real, cache: Cache, key: str, mcfg):
        """The backend of ``kind`` whose features PRDC uses: the one computed anyway, else a new one (None when
        the Inception weights cannot be fetched)."""
        if kind in self.backends:
            return self.backends[kind]
        if kind == "classifier":
            return ClassifierBackend(data, cfg_data, real, cache, key, mcfg, self.device, self.batch_size)
        try:
            extractor = (RandomCNNFeatures(data.shape[0]).to(self.device) if kind == "randcnn"
                         else load_inception(self.device))
        except MetricUnavailable as e:
            _unavailable(e, "metrics: %s; precision/recall/density/coverage use the random CNN's features.")
            return None
        return FeatureBackend(kind, extractor, real, cache, key, mcfg, self.batch_size)

    @staticmethod
    def _check_names(names: list[str], data, mcfg) -> None:
        for n in names:
            if n not in BACKEND_OF:
                raise UserError(f"metrics.names has an unknown metric {n}: choose from {', '.join(BACKEND_OF)}.")
            backend = BACKEND_OF[n]
            if backend == "prdc":  # any data: its feature space is checked when it is built
                continue
            if backend == "sine" and data.kind != "curve":
                raise UserError(f"metric {n} is for sine curves, not {data.name} images: drop it from metrics.names.")
            if backend != "sine" and data.kind == "curve":
                raise UserError(f"metric {n} is for images, not sine curves: drop it from metrics.names.")
            if backend == "classifier" and data.name not in MNIST_LIKE:
                raise UserError(f"metric {n} needs labelled MNIST-like data, not {data.name}: "
                                "use fid/kid or rand_fd/rand_kid.")
        if mcfg.primary in HIGHER_IS_BETTER:
            raise UserError(f"metrics.primary={mcfg.primary} is higher-is-better but the primary metric is "
                            "minimised: choose a distance (e.g. classifier_fd).")

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
        was_training = net.training
        net.eval()
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                if getattr(self, "num_classes", None):  # sample i (of all ranks) has class i % K (class_accuracy)
                    c = (torch.arange(len(z)) + offset) % self.num_classes
                    return torch.cat([sample(net, zb.to(self.device), c=cb.to(self.device)).float()
                                      for zb, cb in zip(z.split(self.batch_size), c.split(self.batch_size))])
                return torch.cat([sample(net, c.to(self.device)).float() for c in z.split(self.batch_size)])
        finally:
            net.train(was_training)

    # ---- stage 2: per-sample features (per rank)
    def features(self, fake: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
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

    def evaluate(self, net: nn.Module) -> dict[str, float]:
        self.last = self.score(self.generate(net))
        return self.last

    def log(self, net: nn.Module, step: int, tb) -> dict[str, float]:
        """Evaluate ``net`` and write ``Metrics/<name>`` scalars at ``step``."""
        if not self.names:
            return {}
        scores = self.evaluate(net)
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


def build_evaluator(mcfg, data, cfg_data, device: torch.device) -> Evaluator | None:
    """The evaluator for ``data`` as ``mcfg`` (the ``metrics`` node) says, or None when metrics are off.

    Raises UserError for bad settings, and when ``metrics.required=true`` and a metric cannot be computed.
    Never changes the global RNG streams."""
    if mcfg is None or not mcfg.get("enabled", True):
        return None
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        return Evaluator(mcfg, data, cfg_data, device)
