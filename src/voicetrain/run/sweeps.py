"""Hydra multirun: each job is a voicetrain run in `<sweep dir>/<its overrides>`, and a report
at the end lists every job that failed with its run directory and error, without hiding the
results of the others.

Launchers such as joblib run jobs in other processes, where `on_job_end` fires; so each job's
outcome is written into its own folder (`sweep_job.json`) and the report at the end reads them
back from the sweep folder, whichever process ran the job.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

log = logging.getLogger("voicetrain")
OUTCOME_FILE = "sweep_job.json"


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


def job_outcome(job_return: JobReturn) -> tuple[bool, str]:
    """(completed, error) of one Hydra job. The one place that reads JobReturn's private
    `_return_value`: the public `return_value` of a failed job re-raises its exception, and the
    job's exit status (our function's return value) is needed either way. tests/run/test_sweeps.py
    pins this down so that a Hydra upgrade that changes it fails loudly."""
    value = job_return._return_value
    if job_return.status != JobStatus.COMPLETED:
        return False, f"{type(value).__name__}: {value}"
    if value:
        return False, f"exit status {value}"
    return True, ""


class SweepReport(Callback):
    def __init__(self) -> None:
        self.started = 0.0

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = time.time()

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if not in_sweep() or job_return.hydra_cfg is None:
            return
        run_dir = Path(str(job_return.hydra_cfg.hydra.runtime.output_dir))
        completed, error = job_outcome(job_return)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / OUTCOME_FILE).write_text(json.dumps({"completed": completed, "error": error}))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        results = []
        for path in sorted(sweep_dir.rglob(OUTCOME_FILE)):
            if path.stat().st_mtime < self.started:
                continue  # a job of an earlier sweep in the same folder
            outcome = json.loads(path.read_text())
            results.append(("completed" if outcome["completed"] else "failed", str(path.parent), outcome["error"]))
        failed = [result for result in results if result[0] == "failed"]
        log.info("sweep finished: %d job(s) completed, %d failed", len(results) - len(failed), len(failed))
        for status, run_dir, error in results:
            log.info("  %-9s %s%s", status, run_dir, f"  ({error}; see {run_dir}/train.log)" if error else "")
        if failed:
            sys.exit(1)
