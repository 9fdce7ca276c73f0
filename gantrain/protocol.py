"""What an evaluation's numbers mean (``gantrain-eval --protocol``): feature extractor, resizing, sample counts.

A FID is comparable with a paper's only when the feature extractor, the resizing to Inception's 299x299, the
sample counts and the reference set match (stylegan2-ada-pytorch #283: Box vs Lanczos resizing alone moved a
FID from 4.3 to 5.3). These lines say what gantrain did.
"""

from __future__ import annotations

from gantrain import metrics

INCEPTION = ("torchmetrics' NoTrainInceptionV3 with torch-fidelity's weights (pt_inception-2015-12-05, the "
             "TF FID network ported), input converted to uint8 RGB (greyscale repeated to 3 channels), resized "
             "to 299x299 by torch.nn.functional.interpolate(bilinear, align_corners=False, antialias=True) "
             "(torchmetrics' default; torch-fidelity's own FID and the TF reference use a TF1-style bilinear "
             "resize instead), then scaled to [-1, 1]")


def _extractor(kind: str, backend) -> str:
    if kind == "curve":
        return "the raw curves (no feature extractor, no resizing)"
    if kind == "classifier":
        return (f"gantrain's MNIST-like classifier (a small CNN trained once on the real training split, "
                f"test accuracy {backend.accuracy:.3f}), its 128-d penultimate features, at the data's "
                "resolution (no resizing)")
    if kind == "inception":
        return f"{INCEPTION}; 2048-d pool features"
    if kind == "randcnn":
        return ("a fixed-seed random 3-layer CNN (no download), 128-d averaged features, at the data's "
                "resolution (no resizing): comparable between gantrain runs only")
    return kind


def describe(evaluator, data, generator: str) -> list[str]:
    """One line per fact: samples (real reference, generated), generator, latents, each metric's features."""
    n_real = min(evaluator.num_samples, data.total)
    lines = [f"data: {data.name} {'x'.join(map(str, data.shape))}, real reference samples: {n_real} of "
             f"{data.total} (a fixed subset, the same every evaluation)",
             f"generated samples: {evaluator.num_samples} from the {generator} generator, fixed latents "
             f"z ~ N(0, I) (seed {metrics.SAMPLE_SEED:#x}), no truncation"]
    for kind, backend in evaluator.backends.items():
        names = ", ".join(n for n in backend.names if n in evaluator.names)
        if kind == "sine":
            lines.append(f"{names}: least-squares fit of A sin(pi x + phi) to each curve; two-sample KS "
                         "(amplitude) and Kuiper (phase) statistics against the real curves")
        elif kind in ("classifier", "inception", "randcnn"):
            stats = ("Frechet distance of Gaussian fits" if kind != "classifier" else
                     "Frechet distance of Gaussian fits; class coverage from the predicted labels")
            if kind != "classifier":
                stats += (f"; KID: unbiased MMD^2, cubic polynomial kernel, {backend.kid_subsets} subsets of "
                          f"{backend.kid_subset_size}")
            lines.append(f"{names}: {stats}; features: {_extractor(kind, backend)}")
        elif kind == "prdc":
            lines.append(f"{names}: k={backend.k} nearest neighbours (Kynkaanniemi et al. 2019, Naeem et al. "
                         f"2020; the prdc package's formulas); features: {_extractor(backend.space, backend.base)}")
        elif kind == "is":
            lines.append(f"{names}: exp(E KL(p(y|x) || p(y))), mean of {backend.splits} splits, torchmetrics' "
                         f"formula; logits: {INCEPTION}; 1008 logits")
    return lines
