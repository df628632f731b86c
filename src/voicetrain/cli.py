"""The Hydra entry point of `python -m voicetrain`: compose, validate, train, summarise."""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from voicetrain.audio import AudioReadError
from voicetrain.config import ConfigError, validate
from voicetrain.data.readers import DataError

log = logging.getLogger("voicetrain")

# Errors the user can fix from the message alone: shown without a traceback, exit status 2.
USER_ERRORS = (ConfigError, DataError, AudioReadError)


def settings_from(config: DictConfig):
    plain = OmegaConf.to_container(config, resolve=True, throw_on_missing=False)
    return validate(plain)


def run(config: DictConfig) -> int:
    """Trains one run; returns the process exit status."""
    try:
        settings = settings_from(config)
        # Imported only after validation so `--help` and config errors stay fast (no torch import).
        from voicetrain.summary import format_summary
        from voicetrain.trainer import Trainer

        summary = Trainer(settings).train()
    except USER_ERRORS as error:
        log.error("%s", error)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    log.info("%s", format_summary(summary))
    return 0


@hydra.main(config_path="pkg://voicetrain.conf", config_name="config", version_base="1.3")
def hydra_entry(config: DictConfig) -> None:
    status = run(config)
    if status:
        sys.exit(status)


def main() -> None:
    hydra_entry()


if __name__ == "__main__":
    main()
