"""A run directory's record of how each start composed its config, and resuming with it.

Hydra writes a start's config and overrides into ``RUN/.hydra/``. Here, before Hydra composes:

- ``resume=auto hydra.run.dir=RUN`` (or ``resume=RUN/checkpoints/X.pt``) composes with the overrides the run was
  last started with (its newest ``.hydra`` record, else those saved in the checkpoint), and the command line's
  overrides on top: ``gantrain resume=auto hydra.run.dir=RUN`` alone continues RUN as it was.
- a later start in a directory that has a record writes its own beside it (``.hydra/resume-N/``, or
  ``.hydra/start-N/`` without resume), so ``RUN/.hydra/`` itself is never overwritten.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from gantrain.rundir import LOCK_NAME

log = logging.getLogger("gantrain")
_LATER = re.compile(r"^(resume|start)-(\d+)$")


@dataclass
class Start:
    """What :func:`prepare` decided for this start (logged once Hydra has set logging up)."""
    argv: list[str]
    recorded_from: str | None = None          # where the run's own overrides were read
    recorded: list[str] = field(default_factory=list)
    on_top: list[str] = field(default_factory=list)
    record_dir: Path | None = None           # this start's own .hydra/<later>/ (removed if it fails before training)
    existed: bool = False                    # hydra.run.dir was given and was there before this start
    at: float = field(default_factory=time.time)  # when this start began

    def describe(self) -> None:
        if self.recorded_from is not None:
            log.info("resume: the run's settings from %s: %s%s", self.recorded_from,
                     " ".join(self.recorded) or "(the defaults)",
                     f"; on top of them: {' '.join(self.on_top)}" if self.on_top else "")
        if self.record_dir is not None:
            log.info("this start's config and overrides are recorded in %s", self.record_dir)


def _parse(overrides: list[str]):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(overrides)


def _key(override) -> str:
    return f"{override.package}@{override.key_or_group}" if override.package else override.key_or_group


def _value(overrides: list[str], key: str) -> str | None:
    found = [o for o in _parse(overrides) if _key(o) == key and o.value() is not None]
    return str(found[-1].value()) if found else None


def records(run_dir: Path) -> list[Path]:
    """The run's ``.hydra`` records, oldest first: ``.hydra/`` itself, then ``.hydra/resume-N``/``start-N``."""
    hydra = run_dir / ".hydra"
    later = sorted((int(m.group(2)), p) for p in hydra.glob("*-*") if (m := _LATER.match(p.name)) and p.is_dir())
    return [p for p in [hydra, *(p for _, p in later)] if (p / "overrides.yaml").is_file()]


def _next_record(run_dir: Path, resuming: bool) -> str:
    hydra = run_dir / ".hydra"
    numbers = [int(m.group(2)) for p in hydra.glob("*-*") if (m := _LATER.match(p.name))]
    return f".hydra/{'resume' if resuming else 'start'}-{max(numbers, default=0) + 1}"


def _from_checkpoint(path: Path) -> tuple[list[str], str] | None:
    """The overrides saved in a checkpoint (``overrides``), else its model and data names."""
    import torch

    try:
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - train's checkpoint.load says what is wrong with it, in one sentence
        return None
    if not isinstance(saved, dict) or "model" not in saved:
        return None
    if isinstance(saved.get("overrides"), list):
        return [str(o) for o in saved["overrides"]], str(path)
    log.warning("resume: %s does not say how its run was started: only its model=%s data=%s are taken from it",
                path, saved["model"], saved["data"])
    return [f"model={saved['model']}", f"data={saved['data']}"], str(path)


def _read_record(path: Path) -> list[str]:
    from gantrain.errors import UserError

    try:
        overrides = yaml.safe_load(path.read_text()) or []
        if not isinstance(overrides, list):
            raise ValueError("not a list of overrides")
        _parse([str(o) for o in overrides])
    except Exception as e:  # noqa: BLE001 - unreadable, not YAML, not overrides: the same problem for the user
        raise UserError(f"the run's record {path} cannot be read ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:120] if str(e) else ''}): restore it, or resume from the "
                        "checkpoint into a new run directory with resume=PATH and the run's settings.") from None
    return [str(o) for o in overrides]


def _checkpoint_run_dir(ckpt: Path) -> Path:
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def prepare(argv: list[str]) -> Start:
    """This start's command line: the run's recorded overrides first when resuming, its own record folder."""
    from hydra._internal.utils import get_args_parser

    args, _ = get_args_parser().parse_known_args(argv)
    given = list(args.overrides or [])
    if args.multirun or not given:  # a sweep's jobs each have their own directory (and record)
        return Start(argv)
    rest, pending = [], list(given)
    for a in argv:  # the flags (--cfg job, -c, ...) stay as they were; the overrides are rebuilt below
        if pending and a == pending[0]:
            pending.pop(0)
        else:
            rest.append(a)
    start = Start(argv)
    resume, run_dir = _value(given, "resume"), _value(given, "hydra.run.dir")
    run_dir = Path(run_dir).expanduser() if run_dir and "${" not in run_dir else None
    start.existed = run_dir is not None and run_dir.exists()
    found = None
    if resume not in (None, "null", "None"):
        from gantrain import checkpoint

        ckpt = checkpoint.find_latest(run_dir) if resume == "auto" and run_dir else None
        if resume != "auto":
            ckpt = Path(resume).expanduser()
        source = run_dir if resume == "auto" else _checkpoint_run_dir(ckpt)
        history = records(source) if source is not None else []
        if history:
            found = _read_record(history[-1] / "overrides.yaml"), str(history[-1])
        elif ckpt is not None and ckpt.is_file():
            found = _from_checkpoint(ckpt)
    overrides = given
    if found is not None:
        recorded, start.recorded_from = found
        keys = {_key(o) for o in _parse(given)}
        start.recorded = [o.input_line for o in _parse(recorded) if _key(o) not in keys and not o.is_hydra_override()]
        start.on_top = [o for o in given if not o.startswith("hydra.")]
        overrides = [*start.recorded, *given]
    if run_dir is not None and records(run_dir) and _value(given, "hydra.output_subdir") is None:
        subdir = _next_record(run_dir, resume not in (None, "null", "None"))
        overrides = [*overrides, f"hydra.output_subdir={subdir}"]
        start.record_dir = run_dir / subdir
    start.argv = [*rest, *overrides]
    return start


def task_overrides() -> list[str]:
    """The overrides this Hydra job was composed with (saved in checkpoints); [] outside a Hydra job."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return [str(o) for o in HydraConfig.get().overrides.task]


def forget(record_dir: Path | None) -> None:
    """Remove this start's own record when it failed before training: the run's history stays as it was."""
    if record_dir is not None and record_dir.is_dir():
        shutil.rmtree(record_dir, ignore_errors=True)


# ------------------------------------------------------------------------------------ the end of a run
# what a start writes into a run directory before training: Hydra's record and log, the run-directory lock
MADE_BY_A_START = (".hydra", "gantrain.log", LOCK_NAME)


def tidy_failed_start(run_dir: Path, start: Start | None) -> str:
    """After a start that failed before training wrote anything: remove what it made (its own record in an
    earlier run's directory, or the whole new run directory); a sentence saying what is left."""
    run_dir = Path(run_dir)
    if start is not None and start.record_dir is not None:  # an earlier start's directory: keep its history
        forget(start.record_dir)
        return f"the run directory {shown(run_dir)} is as it was before this start"
    if not run_dir.is_dir():
        return "no run directory was made"
    if any(p.name not in MADE_BY_A_START for p in run_dir.iterdir()):
        return f"the run directory {shown(run_dir)} is left (it holds more than this start's record)"
    if start is not None and start.existed:  # the user's own (empty) folder: only what this start added
        for p in run_dir.iterdir():
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        return f"nothing was left in {shown(run_dir)}"
    shutil.rmtree(run_dir, ignore_errors=True)
    parent = run_dir.parent  # outputs/<date>/ of Hydra's default run directory, when it is now empty
    if parent != Path.cwd() and parent.name not in ("outputs", "multirun") and not any(parent.iterdir()):
        parent.rmdir()
    return f"no run directory was left ({shown(run_dir)} removed: nothing had been written)"


def shown(path: str | Path) -> str:
    """``path`` relative to the working directory when it is below it (as a user would type it), else absolute."""
    import shlex

    path = Path(path).absolute()
    try:
        path = path.relative_to(Path.cwd())
    except ValueError:
        pass
    return shlex.quote(str(path))


def trained(run_dir: Path, start: Start | None) -> bool:
    """Whether this start wrote a checkpoint or TensorBoard events (training had begun) into ``run_dir``."""
    since = start.at if start is not None else 0.0
    files = [*run_dir.glob("checkpoints/*.pt"), *run_dir.glob("events.out.tfevents.*")]
    return any(f.stat().st_mtime >= since for f in files if f.is_file())


def summary(run_dir: str | Path, finished: bool = True) -> str:
    """The block printed as a run ends: where it went, how to look at it, how to go on."""
    run_dir = Path(run_dir)
    last = run_dir / "checkpoints" / "last.pt"
    lines = [f"run directory: {shown(run_dir)}"]
    lines.append(f"checkpoint:    {shown(last)}" if last.is_file() else "checkpoint:    none written")
    lines.append(f"TensorBoard:   tensorboard --logdir {shown(run_dir)}")
    if last.is_file():
        lines.append(f"samples:       gantrain-generate {shown(last)} -n 64 -o {shown(run_dir / 'samples.png')}")
    if last.is_file() and not finished:
        lines.append(f"continue:      gantrain resume=auto hydra.run.dir={shown(run_dir)}")
    return "\n".join(lines)


def sweep_summary(sweep_dir: str | Path, finished: int) -> str:
    """The line a sweep ends with (once, not per job)."""
    sweep_dir = Path(sweep_dir)
    if not finished:
        return f"gantrain: no job of the sweep finished; {shown(sweep_dir)} holds what they left."
    return "\n".join([f"sweep directory: {shown(sweep_dir)} ({finished} job(s) finished, one run directory each)",
                      f"TensorBoard:     tensorboard --logdir {shown(sweep_dir)}",
                      f"samples:         gantrain-generate {shown(sweep_dir)}/<job>/checkpoints/last.pt -n 64 "
                      "-o samples.png"])
