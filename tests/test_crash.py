"""Crash safety with real signals: SIGKILL at random moments (several of them mid-save) and a
restart with the same command, again and again, must end bit-identical to an uninterrupted run
and must never leave an incomplete checkpoint listed. SIGTERM must save and exit cleanly."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from safetensors.torch import load_file

from voicetrain.checkpoint.store import CheckpointStore, verify

# A small model and frequent saves, so a random kill often lands inside a save.
FAST = [
    "task.hidden_channels=32",
    "trainer.batch_size=8",
    "trainer.max_steps=400",
    "trainer.val_every=1000",
    "trainer.log_every=5",
    "ckpt.every_n_steps=4",
    "ckpt.keep_last=2",
    "export.enabled=false",
    "trainer.progress=false",
]


def command(root: Path, name: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "voicetrain", f"run.root={root}", f"run.name={name}", *FAST, *extra]


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "1"}


def assert_only_complete_checkpoints(checkpoints: Path) -> None:
    store = CheckpointStore(checkpoints)
    listed = store.list()
    committed_names = {checkpoint.path.name for checkpoint in listed}
    for path in checkpoints.glob("step_*"):
        # A folder with the committed name must be complete: the rename happens last.
        assert path.name in committed_names, f"{path} carries a committed name but has no valid manifest"
    for checkpoint in listed:
        assert verify(checkpoint) == [], f"{checkpoint.path} is listed but incomplete"
        load_file(str(checkpoint.path / "model.safetensors"))


def wait_for_training(process: subprocess.Popen, checkpoints: Path, known: set[str], timeout: float = 120) -> bool:
    """Waits until this launch has started saving (a new staging or committed folder appears)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if checkpoints.is_dir():
            current = {path.name for path in checkpoints.iterdir()}
            if current - known:
                return True
        time.sleep(0.01)
    raise AssertionError("the training process made no checkpoint progress in time")


def kill_during_save(process: subprocess.Popen, checkpoints: Path, timeout: float = 60) -> bool:
    """SIGKILLs the process the moment a staging folder exists; False if it exited first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if checkpoints.is_dir() and any(path.name.startswith(".tmp-step") for path in checkpoints.iterdir()):
            process.send_signal(signal.SIGKILL)
            process.wait()
            return True
        time.sleep(0.001)
    return False


def test_sigkill_ten_times_then_resume_is_bit_identical(tmp_path: Path) -> None:
    reference = subprocess.run(command(tmp_path, "reference"), env=environment(), capture_output=True, text=True)
    assert reference.returncode == 0, reference.stdout + reference.stderr

    checkpoints = tmp_path / "crashed" / "checkpoints"
    chooser = random.Random(20261122)
    kills = during_save = 0
    launches = 0
    while kills < 10:
        launches += 1
        assert launches < 40, "the run finished before it could be killed ten times; make it longer"
        known = {path.name for path in checkpoints.iterdir()} if checkpoints.is_dir() else set()
        process = subprocess.Popen(command(tmp_path, "crashed"), env=environment(),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not wait_for_training(process, checkpoints, known):
            break  # it finished: nothing left to kill
        if kills % 2 == 0:
            landed = kill_during_save(process, checkpoints)
            during_save += landed
        else:
            time.sleep(chooser.uniform(0.0, 0.4))
            landed = process.poll() is None
            if landed:
                process.send_signal(signal.SIGKILL)
                process.wait()
        kills += landed
        assert_only_complete_checkpoints(checkpoints)
        if process.poll() is None:
            process.wait()

    assert kills == 10 and during_save >= 3, (kills, during_save)
    final = subprocess.run(command(tmp_path, "crashed"), env=environment(), capture_output=True, text=True)
    assert final.returncode == 0, final.stdout + final.stderr
    assert_only_complete_checkpoints(checkpoints)

    expected_dir = tmp_path / "reference" / "checkpoints" / "step_00000400"
    actual_dir = checkpoints / "step_00000400"
    for name in ("model.safetensors",):
        expected, actual = load_file(str(expected_dir / name)), load_file(str(actual_dir / name))
        assert expected.keys() == actual.keys()
        for key in expected:
            assert expected[key].dtype == actual[key].dtype
            assert expected[key].equal(actual[key]), f"{key} differs after {kills} kills"
    # Optimizer moments too: a resumed optimizer must match, not just the weights.
    assert (expected_dir / "optimizer.bin").read_bytes() == (actual_dir / "optimizer.bin").read_bytes()


def test_sigterm_saves_and_says_how_to_continue(tmp_path: Path) -> None:
    checkpoints = tmp_path / "run" / "checkpoints"
    extra = ["trainer.max_steps=100000", "ckpt.every_n_steps=100000"]
    process = subprocess.Popen(command(tmp_path, "run", *extra), env=environment(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = tmp_path / "run" / "train.log"
    deadline = time.monotonic() + 120
    while not (log.is_file() and "training VoiceConversionTask" in log.read_text()):
        assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
        time.sleep(0.05)
    time.sleep(1.0)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, output
    assert "stopped by SIGTERM after saving step" in output
    assert "run the same command again to continue" in output
    listed = CheckpointStore(checkpoints).list()
    assert len(listed) == 1 and listed[0].step > 0
    assert verify(listed[0]) == []
