"""Checkpoints survive anything: bit-exact resume, safe/unsafe overrides, Ctrl-C and SIGTERM on a real
``gantrain`` process, kill -9 at many moments (also mid-write), and files crafted to run code."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gantrain import checkpoint
from gantrain.errors import UserError
from gantrain.training.loop import train
from tests.utils import FAST, gantrain, make_cfg, tiny

GAN_SINE = [*tiny("gan"), "data=sine", "data.size=256", "metrics=off"]


def dcgan_folder(root: Path) -> list[str]:
    # mnist-like 28x28 would do as well; a JPEG folder at 16x16 is the cheapest image data
    return [*tiny("dcgan"), "data=folder", f"data.root={root}", "data.resolution=16", "metrics=off"]


@pytest.fixture(autouse=True)
def _restore_determinism():
    """train(trainer.deterministic=true) switches torch's global flag on; give the next test a clean one."""
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


def run(out: Path, *overrides: str) -> float:
    return train(make_cfg(*FAST, "data.batch_size=8", *overrides), out)


def scalar_steps(run_dir: Path) -> dict[str, list[int]]:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0}).Reload()
    return {tag: [e.step for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def assert_no_duplicate_steps(steps: dict[str, list[int]]) -> None:
    for tag, s in steps.items():
        dup = [k for k, c in Counter(s).items() if c > 1]
        assert not dup, f"{tag}: steps logged twice: {dup}"


# ------------------------------------------------------------------------------------ exact resume
# ADA with a p that moves every D step, and R1 through the augmentation: p and its r_t sums are state
# (a fast D: r_t rises above the low target at once)
ADA = ["augment=ada", "augment.ada_kimg=0.08", "augment.target=0.01", "augment.interval=1", "loss.r1_gamma=0.1",
       "loss.r1_interval=2", "optim.discriminator.lr=0.01"]


@pytest.mark.parametrize("model,ema,extra", [("gan", False, []), ("gan", True, []), ("dcgan", True, []),
                                             ("dcgan", False, ADA)], ids=["gan", "gan-ema", "dcgan", "dcgan-ada"])
def test_resume_is_bit_exact(tmp_path, image_folder, model, ema, extra):
    """N steps, stop, resume for N more == 2N steps in one go, bit for bit (G, D, EMA, optimisers, ADA's p).
    The gan runs keep the default sample-quality metrics on (they draw samples mid-run)."""
    data = [*GAN_SINE[:-1], "metrics=default"] if model == "gan" else dcgan_folder(image_folder)
    common = [*data, *extra, "trainer.deterministic=true", "log.every_n_steps=2", "log.sample_every_n_steps=3",
              "ckpt.every_n_steps=4", "log.num_samples=8", "model.ema_kimg=1" if ema else "model.ema_kimg=null"]
    n = 5 if model == "gan" else 3
    one_go, two_part = tmp_path / "one_go", tmp_path / "two_part"
    run(one_go, *common, f"trainer.max_steps={2 * n}")
    run(two_part, *common, f"trainer.max_steps={n}")
    assert checkpoint.load(two_part / "checkpoints" / "last.pt")["step"] == n
    # trainer.max_steps and a logging interval are safe overrides on resume
    run(two_part, *common, f"trainer.max_steps={2 * n}", "resume=auto", "log.sample_every_n_steps=4")

    a = checkpoint.load(one_go / "checkpoints" / "last.pt")
    b = checkpoint.load(two_part / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 2 * n
    keys = ["G", "D"] + (["G_ema"] if ema else [])
    assert (a["G_ema"] is not None) == ema
    for key in keys:
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs after resume"
    for key in ("opt_G", "opt_D"):
        for pid, sa in a[key]["state"].items():
            for name, t in sa.items():
                assert torch.equal(t, b[key]["state"][pid][name]), f"{key} state {pid}.{name} differs"
    assert torch.equal(a["grid_z"], b["grid_z"])
    if extra:  # p moved, and resumed where it was
        assert 0 < a["augment"]["p"] < 1 and torch.equal(a["augment"]["p"], b["augment"]["p"])
        assert torch.equal(a["augment"]["signs"], b["augment"]["signs"])
    # the same TensorBoard run continues: every step once, nothing missing from the one-go run's steps
    sa, sb = scalar_steps(one_go), scalar_steps(two_part)
    assert_no_duplicate_steps(sb)
    for tag in ("Loss/D", "Loss/G", "D/real", "D/fake"):
        assert set(sa[tag]) <= set(sb[tag]) and set(sb[tag]) - set(sa[tag]) <= {n}, (tag, sa[tag], sb[tag])
    # a guard that this test can fail: one step more is not the same generator
    run(tmp_path / "longer", *common, f"trainer.max_steps={2 * n + 1}")
    c = checkpoint.load(tmp_path / "longer" / "checkpoints" / "last.pt")
    assert not all(torch.equal(a["G"][k], c["G"][k]) for k in a["G"])


def test_resume_from_a_path_into_a_new_run_dir(tmp_path):
    run(tmp_path / "first", *GAN_SINE, "trainer.max_steps=3")
    ckpt = tmp_path / "first" / "checkpoints" / "last.pt"
    run(tmp_path / "second", *GAN_SINE, "trainer.max_steps=6", f"resume={ckpt}", "log.every_n_steps=1",
        "ckpt.keep=1", "ckpt.every_n_steps=2")
    assert checkpoint.load(tmp_path / "second" / "checkpoints" / "last.pt")["step"] == 6
    assert sorted(p.name for p in (tmp_path / "second" / "checkpoints").iterdir()) == ["last.pt", "step_0000006.pt"]
    assert scalar_steps(tmp_path / "second")["Loss/G"] == [4, 5, 6]


def test_resume_auto_without_a_checkpoint_starts_fresh(tmp_path):
    run(tmp_path / "run", *GAN_SINE, "trainer.max_steps=2", "resume=auto")
    assert checkpoint.load(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 2


@pytest.mark.parametrize("override,fragment", [
    ("model.generator.hidden=[16,16]", "model.generator.hidden"),
    ("model.z_dim=8", "z_dim"),
    ("data.num_points=32", "shape"),
])
def test_resume_refuses_another_model_or_data_shape(tmp_path, override, fragment):
    run(tmp_path / "run", *GAN_SINE, "trainer.max_steps=2")
    with pytest.raises(UserError, match=fragment) as e:
        run(tmp_path / "run", *GAN_SINE, "trainer.max_steps=4", "resume=auto", override)
    assert "\n" not in str(e.value) and str(e.value).count(": ") <= 2


def test_resume_refuses_another_model_family(tmp_path, image_folder):
    run(tmp_path / "run", *tiny("gan"), "data=folder", f"data.root={image_folder}", "data.resolution=16",
        "metrics=off", "trainer.max_steps=1")
    with pytest.raises(UserError, match="another model"):
        run(tmp_path / "run", *dcgan_folder(image_folder), "trainer.max_steps=2", "resume=auto")


# ---------------------------------------------------------------------------------------- writing
def test_atomic_save_leaves_no_temp_files_and_cleans_stale_ones(tmp_path):
    ckpt_dir = tmp_path / "run" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    stale = ckpt_dir / f".last.pt.tmp{int(dead.stdout)}"
    stale.write_bytes(b"half a checkpoint")
    run(tmp_path / "run", *GAN_SINE, "trainer.max_steps=4", "ckpt.every_n_steps=1", "ckpt.keep=2")
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["last.pt", "step_0000003.pt", "step_0000004.pt"]


@pytest.mark.parametrize("links", [True, False])
def test_periodic_checkpoint_is_last_pt_of_its_step_without_a_second_serialisation(tmp_path, monkeypatch, links):
    """step_N.pt holds exactly what last.pt held at step N (a hard link, or a copy where links fail), and keeps
    it when last.pt is replaced later; the state is serialised once per save."""
    saves = []
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: saves.append(1) or real_save(obj, f, *a, **k))
    if not links:
        monkeypatch.setattr(os, "link", lambda *a: (_ for _ in ()).throw(OSError(1, "no links here")))
    ckpt_dir = tmp_path / "run" / "checkpoints"
    run(tmp_path / "run", *GAN_SINE, "trainer.max_steps=4", "ckpt.every_n_steps=2")
    assert len(saves) == 2  # steps 2 and 4: last.pt only (the final save at step 4 is the periodic one)
    step2, step4, last = (ckpt_dir / n for n in ("step_0000002.pt", "step_0000004.pt", "last.pt"))
    assert step4.read_bytes() == last.read_bytes()
    assert checkpoint.load(step2)["step"] == 2 and checkpoint.load(last)["step"] == 4
    assert (step4.stat().st_ino == last.stat().st_ino) == links


def test_damaged_checkpoints_give_one_sentence(tmp_path):
    run(tmp_path / "run", *GAN_SINE, "trainer.max_steps=1")
    good = (tmp_path / "run" / "checkpoints" / "last.pt").read_bytes()
    for name, content, fragment in [("half.pt", good[: len(good) // 2], "damaged or truncated"),
                                    ("empty.pt", b"", "empty"),
                                    ("text.pt", b"hello", "damaged")]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(UserError, match=fragment) as e:
            checkpoint.load(tmp_path / name)
        assert "\n" not in str(e.value)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not a gantrain checkpoint"):
        checkpoint.load(tmp_path / "other.pt")


# ----------------------------------------------------------------------------- malicious pickles
class _RunsCode:
    """Unpickling this calls pathlib.Path.touch(marker): the 'code' a stranger's checkpoint would run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def evil_checkpoint(path: Path, marker: Path) -> Path:
    obj = {"format_version": 1, "step": 1, "G": {"w": torch.zeros(1)}, "payload": _RunsCode(marker)}
    torch.save(obj, path)
    assert not marker.exists()
    # the file really does run code when loaded the unsafe way (so the test below can fail)
    torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()
    return path


def test_a_checkpoint_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = evil_checkpoint(tmp_path / "evil.pt", marker)
    with pytest.raises(UserError, match="refused") as e:
        checkpoint.load(evil)
    assert "\n" not in str(e.value) and not marker.exists()

    # through the CLIs: exit 2, one sentence, no traceback, nothing ran
    r = gantrain(*FAST, f"hydra.run.dir={tmp_path / 'run'}", f"resume={evil}", *GAN_SINE, "trainer.max_steps=2")
    assert r.returncode == 2, r.stderr[-2000:]
    assert "refused" in r.stderr + r.stdout and "Traceback" not in r.stderr and not marker.exists()
    r = gantrain(str(evil), "-o", str(tmp_path / "x.png"), cmd="gantrain-generate")
    assert r.returncode == 2 and "refused" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not marker.exists() and not (tmp_path / "x.png").exists()


# ------------------------------------------------------------------------------ Ctrl-C, SIGTERM
def start_gantrain(run_dir: Path, *overrides: str) -> subprocess.Popen:
    exe = Path(sys.executable).parent / "gantrain"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([str(exe), *FAST, f"hydra.run.dir={run_dir}", *overrides], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"gantrain ended early ({proc.returncode}): {proc.communicate()[1][-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("gantrain made no progress in time")
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_saves_closes_tensorboard_and_exits_nonzero(tmp_path, sig):
    run_dir = tmp_path / "run"
    common = [*GAN_SINE, "log.every_n_steps=1", "ckpt.every_n_steps=5"]
    proc = start_gantrain(run_dir, *common, "trainer.max_steps=1000000")
    wait_for(lambda: (run_dir / "checkpoints" / "last.pt").exists(), proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err[-2000:]
    assert "Traceback" not in out + err and "[ERROR]" not in out + err and f"signal {int(sig)}" not in out + err
    name = "Ctrl-C (SIGINT)" if sig == signal.SIGINT else "SIGTERM"
    assert f"[INFO] - stopped by {name} after saving {run_dir / 'checkpoints' / 'last.pt'}" in out, out[-2000:]
    hint = next(ln.split(None, 1)[1] for ln in out.splitlines() if ln.startswith("continue:"))
    assert hint == f"gantrain resume=auto hydra.run.dir={run_dir}", hint
    saved = checkpoint.load(run_dir / "checkpoints" / "last.pt")
    stopped = saved["step"]
    assert stopped >= 5
    # the writer was closed (flushed): TensorBoard has every step up to the saved one
    assert scalar_steps(run_dir)["Loss/G"] == list(range(1, stopped + 1))

    # the printed hint as it is (the run's own settings come from its record), a shorter max_steps on top
    r = gantrain(*shlex.split(hint)[1:], f"trainer.max_steps={stopped + 3}")
    assert r.returncode == 0, r.stderr[-2000:]
    resumed = checkpoint.load(run_dir / "checkpoints" / "last.pt")
    assert resumed["step"] == stopped + 3 and resumed["config"] == {**saved["config"], "resume": "auto",
                                                                    "trainer": resumed["config"]["trainer"]}
    steps = scalar_steps(run_dir)
    assert_no_duplicate_steps(steps)
    assert steps["Loss/G"] == list(range(1, stopped + 4))


# ----------------------------------------------------------------------------------------- kill -9
# A zygote imports torch and gantrain once and forks real training processes (train() with checkpoints
# every step) on request, so that many kill -9 moments fit in a few seconds each instead of one
# interpreter start-up each. The test kills every child itself, at a different moment each time.
ZYGOTE = textwrap.dedent("""
    import os, sys
    from tests.utils import FAST, make_cfg
    from gantrain.training.loop import train
    cfg = make_cfg(*FAST, *sys.argv[2:])
    run_dir = sys.argv[1]
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "fork":
            pid = os.fork()
            if pid == 0:
                sys.stdin.close()
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 1); os.dup2(devnull, 2)
                try:
                    train(cfg, run_dir)
                finally:
                    os._exit(0)
            print(pid, flush=True)
        elif line.strip() == "reap":
            _, status = os.wait()
            print(os.waitstatus_to_exitcode(status), flush=True)
""")


def test_kill_9_at_many_moments_never_leaves_a_bad_last_pt(tmp_path):
    run_dir = tmp_path / "run"
    ckpt_dir = run_dir / "checkpoints"
    overrides = ["model=gan", "model.generator.hidden=[256,256]", "model.discriminator.hidden=[256,256]",
                 "data=sine", "data.size=256", "data.batch_size=8", "metrics=off", "trainer.max_steps=1000000",
                 "ckpt.every_n_steps=1", "ckpt.keep=2", "log.every_n_steps=1", "log.sample_every_n_steps=1000000",
                 "resume=auto"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    zygote = subprocess.Popen([sys.executable, "-c", ZYGOTE, str(run_dir), *overrides], env=env, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    kinds: Counter = Counter()
    steps = []
    try:
        assert zygote.stdout.readline().strip() == "ready"
        # moments: during start-up/resume (before a checkpoint is written), after fixed delays, and as
        # soon as a temp file shows that a checkpoint is being written
        plan = [("delay", d) for d in (0.0, 0.05, 0.3)] + [("delay", d) for d in (0.7, 1.1, 1.6, 2.2)] + \
               [("mid-write", k) for k in range(1, 14)]
        for kind, arg in plan:
            zygote.stdin.write("fork\n")
            zygote.stdin.flush()
            pid = int(zygote.stdout.readline())
            start = time.monotonic()
            if kind == "delay":
                time.sleep(arg)
            else:
                # the first temp file after a few steps: some writes are to last.pt, some to step_*.pt
                seen = 0
                while time.monotonic() - start < 30:
                    names = os.listdir(ckpt_dir) if ckpt_dir.is_dir() else []
                    if any(".tmp" in n for n in names if str(pid) in n):
                        seen += 1
                        if seen > arg % 4:
                            break
                        while any(str(pid) in n for n in os.listdir(ckpt_dir)):
                            pass
            os.kill(pid, signal.SIGKILL)
            zygote.stdin.write("reap\n")
            zygote.stdin.flush()
            assert int(zygote.stdout.readline()) == -signal.SIGKILL, "the child ended before the kill"
            kinds[kind] += 1
            if ckpt_dir.is_dir() and any(n.endswith(f".tmp{pid}") for n in os.listdir(ckpt_dir)):
                kinds["caught mid-write (temp file left)"] += 1
            last = ckpt_dir / "last.pt"
            if last.exists() or kind == "mid-write":
                steps.append(checkpoint.load(last)["step"])  # loads every time (UserError would fail the test)
    finally:
        zygote.kill()
        zygote.wait()
    took = time.monotonic() - t0
    print(f"kill -9 at {kinds['delay'] + kinds['mid-write']} moments ({dict(kinds)}) in {took:.1f}s; steps {steps}")
    assert steps == sorted(steps) and steps[-1] > 0
    assert kinds["mid-write"] == 13 and kinds["caught mid-write (temp file left)"] >= 1
    # and the run resumes from what the last kill left, to the end, with one TensorBoard step each
    final = [o for o in overrides if not o.startswith("trainer.max_steps=")] + [f"trainer.max_steps={steps[-1] + 2}"]
    r = gantrain(*FAST, f"hydra.run.dir={run_dir}", *final)
    assert r.returncode == 0, r.stderr[-2000:]
    assert checkpoint.load(ckpt_dir / "last.pt")["step"] == steps[-1] + 2
    assert not [n for n in os.listdir(ckpt_dir) if ".tmp" in n]
    assert_no_duplicate_steps(scalar_steps(run_dir))


def test_an_optimiser_resumes_with_this_runs_implementation():
    """A checkpoint of a non-fused optimiser (a CPU run) loaded into a fused one (a CUDA run) stays fused; the
    saved groups alone would switch it back while fp16's GradScaler still treats it as fused."""
    from gantrain.training.state import load_optimizer

    net = torch.nn.Linear(3, 2)
    plain = torch.optim.Adam(net.parameters(), lr=0.1)
    net(torch.randn(4, 3)).sum().backward()
    plain.step()
    fused = torch.optim.Adam(net.parameters(), lr=0.5, fused=True)
    load_optimizer(fused, plain.state_dict())
    group = fused.param_groups[0]
    assert group["fused"] is True and group["lr"] == 0.1   # implementation kept, hyperparameters restored
    step = fused.state[net.weight]["step"]
    assert step.item() == 1 and step.dtype == torch.float32
    scaler = torch.amp.GradScaler("cpu")                    # passes found_inf to a fused optimiser
    scaler.scale(net(torch.randn(4, 3)).sum()).backward()
    scaler.step(fused)                                      # AssertionError in adam() had `fused` been lost
    scaler.update()
    assert fused.state[net.weight]["step"].item() == 2
