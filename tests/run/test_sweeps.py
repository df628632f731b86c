"""Hydra multirun and preemption: a killed sweep relaunched resumes the unfinished job and skips
the finished one; SIGUSR1 saves and exits; a launcher's own SIGUSR1 handler runs after the save."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from voicetrain.checkpoint.store import CheckpointStore
from voicetrain.run.signals import GracefulStop

from helpers import QUICK, environment, output_of, stop_once_training

SMALL = [*QUICK, "task.hidden_channels=32", "trainer.val_every=1000", "export.enabled=false"]


def sweep(root: Path, cache: Path, steps: int) -> list[str]:
    return [sys.executable, "-m", "voicetrain", "-m", f"run.root={root}", f"data.cache_dir={cache}", *SMALL,
            f"trainer.max_steps={steps}", "ckpt.every_n_steps=5", "optim.lr=0.002,0.001"]


def job_dir(root: Path, learning_rate: str) -> Path:
    """Hydra names each job after its overrides (all but run.root, trainer.max_steps, ...)."""
    name = ",".join(sorted([*(item for item in SMALL if not item.startswith("trainer.progress")),
                            "ckpt.every_n_steps=5", f"optim.lr={learning_rate}"]))
    return root / "sweeps" / "default" / name.replace("false", "False")


def job_dirs(root: Path) -> dict[str, Path]:
    return {"first": job_dir(root, "0.002"), "second": job_dir(root, "0.001")}


def newest_step(run_dir: Path) -> int:
    newest = CheckpointStore(run_dir / "checkpoints").newest()
    return newest.step if newest else 0


@pytest.mark.slow
def test_killed_sweep_resumes_the_unfinished_job_and_skips_the_finished(tmp_path: Path, bundled_cache: Path) -> None:
    jobs = job_dirs(tmp_path)
    process = subprocess.Popen(sweep(tmp_path, bundled_cache, 40), env=environment(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    # A hang guard, not a speed check: generous, since a loaded machine runs the two jobs slowly.
    deadline = time.monotonic() + 1200
    try:
        while not (newest_step(jobs["first"]) == 40 and newest_step(jobs["second"]) >= 10):
            assert process.poll() is None, "the sweep exited before its second job reached step 10"
            assert time.monotonic() < deadline, "the sweep made no progress in 20 minutes"
            time.sleep(0.05)
    finally:  # the kill is the test's fault; on a failed assertion it also stops the sweep it started
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    interrupted_at = newest_step(jobs["second"])
    assert interrupted_at < 40
    finished_files = sorted(path.name for path in (jobs["first"] / "checkpoints").iterdir())

    again = subprocess.run(sweep(tmp_path, bundled_cache, 40), env=environment(), capture_output=True, text=True,
                           timeout=600)
    text = again.stdout + again.stderr
    assert again.returncode == 0, output_of(again)
    assert "already finished at step 40" in text
    assert f"resuming from step {interrupted_at}" in text
    assert newest_step(jobs["second"]) == 40
    assert sorted(path.name for path in (jobs["first"] / "checkpoints").iterdir()) == finished_files
    assert "sweep finished: 2 job(s) completed, 0 failed" in text


@pytest.mark.slow  # long: runs in make test-slow (CI runs both)
def test_a_failing_job_is_listed_and_the_others_still_run(tmp_path: Path, bundled_cache: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "voicetrain", "-m", f"run.root={tmp_path}",
                             f"data.cache_dir={bundled_cache}", *SMALL, "trainer.max_steps=2", "ckpt.every_n_steps=2",
                             "optim.lr=-1,0.001"], env=environment(), capture_output=True, text=True, timeout=600)
    text = result.stdout + result.stderr
    assert result.returncode == 1, output_of(result)
    assert "optim.lr=-1.0: must be greater than 0" in text
    assert "sweep finished: 1 job(s) completed, 1 failed" in text
    assert "optim.lr=-1" in text and f"{tmp_path}/sweeps/default/" in text
    completed = [path for path in (tmp_path / "sweeps" / "default").iterdir() if "optim.lr=0.001" in path.name]
    assert len(completed) == 1 and newest_step(completed[0]) == 2


@pytest.mark.slow  # long: runs in make test-slow (CI runs both)
def test_sigusr1_saves_and_exits(tmp_path: Path, bundled_cache: Path) -> None:
    process = subprocess.Popen([sys.executable, "-m", "voicetrain", f"run.root={tmp_path}",
                                f"data.cache_dir={bundled_cache}", *SMALL, "trainer.max_steps=100000",
                                "ckpt.every_n_steps=100000"], env=environment(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    output = stop_once_training(process, tmp_path / "default" / "train.log", signal.SIGUSR1)
    assert process.returncode == 128 + signal.SIGUSR1, output
    assert "stopped by SIGUSR1 after saving step" in output
    assert newest_step(tmp_path / "default") > 0


def test_a_launchers_sigusr1_handler_runs_after_the_stop() -> None:
    calls = []
    previous = signal.signal(signal.SIGUSR1, lambda number, frame: calls.append(number))
    try:
        with GracefulStop() as stop:
            signal.raise_signal(signal.SIGUSR1)
            assert stop.received == signal.SIGUSR1
            assert calls == [], "the launcher's handler must wait until the state is saved"
        assert calls == [signal.SIGUSR1]
    finally:
        signal.signal(signal.SIGUSR1, previous)


@pytest.mark.slow
def test_submitit_requeues_a_preempted_job_which_resumes(tmp_path: Path, bundled_cache: Path) -> None:
    """Preemption under Hydra's submitit launcher, with submitit's local executor standing in for
    SLURM: its preemption signal (SIGUSR2) makes voicetrain save, submitit requeues the job, and
    the requeued job resumes from that checkpoint."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    process = subprocess.Popen([sys.executable, "-m", "voicetrain", "-m", "hydra/launcher=submitit_local",
                                f"run.root={tmp_path}", f"data.cache_dir={bundled_cache}", *SMALL,
                                "trainer.max_steps=600", "ckpt.every_n_steps=100000", "optim.lr=0.001"],
                               env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 1200  # a hang guard: a loaded machine is slow, not wrong
    logs = []
    while not any("first step of this launch done" in log.read_text() for log in logs):
        if process.poll() is not None or time.monotonic() >= deadline:
            process.kill()
            pytest.fail(f"the job did not reach its first step:\n{process.communicate()[0]}")
        time.sleep(0.1)
        logs = list((tmp_path / "sweeps" / "default").glob("*/train.log"))
    time.sleep(0.5)
    job = subprocess.run(["pgrep", "-f", f"submitit.core._submit {tmp_path}"], capture_output=True, text=True)
    assert job.stdout.split(), "the submitit job process was not found"
    os.kill(int(job.stdout.split()[0]), signal.SIGUSR2)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    text = logs[0].read_text()
    assert "this job is preempted" in text and "Requeued job" in text
    resumed = [line for line in text.splitlines() if "resuming from step" in line]
    assert resumed and int(resumed[0].rsplit(" ", 1)[-1]) > 0
    assert newest_step(logs[0].parent) == 600


def test_job_outcome_reads_hydra_job_returns() -> None:
    """The one adapter over Hydra's private JobReturn._return_value: if a Hydra release changes
    how a job's result or exception is kept, this fails rather than every sweep report lying."""
    from hydra.core.utils import JobReturn, JobStatus

    from voicetrain.run.sweeps import job_outcome

    assert job_outcome(JobReturn(status=JobStatus.COMPLETED, _return_value=0)) == (True, "")
    assert job_outcome(JobReturn(status=JobStatus.COMPLETED, _return_value=2)) == (False, "exit status 2")
    failed = JobReturn(status=JobStatus.FAILED, _return_value=ValueError("bad value"))
    assert job_outcome(failed) == (False, "ValueError: bad value")
    with pytest.raises(ValueError):
        failed.return_value  # the public accessor re-raises, which is why the adapter exists


@pytest.mark.slow  # long: runs in make test-slow (CI runs both)
def test_the_report_counts_jobs_run_by_a_parallel_launcher(tmp_path: Path, bundled_cache: Path) -> None:
    """hydra/launcher=parallel (joblib) runs jobs in other processes: the report at the end must
    still count them (it once said 0 completed)."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    result = subprocess.run([sys.executable, "-m", "voicetrain", "-m", "hydra/launcher=parallel",
                             f"run.root={tmp_path}", f"data.cache_dir={bundled_cache}", *SMALL, "trainer.max_steps=2",
                             "ckpt.every_n_steps=2", "optim.lr=0.002,0.001"], env=environment(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, output_of(result)
    assert "sweep finished: 2 job(s) completed, 0 failed" in result.stdout + result.stderr, output_of(result)
