"""One launch of `python -m voicetrain`, from a composed config to an exit status.

Validates the settings, takes the run lock before anything is written into the run folder (the
record of the composed config and train.log included, which is why Hydra itself writes neither),
trains, prints the summary, and turns every expected failure into one clear message and an exit
status: 2 for a problem with what the user gave, 1 for the machine's (a full or read-only disk,
a failed save or export, a loss that became NaN), 128 + N after signal N saved and stopped the run.
"""

from __future__ import annotations

import errno
import logging
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from voicetrain.audio_files import AudioReadError
from voicetrain.checkpoint.finetune import FinetuneError
from voicetrain.checkpoint.resume import ResumeError
from voicetrain.checkpoint.scratch import ScratchError
from voicetrain.checkpoint.store import CheckpointError
from voicetrain.config import ConfigError, Settings, validate
from voicetrain.data.readers import DataError
from voicetrain.distributed import process_rank
from voicetrain.export.artifact import ExportError
from voicetrain.features.folder import FeatureError
from voicetrain.paths import RunPaths
from voicetrain.run.lock import RunLock, RunLockedError
from voicetrain.run.signals import StopRequested
from voicetrain.run.summary import format_summary
from voicetrain.run.trainer import NonFiniteLoss, Trainer

log = logging.getLogger("voicetrain")

# Errors the user can fix from the message alone: shown without a traceback, exit status 2.
USER_ERRORS = (ConfigError, DataError, FeatureError, AudioReadError, ResumeError, FinetuneError, ScratchError,
               RunLockedError)
# Failures of the run or the machine (a full disk, a failed verification, a diverged loss): exit status 1.
RUN_ERRORS = (CheckpointError, ExportError, NonFiniteLoss)
MACHINE_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EROFS: "the filesystem is read-only",
                  errno.EACCES: "permission denied", errno.EPERM: "permission denied",
                  errno.EDQUOT: "the disk quota is exhausted"}
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


def settings_from(config: DictConfig) -> Settings:
    plain = OmegaConf.to_container(config, resolve=True, throw_on_missing=False)
    return validate(plain)


def task_overrides() -> list[str] | None:
    """The command line's overrides, as Hydra parsed them (None outside a Hydra launch)."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else None


def write_hydra_record(config: DictConfig, run_dir: Path) -> None:
    """What Hydra's output_subdir would hold (composed config, Hydra's config, the overrides),
    written by the launch that owns the run, so a refused second launch changes nothing."""
    if not HydraConfig.initialized():
        return
    folder = RunPaths(run_dir).hydra_record
    folder.mkdir(parents=True, exist_ok=True)
    hydra_config = HydraConfig.get()
    OmegaConf.save(config, folder / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": hydra_config}), folder / "hydra.yaml")
    OmegaConf.save(hydra_config.overrides.task, folder / "overrides.yaml")


def attach_log_file(run_dir: Path, rank: int) -> logging.Handler:
    """train.log (train.rank<N>.log on other ranks), appended so a resumed run keeps every launch."""
    name = "train.log" if rank == 0 else f"train.rank{rank}.log"
    handler = logging.FileHandler(run_dir / name, mode="a")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.getLogger().addHandler(handler)
    return handler


def explain_os_error(error: OSError) -> str:
    what = MACHINE_ERRNOS.get(error.errno or 0, error.strerror or str(error))
    where = f" at {error.filename}" if error.filename else ""
    fix = ("free space there" if error.errno in (errno.ENOSPC, errno.EDQUOT)
           else "point run.root (or the path named) at a writable folder")
    return f"{what}{where}; {fix}, then run the same command again"


def launch(config: DictConfig) -> int:
    """Trains one run; returns the process exit status."""
    rank = process_rank()
    lock, handler = None, None
    try:
        settings = settings_from(config)
        if rank == 0:
            lock = RunLock(settings.run_dir).acquire()
            write_hydra_record(config, settings.run_dir)
        settings.run_dir.mkdir(parents=True, exist_ok=True)
        handler = attach_log_file(settings.run_dir, rank)
        summary = Trainer(settings, task_overrides(), lock).train()
    except USER_ERRORS as error:
        log.error("%s", error)
        return 2
    except RUN_ERRORS as error:
        log.error("%s", error)
        return 1
    except OSError as error:
        if error.errno not in MACHINE_ERRNOS:
            raise
        log.error("%s", explain_os_error(error))
        return 1
    except StopRequested as stop:
        log.warning("%s", stop)
        return 128 + stop.signal_number
    finally:
        if lock is not None:
            lock.release()
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()
    log.info("%s", format_summary(summary))
    return 0
