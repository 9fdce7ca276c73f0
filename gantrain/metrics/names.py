"""Which metrics exist, which backend computes each, which way is better, and which ones a data set gets by
default; the checks of ``metrics.names``, ``metrics.primary`` and ``metrics.prdc_features`` against the data."""

from __future__ import annotations

from gantrain.errors import UserError

PRDC_NAMES = ("precision", "recall", "density", "coverage")
BACKENDS: dict[str, tuple[str, ...]] = {
    "sine": ("sine_residual", "sine_amp_ks", "sine_phase_ks", "sine_ks"),
    "classifier": ("classifier_fd", "class_coverage"),
    "inception": ("fid", "kid"),
    "randcnn": ("rand_fd", "rand_kid"),
    "prdc": PRDC_NAMES,       # in a feature space of the above (metrics.prdc_features)
    "is": ("is",),
}
BACKEND_OF = {name: backend for backend, names in BACKENDS.items() for name in names}
BACKEND_OF["class_accuracy"] = "classifier"   # conditional runs only (gantrain/classes.py)
HIGHER_IS_BETTER = frozenset({"class_coverage", "class_accuracy", *PRDC_NAMES, "is"})
MNIST_LIKE = ("mnist", "fashion_mnist")
SPACES = ("auto", "curve", "classifier", "inception", "randcnn")   # metrics.prdc_features


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


def check_names(names: list[str], data, primary: str | None) -> None:
    """A UserError for a metric that is unknown or does not fit ``data``, or a higher-is-better primary."""
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
    if primary in HIGHER_IS_BETTER:
        raise UserError(f"metrics.primary={primary} is higher-is-better but the primary metric is "
                        "minimised: choose a distance (e.g. classifier_fd).")


def resolve_space(space: str, data) -> str:
    """The feature space ``metrics.prdc_features`` names for ``data``, or a UserError for a space that does not
    fit the data. ``auto``: the raw curves for sine data, the MNIST-like classifier's 128-d features for
    mnist/fashion_mnist, Inception's 2048-d pool features for other images."""
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
