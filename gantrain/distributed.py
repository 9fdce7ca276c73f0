"""Several processes training one model: process groups, launching ranks, and the DDP plumbing of the loop.

One process (the default) needs none of this: every helper is a no-op when the world has one rank.

How a job gets its ranks (:func:`run`):

* ``torchrun --nproc_per_node=N [--nnodes ...] -m gantrain ...``: torchrun sets ``RANK``/``WORLD_SIZE``/
  ``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``; every rank composes the config itself, ranks > 0 with
  ``hydra.output_subdir=null``, ``hydra.run.dir=.`` and no file logging (:func:`worker_overrides`), and rank 0
  tells the others its run directory (``${now:}`` differs between ranks).
* SLURM (``hydra/launcher=slurm``, or ``srun gantrain ...``): every task of the step is a rank;
  :func:`slurm_env` maps ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID`` and the first host of
  ``SLURM_JOB_NODELIST`` onto the torchrun variables.
* ``trainer.devices=N`` from a plain ``gantrain`` (also under ``gantrain -m``): :func:`launch` starts N ranks
  inside the Hydra job on this machine and waits for them; a rank that dies stops the others and the job
  fails with one sentence naming it.

The process group uses NCCL on CUDA and gloo on the CPU, with a timeout (``GANTRAIN_DIST_TIMEOUT`` seconds,
default 600) so a rank stuck waiting for a dead peer ends with an error rather than hanging.

In the loop (:func:`training_views`): G and D are wrapped in ``DistributedDataParallel`` for the passes that
train them, and the plain modules are used for everything else (``G(z)`` under ``no_grad`` in the D step, the
frozen D in the G step, R1, EMA, checkpoints, samples). So a D forward in the G step never involves D's DDP
reducer (no unused-parameter hang, no gradient into the frozen network), and the R1 term's gradients, which
reach D's parameters in the same backward as the D loss, are averaged over the ranks with it.
"""

from __future__ import annotations

import datetime
import inspect
import logging
import logging.config
import os
import re
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

from gantrain.errors import Interrupted, RankFailed, UserError

log = logging.getLogger(__name__)

TIMEOUT_ENV = "GANTRAIN_DIST_TIMEOUT"


# ------------------------------------------------------------------------------------------- queries
def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def env_rank() -> int:
    """This process's rank as the launcher (torchrun, SLURM) says, before any process group exists."""
    env = {**os.environ, **slurm_env()}
    return int(env.get("RANK", 0))


def env_world_size() -> int:
    env = {**os.environ, **slurm_env()}
    return int(env.get("WORLD_SIZE", 1))


# ----------------------------------------------------------------------------------------- collectives
def broadcast_object(obj):
    """rank 0's ``obj`` on every rank."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_object(obj) -> list | None:
    """``[rank 0's obj, rank 1's obj, ...]`` on rank 0, None on the others (every rank must call it)."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size() if is_main() else None
    dist.gather_object(obj, out, dst=0)
    return out


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    if world_size() > 1:
        t = t.clone()
        dist.all_reduce(t)
        t /= world_size()
    return t


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics, ...) on every rank."""
    if world_size() == 1:
        return
    for b in module.buffers():
        t = b.to(_comm_device())
        dist.broadcast(t, src=0)
        b.copy_(t)


def broadcast_module(module: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank (every rank seeds its own, different, initialisation)."""
    if world_size() == 1:
        return
    with torch.no_grad():
        for p in module.parameters():
            t = p.detach().to(_comm_device())
            dist.broadcast(t, src=0)
            p.copy_(t)
        broadcast_buffers(module)


def agree_to_stop(stop: list[int], step: int, every: int) -> bool:
    """Whether training stops now, the same answer on every rank.

    ``stop`` holds the signals this rank received. With one rank that is the answer; with several, the ranks
    compare at every ``every``-th step (a rank leaving the loop alone would leave the others waiting in the
    next all-reduce), and a rank that had no signal of its own is given the others' so it stops as they do.
    """
    if world_size() == 1:
        return bool(stop)
    if step % every:
        return False
    flag = torch.tensor([stop[0] if stop else 0], dtype=torch.int64, device=_comm_device())
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    signum = int(flag.item())  # one read, at log steps only
    if signum and not stop:
        stop.append(signum)
    return bool(signum)


# ------------------------------------------------------------------------------------ models under DDP
def prepare_models(G: torch.nn.Module, D: torch.nn.Module, sync_batchnorm: bool, device: torch.device):
    """Before the EMA copy and the optimisers: BatchNorm -> SyncBatchNorm if asked, rank 0's initial weights."""
    if world_size() == 1:
        return G, D
    if sync_batchnorm:
        if device.type != "cuda":
            raise UserError("trainer.sync_batchnorm=true needs CUDA GPUs (PyTorch's SyncBatchNorm has no CPU "
                            "kernel): use trainer.sync_batchnorm=false on the CPU.")
        G = torch.nn.SyncBatchNorm.convert_sync_batchnorm(G)
        D = torch.nn.SyncBatchNorm.convert_sync_batchnorm(D)
    broadcast_module(G)
    broadcast_module(D)
    return G, D


def training_views(G: torch.nn.Module, D: torch.nn.Module, device: torch.device, compile: bool = False):
    """``(G_run, D_run, G_learn, D_learn)``: the plain (optionally compiled) networks, and the ones to train.

    * ``G_learn(z)`` in the G step and ``D_learn(x)`` in the D step: ``DistributedDataParallel`` wrappers,
      whose backward averages the gradients over the ranks;
    * ``G_run(z)`` under ``no_grad`` in the D step and ``D_run(x)`` with D frozen in the G step: the plain
      modules, so neither wakes a DDP reducer that would wait for gradients that never come.

    Buffers are not broadcast at every forward (``broadcast_buffers=False``): with plain BatchNorm each rank
    keeps the running statistics of its own shard (rank 0's are saved; evaluation uses rank 0's), and
    ``trainer.sync_batchnorm=true`` makes them global.
    """
    G_run, D_run = (torch.compile(G), torch.compile(D)) if compile else (G, D)
    if not (dist.is_available() and dist.is_initialized()):  # a group of one rank still trains through DDP
        return G_run, D_run, G_run, D_run
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = None
    if device.type == "cuda":
        ids = [device.index if device.index is not None else torch.cuda.current_device()]
    # no buffer broadcast at each forward (the keyword was renamed in newer PyTorch)
    no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DDP).parameters
               else {"broadcast_buffers": False})
    G_learn = DDP(G, device_ids=ids, gradient_as_bucket_view=True, **no_sync)
    D_learn = DDP(D, device_ids=ids, gradient_as_bucket_view=True, **no_sync)
    if compile:
        G_learn, D_learn = torch.compile(G_learn), torch.compile(D_learn)
    return G_run, D_run, G_learn, D_learn


def build_everywhere(build: Callable[..., Any], *args, **kwargs):
    """``build(*args)`` on rank 0 first (it may fill on-disk caches), then on the other ranks.

    When rank 0's build fails with a UserError, the others raise the same error instead of waiting."""
    if world_size() == 1:
        return build(*args, **kwargs)
    result, error = None, None
    if is_main():
        try:
            result = build(*args, **kwargs)
        except UserError as e:
            error = str(e)
    error = broadcast_object(error)
    if error is not None:
        if is_main():
            raise UserError(error)
        raise UserError(f"(rank {rank()}) {error}")
    if not is_main():
        result = build(*args, **kwargs)
    return result


@torch.no_grad()
def evaluate(evaluator, net: torch.nn.Module, step: int, tb) -> dict[str, float]:
    """``evaluator.log(net, step, tb)`` with the work shared by the ranks.

    Each rank generates and featurises its share of the fixed latents (``num_samples / world`` of them, at its
    offset, so the samples are the ones a single process would draw); rank 0 gathers the features, computes
    the statistics and writes them; every rank gets the scores (``evaluator.last``)."""
    if world_size() == 1:
        return evaluator.log(net, step, tb)
    if not evaluator.names:
        return {}
    broadcast_buffers(net)  # BatchNorm running statistics: rank 0's, as in its checkpoints
    n, world = evaluator.num_samples, world_size()
    share = -(-n // world)
    feats = evaluator.features(evaluator.generate(net, share, offset=rank() * share))
    gathered = {}
    for name in sorted(feats):
        t = feats[name].contiguous().to(_comm_device())
        parts = [torch.empty_like(t) for _ in range(world)]
        dist.all_gather(parts, t)
        gathered[name] = torch.cat(parts)[:n].cpu()
    scores = evaluator.statistics(gathered) if is_main() else None
    scores = broadcast_object(scores)
    evaluator.last = scores
    if is_main():
        evaluator.report(scores, step, tb)
    return scores


# ------------------------------------------------------------------------------- the process group
def timeout() -> datetime.timedelta:
    return datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, "600")))


def expand_nodelist(nodelist: str) -> list[str]:
    """SLURM's compact host list (``gpu[01-03,07],login1``) as host names."""
    hosts = []
    for m in re.finditer(r"([^,\[]+)(?:\[([^\]]*)\])?", nodelist):
        prefix, ranges = m.group(1), m.group(2)
        if ranges is None:
            hosts.append(prefix)
            continue
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            if not hi:
                hosts.append(prefix + lo)
            else:
                hosts.extend(f"{prefix}{i:0{len(lo)}d}" for i in range(int(lo), int(hi) + 1))
    return hosts


def slurm_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The torchrun variables for a SLURM task, or {} when this is not one task of a multi-task step.

    Each task of an ``srun`` step (hydra-submitit-launcher runs the job that way, ``tasks_per_node`` tasks on
    each node) is one rank: RANK=SLURM_PROCID, WORLD_SIZE=SLURM_NTASKS, LOCAL_RANK=SLURM_LOCALID, and the
    first host of SLURM_JOB_NODELIST is the rendezvous (MASTER_PORT from the job id unless set). Variables
    already set (e.g. by torchrun inside an allocation) win; ``GANTRAIN_SLURM_DDP=0`` turns the mapping off.
    """
    env = os.environ if environ is None else environ
    if env.get("GANTRAIN_SLURM_DDP", "1") == "0" or "RANK" in env:
        return {}
    if "SLURM_PROCID" not in env or int(env.get("SLURM_NTASKS", "1")) <= 1:
        return {}
    if env.get("SLURM_STEP_ID", "batch") in ("batch", "4294967294") and env.get("SUBMITIT_EXECUTOR") != "slurm":
        return {}  # the batch script itself (one process), not a task of an srun step
    nodes = expand_nodelist(env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or "127.0.0.1")
    ntasks = int(env["SLURM_NTASKS"])
    local_world = env.get("SLURM_NTASKS_PER_NODE", "").split("(")[0] or str(max(1, ntasks // max(1, len(nodes))))
    return {
        "RANK": env["SLURM_PROCID"],
        "WORLD_SIZE": str(ntasks),
        "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
        "LOCAL_WORLD_SIZE": local_world,
        "MASTER_ADDR": env.get("MASTER_ADDR", nodes[0]),
        "MASTER_PORT": env.get("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000)),
    }


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


def worker_overrides(argv: list[str]) -> list[str]:
    """Extra Hydra overrides for a torchrun rank > 0: no ``.hydra/``, no run directory, no log file."""
    if env_world_size() <= 1:
        return []
    if any(a in ("-m", "--multirun") for a in argv):
        raise UserError("torchrun cannot wrap a multirun (-m): start the sweep with a plain `gantrain -m ...` "
                        "and trainer.devices=N, or run one torchrun per job.")
    if env_rank() == 0:
        return []
    return ["hydra.output_subdir=null", "hydra.run.dir=.", "hydra/job_logging=none", "hydra/hydra_logging=none"]


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
