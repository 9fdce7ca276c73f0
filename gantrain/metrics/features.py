"""The feature extractors the metrics compare samples in: torchmetrics' Inception-v3 (downloaded once,
:class:`MetricUnavailable` when it cannot be), a fixed-seed random CNN (the offline fallback) and a small
classifier trained once on MNIST-like data (its training and its labelled data).

Extractors take images in [-1, 1] (N, C, H, W) and return float features (N, D); they know nothing of files
(the classifier's weights are cached by the backend that uses it) or of the metrics computed on them.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import socket
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from gantrain.torch_utils import from_uint8, isolated_rng, to_uint8

log = logging.getLogger(__name__)

CLASSIFIER_VERSION = 2      # part of the cached classifier's name: bump when Classifier or its training changes
RANDCNN_VERSION = 2


class MetricUnavailable(Exception):
    """A metric's requirements (the Inception weights) cannot be met here; the message says why.
    ``repeated``: this process was told so before (a sweep's later jobs): not warned about again."""

    def __init__(self, message: str, repeated: bool = False):
        super().__init__(message)
        self.repeated = repeated


def say_unavailable(e: MetricUnavailable, message: str, *args) -> None:
    """The warning for a metric that cannot be computed (``message``'s first %s is ``e``): once per process,
    a debug line after that."""
    log.log(logging.DEBUG if getattr(e, "repeated", False) else logging.WARNING, message, e, *args)


def to_uint8_rgb(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images (N, C, H, W) -> uint8 (N, 3, H, W), greyscale repeated to three channels."""
    x = to_uint8(images)
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


def load_labelled(cfg_data, name: str, resolution: int):
    """MNIST-like train and test images (float [-1, 1], (N, 1, R, R)) and labels, read (and checked) by the
    data stage's loader."""
    from gantrain.data.mnist import fit_resolution, load_mnist_like

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
    with isolated_rng(device):
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
