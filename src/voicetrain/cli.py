"""The Hydra entry point of `python -m voicetrain`: compose, validate, train, summarise."""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from voicetrain.audio import AudioReadError
from voicetrain.checkpoint.store import CheckpointError
from voicetrain.config import ConfigError, validate
from voicetrain.data.readers import DataError
from voicetrain.distributed import process_rank
from voicetrain.export.artifact import ExportError
from voicetrain.features.store import FeatureError
from voicetrain.checkpoint.finetune import FinetuneError
from voicetrain.checkpoint.resume import ResumeError
from voicetrain.checkpoint.scratch import ScratchError
from voicetrain.run.signals import StopRequested
from voicetrain.run.sweeps import in_sweep, name_run_after_job

log = logging.getLogger("voicetrain")

# Errors the user can fix from the message alone: shown without a traceback, exit status 2.
USER_ERRORS = (ConfigError, DataError, FeatureError, AudioReadError, ResumeError, FinetuneError, ScratchError)
# Failures while saving or exporting (a full disk, a failed verification): exit status 1.
RUN_ERRORS = (CheckpointError, ExportError)


def settings_from(config: DictConfig):
    plain = OmegaConf.to_container(config, resolve=True, throw_on_missing=False)
    return validate(plain)


def run(config: DictConfig) -> int:
    """Trains one run; returns the process exit status."""
    try:
        settings = settings_from(config)
        # Imported only after validation so `--help` and config errors stay fast (no torch import).
        from voicetrain.run.summary import format_summary
        from voicetrain.run.trainer import Trainer

        summary = Trainer(settings).train()
    except USER_ERRORS as error:
        log.error("%s", error)
        return 2
    except RUN_ERRORS as error:
        log.error("%s", error)
        return 1
    except StopRequested as stop:
        log.warning("%s", stop)
        return 128 + stop.signal_number
    log.info("%s", format_summary(summary))
    return 0


def register_rank_resolvers() -> None:
    """Every rank of a multi-process run runs Hydra; these keep shared files single-writer:
    `.hydra/` and train.log from rank 0 only, `train.rank<N>.log` for the others, and console
    messages below warnings from rank 0 only."""
    rank = process_rank()
    resolvers = {
        "voicetrain_rank_suffix": lambda: "" if rank == 0 else f".rank{rank}",
        "voicetrain_console_level": lambda: "INFO" if rank == 0 else "WARNING",
        "voicetrain_main_only": lambda value: value if rank == 0 else None,
    }
    for name, resolver in resolvers.items():
        OmegaConf.register_new_resolver(name, resolver, replace=True)


register_rank_resolvers()


@hydra.main(config_path="pkg://voicetrain.conf", config_name="config", version_base="1.3")
def hydra_entry(config: DictConfig) -> int:
    name_run_after_job(config)
    status = run(config)
    if in_sweep():
        # Returned, not exited: the sweep goes on and SweepReport lists the failures at its end.
        return status
    if status:
        sys.exit(status)
    return status


def main() -> None:
    hydra_entry()


if __name__ == "__main__":
    main()
