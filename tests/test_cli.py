"""The ``gantrain`` command as a user meets it: help, a run and a sweep in subprocesses, and the wheel."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.utils import FAST, ROOT, gantrain, make_cfg, tiny

GROUPS = {"model": ["dcgan", "gan", "stylegan"], "data": ["celeba", "fashion_mnist", "folder", "mnist", "sine"],
          "loss": ["bce", "bce_r1", "hinge", "lsgan", "minimax", "wgan_gp"],
          "optim": ["adam", "stylegan", "ttur", "wgan_gp"],
          "experiment": ["dcgan_celeba", "dcgan_mnist", "gan_mnist", "sngan_celeba", "sngan_mnist", "sngan_sine",
                         "stylegan_celeba", "wgan_gp_mnist", "wgan_gp_sine"]}


def test_help_lists_every_group_and_option():
    out = gantrain("--help")
    assert out.returncode == 0, out.stderr
    for group, options in GROUPS.items():
        line = next(ln for ln in out.stdout.splitlines() if ln.startswith(f"{group}:"))
        assert line == f"{group}: {', '.join(options)}", line


def test_cfg_job_prints_the_composed_config():
    out = gantrain("--cfg", "job", "model=dcgan", "data=mnist", "trainer.max_steps=7")
    assert out.returncode == 0, out.stderr
    assert "_target_: gantrain.models.dcgan.Generator" in out.stdout and "max_steps: 7" in out.stdout


def test_a_sweep_gives_one_run_dir_and_one_tensorboard_run_per_job(tmp_path, mnist_root):
    sweep = tmp_path / "sweep"
    out = gantrain("-m", "model=gan,dcgan", "seed=1,2", "data=mnist", f"data.root={mnist_root}",
                   "data.batch_size=8", "trainer.max_steps=2", "trainer.device=cpu", "metrics=off",
                   "log.progress_bar=false", f"hydra.sweep.dir={sweep}", cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name[0].isdigit())
    assert len(jobs) == 4, jobs
    for job in jobs:
        assert (job / "checkpoints" / "last.pt").is_file() and (job / ".hydra" / "overrides.yaml").is_file()
        events = list(job.glob("events.out.tfevents.*"))
        assert len(events) == 1, events  # one TensorBoard run per job, in the job's own directory
        acc = EventAccumulator(str(job), size_guidance={"scalars": 0}).Reload()
        assert "Loss/D" in acc.Tags()["scalars"]
        assert acc.PluginTagToContent("hparams"), "no HParams entry in the job's own run"
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()


def test_the_wheel_ships_the_configs_and_runs_from_anywhere(tmp_path):
    """`pip install .` (not -e): conf/ must be inside the wheel as gantrain/conf."""
    wheels = tmp_path / "wheels"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)],
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = wheels.glob("gantrain-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for conf in sorted((ROOT / "conf").rglob("*.yaml")):
        assert f"gantrain/conf/{conf.relative_to(ROOT / 'conf').as_posix()}" in names, conf
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=600)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = "import gantrain.cli as c; print(c.__file__); print(c.config_dir())"
    where = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=elsewhere, env=env)
    module, conf = where.stdout.split()
    assert Path(module).is_relative_to(target) and Path(conf) == target / "gantrain" / "conf", where.stdout
    run = subprocess.run([sys.executable, "-m", "gantrain", *tiny("gan"), "trainer.max_steps=3", "metrics=off",
                          "data.size=256", "log.progress_bar=false", f"hydra.run.dir={tmp_path / 'run'}"],
                         capture_output=True, text=True, cwd=elsewhere, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()


PRESETS = {  # experiment: (model, data, steps, what the preset sets beyond the groups)
    "dcgan_celeba": ("dcgan", "celeba", 8000, {"data.batch_size": 128, "data.resolution": 64}),
    "dcgan_mnist": ("dcgan", "mnist", 4700, {"data.batch_size": 128}),
    "gan_mnist": ("gan", "mnist", 20000, {"model.generator.hidden": [256, 512, 1024], "model.z_dim": 100}),
    "stylegan_celeba": ("stylegan", "celeba", 25000, {"model.channel_base": 16384, "data.batch_size": 32,
                                                      "loss.r1_gamma": 0.05, "optim.generator.lr": 0.002}),
}


@pytest.mark.parametrize("name", PRESETS)
def test_experiment_presets_compose_and_train_with_overrides_winning(tmp_path, mnist_root, celeba_root, name):
    from omegaconf import OmegaConf

    from gantrain.train import train

    model, data, steps, settings = PRESETS[name]
    cfg = make_cfg(f"experiment={name}")
    assert (cfg.model.name, cfg.data.name, cfg.trainer.max_steps) == (model, data, steps)
    for key, value in settings.items():
        got = OmegaConf.select(cfg, key)
        assert (OmegaConf.to_object(got) if OmegaConf.is_config(got) else got) == value, key
    root = mnist_root if data == "mnist" else celeba_root
    cfg = make_cfg(f"experiment={name}", *FAST, *tiny(model), f"data.root={root}", "data.batch_size=4",
                   *(["data.resolution=32"] if data == "celeba" else []), "trainer.max_steps=2")
    assert (cfg.trainer.max_steps, cfg.data.batch_size) == (2, 4)  # the command line wins over the preset
    train(cfg, tmp_path / "run")
    assert (tmp_path / "run" / "checkpoints" / "last.pt").exists()
