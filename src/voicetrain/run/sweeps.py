"""Hydra multirun: each job is a voicetrain run in `<sweep dir>/<its overrides>`, and a report
at the end lists every job that failed with its run directory and error, without hiding the
results of the others."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

log = logging.getLogger("voicetrain")


def in_sweep() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def name_run_after_job(config: DictConfig) -> None:
    """In a sweep, the job's run directory is Hydra's job directory (sweep dir / overrides), so
    the same sweep launched again finds each job's checkpoints."""
    if not in_sweep():
        return
    job_dir = Path(HydraConfig.get().runtime.output_dir)
    with open_dict(config):
        config.run.root = str(job_dir.parent)
        config.run.name = job_dir.name


class SweepReport(Callback):
    def __init__(self) -> None:
        self.results: list[tuple[str, str, str]] = []  # (status, run directory, error)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if not in_sweep():
            return
        run_dir = Path(str(job_return.hydra_cfg.hydra.runtime.output_dir)) if job_return.hydra_cfg else Path("?")
        if job_return.status != JobStatus.COMPLETED:
            error = job_return._return_value  # an exception Hydra caught; reading return_value would raise it
            self.results.append(("failed", str(run_dir), f"{type(error).__name__}: {error}"))
        elif job_return._return_value:
            self.results.append(("failed", str(run_dir), f"exit status {job_return._return_value}"))
        else:
            self.results.append(("completed", str(run_dir), ""))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        failed = [result for result in self.results if result[0] == "failed"]
        log.info("sweep finished: %d job(s) completed, %d failed", len(self.results) - len(failed), len(failed))
        for status, run_dir, error in self.results:
            log.info("  %-9s %s%s", status, run_dir, f"  ({error}; see {run_dir}/train.log)" if error else "")
        if failed:
            sys.exit(1)
