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

import pytest
from safetensors.torch import load_file

from voicetrain.checkpoint.store import CheckpointStore, step_of_folder, verify

from helpers import stop_once_training

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


def assert_only_complete_checkpoints(checkpoints: Path, damaged: set[str] = frozenset()) -> None:
    """Every folder with a committed name is complete and verifies, except those this test
    damaged on purpose (`damaged`), which must be skipped by resume, not trusted."""
    store = CheckpointStore(checkpoints)
    listed = store.list()
    committed_names = {checkpoint.path.name for checkpoint in listed}
    for path in checkpoints.glob("step_*"):
        if step_of_folder(path) is None or path.name in damaged:
            continue  # set aside as damaged, or damaged by this test
        # A folder with the committed name must be complete: the rename happens last.
        assert path.name in committed_names, f"{path} carries a committed name but has no valid manifest"
    for checkpoint in listed:
        if checkpoint.path.name in damaged:
            continue
        assert verify(checkpoint) == [], f"{checkpoint.path} is listed but incomplete"
        load_file(str(checkpoint.path / "modules" / "model.safetensors"))


def damage_the_newest(checkpoints: Path, kind: str) -> str | None:
    """Flips one bit of the newest checkpoint's weights or deletes its manifest, as a failing disk
    or a careless hand would; only while an older committed checkpoint exists to fall back to."""
    listed = CheckpointStore(checkpoints).list()
    if len(listed) < 2:
        return None
    newest = listed[-1].path
    if kind == "bit flip":
        weights = newest / "modules" / "model.safetensors"
        data = bytearray(weights.read_bytes())
        data[len(data) // 3] ^= 0x04
        weights.write_bytes(bytes(data))
    else:
        (newest / "manifest.json").unlink()
    return newest.name


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


@pytest.mark.slow  # long: runs in make test-slow (CI runs both)
def test_sigkill_ten_times_then_resume_is_bit_identical(tmp_path: Path) -> None:
    reference = subprocess.run(command(tmp_path, "reference"), env=environment(), capture_output=True, text=True)
    assert reference.returncode == 0, reference.stdout + reference.stderr

    checkpoints = tmp_path / "crashed" / "checkpoints"
    chooser = random.Random(20261122)
    kills = during_save = 0
    launches = 0
    damaged: set[str] = set()
    damages = []
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
        if process.poll() is None:
            process.wait()
        # A damaged folder stops being ours to excuse once resume has set it aside and replaced it.
        damaged = {name for name in damaged if (checkpoints / name).is_dir() and not list(
            checkpoints.glob(f"{name}.damaged-*"))}
        assert_only_complete_checkpoints(checkpoints, damaged)
        if landed and kills in (3, 7):  # between two kills, damage what the next launch would resume from
            name = damage_the_newest(checkpoints, "bit flip" if kills == 3 else "deleted manifest")
            if name is not None:
                damaged.add(name)
                damages.append(name)

    assert damages, "no checkpoint was damaged: the chaos covered only kills"
    assert kills == 10 and during_save >= 3, (kills, during_save)
    final = subprocess.run(command(tmp_path, "crashed"), env=environment(), capture_output=True, text=True)
    assert final.returncode == 0, final.stdout + final.stderr
    assert_only_complete_checkpoints(checkpoints)
    for name in damages:  # re-saved after the fallback: the damaged copy was set aside, never deleted
        assert len(list(checkpoints.glob(f"{name}.damaged-*"))) == 1, name

    expected_dir = tmp_path / "reference" / "checkpoints" / "step_00000400"
    actual_dir = checkpoints / "step_00000400"
    for name in ("modules/model.safetensors",):
        expected, actual = load_file(str(expected_dir / name)), load_file(str(actual_dir / name))
        assert expected.keys() == actual.keys()
        for key in expected:
            assert expected[key].dtype == actual[key].dtype
            assert expected[key].equal(actual[key]), f"{key} differs after {kills} kills"
    # Optimizer moments, schedule, loop state and RNG too: a resumed run must match, not just the weights.
    for name in ("optimizers/model.safetensors", "optimizers/model.json", "schedulers/model.json", "loop_state.json",
                 "rng/rank0.json"):
        assert (expected_dir / name).read_bytes() == (actual_dir / name).read_bytes(), name


def test_sigterm_saves_and_says_how_to_continue(tmp_path: Path) -> None:
    checkpoints = tmp_path / "run" / "checkpoints"
    extra = ["trainer.max_steps=100000", "ckpt.every_n_steps=100000"]
    process = subprocess.Popen(command(tmp_path, "run", *extra), env=environment(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = stop_once_training(process, tmp_path / "run" / "train.log", signal.SIGTERM, settle_seconds=1.0)
    assert process.returncode == 128 + signal.SIGTERM, output
    assert "stopped by SIGTERM after saving step" in output
    assert "run the same command again to continue" in output
    listed = CheckpointStore(checkpoints).list()
    assert len(listed) == 1 and listed[0].step > 0
    assert verify(listed[0]) == []
