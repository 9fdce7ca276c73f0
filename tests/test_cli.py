"""The ``gantrain`` command as a user meets it: help, a run and a sweep in subprocesses, and the wheel."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.utils import FAST, ROOT, gantrain, make_cfg, tiny

GROUPS = {"model": ["dcgan", "gan", "stylegan"], "data": ["celeba", "fashion_mnist", "folder", "mnist", "sine"],
          "loss": ["bce", "bce_r1", "hinge", "lsgan", "minimax", "wgan_gp"],
          "optim": ["adam", "dcgan", "stylegan", "ttur", "wgan_gp"],
          "experiment": ["cdcgan_mnist", "dcgan_celeba", "dcgan_mnist", "gan_mnist", "sngan_celeba", "sngan_mnist", "sngan_sine",
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
    # the sweep's directory is named once, at the end, not a closing block per job
    assert out.stdout.count("sweep directory:") == 1 and "run directory:" not in out.stdout, out.stdout[-2000:]
    assert "tensorboard --logdir sweep\n" in out.stdout  # (relative to the working directory)


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
    "dcgan_celeba": ("dcgan", "celeba", 8000, {"data.batch_size": 128, "data.resolution": 64,
                                               "optim.generator.lr": 0.0002, "optim.discriminator.lr": 0.0002}),
    "dcgan_mnist": ("dcgan", "mnist", 4700, {"data.batch_size": 128, "optim.generator.lr": 0.0002}),
    "gan_mnist": ("gan", "mnist", 20000, {"model.generator.hidden": [256, 512, 1024], "model.z_dim": 100}),
    "stylegan_celeba": ("stylegan", "celeba", 25000, {"model.channel_base": 16384, "data.batch_size": 32,
                                                      "loss.r1_gamma": 0.05, "optim.generator.lr": 0.002}),
}


@pytest.mark.parametrize("name", PRESETS)
def test_experiment_presets_compose_and_train_with_overrides_winning(tmp_path, mnist_root, celeba_root, name):
    from omegaconf import OmegaConf

    from gantrain.training.loop import train

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


# ------------------------------------------------------------------ resume remembers how the run was started
STARTED = [*tiny("gan"), "data.size=256", "seed=3", "trainer.max_steps=6", "ckpt.every_n_steps=3"]


def test_resume_auto_alone_continues_the_run_as_it_was_started_and_keeps_its_record(tmp_path):
    run = tmp_path / "run"
    first = gantrain(*FAST, *STARTED, f"hydra.run.dir={run}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "run directory: run\n" in first.stdout and "tensorboard --logdir run\n" in first.stdout
    assert "gantrain-generate run/checkpoints/last.pt -n 64" in first.stdout
    for name in ("last.pt", "step_0000006.pt"):  # as if stopped at step 3 of 6: step_0000003.pt is the newest
        (run / "checkpoints" / name).unlink()
    record = {p.relative_to(run): p.read_bytes() for p in (run / ".hydra").iterdir()}

    refused = gantrain("resume=auto", f"hydra.run.dir={run}", "model.z_dim=8", cwd=tmp_path)
    assert refused.returncode == 2 and "another model" in refused.stdout + refused.stderr, refused.stderr[-2000:]
    assert "the run directory run is as it was before this start" in refused.stdout
    assert {p.relative_to(run): p.read_bytes() for p in (run / ".hydra").iterdir()} == record

    resumed = gantrain("resume=auto", f"hydra.run.dir={run}", cwd=tmp_path)  # nothing else: the hint's command
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    saved = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert saved["step"] == 6 and saved["config"]["seed"] == 3 and saved["config"]["data"]["size"] == 256
    assert saved["config"]["model"]["generator"]["hidden"] == [32, 32] and not saved["config"]["metrics"]["enabled"]
    assert {p.relative_to(run): p.read_bytes() for p in (run / ".hydra").iterdir() if p.is_file()} == record
    mine = yaml.safe_load((run / ".hydra" / "resume-1" / "overrides.yaml").read_text())
    assert "resume=auto" in mine and "seed=3" in mine and (run / ".hydra" / "resume-1" / "config.yaml").is_file()


def test_resume_from_a_path_and_cfg_job_compose_with_the_runs_record(tmp_path):
    from gantrain import checkpoint, runs
    from gantrain.training.loop import train

    train(make_cfg(*FAST, *STARTED), tmp_path / "first")  # no .hydra/: the checkpoint says how it was started
    ckpt = tmp_path / "first" / "checkpoints" / "step_0000003.pt"
    assert checkpoint.load(ckpt)["overrides"] == []  # (outside a Hydra job there are none to save)
    (tmp_path / "first" / ".hydra").mkdir()
    (tmp_path / "first" / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([*FAST, *STARTED]))

    start = runs.prepare(["--cfg", "job", f"resume={ckpt}", f"hydra.run.dir={tmp_path / 'second'}",
                          "log.every_n_steps=2"])
    assert start.argv[:2] == ["--cfg", "job"] and start.record_dir is None
    cfg = make_cfg(*(a for a in start.argv[2:] if not a.startswith("hydra.")))
    assert (cfg.seed, cfg.trainer.max_steps, cfg.log.every_n_steps, cfg.resume) == (3, 6, 2, str(ckpt))
    train(cfg, tmp_path / "second")
    saved = checkpoint.load(tmp_path / "second" / "checkpoints" / "last.pt")
    assert saved["step"] == 6 and saved["config"]["data"]["size"] == 256


def test_a_later_start_in_a_run_directory_records_itself_beside_the_first(tmp_path):
    from gantrain import runs
    from gantrain.errors import UserError

    (tmp_path / "run" / ".hydra").mkdir(parents=True)
    (tmp_path / "run" / ".hydra" / "overrides.yaml").write_text("- seed=1\n")
    start = runs.prepare(["seed=2", f"hydra.run.dir={tmp_path / 'run'}"])
    assert start.argv == ["seed=2", f"hydra.run.dir={tmp_path / 'run'}", "hydra.output_subdir=.hydra/start-1"]
    assert runs.prepare(["seed=2", f"hydra.run.dir={tmp_path / 'new'}"]).argv[-1] == f"hydra.run.dir={tmp_path / 'new'}"
    (tmp_path / "run" / ".hydra" / "overrides.yaml").write_text("- [unclosed\n")  # a damaged record: one sentence
    with pytest.raises(UserError, match=r"the run's record .*overrides.yaml cannot be read \(ParserError"):
        runs.prepare(["resume=auto", f"hydra.run.dir={tmp_path / 'run'}"])


def test_log_lines_print_above_the_progress_bar(tmp_path):
    """Hydra's console handler is swapped for tqdm's while the bar runs (no log line breaks the bar)."""
    import logging
    import sys

    from gantrain.training.loop import train

    seen = []
    console = logging.StreamHandler(sys.stdout)
    logging.root.addHandler(console)
    try:
        train(make_cfg(*tiny("gan"), "trainer.device=cpu", "metrics=off", "data.size=256", "trainer.max_steps=2",
                       "log.progress_bar=true"), tmp_path / "run",
              on_phase=lambda step, phase: seen.append({type(h).__name__ for h in logging.root.handlers}))
    finally:
        logging.root.removeHandler(console)
    assert seen and all("_TqdmLoggingHandler" in names and "StreamHandler" not in names for names in seen), seen


def test_eval_and_bench_help_are_plain_text_and_explain_every_flag(capsys):
    from gantrain import evaluate
    from gantrain.tools import bench

    with pytest.raises(SystemExit):
        evaluate.parse_args(["--help"])
    out = capsys.readouterr().out
    assert "``" not in out and "Prints a table" in out and "_<model>_<data>/checkpoints/last.pt" in out
    with pytest.raises(SystemExit):
        bench.main(["--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m gantrain.tools.bench")
    assert all(f"  {name} " in out for name in bench.CASES)  # the cases, with their model and data
    flags = re.findall(r"^  (--[\w-]+)( [A-Z_]+)?(.*)$", out, flags=re.M)
    assert len(flags) == 10, flags
    lines = out.splitlines()
    for i, line in enumerate(lines):  # every flag has its explanation, on its line or the next
        if re.match(r"^  --[\w-]+", line):
            assert len(line.split()) > 2 or lines[i + 1].startswith(" " * 20), line


def test_gantrain_eval_does_not_describe_a_training_schedule(tmp_path, caplog):
    import logging

    from gantrain import evaluate
    from gantrain.training.loop import train

    train(make_cfg(*tiny("gan"), "trainer.device=cpu", "log.progress_bar=false", "metrics=off", "data.size=256",
                   "trainer.max_steps=1"), tmp_path / "run")
    with caplog.at_level(logging.INFO):
        result = evaluate.evaluate(evaluate.parse_args([str(tmp_path / "run" / "checkpoints" / "last.pt"),
                                                        "-n", "32", "--device", "cpu"]))
    assert result["num_samples"] == 32 and "sine_ks" in result["metrics"]
    assert "every" not in caplog.text and "steps" not in caplog.text, caplog.text


def test_make_install_shows_pips_progress_and_takes_a_torch_index(tmp_path):
    """`make -n`: the commands make would run, nothing installed."""
    index = "https://download.pytorch.org/whl/cpu"
    out = subprocess.run(["make", "-n", "install", f"VENV={tmp_path / 'venv'}", f"TORCH_INDEX={index}"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    pip = [ln for ln in out.splitlines() if " -m pip install " in ln]
    assert len(pip) == 2 and not any(" -q" in ln for ln in pip), pip
    assert f"pip install --index-url {index} torch==" in pip[0] and "--index-url" not in pip[1]


def test_gantrain_generate_on_a_missing_checkpoint_does_not_suggest_resume(tmp_path, capsys):
    from gantrain import generate

    with pytest.raises(SystemExit):
        generate.main([str(tmp_path / "missing.pt"), "-o", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert "does not exist: check the path" in err and "resume" not in err, err


@pytest.mark.parametrize("overrides,lrs", [
    (["model=dcgan"], (5e-4, 5e-4, [0.5, 0.999])),          # optim=dcgan, chosen by docs/QUALITY.md (issue 17)
    (["model=dcgan", "optim=adam"], (2e-4, 2e-4, [0.5, 0.999])),  # the command line wins: the paper's
    (["model=dcgan", "optim=ttur"], (1e-4, 4e-4, [0.0, 0.9])),
    (["model=gan"], (2e-4, 2e-4, [0.5, 0.999])),
])
def test_model_files_pick_their_optimiser_and_the_command_line_wins(overrides, lrs):
    cfg = make_cfg(*overrides)
    assert (cfg.optim.generator.lr, cfg.optim.discriminator.lr, list(cfg.optim.generator.betas)) == lrs
