"""The typed schema of a run's config, and the range checks a type cannot express.

Hydra merges the YAML groups under ``conf/`` into :class:`Config`, so a wrong type
(``trainer.max_steps=abc``) is refused at compose time with the key named.
:func:`validate` then checks ranges and combinations and raises :class:`UserError`
with one sentence.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from gantrain.errors import UserError


@dataclass
class DataConfig:
    name: str = MISSING
    batch_size: int = 64
    root: str | None = None
    download: bool = False
    split: str = "train"
    # images (celeba, folder; MNIST-like data is 28x28 unless a model asks for another size)
    resolution: int | None = None
    channels: int | None = None
    cache_dir: str | None = None        # decoded-image caches; default: <root>/.gantrain_cache
    max_device_bytes: int = 4 * 1024**3    # larger decoded data sets are streamed from the cache
    decode_workers: int = 0                # 0 = one per CPU core
    min_images: int = 1                    # a folder with fewer readable images is refused
    xflip: bool = False                    # the data set doubled by left-right mirrors (images only)
    # sine
    size: int | None = None
    num_points: int | None = None
    amplitude: list[float] | None = None
    phase: list[float] | None = None
    noise: float | None = None


@dataclass
class LossConfig:
    name: str = "nonsaturating"
    label_smoothing: float = 0.0
    label_noise: float = 0.0
    r1_gamma: float = 0.0
    r1_interval: int = 16
    gp_weight: float = 0.0              # WGAN-GP's gradient penalty on interpolates (loss=wgan_gp: 10)
    pl_weight: float = 0.0              # StyleGAN2's path-length regulariser (loss=bce_r1: 2), 0 = off
    pl_interval: int = 4                # lazy: every N G steps, scaled by N
    pl_decay: float = 0.01              # the running mean of path lengths: a += decay * (mean - a)


@dataclass
class TrainerConfig:
    max_steps: int = 2000
    d_steps: int = 1
    device: str = "auto"
    precision: str = "32"
    devices: int = 1
    compile: bool = False
    channels_last: bool = False
    deterministic: bool = False
    sync_batchnorm: bool = False
    accumulate: int = 1                 # micro-batches of data.batch_size / K per optimiser step
    early_stop: int | None = None       # stop after N evaluations in a row without a better metrics.primary


@dataclass
class LogConfig:
    every_n_steps: int = 50
    sample_every_n_steps: int = 500
    num_samples: int = 64
    progress_bar: bool = True


@dataclass
class CkptConfig:
    every_n_steps: int = 1000
    keep: int = 3
    best: bool = False                  # true: checkpoints/best.pt at the best metrics.primary (gantrain/training/best.py)


@dataclass
class MetricsConfig:
    enabled: bool = True
    names: list[str] | None = None      # null: the data set's defaults (see gantrain/metrics/names.py)
    primary: str | None = None          # null: sine_ks, classifier_fd, fid (or rand_fd without Inception)
    every_n_steps: int | None = None    # null: 500 for sine curves, 2000 for images
    num_samples: int | None = None      # null: 1024 for sine curves, 2048 for images
    required: bool = False                 # true: stop before training when a metric (FID/KID) is unavailable
    cache_dir: str | None = None        # null: ~/.cache/gantrain/metrics
    batch_size: int = 256
    classifier_steps: int = 300
    kid_subsets: int = 50
    kid_subset_size: int = 1000
    prdc: bool = False                  # true: also precision, recall, density, coverage (gantrain/metrics/)
    prdc_features: str = "auto"         # their feature space: auto, curve, classifier, inception, randcnn
    prdc_k: int = 3                     # k of the k-th nearest neighbour radii


@dataclass
class AugmentConfig:
    """Differentiable augmentation of every image D sees (gantrain/augment.py)."""
    name: str = "none"                  # none | diffaug | ada
    policy: list[str] = field(default_factory=lambda: ["translation", "cutout", "color"])  # diffaug's ops
    ops: list[str] = field(default_factory=lambda: [
        "xflip", "rotate90", "translation", "scale", "aniso", "brightness", "contrast", "saturation", "cutout"])
    p: float | None = None              # ada: a fixed probability; null adapts it from r_t
    target: float = 0.6                 # ada: the r_t = E[sign D(real)] that p steers towards
    interval: int = 4                   # ada: D steps between adjustments of p
    ada_kimg: float = 500               # ada: thousands of images for p to move from 0 to 1


@dataclass
class HealthConfig:
    """Health signals and warnings (gantrain/training/health.py, conf/health/default.yaml)."""
    enabled: bool = True
    patience: int = 5                   # D has won: log steps in a row with D/fake below d_fake_below, Loss/G rising
    d_fake_below: float = 0.05
    min_diversity: float = 0.05         # collapse: grid std / reals' std below this ...
    collapse_patience: int = 2          # ... at this many sample grids in a row
    warmup_steps: int = 100             # ... from this step on
    min_coverage: float = 0.5           # collapse: class coverage below this fraction of its best


@dataclass
class Config:
    model: Any = MISSING
    data: DataConfig = field(default_factory=DataConfig)
    optim: Any = MISSING
    loss: LossConfig = field(default_factory=LossConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    log: LogConfig = field(default_factory=LogConfig)
    ckpt: CkptConfig = field(default_factory=CkptConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    seed: int = 0
    resume: str | None = None
    init_from: str | None = None   # fine-tuning: G, D, EMA weights of this checkpoint (gantrain/training/finetune.py)


def register() -> None:
    ConfigStore.instance().store(name="schema", node=Config)


LOSSES = ("nonsaturating", "minimax", "hinge", "least_squares", "wasserstein")
PRECISIONS = ("32", "bf16", "16", "auto")


def _positive(cfg: DictConfig, key: str, allow_zero: bool = False) -> None:
    value = OmegaConf.select(cfg, key)
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        bound = "zero or more" if allow_zero else "a positive number"
        raise UserError(f"{key}={value} is out of range: it must be {bound}.")


def unknown_key(full_key: str, known: list[str]) -> str:
    """The sentence for a setting that does not exist: the nearest of its section's ``known`` keys, or all."""
    section, _, key = full_key.rpartition(".")
    close = difflib.get_close_matches(key, known, n=1)
    if close:
        hint = f"did you mean {section + '.' if section else ''}{close[0]}?"
    elif known:
        hint = f"{section or 'the top level'} has {', '.join(known)}."
    else:
        hint = "`gantrain --cfg job` prints every setting there is."
    return f"{full_key} is not a setting gantrain knows: {hint}"


def _no_added_keys(cfg: DictConfig) -> None:
    """``+trainer.max_step=5`` gets past Hydra (``+`` may add keys anywhere) but nothing would read it."""
    sections = {f.name: f.default_factory for f in fields(Config) if is_dataclass(f.default_factory)}
    for section, schema in sections.items():
        known = [f.name for f in fields(schema)]
        for key in cfg.get(section) or {}:
            if key not in known:
                raise UserError(f"{unknown_key(f'{section}.{key}', known)} "
                                "(+key=value adds settings only to model and optim).")
    known = [f.name for f in fields(Config)]
    for key in cfg:
        if key not in known and key != "hydra":
            raise UserError(f"{key} is not a setting gantrain knows: the top-level settings are "
                            f"{', '.join(known)}.")


def validate(cfg: DictConfig) -> None:
    """Range and combination checks; raises UserError with one sentence."""
    _no_added_keys(cfg)
    for key in ("data.batch_size", "trainer.max_steps", "trainer.d_steps", "trainer.devices", "trainer.accumulate", "trainer.early_stop",
                "log.every_n_steps", "log.sample_every_n_steps", "log.num_samples",
                "ckpt.every_n_steps", "health.patience", "health.collapse_patience", "loss.r1_interval", "loss.pl_interval", "model.z_dim", "data.size",
                "data.num_points", "data.resolution", "data.channels"):
        _positive(cfg, key)
    for key in ("ckpt.keep", "loss.r1_gamma", "loss.gp_weight", "loss.pl_weight", "loss.pl_decay", "loss.label_smoothing", "loss.label_noise", "data.noise"):
        _positive(cfg, key, allow_zero=True)
    for key in ("loss.label_smoothing", "loss.label_noise"):
        if OmegaConf.select(cfg, key) >= 1:
            raise UserError(f"{key}={OmegaConf.select(cfg, key)} is out of range: it must be below 1.")
    for net in ("generator", "discriminator"):
        lr = OmegaConf.select(cfg, f"optim.{net}.lr")
        if lr is not None and (not isinstance(lr, (int, float)) or lr <= 0):
            raise UserError(f"optim.{net}.lr={lr} is invalid: the learning rate must be a positive number.")
    if cfg.loss.name not in LOSSES:
        raise UserError(f"loss.name={cfg.loss.name} is unknown: choose one of {', '.join(LOSSES)}.")
    if str(cfg.trainer.precision) not in PRECISIONS:
        raise UserError(f"trainer.precision={cfg.trainer.precision} is unknown: choose 32, bf16, 16 or auto.")
    if cfg.loss.name in ("hinge", "least_squares", "wasserstein") and (cfg.loss.label_smoothing or cfg.loss.label_noise):
        raise UserError(f"label smoothing and label noise apply to the BCE losses only, not loss={cfg.loss.name}.")
    for key in ("metrics.every_n_steps", "metrics.batch_size", "metrics.classifier_steps", "metrics.kid_subsets", "metrics.prdc_k"):
        _positive(cfg, key)
    for key in ("metrics.num_samples", "metrics.kid_subset_size"):
        value = OmegaConf.select(cfg, key)
        if value is not None and value < 2:
            raise UserError(f"{key}={value} is out of range: it must be at least 2.")
    k, batch = cfg.trainer.accumulate, cfg.data.batch_size
    if batch % k:
        raise UserError(f"data.batch_size={batch} cannot be split into trainer.accumulate={k} equal micro-batches: "
                        "choose a batch size divisible by trainer.accumulate.")
    pack = OmegaConf.select(cfg, "model.discriminator.pack") or 1
    if (batch // k) % pack:
        raise UserError(f"model.discriminator.pack={pack} needs micro-batches divisible by it, but data.batch_size="
                        f"{batch} / trainer.accumulate={k} is {batch // k}: choose a batch size it divides.")
    if cfg.trainer.sync_batchnorm and cfg.loss.r1_gamma:
        raise UserError("trainer.sync_batchnorm=true cannot be combined with R1 (loss.r1_gamma>0): PyTorch's "
                        "SyncBatchNorm has no second derivative; set one of them off.")
    if cfg.data.name == "folder" and OmegaConf.is_missing(cfg.data, "root"):
        raise UserError("data=folder needs the images' location: add data.root=/path/to/images.")
