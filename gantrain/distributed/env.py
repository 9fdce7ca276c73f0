"""What the launcher says about this process before any process group exists: torchrun's variables
(``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``), SLURM's mapped onto them, and the
Hydra overrides that keep ranks > 0 out of the run directory. Imports no torch (the CLI reads it early).

* ``torchrun --nproc_per_node=N [--nnodes ...] -m gantrain ...``: every rank composes the config itself, ranks
  > 0 with ``hydra.output_subdir=null``, ``hydra.run.dir=.`` and no file logging (:func:`worker_overrides`),
  and rank 0 tells the others its run directory (``${now:}`` differs between ranks).
* SLURM (``hydra/launcher=slurm``, or ``srun gantrain ...``): every task of the step is a rank;
  :func:`slurm_env` maps ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID`` and the first host of
  ``SLURM_JOB_NODELIST`` onto the torchrun variables.
"""

from __future__ import annotations

import datetime
import os
import re

from gantrain.errors import UserError

TIMEOUT_ENV = "GANTRAIN_DIST_TIMEOUT"


def timeout() -> datetime.timedelta:
    """How long a rank waits for its peers (``GANTRAIN_DIST_TIMEOUT`` seconds, default 600)."""
    return datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, "600")))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def env_rank() -> int:
    """This process's rank as the launcher (torchrun, SLURM) says, before any process group exists."""
    env = {**os.environ, **slurm_env()}
    return int(env.get("RANK", 0))


def env_world_size() -> int:
    env = {**os.environ, **slurm_env()}
    return int(env.get("WORLD_SIZE", 1))


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
