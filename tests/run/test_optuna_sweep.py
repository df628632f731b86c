"""Optuna searches (hparams_search=vc_optuna, hydra-optuna-sweeper): each trial is a run whose objective is
its final ckpt.monitor, read from its newest checkpoint; the study reports the best trial; the same command
launched again asks the same trials and retrains none of the finished ones."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra.core.utils import JobReturn, JobStatus

from voicetrain.checkpoint.store import CheckpointStore
from voicetrain.run.sweeps import job_outcome, objective_of

from helpers import QUICK, environment, output_of

TINY_TRIALS = [*QUICK, "trainer.max_steps=2", "trainer.val_every=2", "ckpt.every_n_steps=2", "trainer.audio_previews=0",
               "task.validation_pairs=2", "export.enabled=false", "hydra.sweeper.n_trials=2",
               "task.hidden_channels=choice(32,48)",
               # Each trial's folder is named by its overrides; leave the fixed tiny settings out of the name
               # (a folder name has at most 255 bytes).
               "hydra.job.config.override_dirname.exclude_keys=[run.name,run.root,data.cache_dir,hparams_search,"
               "trainer.max_steps,trainer.progress,trainer.batch_size,trainer.val_every,ckpt.every_n_steps,"
               "trainer.audio_previews,task.validation_pairs,export.enabled]"]


def test_the_objective_is_the_final_monitored_metric_and_nan_without_one(tmp_path: Path) -> None:
    assert objective_of({"val/mcd": 7.5, "val/wer": 0.2}, "val/mcd", tmp_path) == 7.5
    assert math.isnan(objective_of({"val/wer": 0.2}, "val/mcd", tmp_path))
    assert math.isnan(objective_of({"val/mcd": float("inf")}, "val/mcd", tmp_path))


def test_a_searching_sweepers_objective_counts_as_a_completed_job() -> None:
    def returned(value: object) -> JobReturn:
        job = JobReturn()
        job.status, job._return_value = JobStatus.COMPLETED, value
        return job

    assert job_outcome(returned(7.5)) == (True, "")
    assert job_outcome(returned(math.nan))[0] is False
    assert job_outcome(returned(0)) == (True, "") and job_outcome(returned(2))[0] is False


def search(root: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "voicetrain", "-m", "hparams_search=vc_optuna", f"run.root={root}",
                           "run.name=search", f"data.cache_dir={cache}", *TINY_TRIALS], cwd=root, env=environment(),
                          capture_output=True, text=True, timeout=900)


@pytest.mark.slow  # two tiny trainings, then the same search again
def test_a_two_trial_search_reports_its_best_trial_and_a_relaunch_retrains_nothing(tmp_path: Path,
                                                                                  bundled_cache: Path) -> None:
    first = search(tmp_path, bundled_cache)
    assert first.returncode == 0, output_of(first)
    sweep = tmp_path / "sweeps" / "search"
    trials = sorted(path for path in sweep.iterdir() if path.is_dir())
    assert len(trials) == 2, trials
    finals = {trial: CheckpointStore(trial / "checkpoints").newest() for trial in trials}
    values = {trial: checkpoint.metrics["val/mcd"] for trial, checkpoint in finals.items()}
    report = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    best_trial = min(values, key=values.get)
    assert report["best_value"] == pytest.approx(values[best_trial])
    assert f"task.hidden_channels={report['best_params']['task.hidden_channels']}" in best_trial.name
    assert "sweep finished: 2 job(s) completed, 0 failed" in first.stdout + first.stderr

    again = search(tmp_path, bundled_cache)
    assert again.returncode == 0, output_of(again)
    assert (again.stdout + again.stderr).count("already finished at step 2; nothing to do") == 2, output_of(again)
    assert sorted(path for path in sweep.iterdir() if path.is_dir()) == trials
    assert {trial: CheckpointStore(trial / "checkpoints").newest().path for trial in trials} == \
        {trial: checkpoint.path for trial, checkpoint in finals.items()}
    assert yaml.safe_load((sweep / "optimization_results.yaml").read_text()) == report
