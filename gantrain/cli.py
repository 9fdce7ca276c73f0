"""``gantrain``: Hydra turns the command line into a config; :func:`gantrain.train.train` does the rest."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from gantrain.config import UserError, register

log = logging.getLogger("gantrain")


def config_dir() -> str:
    """The source ``conf/`` when running from a checkout, else the copy packaged as ``gantrain/conf``."""
    here = Path(__file__).resolve().parent
    source = here.parent / "conf"
    return str(source if (source / "config.yaml").is_file() else here / "conf")


register()


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")
def main(cfg: DictConfig) -> float | None:
    from gantrain.train import Interrupted, train  # torch is imported only when a job really runs

    try:
        return train(cfg, HydraConfig.get().runtime.output_dir)
    except UserError as e:
        log.error("%s", e)
        sys.exit(2)
    except Interrupted as e:
        log.error("stopped by signal %d after saving %s; continue with resume=auto hydra.run.dir=%s",
                  e.signum, e.path, HydraConfig.get().runtime.output_dir)
        sys.exit(128 + e.signum)


if __name__ == "__main__":
    main()
