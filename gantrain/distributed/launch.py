"""Joining the process group and running the training on the ranks the job asks for (:func:`run`).

* under torchrun or SLURM (see :mod:`gantrain.distributed.env`) this process is one rank: it joins the group the
  environment describes and rank 0 tells the others its run directory;
* ``trainer.devices=N`` from a plain ``gantrain`` (also under ``gantrain -m``): :func:`launch` starts N ranks
  inside the Hydra job on this machine and waits for them; a rank that dies stops the others and the job
  fails with one sentence naming it.

The process group uses NCCL on CUDA and gloo on the CPU, with a timeout (``GANTRAIN_DIST_TIMEOUT`` seconds,
default 600) so a rank stuck waiting for a dead peer ends with an error rather than hanging.
"""

from __future__ import annotations

import logging
import logging.config
import os
import signal
import socket
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from gantrain.distributed.collectives import broadcast_object, rank, world_size
from gantrain.distributed.env import env_world_size, local_rank, slurm_env, timeout
from gantrain.errors import Interrupted, RankFailed, UserError

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------- the process group
def init_from_env(device: str = "auto") -> bool:
    """Join the process group the environment describes (torchrun or SLURM); False when there is none."""
    if dist.is_initialized():
        return False
    os.environ.update(slurm_env())
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    use_cuda = torch.cuda.is_available() and not str(device).startswith("cpu")
    if use_cuda:
        torch.cuda.set_device(local_rank() % torch.cuda.device_count())
    try:
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timeout())
    except Exception as e:  # the rendezvous failed: say where it was
        raise RankFailed(f"rank {os.environ.get('RANK')} could not join the {os.environ['WORLD_SIZE']} processes "
                         f"at {os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')} ({e}); check that "
                         "every rank was started and can reach that address.") from e
    return True


def quiet_other_ranks() -> None:
    """Ranks > 0 log errors only, to the console (rank 0 alone writes files and progress)."""
    if rank() == 0:
        return
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, logging.FileHandler):
            root.removeHandler(h)
            h.close()
    root.setLevel(logging.ERROR)
    for name in ("gantrain", "hydra"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.simplefilter("ignore")


def run(fn: Callable[[Any, str], Any], cfg, out_dir: str):
    """``fn(cfg, out_dir)`` (the training) on as many ranks as the job asks for; rank 0's result."""
    n, env_world = int(cfg.trainer.devices), env_world_size()
    if env_world > 1 or dist.is_initialized():
        world = world_size() if dist.is_initialized() else env_world
        if n not in (1, world):
            raise UserError(f"trainer.devices={n} but the launcher started {world} processes: leave "
                            "trainer.devices=1 under torchrun/SLURM (their process counts decide).")
        created = init_from_env(cfg.trainer.device)
        try:
            quiet_other_ranks()
            return fn(cfg, broadcast_object(str(out_dir)))
        finally:
            if created:
                dist.destroy_process_group()
    if n > 1:
        return launch(fn, cfg, str(out_dir), n)
    return fn(cfg, str(out_dir))


# ------------------------------------------------------------------------ trainer.devices=N: launching
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _job_logging() -> dict | None:
    """The Hydra job's logging config (console + run-dir log file), for rank 0 of a launched job."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from omegaconf import OmegaConf

        conf = OmegaConf.to_container(HydraConfig.get().job_logging, resolve=True)
        return conf if isinstance(conf, dict) and conf.get("version") else None
    except Exception:  # noqa: BLE001 - not inside a Hydra job (tests, API use)
        return None


def _worker(r: int, n: int, port: int, fn, cfg, out_dir: str, logging_conf: dict | None, queue) -> None:
    """One rank started by :func:`launch`; reports ("ok", result) or an error to the parent through ``queue``."""
    try:  # own process group (the parent forwards Ctrl-C once), and die with the parent
        os.setpgrp()
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception as e:  # noqa: BLE001 - not Linux: the parent still terminates its ranks
        log.debug("no parent-death signal: %s", e)
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(r), "WORLD_SIZE": str(n),
                       "LOCAL_RANK": str(r), "LOCAL_WORLD_SIZE": str(n)})
    if "OMP_NUM_THREADS" not in os.environ:  # n ranks share the machine's cores (gantrain/threads.py keeps it)
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // n))
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    if r == 0 and logging_conf:
        logging.config.dictConfig(logging_conf)
    else:
        logging.basicConfig(level=logging.INFO if r == 0 else logging.ERROR, format="%(message)s")
    try:
        init_from_env(cfg.trainer.device)
        quiet_other_ranks()
        result = fn(cfg, out_dir)
        queue.put(("ok", r, result))
    except BaseException as e:  # noqa: BLE001 - everything is reported to the parent
        if isinstance(e, Interrupted):
            queue.put(("interrupted", r, (e.signum, None if e.path is None else str(e.path))))
        elif isinstance(e, UserError):
            queue.put(("user_error", r, str(e)))
        elif isinstance(e, getattr(dist, "DistError", ())) or "Connection closed by peer" in str(e):
            queue.put(("comm_error", r, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"))
        else:
            queue.put(("error", r, "".join(traceback.format_exception(e))))
        sys.exit(1)
    finally:
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception as e:  # noqa: BLE001 - the group is gone with its peers
                log.debug("destroy_process_group: %s", e)


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def launch(fn: Callable[[Any, str], Any], cfg, out_dir: str, n: int, grace: float = 5.0):
    """Start ``n`` ranks on this machine (``trainer.devices=n``), each calling ``fn(cfg, out_dir)``.

    Waits for all; returns rank 0's result. When a rank fails or dies, the others are given ``grace`` seconds
    to notice, then terminated, and the job raises one error naming the rank that failed first (a
    :class:`UserError` or ``Interrupted`` from the ranks is raised as it is). SIGINT/SIGTERM sent to this
    process are passed on to the ranks, which save and stop together.
    """
    if (torch.cuda.is_available() and not str(cfg.trainer.device).startswith("cpu")
            and torch.cuda.device_count() < n):
        raise UserError(f"trainer.devices={n} but this machine has {torch.cuda.device_count()} GPU(s): lower "
                            "trainer.devices, or use trainer.device=cpu for CPU processes.")
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    port = free_port()
    logging_conf = _job_logging()
    procs = []
    for r in range(n):
        p = ctx.Process(target=_worker, args=(r, n, port, fn, cfg, out_dir, logging_conf, queue),
                        name=f"gantrain-rank{r}", daemon=False)
        p.start()
        procs.append(p)

    received: list[int] = []

    def forward(signum, _frame):
        received.append(signum)
        for p in procs:
            if p.is_alive():
                os.kill(p.pid, signum)

    try:
        old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread
        old = {}
    reports: dict[int, tuple[str, Any]] = {}
    failures: list[tuple[int, str, Any]] = []   # (rank, kind, detail) in the order they were seen
    stop_at = kill_at = None

    def drain() -> None:
        while not queue.empty():
            kind, r, detail = queue.get()
            reports[r] = (kind, detail)
            if kind != "ok":
                failures.append((r, kind, detail))

    try:
        while True:
            drain()
            alive = [p for p in procs if p.is_alive()]
            for r, p in enumerate(procs):
                if not p.is_alive() and p.exitcode and r not in reports and all(f[0] != r for f in failures):
                    failures.append((r, "died", p.exitcode))
            if not alive:
                break
            now = time.monotonic()
            if failures and stop_at is None:
                stop_at = now + grace
            if stop_at is not None and now >= stop_at and kill_at is None:
                for p in alive:
                    p.terminate()
                kill_at = now + grace
            if kill_at is not None and now >= kill_at:
                for p in alive:
                    p.kill()
            time.sleep(0.05)
        for p in procs:
            p.join()
        drain()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        for p in procs:
            if p.is_alive():
                p.kill()
    if not failures and reports.get(0, ("",))[0] == "ok":
        return reports[0][1]
    _raise_failure(failures, n)


def _raise_failure(failures: list[tuple[int, str, Any]], n: int):
    """The error of the job from the ranks' failures: the first rank that died or failed on its own, rather
    than the ranks that failed because it was gone."""
    order = {"died": 0, "interrupted": 1, "user_error": 1, "error": 1, "comm_error": 2}
    if not failures:
        raise RankFailed(f"the {n} processes ended without rank 0 reporting a result.")
    r, kind, detail = min(failures, key=lambda f: order[f[1]])  # min is stable: the first seen of a kind
    if kind == "interrupted":
        signum, path = detail
        raise Interrupted(signum, None if path is None else Path(path))
    if kind == "user_error":
        raise UserError(detail)
    if kind == "died":
        how = f"was killed by {_signal_name(detail)}" if detail < 0 else f"exited with code {detail}"
        raise RankFailed(f"rank {r} of {n} {how}: the other ranks were stopped and the job ended; resume from the "
                         "last checkpoint with resume=auto and the same hydra.run.dir.")
    if kind == "error":
        print(detail, file=sys.stderr, flush=True)  # an unexpected error: its traceback
        last = detail.strip().splitlines()[-1] if detail.strip() else "an error"
        raise RankFailed(f"rank {r} of {n} failed ({last}): the other ranks were stopped and the job ended.")
    raise RankFailed(f"rank {r} of {n} lost contact with the others ({detail}): the job ended.")
