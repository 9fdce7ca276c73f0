"""``gantrain``: Hydra turns the command line into a config; :func:`gantrain.training.loop.train` does the rest."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from gantrain import files
from gantrain.config import register, unknown_key
from gantrain.errors import UserError

log = logging.getLogger("gantrain")
_job_started = False  # set when Hydra hands a composed config to the task (errors before that are setup errors)


def config_dir() -> str:
    """The source ``conf/`` when running from a checkout, else the copy packaged as ``gantrain/conf``."""
    here = Path(__file__).resolve().parent
    source = here.parent / "conf"
    return str(source if (source / "config.yaml").is_file() else here / "conf")


register()


def compose(overrides: list[str]) -> DictConfig:
    """The job config ``gantrain OVERRIDES`` would train with, composed without a run (scripts and tests)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides))


def check_writable(run_dir: str | os.PathLike) -> None:
    """Refuse, in one sentence, a run directory (or its ``checkpoints/``) that cannot be written."""
    for d in (Path(run_dir), Path(run_dir) / "checkpoints"):
        if d.name == "checkpoints" and not d.exists():
            continue
        try:
            files.probe_writable(d)
        except OSError as e:
            raise UserError(f"the run directory {d} is not writable ({e.strerror or e}): "
                            "choose another with hydra.run.dir=PATH (hydra.sweep.dir=PATH with -m).") from None


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")
def _hydra_main(cfg: DictConfig) -> float | None:
    global _job_started
    _job_started = True
    from hydra.types import RunMode
    from tqdm.contrib.logging import logging_redirect_tqdm

    from gantrain.distributed import env, launch  # torch is imported only when a job really runs
    from gantrain.errors import Interrupted
    from gantrain.training.loop import train

    hc = HydraConfig.get()
    out_dir = hc.runtime.output_dir
    in_sweep = hc.mode == RunMode.MULTIRUN
    first_rank = env.env_rank() == 0  # ranks > 0 of torchrun/SLURM have no run directory of their own
    if in_sweep:
        _sweep.setdefault("finished", 0)
        _sweep["dir"] = str(hc.sweep.dir)
    if _start is not None and first_rank:
        _start.describe()
    try:
        check_writable(out_dir)
        with logging_redirect_tqdm():  # log lines print above the progress bars (data decoding, the loop)
            result = launch.run(train, cfg, out_dir)  # one process, or trainer.devices / torchrun / SLURM ranks
    except UserError as e:
        log.error("%s", e)
        if first_rank:
            _ending(out_dir, finished=False)
        sys.exit(2)
    except Interrupted as e:
        if e.path is not None:  # rank 0 saved; other ranks of a multi-process job have nothing to add
            log.info("stopped by %s after saving %s", signal_name(e.signum), e.path)
            _ending(out_dir, finished=False)
        sys.exit(128 + e.signum)
    except BaseException:
        if first_rank:
            _ending(out_dir, finished=False)
        raise
    if first_rank and not in_sweep:
        _ending(out_dir, finished=True)
    if in_sweep:
        _sweep["finished"] += 1
    return result


def signal_name(signum: int) -> str:
    """``Ctrl-C (SIGINT)`` or ``SIGTERM``: how a stop signal is named to the user."""
    import signal

    name = signal.Signals(signum).name
    return "Ctrl-C (SIGINT)" if name == "SIGINT" else name


def _ending(out_dir: str, finished: bool) -> None:
    """The run's closing block; a start that failed before writing anything leaves no run directory."""
    from gantrain import runs

    try:
        if not finished and not runs.trained(Path(out_dir), _start):
            print(f"gantrain: {runs.tidy_failed_start(Path(out_dir), _start)}.", flush=True)
            return
        print(runs.summary(out_dir, finished), flush=True)
    except OSError:  # a run directory that cannot be read or changed: the error above has said so
        pass


_start = None   # gantrain.runs.Start: this start's command line as main() rebuilt it
_sweep: dict = {}  # a multirun's directory and job count, for its closing line


def main() -> None:
    """The ``gantrain`` console script: Hydra's entry, with Hydra's compose errors said in one sentence.

    Hydra prints a bad override as several lines and exits 1; here it raises instead
    (``HYDRA_FULL_ERROR=1`` for the call), and :func:`explain` turns the error into one sentence with
    the fix, exit 2, like every other :class:`UserError`. Set ``HYDRA_FULL_ERROR=1`` yourself to see
    Hydra's full traceback instead. A resume composes with the run's recorded overrides first
    (:func:`gantrain.runs.prepare`).
    """
    global _start
    from gantrain import runs

    user_full_error = os.environ.get("HYDRA_FULL_ERROR")
    try:
        _start = runs.prepare(sys.argv[1:])
    except UserError as e:  # the run's record cannot be read
        print(f"gantrain: error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except Exception as e:  # an override Hydra cannot read: Hydra itself says so below, in one sentence
        if explain(e) is None:
            raise
    else:
        sys.argv = [sys.argv[0], *_start.argv]
    if "WORLD_SIZE" in os.environ or "SLURM_PROCID" in os.environ:  # a rank of torchrun / srun
        from gantrain.distributed.env import env_rank, worker_overrides

        try:
            sys.argv += worker_overrides(sys.argv[1:])  # ranks > 0: no run directory, no .hydra/, no log file
        except UserError as e:
            print(f"gantrain: error: {e}", file=sys.stderr, flush=True)
            sys.exit(2)
        if env_rank() > 0 and _start is not None:
            _start.record_dir = None  # rank 0's record, not this rank's to remove
    os.environ["HYDRA_FULL_ERROR"] = "1"
    ctrl_c = _note_ctrl_c()
    try:
        _hydra_main()
    except KeyboardInterrupt:  # Ctrl-C outside the training loop (decoding a folder, ...): no traceback
        from gantrain.interrupts import stopped

        stopped("gantrain")
    except Exception as e:  # anything not explained is re-raised with its traceback
        if ctrl_c and not isinstance(e, UserError):  # a Ctrl-C that a library's clean-up turned into another
            from gantrain.interrupts import stopped  # error (seen: omegaconf's, mid-composition)

            stopped("gantrain")
        message = None if user_full_error == "1" else explain(e, job_started=_job_started)
        if message is None:
            raise
        print(f"gantrain: error: {message}", file=sys.stderr, flush=True)
        sys.exit(2)
    finally:
        if user_full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = user_full_error
        if _sweep:
            print(runs.sweep_summary(_sweep["dir"], _sweep["finished"]), flush=True)


def _note_ctrl_c() -> list:
    """Python's Ctrl-C handler, which also notes that it ran (in the returned list): the training loop installs
    its own; before it, a KeyboardInterrupt raised inside a library can come out as another exception."""
    seen: list = []
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        def handler(signum, frame):
            seen.append(signum)
            raise KeyboardInterrupt

        signal.signal(signal.SIGINT, handler)
    return seen


# ------------------------------------------------------------------------ Hydra errors in one sentence
_TYPE_NAMES = {"Integer": "a whole number", "Float": "a number", "bool": "true or false", "str": "a string"}


def explain(e: BaseException, job_started: bool = False) -> str | None:
    """One sentence (with the fix) for a config or run-directory error raised by Hydra; None for others."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

    if isinstance(e, MissingConfigException) and getattr(e, "options", None) and e.missing_cfg_file:
        group, _, name = str(e.missing_cfg_file).rpartition("/")
        if group:
            options = sorted(e.options)
            return (f"{group}={name} is not an option of the {group} group: choose one of "
                    f"{', '.join(options)} (e.g. {group}={options[0]}).")
    if isinstance(e, OverrideParseException):
        why = _one_line(e.message.split("See https")[0])
        return (f"cannot read the override '{e.override}' ({why}): write key=value, and quote values with "
                "spaces or special characters, e.g. 'data.root=\"my data\"'.")
    cause = e.__cause__
    if isinstance(e, ConfigCompositionException) and isinstance(cause, (ConfigAttributeError, ConfigKeyError)):
        return _unknown_key(cause)
    if isinstance(e, ConfigCompositionException) and isinstance(cause, ValidationError):
        return _wrong_type(cause)
    if isinstance(e, ConfigCompositionException) or (not job_started and isinstance(e, OmegaConfBaseException)):
        return f"the config could not be composed: {_one_line(str(e))} (`gantrain --help` lists the options)."
    if not job_started:  # Hydra could not create the run directory or its log file
        err = e
        while err is not None and not isinstance(err, OSError):
            err = err.__cause__ or err.__context__
        if isinstance(err, OSError) and err.filename:
            return (f"cannot write {err.filename} ({err.strerror or err}): choose a writable run directory with "
                    "hydra.run.dir=PATH (hydra.sweep.dir=PATH with -m).")
    return None


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in str(text).strip().splitlines() if line.strip()).rstrip(".")


def _keys_of(node_type) -> list[str]:
    if dataclasses.is_dataclass(node_type):
        return [f.name for f in dataclasses.fields(node_type)]
    return []


def _unknown_key(cause) -> str:
    keys = _keys_of(cause.object_type)
    if not keys and cause.__dict__.get("parent_node") is not None:
        keys = [str(k) for k in cause.parent_node]
    return unknown_key(str(cause.full_key), keys)


def _wrong_type(cause) -> str:
    first = str(cause.msg).splitlines()[0] if cause.msg else str(cause)
    kind = next((name for word, name in _TYPE_NAMES.items() if f"to {word}" in first or f"valid {word}" in first),
                None)
    example = ""
    for f in dataclasses.fields(cause.object_type) if dataclasses.is_dataclass(cause.object_type) else ():
        if f.name == cause.key and isinstance(f.default, (bool, int, float, str)):
            example = f" (e.g. {cause.full_key}={str(f.default).lower() if isinstance(f.default, bool) else f.default})"
    what = f"it must be {kind}" if kind else _one_line(first)
    return f"{cause.full_key}={cause.value} has the wrong type: {what}{example}."


if __name__ == "__main__":
    main()
