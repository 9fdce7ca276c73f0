"""Several processes (gloo on the CPU): DDP correctness, rank 0 alone writing, dead ranks, launchers.

The multi-process tests start real ranks: through :func:`gantrain.distributed.launch.launch` (what
``trainer.devices=N`` does), through ``torchrun`` and through the CLI.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from gantrain import checkpoint
from gantrain.distributed import collectives, ddp, launch
from gantrain.distributed.env import expand_nodelist, slurm_env, worker_overrides
from gantrain.errors import UserError
from tests.utils import FAST, gantrain, make_cfg, tiny

TINY_GAN = [*tiny("gan"), *FAST, "model.discriminator.dropout=0"]


# ------------------------------------------------------------------------------ SLURM / torchrun env
def test_slurm_nodelist_expansion():
    assert expand_nodelist("gpu[01-03,07],login1") == ["gpu01", "gpu02", "gpu03", "gpu07", "login1"]
    assert expand_nodelist("node7") == ["node7"]
    assert expand_nodelist("a[8-10]") == ["a8", "a9", "a10"]


def test_slurm_task_becomes_a_rank():
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_STEP_ID": "0",
           "SLURM_JOB_NODELIST": "gpu[12-15]", "SLURM_NTASKS_PER_NODE": "2(x4)", "SLURM_JOB_ID": "123456"}
    mapped = slurm_env(env)
    assert mapped == {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                      "MASTER_ADDR": "gpu12", "MASTER_PORT": str(20000 + 123456 % 20000)}
    # submitit's tasks (SUBMITIT_EXECUTOR=slurm) are mapped too; a set MASTER_PORT wins
    sub = {**env, "SUBMITIT_EXECUTOR": "slurm", "MASTER_PORT": "29555"}
    del sub["SLURM_STEP_ID"]
    assert slurm_env(sub)["MASTER_PORT"] == "29555"
    # not a rank: the batch script itself, a one-task step, torchrun inside the allocation, opted out
    assert slurm_env({k: v for k, v in env.items() if k != "SLURM_STEP_ID"}) == {}
    assert slurm_env({**env, "SLURM_NTASKS": "1"}) == {}
    assert slurm_env({**env, "RANK": "0"}) == {}
    assert slurm_env({**env, "GANTRAIN_SLURM_DDP": "0"}) == {}


def test_torchrun_rank_overrides(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    over = worker_overrides(["model=gan"])
    assert "hydra.output_subdir=null" in over and "hydra.run.dir=." in over and "hydra/job_logging=none" in over
    monkeypatch.setenv("RANK", "0")
    assert worker_overrides(["model=gan"]) == []
    with pytest.raises(UserError, match="multirun"):
        worker_overrides(["-m", "seed=1,2"])
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert worker_overrides(["model=gan"]) == []


def test_devices_must_match_the_launcher(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    cfg = make_cfg(*TINY_GAN, "trainer.devices=3")
    with pytest.raises(UserError, match="trainer.devices=3"):
        launch.run(lambda c, o: None, cfg, "/nonexistent")


@pytest.mark.skipif(importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None,
                    reason="hydra-submitit-launcher not installed (pip install -e '.[cluster]')")
def test_slurm_launcher_config_composes():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from gantrain.cli import config_dir

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=8"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.gpus_per_node == 8 and launcher.tasks_per_node == 8  # one task (= one rank) per GPU
    assert launcher.nodes == 1


# ------------------------------------------------------------------------- DDP step == big-batch step
def _one_step(cfg, out_dir):
    """One D step (with R1) and one G step, SGD, on this rank's half of fixed batches; saves the weights."""
    from gantrain.losses import GANLoss
    from gantrain.training.build import build_network
    from gantrain.training.steps import StepContext, d_step, g_step

    torch.manual_seed(100 + collectives.rank())  # different inits: prepare_models must make them rank 0's
    shape = (cfg.data.num_points,)
    G = build_network(cfg.model.generator, "generator", shape)
    D = build_network(cfg.model.discriminator, "discriminator", shape)
    cpu = torch.device("cpu")
    G, D = ddp.prepare_models(G, D, False, cpu)
    G_run, D_run, G_learn, D_learn = ddp.training_views(G, D, cpu)
    g = torch.Generator().manual_seed(1)
    real, z1, z2 = torch.randn(8, shape[0], generator=g), torch.randn(8, G.z_dim, generator=g), torch.randn(
        8, G.z_dim, generator=g)
    r, w = collectives.rank(), collectives.world_size()
    mine = slice(r * 8 // w, (r + 1) * 8 // w)
    # the training loop's own steps (gantrain/training/steps.py), with SGD so that a wrong gradient scale would show
    off = torch.amp.GradScaler("cpu", enabled=False)
    t = StepContext(D=D, G_run=G_run, D_run=D_run, G_learn=G_learn, D_learn=D_learn,
                    opt_G=torch.optim.SGD(G.parameters(), lr=0.5), opt_D=torch.optim.SGD(D.parameters(), lr=0.5),
                    loss=GANLoss(r1_gamma=10.0, r1_interval=1), scaler_G=off, scaler_D=off)
    d_step(t, real[mine], z1[mine], d_index=0)  # R1 due
    loss_G = g_step(t, z2[mine])
    # the G step must leave D's gradients as the D step left them (D frozen: nothing new accumulated)
    d_grads = [p.grad for p in D.parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    torch.save({"G": G.state_dict(), "D": D.state_dict(), "d_grad_norm": sum(float(g.norm()) for g in d_grads)},
               Path(out_dir) / f"rank{r}.pt")
    return loss_G.item()


def test_ddp_step_equals_big_batch_step(tmp_path):
    """2 ranks x 4 examples == 1 process x 8 examples: gradients (R1 included) are averaged, D frozen in G step."""
    cfg = make_cfg(*TINY_GAN)
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    _one_step(cfg, tmp_path / "one")
    launch.launch(_one_step, cfg, str(tmp_path / "two"), 2)
    one = torch.load(tmp_path / "one" / "rank0.pt")
    r0, r1 = torch.load(tmp_path / "two" / "rank0.pt"), torch.load(tmp_path / "two" / "rank1.pt")
    for net in ("G", "D"):
        for k in one[net]:
            assert torch.equal(r0[net][k], r1[net][k]), f"{net}.{k} differs between the ranks"
            torch.testing.assert_close(r0[net][k], one[net][k], rtol=1e-5, atol=1e-6, msg=f"{net}.{k}")
    assert r0["d_grad_norm"] == pytest.approx(one["d_grad_norm"], rel=1e-4)


# ----------------------------------------------------------------------- the training loop, 2 ranks
def _train_and_dump(cfg, out_dir):
    """train() on this rank, then this rank's final G and D into <out_dir>/../dumps (outside the run dir)."""
    from gantrain.training.loop import train

    captured = {}
    real = ddp.training_views

    def spy(G, D, *args, **kwargs):
        captured.update(G=G, D=D)
        return real(G, D, *args, **kwargs)

    ddp.training_views = spy
    result = train(cfg, out_dir)
    dumps = Path(out_dir).parent / "dumps"
    dumps.mkdir(exist_ok=True)
    torch.save({k: v.state_dict() for k, v in captured.items()}, dumps / f"rank{collectives.rank()}.pt")
    return result


def test_two_ranks_train_one_model(tmp_path):
    """N steps with R1 and metrics: identical weights on both ranks, files from rank 0 only, every rank's RNG
    saved, and a resume with one process from the two-process checkpoint."""
    run = tmp_path / "run"
    run.mkdir()
    cfg = make_cfg(*TINY_GAN, "trainer.max_steps=12", "data.batch_size=16", "data.size=512", "loss.r1_gamma=1",
                   "loss.r1_interval=3", "trainer.d_steps=2", "log.every_n_steps=4", "ckpt.every_n_steps=6",
                   "metrics.every_n_steps=6", "metrics.num_samples=50", "trainer.devices=2")
    result = launch.run(_train_and_dump, cfg, str(run))
    assert isinstance(result, float)
    d0, d1 = torch.load(tmp_path / "dumps" / "rank0.pt"), torch.load(tmp_path / "dumps" / "rank1.pt")
    for net in ("G", "D"):
        for k in d0[net]:
            assert torch.equal(d0[net][k], d1[net][k]), f"{net}.{k} differs between the ranks"
    files = sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())
    assert [f for f in files if "tfevents" in f] == [f for f in files if f.startswith("events.out.tfevents")]
    assert len([f for f in files if "tfevents" in f]) == 1, files  # one writer: rank 0's
    assert sorted(f for f in files if "tfevents" not in f) == [".gantrain.lock",  # rank 0's run-directory lock
                                                                "checkpoints/last.pt", "checkpoints/step_0000006.pt",
                                                                "checkpoints/step_0000012.pt"]
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert len(ckpt["rng"]) == 2 and not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])
    for k in d0["G"]:
        assert torch.equal(ckpt["G"][k], d0["G"][k])
    # resume with another number of processes (one): goes on from step 12
    from gantrain.training.loop import train

    cfg1 = make_cfg(*TINY_GAN, "trainer.max_steps=14", "data.batch_size=16", "data.size=512",
                    "loss.r1_gamma=1", "loss.r1_interval=3", "trainer.d_steps=2", "log.every_n_steps=4",
                    "ckpt.every_n_steps=6", "metrics.enabled=false", f"resume={run / 'checkpoints' / 'last.pt'}")
    train(cfg1, tmp_path / "run1")
    assert torch.load(tmp_path / "run1" / "checkpoints" / "last.pt", weights_only=True)["step"] == 14


@pytest.mark.slow
def test_two_ranks_of_b_end_close_to_one_process_of_2b(tmp_path):
    """The MLP GAN (no BatchNorm) with 2 ranks x 32 and 1 process x 64 for 200 steps: the final losses and the
    sine_ks metric (1024 samples) agree within the stated tolerance (different latents and data order, so not
    bit-identical; measured differences are in docs/BENCHMARKS.md, Scaling)."""
    common = [*tiny("gan"), *FAST, "trainer.max_steps=200", "log.every_n_steps=50", "metrics.every_n_steps=200",
              "metrics.num_samples=1024", "ckpt.every_n_steps=1000"]
    one = launch.run(_train_and_dump, make_cfg(*common, "data.batch_size=64"), str(tmp_path / "one" / "run"))
    (tmp_path / "two" / "run").mkdir(parents=True)
    two = launch.run(_train_and_dump, make_cfg(*common, "data.batch_size=32", "trainer.devices=2"),
                          str(tmp_path / "two" / "run"))
    untrained = 1.0  # sine_ks of the initial generator is ~1 (its curves are nearly flat)
    assert one < 0.9 and two < 0.9, (one, two)  # both learnt something
    assert abs(one - two) < 0.15, (one, two)
    assert untrained - max(one, two) > abs(one - two)


def test_sync_batchnorm_refused_on_cpu(monkeypatch):
    monkeypatch.setattr(ddp, "world_size", lambda: 2)
    with pytest.raises(UserError, match="sync_batchnorm"):
        ddp.prepare_models(torch.nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3), True, torch.device("cpu"))


# ------------------------------------------------------------------------------------ through the CLI
def _children(pid: int) -> list[int]:
    kids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            stat = (p / "stat").read_text()
            cmd = (p / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"spawn_main" in cmd:
            kids.append(int(p.name))
    return sorted(kids)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to find the ranks")
def test_killed_rank_ends_the_job(tmp_path):
    """kill -9 of rank 1 in `gantrain trainer.devices=2`: the job ends with an error naming it, no hang."""
    exe = Path(sys.executable).parent / "gantrain"
    run = tmp_path / "run"
    proc = subprocess.Popen([str(exe), *TINY_GAN, "trainer.devices=2", "trainer.max_steps=1000000",
                             "metrics.enabled=false", "log.every_n_steps=20", f"hydra.run.dir={run}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    try:
        deadline = time.monotonic() + 120
        while not list(run.glob("events.out.tfevents*")):  # rank 0 is training
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the ranks did not start"
            time.sleep(0.5)
        time.sleep(2)
        ranks = _children(proc.pid)
        assert len(ranks) == 2, ranks
        os.kill(ranks[1], signal.SIGKILL)  # ranks start in order: the second child is rank 1
        killed_at = time.monotonic()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert time.monotonic() - killed_at < 30
    assert "rank 1 of 2 was killed by SIGKILL" in out + err, (out + err)[-2000:]
    assert not _children(proc.pid)


def test_torchrun_two_ranks_one_run_dir(tmp_path):
    """torchrun --nproc_per_node=2 -m gantrain: one run dir (rank 0's ${now:}), nothing else written."""
    torchrun = Path(sys.executable).parent / "torchrun"
    res = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "gantrain", *TINY_GAN,
                          "trainer.max_steps=6", "log.every_n_steps=3", "metrics.num_samples=32",
                          "metrics.every_n_steps=6", "data.batch_size=16"],
                         check=False, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert res.returncode == 0, res.stderr[-3000:]
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    run_dirs = {Path(*Path(f).parts[:3]) for f in written}  # outputs/<date>/<time>
    assert len(run_dirs) == 1 and all(f.startswith("outputs/") for f in written), written
    run = tmp_path / next(iter(run_dirs))
    assert len(list(run.glob("events.out.tfevents*"))) == 1
    assert (run / "checkpoints" / "last.pt").is_file() and (run / ".hydra" / "config.yaml").is_file()
    log = (run / "gantrain.log").read_text()
    assert log.count("data sine:") == 1, log  # rank 0's log lines only
    # rank 1 said nothing beyond errors (rank 0's INFO lines are on its console)
    assert res.stderr.count("data sine:") + res.stdout.count("data sine:") == 1


@pytest.mark.skipif(importlib.util.find_spec("hydra_plugins.hydra_joblib_launcher") is None,
                    reason="hydra-joblib-launcher not installed (pip install -e '.[cluster]')")
def test_joblib_sweep_runs_jobs_in_parallel(tmp_path, image_folder):
    """Two jobs at once on one image folder: two run dirs, and the shared decoded-image cache built once."""
    sweep, cache = tmp_path / "sweep", tmp_path / "cache"
    res = gantrain("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *TINY_GAN, "seed=1,2",
                   "data=folder", f"data.root={image_folder}", f"data.cache_dir={cache}", "data.resolution=16",
                   "data.batch_size=4", "trainer.max_steps=4", "log.every_n_steps=2", "metrics.enabled=false",
                   f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=job${hydra.job.num}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Joblib.Parallel" in res.stdout + res.stderr
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [j.name for j in jobs] == ["job0", "job1"], jobs
    assert "seed=2" in (jobs[1] / ".hydra" / "overrides.yaml").read_text()
    pids = set()
    for j in jobs:
        assert (j / "checkpoints" / "last.pt").is_file()
        assert len(list(j.glob("events.out.tfevents*"))) == 1
        pids.add(int(next(j.glob("events.out.tfevents*")).name.split(".")[-2]))  # the writer's pid
    assert len(pids) == 2  # two worker processes, not one after the other in the launcher
    logs = "".join((j / "gantrain.log").read_text() for j in jobs)
    assert logs.count("decoding") == 1, logs  # the cache was built by one job, read by the other
    assert len(list(cache.glob("*.npy"))) == 1 and not list(cache.glob("*.tmp"))


def test_one_config_many_ranks_is_picklable():
    """launch() sends the composed config to spawned ranks: it must survive pickling unchanged."""
    import pickle

    cfg = make_cfg(*TINY_GAN, "trainer.devices=2")
    again = pickle.loads(pickle.dumps(cfg))
    assert OmegaConf.to_container(again, resolve=True) == OmegaConf.to_container(cfg, resolve=True)


def test_ctrl_c_under_torchrun_saves_once_and_resumes(tmp_path):
    """Ctrl-C to a torchrun job (torchrun forwards it to its ranks): the ranks agree to stop, rank 0 saves
    once and says so, and the job resumes from it with resume=auto."""
    torchrun = Path(sys.executable).parent / "torchrun"
    run_dir = tmp_path / "run"
    args = [*TINY_GAN, "trainer.device=cpu", "log.every_n_steps=300", "data.batch_size=16", "metrics=off",
            f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen([str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "gantrain", *args,
                             "trainer.max_steps=1000000"], cwd=tmp_path, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    deadline = time.monotonic() + 120
    while not list(run_dir.glob("events.out.tfevents.*")) and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(3)  # some steps
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert out.count("stopped by Ctrl-C (SIGINT) after saving") == 1, out[-3000:]
    saved = checkpoint.load(run_dir / "checkpoints" / "last.pt")
    assert saved["step"] > 0 and len(saved["rng"]) == 2
    res = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "gantrain", *args,
                          f"trainer.max_steps={saved['step'] + 5}", "resume=auto"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert checkpoint.load(run_dir / "checkpoints" / "last.pt")["step"] == saved["step"] + 5
