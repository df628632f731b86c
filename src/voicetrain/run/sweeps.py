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
import math
import sys
import time
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

from voicetrain.checkpoint.store import CheckpointStore
from voicetrain.paths import RunPaths

log = logging.getLogger("voicetrain")
OUTCOME_FILE = "sweep_job.json"
# Sweepers that search (Optuna) take each job's return value as the objective to optimise.
OPTIMISING_SWEEPERS = ("optuna",)


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


def optimising() -> bool:
    """In a sweep whose sweeper searches the space (hydra/sweeper=optuna): each job returns its objective."""
    if not in_sweep():
        return False
    target = str(HydraConfig.get().sweeper.get("_target_", "")).lower()
    return any(name in target for name in OPTIMISING_SWEEPERS)


def objective_of(metrics: dict[str, float], monitor: str, run_dir: Path) -> float:
    """The value a searching sweeper optimises: the run's final `ckpt.monitor` (its newest checkpoint's
    validation metric), NaN (a failed trial, to Optuna) with a logged reason when there is none."""
    value = metrics.get(monitor)
    if value is None or not math.isfinite(float(value)):
        known = ", ".join(sorted(metrics)) or "none: the last step was not validated (trainer.validate_at_end)"
        log.error("%s: its newest checkpoint has no finite %s (ckpt.monitor), so the sweeper gets no objective; "
                  "its metrics: %s. Set ckpt.monitor to one of them", run_dir, monitor, known)
        return math.nan
    return float(value)


def final_objective(config: DictConfig) -> float:
    """`objective_of` the job's run (run.root/run.name, as name_run_after_job set them)."""
    run_dir = Path(str(config.run.root)) / str(config.run.name)
    newest = CheckpointStore(RunPaths(run_dir).checkpoints).newest()
    return objective_of(newest.metrics if newest is not None else {}, str(config.ckpt.monitor), run_dir)


def job_outcome(job_return: JobReturn) -> tuple[bool, str]:
    """(completed, error) of one Hydra job. The one place that reads JobReturn's private
    `_return_value`: the public `return_value` of a failed job re-raises its exception, and the
    job's exit status (our function's return value) is needed either way. tests/run/test_sweeps.py
    pins this down so that a Hydra upgrade that changes it fails loudly."""
    value = job_return._return_value
    if job_return.status != JobStatus.COMPLETED:
        return False, f"{type(value).__name__}: {value}"
    if isinstance(value, float):  # a searching sweeper's objective; NaN when the run failed
        return (False, "the run failed or reported no ckpt.monitor value") if math.isnan(value) else (True, "")
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
