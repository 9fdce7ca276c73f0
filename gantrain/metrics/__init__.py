"""Sample-quality metrics: generated samples against the real data, lower is better (except coverage).

    evaluator = build_evaluator(cfg.metrics, data, cfg.data, device)   # None when metrics.enabled=false
    scores = evaluator.log(G_ema, step, tb)      # generate -> features -> statistics -> Metrics/* scalars

Every metric is computed in two separable stages so that, under DDP, each rank can generate and
featurise its share and one rank computes the statistic (``Evaluator.log(net, step, tb, shards)``):

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
* ``precision`` / ``recall``: improved precision and recall (Kynkaanniemi et al. 2019): the share of generated
  samples inside the real manifold (the union of balls around each real feature with the radius of its k-th
  nearest real neighbour), and the share of real samples inside the generated manifold. k = 3.
* ``density`` / ``coverage`` (Naeem et al. 2020): how many real balls contain each generated sample, / k,
  averaged (1 for matching distributions, can exceed 1); and the share of real balls that contain at least
  one generated sample.
* ``is``: the Inception Score exp(E KL(p(y|x) || p(y))) on Inception-v3's logits, as torchmetrics computes it
  (mean over ``splits`` groups), without its random shuffle (the samples come from fixed latents already).

The feature space (``metrics.prdc_features``): ``auto`` is the raw curves for sine data, the MNIST-like
classifier's 128-d features for mnist/fashion_mnist, and Inception's 2048-d pool features for other images
(the random CNN's 128-d ones when the Inception weights cannot be fetched); or name one of ``curve``,
``classifier``, ``inception``, ``randcnn``. The values depend on the feature space: compare like with like.

Real-data statistics are computed once per data set, resolution, sample count and feature extractor, and
cached under ``metrics.cache_dir`` (default ``~/.cache/gantrain/metrics``), written atomically and read
with ``torch.load(weights_only=True)``; a file lock keeps parallel sweep jobs from computing them twice.

The modules, one job each: ``names`` (which metrics exist and fit which data), ``stats`` (the formulas),
``features`` (the feature extractors), ``cache`` (the real-data statistics on disk), ``backends`` (features
and statistics per metric family) and ``evaluator`` (the Evaluator and build_evaluator).
"""

from gantrain.metrics.backends import (
    ClassifierBackend,
    FeatureBackend,
    InceptionScoreBackend,
    PRDCBackend,
    SineBackend,
)
from gantrain.metrics.cache import DEFAULT_CACHE_DIR, Cache, fingerprint
from gantrain.metrics.evaluator import SAMPLE_SEED, Evaluator, Shards, build_evaluator
from gantrain.metrics.features import (
    CLASSIFIER_VERSION,
    RANDCNN_VERSION,
    Classifier,
    InceptionFeatures,
    MetricUnavailable,
    RandomCNNFeatures,
    load_inception,
    to_uint8_rgb,
    train_classifier,
)
from gantrain.metrics.names import (
    BACKEND_OF,
    BACKENDS,
    HIGHER_IS_BETTER,
    MNIST_LIKE,
    PRDC_NAMES,
    default_names,
    default_primary,
    resolve_space,
)
from gantrain.metrics.stats import (
    class_coverage,
    fit_sinusoids,
    frechet_distance,
    gaussian_stats,
    inception_score,
    kernel_distance,
    knn_radii,
    ks_statistic,
    kuiper_statistic,
    prdc,
)

__all__ = [
    "BACKEND_OF", "BACKENDS", "CLASSIFIER_VERSION", "DEFAULT_CACHE_DIR", "HIGHER_IS_BETTER", "MNIST_LIKE",
    "PRDC_NAMES", "RANDCNN_VERSION", "SAMPLE_SEED", "Cache", "Classifier", "ClassifierBackend", "Evaluator",
    "FeatureBackend", "InceptionFeatures", "InceptionScoreBackend", "MetricUnavailable", "PRDCBackend",
    "RandomCNNFeatures", "Shards", "SineBackend", "build_evaluator", "class_coverage", "default_names",
    "default_primary", "fingerprint", "fit_sinusoids", "frechet_distance", "gaussian_stats", "inception_score",
    "kernel_distance", "knn_radii", "ks_statistic", "kuiper_statistic", "load_inception", "prdc",
    "resolve_space", "to_uint8_rgb", "train_classifier",
]
