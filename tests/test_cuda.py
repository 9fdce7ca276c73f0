"""The CUDA paths, run for real on a GPU: the CUDA twins of the CPU tests (``pytest -m cuda``).

Run by ``make gpu-check`` (tools/gpu_check.sh, docs/GPU_CHECK.md) on a GPU machine; without CUDA every test
here skips, so the normal suite is unaffected. ``GANTRAIN_CUDA_TESTS_DEVICE=cpu pytest -m cuda`` runs their
logic on the CPU (the CUDA-only ones skip): that is how they were written without a GPU.

Covered: trainer.precision 32/bf16/16 with the fused optimisers, channels-last, torch.compile, exact resume
of a CUDA checkpoint on CUDA and its resume on the CPU, gantrain-generate --device cuda, the metrics on CUDA,
``python -m gantrain.tools.syncs`` (set_sync_debug_mode and the profiler) showing no sync in the training step,
DDP with one NCCL rank, and a ``gantrain ... trainer.devices=1`` run through the CLI.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS (set before CUDA starts)

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gantrain import checkpoint, generate
from gantrain.config import DataConfig
from gantrain.data import build_dataset
from gantrain.distributed import ddp, launch
from gantrain.metrics import build_evaluator
from gantrain.tools import syncs
from gantrain.training.loop import train
from tests.conftest import write_idx
from tests.test_metrics import collapsed, digits, mcfg
from tests.utils import ROOT, make_cfg, tiny

DEV = os.environ.get("GANTRAIN_CUDA_TESTS_DEVICE", "cuda")
ON_CUDA = DEV.startswith("cuda")
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(ON_CUDA and not torch.cuda.is_available(),
                                                   reason="needs a CUDA GPU: run by `make gpu-check` (docs/GPU_CHECK.md)")]
cuda_only = pytest.mark.skipif(not ON_CUDA, reason="CUDA only (fp16 GradScaler, fused kernels, NCCL)")
COMMON = ["log.progress_bar=false", f"trainer.device={DEV}", "metrics=off", "data.batch_size=8"]
STYLEGAN = ["model=stylegan", "model.z_dim=32", "model.generator.w_dim=32", "model.mapping_layers=2",
            "model.channel_base=512", "model.max_channels=32"]


@pytest.fixture(autouse=True)
def _clean_backends():
    """train() sets process-wide flags (deterministic algorithms, cuDNN autotuning): each test starts clean."""
    before = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    yield
    torch.use_deterministic_algorithms(before[0])
    torch.backends.cudnn.benchmark = before[1]


def folder(root) -> list[str]:
    return ["data=folder", f"data.root={root}", "data.resolution=32"]


def run(out, *overrides):
    return train(make_cfg(*COMMON, *overrides), out)


def finite_weights(ckpt) -> bool:
    return all(torch.isfinite(v).all() for net in ("G", "D") for v in ckpt[net].values() if v.is_floating_point())


# ------------------------------------------------------------------ precision, fused optimisers, formats
@pytest.mark.parametrize("model,precision,extra", [
    ("dcgan", "32", []),
    ("dcgan", "bf16", []),
    pytest.param("dcgan", "16", [], marks=cuda_only),
    pytest.param("stylegan", "16", ["loss.r1_interval=2"], marks=cuda_only),  # lazy R1 under the GradScaler
    ("stylegan", "bf16", ["loss.r1_interval=2"]),
])
def test_precision_trains_with_fused_optimisers(tmp_path, image_folder, model, precision, extra):
    nets = tiny(model) if model != "stylegan" else STYLEGAN
    run(tmp_path / "run", *nets, *folder(image_folder), f"trainer.precision={precision}", "trainer.max_steps=6",
        "log.every_n_steps=2", *extra)
    ckpt = checkpoint.load(tmp_path / "run" / "checkpoints" / "last.pt")
    assert ckpt["step"] == 6 and finite_weights(ckpt)
    assert all(v.dtype == torch.float32 for v in ckpt["G"].values() if v.is_floating_point())  # autocast only
    if ON_CUDA:  # train() asks for the fused kernels on CUDA
        assert ckpt["opt_G"]["param_groups"][0]["fused"] is True and ckpt["opt_D"]["param_groups"][0]["fused"] is True
    if precision == "16":
        assert ckpt["scaler_G"]["scale"] > 0 and ckpt["scaler_D"]["scale"] > 0
        acc = EventAccumulator(str(tmp_path / "run"), size_guidance={"scalars": 0}).Reload()
        assert len(acc.Scalars("AMP/scale_G")) == 3 and len(acc.Scalars("AMP/skipped_D")) == 3


@pytest.mark.parametrize("model,extra", [
    ("dcgan", ["trainer.precision=bf16", "trainer.channels_last=true"]),
    ("stylegan", ["trainer.precision=bf16", "trainer.channels_last=true", "loss.r1_interval=2"]),
    ("dcgan", ["trainer.precision=bf16", "trainer.channels_last=true", "trainer.compile=true"]),
    ("gan", ["trainer.compile=true"]),
])
def test_channels_last_and_compile_train(tmp_path, image_folder, model, extra):
    nets = tiny(model) if model != "stylegan" else STYLEGAN
    data = ["data=sine", "data.size=256"] if model == "gan" else folder(image_folder)
    run(tmp_path / "run", *nets, *data, "trainer.max_steps=4", "log.every_n_steps=2", *extra)
    ckpt = checkpoint.load(tmp_path / "run" / "checkpoints" / "last.pt")
    assert ckpt["step"] == 4 and finite_weights(ckpt)
    if "trainer.channels_last=true" in extra:  # the saved conv weights keep the format they were trained in
        convs = [v for v in ckpt["D"].values() if v.dim() == 4 and min(v.shape[:2]) > 1 and v.shape[-1] > 1]
        assert convs and all(v.is_contiguous(memory_format=torch.channels_last) for v in convs)


# ------------------------------------------------------------------------------------------- resume
def test_a_cuda_checkpoint_resumes_exactly_on_cuda_and_goes_on_on_the_cpu(tmp_path, image_folder):
    common = [*tiny("dcgan"), *folder(image_folder), "data.resolution=16", "trainer.deterministic=true",
              "log.every_n_steps=2", "ckpt.every_n_steps=4", "log.num_samples=8", "model.ema_kimg=1"]
    one_go, two_part = tmp_path / "one_go", tmp_path / "two_part"
    run(one_go, *common, "trainer.max_steps=6")
    run(two_part, *common, "trainer.max_steps=3")
    run(two_part, *common, "trainer.max_steps=6", "resume=auto")
    a = checkpoint.load(one_go / "checkpoints" / "last.pt")
    b = checkpoint.load(two_part / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 6
    for key in ("G", "D", "G_ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs after resume on {DEV}"
    # the same file on the CPU: every storage was a CUDA one; the optimisers become the CPU's (not fused)
    cpu_run = tmp_path / "on_cpu"
    train(make_cfg(*COMMON, *common, "trainer.device=cpu", "trainer.max_steps=8",
                   f"resume={two_part / 'checkpoints' / 'last.pt'}"), cpu_run)
    c = checkpoint.load(cpu_run / "checkpoints" / "last.pt")
    assert c["step"] == 8 and finite_weights(c) and not c["opt_G"]["param_groups"][0].get("fused")


# ----------------------------------------------------------------------------------------- generate
def test_generate_on_cuda_matches_the_cpu(tmp_path, image_folder):
    run(tmp_path / "run", *tiny("dcgan"), *folder(image_folder), "data.resolution=16", "trainer.max_steps=2",
        "model.ema_kimg=1")
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    for device in (DEV, "cpu"):
        generate.main([str(ckpt), "-n", "16", "-o", str(tmp_path / f"{device[:4]}.npz"), "--seed", "0",
                       "--device", device])
    generate.main([str(ckpt), "-n", "16", "-o", str(tmp_path / "grid.png"), "--device", DEV])
    a, b = (np.load(tmp_path / f"{d}.npz")["images"].astype(int) for d in (DEV[:4], "cpu"))
    assert a.shape == b.shape == (16, 16, 16, 3)
    assert np.abs(a - b).max() <= 2  # uint8 levels: the same latents and weights, another device's arithmetic
    assert (tmp_path / "grid.png").stat().st_size > 0


# ------------------------------------------------------------------------------------------ metrics
def test_metrics_on_cuda_rank_real_above_noise_and_are_logged(tmp_path):
    root = tmp_path / "digits"
    for split, n, seed in (("train", 300, 0), ("t10k", 100, 1)):
        x, y = digits(n, seed)
        write_idx(root / "MNIST" / "raw" / f"{split}-images-idx3-ubyte", x)
        write_idx(root / "MNIST" / "raw" / f"{split}-labels-idx1-ubyte", y)
    cfg_data = OmegaConf.merge(OmegaConf.structured(DataConfig), {"name": "mnist", "root": str(root)})
    device = torch.device(DEV)
    data = build_dataset(cfg_data, device=device)
    ev = build_evaluator(mcfg(tmp_path, num_samples=200, classifier_steps=60), data, cfg_data, device)
    assert ev.backends["classifier"].accuracy > 0.9
    real = ev.score(data.batch(1, 200))
    flat = ev.score(collapsed(data.batch(1, 200)))
    assert real["class_coverage"] == 1.0 and flat["classifier_fd"] > 5 * real["classifier_fd"]
    # in training: the sine metrics every 2 steps, the primary one returned
    value = train(make_cfg(*COMMON, "metrics=default", *tiny("gan"), "data.size=512", "data.batch_size=32",
                           "trainer.max_steps=4", "log.every_n_steps=2", "metrics.every_n_steps=2",
                           "metrics.num_samples=128", f"metrics.cache_dir={tmp_path / 'mc'}"), tmp_path / "on")
    acc = EventAccumulator(str(tmp_path / "on"), size_guidance={"scalars": 0}).Reload()
    assert [e.step for e in acc.Scalars("Metrics/sine_ks")] == [2, 4]
    assert math.isfinite(value) and value == pytest.approx(acc.Scalars("Metrics/sine_ks")[-1].value, rel=1e-6)


# -------------------------------------------------------------------------------------------- syncs
@pytest.mark.parametrize("case", [
    [*tiny("dcgan"), "data=mnist"],
    [*tiny("dcgan"), "data=mnist", "trainer.precision=bf16", "trainer.channels_last=true"],
    pytest.param([*tiny("dcgan"), "data=mnist", "trainer.precision=16"], marks=cuda_only),
    [*STYLEGAN, "data=mnist", "loss.r1_interval=3", "trainer.precision=bf16", "trainer.channels_last=true"],
], ids=["dcgan-32", "dcgan-bf16-cl", "dcgan-16", "stylegan-r1-bf16-cl"])
def test_syncs_finds_no_wait_in_the_training_step(tmp_path, mnist_root, capsys, case):
    """``python -m gantrain.tools.syncs --trace``: no host read, no synchronising CUDA call (set_sync_debug_mode) and
    no blocking runtime call in the profiler's training-step ranges."""
    rc = syncs.main(["--trace", str(tmp_path / "trace.json"), f"trainer.device={DEV}", *case,
                     f"data.root={mnist_root}", "data.batch_size=8", "trainer.max_steps=12", "log.every_n_steps=4"])
    out = capsys.readouterr().out
    print(out)
    assert rc == 0 and "the training step never waited for the device." in out, out
    if ON_CUDA:
        assert "blocking CUDA runtime calls" in out and ": 0 in training steps" in out, out


# ---------------------------------------------------------------------------------------------- DDP
def test_ddp_with_one_nccl_rank_trains(tmp_path):
    """A process group of one rank (NCCL on CUDA): train() wraps G and D in DistributedDataParallel, whose
    backward runs the all-reduce, through launch.run with trainer.devices=1."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    seen = {}
    real_views = ddp.training_views

    def spy(*args, **kwargs):
        views = real_views(*args, **kwargs)
        seen["learn"] = views[2:]
        return views

    dist.init_process_group("nccl" if ON_CUDA else "gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        assert dist.get_backend() == ("nccl" if ON_CUDA else "gloo")
        ddp.training_views = spy
        cfg = make_cfg(*COMMON, *tiny("gan"), "data=sine", "data.size=256", "trainer.devices=1",
                       "trainer.max_steps=4", "log.every_n_steps=2", "loss.r1_gamma=1")
        result = launch.run(train, cfg, str(tmp_path / "run"))
    finally:
        ddp.training_views = real_views
        dist.destroy_process_group()
    assert math.isfinite(result)
    assert all(isinstance(m, DDP) for m in seen["learn"])
    assert checkpoint.load(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 4


def test_the_cli_trains_on_cuda_with_one_device(tmp_path, image_folder):
    """``python -m gantrain ... trainer.devices=1`` (the console script's path: Hydra, run dir, exit 0)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-m", "gantrain", *COMMON, *tiny("dcgan"), *folder(image_folder),
                          "trainer.devices=1", "trainer.max_steps=4", "log.every_n_steps=2",
                          f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert checkpoint.load(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 4
