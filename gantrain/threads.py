"""CPU threads: each gantrain process takes its share of the cores, and says so when it does not get them.

torch's intra-op pool takes one thread per core in every process. Two processes on the same cores then run
twice as many threads as there are cores, and OpenMP's spin-waiting made each ~10x slower (issue 18). So a
run on the CPU (:func:`share_cores`):

* respects ``OMP_NUM_THREADS`` when it is set: by the user, by torchrun (1 per rank unless set), by joblib's
  loky workers (``hydra/launcher=joblib``: cores // n_jobs), by ``trainer.devices=N`` ranks (cores // N);
* otherwise takes cores // (gantrain CPU runs alive on this machine), counting the runs in a folder of one
  file per process (``$TMPDIR/gantrain-cpu-runs-<uid>``), and counts again at every log step, so a run gives
  cores up when another starts and takes them back when it ends. With ``trainer.deterministic=true`` the
  count is fixed at the start (a thread count changed mid-run can change the arithmetic's rounding);
* at log steps, compares the CPU time the process got with its threads x wall time, and warns once, with
  the fix, when for two intervals in a row its threads got less than half of that (the cores are shared).
"""

from __future__ import annotations

import atexit
import logging
import os
import resource
import tempfile
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)
REGISTRY = Path(tempfile.gettempdir()) / f"gantrain-cpu-runs-{os.getuid() if hasattr(os, 'getuid') else 0}"
STARVED = 0.5  # below this share of threads x wall time, twice in a row: the run is oversubscribed


def _affinity() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# torch's own default when nothing set it: one thread per physical core (not per hyperthread)
_TORCH_DEFAULT = _affinity() if "OMP_NUM_THREADS" in os.environ else torch.get_num_threads()


def cores() -> int:
    """The threads a lone run uses: torch's default (physical cores), within this process's CPU affinity."""
    return max(1, min(_affinity(), _TORCH_DEFAULT))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process with that pid
        return True
    return True


def live_runs(registry: Path = REGISTRY) -> int:
    """gantrain CPU runs alive on this machine (this one included once registered); stale files are removed."""
    n = 0
    for f in registry.glob("[0-9]*") if registry.is_dir() else ():
        if _alive(int(f.name)):
            n += 1
        else:
            f.unlink(missing_ok=True)
    return n


def _cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class CoreShare:
    """This run's share of the CPU cores (see the module docstring); :meth:`at_log` at each log step."""

    def __init__(self, device: torch.device, deterministic: bool, registry: Path = REGISTRY):
        self.active = device.type == "cpu"
        self.registry, self.file, self.warned, self.starved = registry, None, False, 0
        self.from_env = "OMP_NUM_THREADS" in os.environ
        self.fixed = self.from_env or deterministic
        self._mark = (time.perf_counter(), _cpu_seconds())
        if not self.active:
            return
        try:
            registry.mkdir(parents=True, exist_ok=True)
            self.file = registry / str(os.getpid())
            self.file.touch()
            atexit.register(self.close)  # also when train() fails before its loop
        except OSError as e:  # no writable temp folder: this run counts only itself
            log.debug("no CPU-runs registry at %s: %s", registry, e)
            self.file = None
        if self.from_env:
            log.info("CPU threads: %d (OMP_NUM_THREADS) of %d cores", torch.get_num_threads(), cores())
        else:
            self._share(start=True)

    def _share(self, start: bool = False) -> None:
        runs = max(1, live_runs(self.registry))
        want = max(1, cores() // runs)
        if want != torch.get_num_threads():
            torch.set_num_threads(want)
            if not start:
                log.info("CPU threads: now %d of %d cores (%d gantrain runs on this machine)", want, cores(), runs)
        if start:
            log.info("CPU threads: %d of %d cores (%d gantrain run(s) on this machine; OMP_NUM_THREADS=K sets "
                     "it)", want, cores(), runs)

    def at_log(self, steps: int) -> None:
        """At a log step, after ``steps`` steps since the last one: re-share the cores, check the share got."""
        if not self.active:
            return
        now, cpu = time.perf_counter(), _cpu_seconds()
        (t0, c0), self._mark = self._mark, (now, cpu)
        threads = torch.get_num_threads()
        got = (cpu - c0) / max(now - t0, 1e-9)  # cores' worth of CPU time this process got
        self.starved = self.starved + 1 if got < STARVED * threads else 0
        if self.starved >= 2 and not self.warned:
            self.warned = True
            runs = max(1, live_runs(self.registry))
            fix = max(1, cores() // max(runs, 2))
            how = (f"or give each its share of the cores, e.g. OMP_NUM_THREADS={fix} gantrain ... (cores / runs; "
                   "hydra.launcher.n_jobs for a joblib sweep)" if fix < threads
                   else f"this run already uses {threads} thread(s): nothing else to shrink here")
            log.warning("this run's %d CPU threads got %.1f cores on average over the last %d steps: other processes "
                        "share the %d cores (load average %.1f), which makes every one of them slower. Run fewer "
                        "programs at once, %s.", threads, got, steps, cores(), os.getloadavg()[0], how)
        if not self.fixed:
            self._share()

    def close(self) -> None:
        if self.file is not None:
            self.file.unlink(missing_ok=True)
            self.file = None


def share_cores(device: torch.device, deterministic: bool = False) -> CoreShare:
    return CoreShare(device, deterministic)
