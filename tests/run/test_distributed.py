"""Two CPU processes under torchrun (gloo): one writer for shared files, per-rank RNG files,
a SIGKILL of the whole job then a relaunch ends identical to an uninterrupted 2-process run,
and a 2-process checkpoint resumes in 1 process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from voicetrain.checkpoint.store import CheckpointStore, verify
from voicetrain.run.lock import RunLock, RunLockedError

from helpers import QUICK, environment, output_of

SMALL = [*QUICK, "task.hidden_channels=32", "trainer.val_every=6", "trainer.log_every=2"]


def torchrun(root: Path, cache: Path, name: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
            str(29500 + os.getpid() % 1000), "-m", "voicetrain", f"run.root={root}", f"run.name={name}",
            f"data.cache_dir={cache}", *SMALL, *extra]


def run(arguments: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(arguments, cwd=cwd, env=environment(), capture_output=True, text=True, timeout=600)


def final_weights(run_dir: Path, step: int) -> dict:
    return load_file(str(run_dir / "checkpoints" / f"step_{step:08d}" / "modules" / "model.safetensors"))


def wait_until_released(run_dir: Path, timeout: float = 60) -> None:
    """Until the run lock is free: a SIGKILLed worker holds it until the kernel has torn it down,
    which can outlast the launcher's own exit (a worker inside fsync dies when that returns)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            RunLock(run_dir).acquire().release()
            return
        except RunLockedError:
            assert time.monotonic() < deadline, "the killed job still holds its run lock"
            time.sleep(0.1)


@pytest.mark.slow
def test_two_processes_one_writer_and_kill_resume_is_exact(tmp_path: Path, bundled_cache: Path) -> None:
    steps = ["trainer.max_steps=24", "ckpt.every_n_steps=4"]
    reference = run(torchrun(tmp_path, bundled_cache, "reference", *steps), tmp_path)
    assert reference.returncode == 0, output_of(reference)
    run_dir = tmp_path / "reference"
    output = reference.stdout + reference.stderr
    assert "cpu x2" in output and "effective batch 16" in output
    assert output.count("summary") == 1, "only the main process prints the summary"
    checkpoint = CheckpointStore(run_dir / "checkpoints").newest()
    assert checkpoint is not None and checkpoint.step == 24 and verify(checkpoint) == []
    assert {path.name for path in (checkpoint.path / "rng").glob("*.json")} == {"rank0.json", "rank1.json"}
    assert not list(checkpoint.path.rglob("*.pkl")), "a pickle in a checkpoint"
    assert checkpoint.manifest["world_size"] == 2
    assert (run_dir / "export" / "model.safetensors").is_file()
    assert (run_dir / "train.log").is_file() and (run_dir / "train.rank1.log").is_file()
    assert "validation at step" not in (run_dir / "train.rank1.log").read_text(), "rank 1 must not validate"
    assert len(list((run_dir / "tb").glob("events.out.tfevents.*"))) == 1, "one TensorBoard writer"

    # SIGKILL the whole job (launcher and both workers) after its second checkpoint, relaunch.
    crashed = tmp_path / "crashed"
    process = subprocess.Popen(torchrun(tmp_path, bundled_cache, "crashed", *steps), cwd=tmp_path, env=environment(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 1200  # a hang guard: a loaded machine is slow, not wrong
    try:
        while not any(item.step >= 8 for item in CheckpointStore(crashed / "checkpoints").list()):
            assert process.poll() is None and time.monotonic() < deadline, "no checkpoint before the kill"
            time.sleep(0.05)
    finally:  # on a failed assertion too: never leave the job running
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    wait_until_released(crashed)
    relaunched = run(torchrun(tmp_path, bundled_cache, "crashed", *steps), tmp_path)
    assert relaunched.returncode == 0, output_of(relaunched)
    assert "resuming from step" in relaunched.stdout + relaunched.stderr
    expected, actual = final_weights(run_dir, 24), final_weights(crashed, 24)
    for key in expected:
        assert expected[key].equal(actual[key]), f"{key} differs after a 2-process kill and resume"

    # The same checkpoints continue in one process: weights and optimizer load, data re-derived.
    single = subprocess.run([sys.executable, "-m", "voicetrain", f"run.root={tmp_path}", "run.name=reference",
                             f"data.cache_dir={bundled_cache}", *SMALL, "trainer.max_steps=28",
                             "ckpt.every_n_steps=4"], cwd=tmp_path, env=environment(), capture_output=True,
                            text=True, timeout=600)
    assert single.returncode == 0, output_of(single)
    assert "resuming from step 24" in single.stdout + single.stderr
    assert CheckpointStore(run_dir / "checkpoints").newest().step == 28


@pytest.mark.slow
def test_two_processes_with_scratch_mirror_from_the_main_process(tmp_path: Path, bundled_cache: Path) -> None:
    scratch = Path("/dev/shm") / f"voicetrain-test-ddp-{tmp_path.name}"
    if not scratch.parent.is_dir():
        pytest.skip("no /dev/shm on this machine")
    try:
        result = run(torchrun(tmp_path, bundled_cache, "scratch", "trainer.max_steps=8", "ckpt.every_n_steps=2",
                              f"scratch.dir={scratch}", "scratch.persist_every=2"), tmp_path)
        assert result.returncode == 0, output_of(result)
        text = result.stdout + result.stderr
        assert text.count("mirrored step_00000008") == 1, "exactly one process mirrors"
        checkpoints = CheckpointStore(tmp_path / "scratch" / "checkpoints").list()
        assert [item.step for item in checkpoints] == [4, 8]
        for checkpoint in checkpoints:
            assert verify(checkpoint) == []
            assert (checkpoint.path / "rng" / "rank1.json").is_file(), "rank 1's RNG state reached the run directory"
        assert not scratch.exists(), "the main process removes scratch after a successful end"
    finally:
        import shutil

        shutil.rmtree(scratch, ignore_errors=True)
