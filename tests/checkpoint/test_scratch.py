"""RAM-disk scratch (`+scratch=...`): real signals, a wiped scratch, a full scratch, the capacity
guard, and the byte accounting. Scratch folders are temporary directories (and a real tmpfs
where this machine lets the tests mount one)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from voicetrain.checkpoint.store import CheckpointError, CheckpointStore, verify
from voicetrain.config import validate
from voicetrain.run.trainer import Trainer

from helpers import QUICK, assert_ok, compose_config, environment, output_of, reset_accelerate, run_cli

SMALL = [*QUICK, "task.hidden_channels=32", "trainer.val_every=1000", "export.enabled=false"]


@pytest.fixture
def ram(tmp_path: Path):
    """A scratch folder on the machine's RAM disk when it has one (as +scratch=ramdisk uses)."""
    shared_memory = Path("/dev/shm")
    folder = shared_memory / f"voicetrain-test-{tmp_path.name}" if shared_memory.is_dir() else tmp_path / "ram"
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def overrides(root: Path, scratch: Path, cache: Path, *extra: str) -> list[str]:
    return [f"run.root={root}", f"data.cache_dir={cache}", f"scratch.dir={scratch}", *SMALL, *extra]


def steps(folder: Path) -> list[int]:
    return [checkpoint.step for checkpoint in CheckpointStore(folder).list()]


def start(arguments: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "voicetrain", *arguments], env=environment(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_checkpoint(folder: Path, process: subprocess.Popen, minimum_step: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not any(step >= minimum_step for step in steps(folder)):
        assert process.poll() is None, process.stdout.read()
        assert time.monotonic() < deadline, "no scratch checkpoint appeared in time"
        time.sleep(0.02)


@pytest.mark.slow  # long: runs in make test-slow (CI runs both)
def test_mirrors_every_nth_save_and_cleans_up(tmp_path: Path, bundled_cache: Path, ram: Path) -> None:
    scratch = ram
    result = run_cli(*overrides(tmp_path, scratch, bundled_cache, "trainer.max_steps=24", "ckpt.every_n_steps=2",
                                "scratch.persist_every=4", "ckpt.keep_last=10", "ckpt.keep_every=10",
                                "scratch.include=[checkpoints,tensorboard]"), cwd=tmp_path)
    assert_ok(result)
    persistent = tmp_path / "default" / "checkpoints"
    # Saves 4, 8 and 12 of 12 (steps 8, 16, 24), the milestones at steps 10 and 20, the final one.
    assert steps(persistent) == [8, 10, 16, 20, 24]
    assert all(verify(checkpoint) == [] for checkpoint in CheckpointStore(persistent).list())
    assert not scratch.exists(), "a successful end removes the run's scratch folder"
    assert list((tmp_path / "default" / "tb").glob("events.out.tfevents.*")), "TensorBoard logs were not mirrored"
    assert "MB written to persistent storage" in result.stdout + result.stderr
    assert not list(persistent.glob(".tmp-*"))


def test_sigterm_flushes_the_newest_checkpoint(tmp_path: Path, bundled_cache: Path, ram: Path) -> None:
    scratch = ram
    process = start(overrides(tmp_path, scratch, bundled_cache, "trainer.max_steps=100000", "ckpt.every_n_steps=3",
                              "scratch.persist_every=1000", "scratch.remove_on_success=true"))
    wait_for_checkpoint(scratch / "checkpoints", process, minimum_step=6)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, output
    newest_on_scratch = max(steps(scratch / "checkpoints"))
    persistent = steps(tmp_path / "default" / "checkpoints")
    assert persistent and max(persistent) == newest_on_scratch, output
    assert scratch.exists(), "scratch is kept after an interrupted run"


@pytest.mark.slow  # long: runs in make test-slow (CI runs both)
def test_sigkill_resumes_from_scratch_and_a_wiped_scratch_from_disk(tmp_path: Path, bundled_cache: Path, ram: Path) -> None:
    scratch = ram
    # The first mirror is the 40th save (step 40); the kill lands well before the 80th (step 80).
    arguments = overrides(tmp_path, scratch, bundled_cache, "trainer.max_steps=100000", "ckpt.every_n_steps=1",
                          "scratch.persist_every=40", "scratch.keep_last=3")
    process = start(arguments)
    wait_for_checkpoint(tmp_path / "default" / "checkpoints", process, minimum_step=40)
    wait_for_checkpoint(scratch / "checkpoints", process, minimum_step=43)
    process.send_signal(signal.SIGKILL)
    process.wait()
    newest_scratch = max(steps(scratch / "checkpoints"))
    newest_persistent = max(steps(tmp_path / "default" / "checkpoints"))
    assert newest_scratch > newest_persistent  # SIGKILL loses at most the saves since the last mirror

    # Restart: scratch is still there, so the run continues from its newest checkpoint.
    goal = newest_scratch + 1
    resumed = run_cli(*[item for item in arguments if not item.startswith("trainer.max_steps")],
                      f"trainer.max_steps={goal}", "scratch.remove_on_success=false", cwd=tmp_path)
    assert_ok(resumed)
    assert f"resuming from step {newest_scratch}" in resumed.stdout + resumed.stderr, output_of(resumed)

    # A reboot empties the RAM disk: the persistent copy is used.
    shutil.rmtree(scratch)
    persistent_newest = max(steps(tmp_path / "default" / "checkpoints"))
    again = run_cli(*[item for item in arguments if not item.startswith("trainer.max_steps")],
                    f"trainer.max_steps={goal + 2}", cwd=tmp_path)
    assert_ok(again)
    assert f"resuming from step {persistent_newest}" in again.stdout + again.stderr, output_of(again)


@pytest.mark.slow  # long: runs in make test-slow (CI runs both)
def test_capacity_guard_refuses_or_falls_back(tmp_path: Path, bundled_cache: Path) -> None:
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(tiny)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()}); needs root")
    try:
        refused = run_cli(*overrides(tmp_path, tiny, bundled_cache, "trainer.max_steps=4", "ckpt.every_n_steps=2"),
                          cwd=tmp_path)
        assert refused.returncode == 2, output_of(refused)
        text = refused.stdout + refused.stderr
        assert "scratch needs about" in text and "MB free" in text and "scratch.on_insufficient=fallback" in text
        assert "Traceback" not in text
        assert not (tmp_path / "default" / "checkpoints").exists(), "nothing may be trained before the guard"

        fallback = run_cli(*overrides(tmp_path, tiny, bundled_cache, "trainer.max_steps=4", "ckpt.every_n_steps=2",
                                      "scratch.on_insufficient=fallback"), cwd=tmp_path)
        assert_ok(fallback)
        assert "scratch is off" in fallback.stdout + fallback.stderr
        assert steps(tmp_path / "default" / "checkpoints") == [2, 4]
    finally:
        subprocess.run(["umount", str(tiny)], check=False)


def test_missing_scratch_path_explains_how_to_make_a_ram_disk(tmp_path: Path, bundled_cache: Path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    result = run_cli(*overrides(tmp_path, blocked / "scratch", bundled_cache, "trainer.max_steps=2"), cwd=tmp_path)
    assert result.returncode == 2, output_of(result)
    text = result.stdout + result.stderr
    for hint in ("scratch.dir=", "Linux", "macOS", "Windows"):
        assert hint in text
    assert "Traceback" not in text


@pytest.mark.slow  # long: runs in make test-slow (CI runs both)
def test_full_scratch_mid_run_saves_to_disk_instead(tmp_path: Path, bundled_cache: Path, ram: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    scratch = ram
    config = compose_config(*overrides(tmp_path, scratch, bundled_cache, "trainer.max_steps=8", "ckpt.every_n_steps=2",
                                       "scratch.persist_every=100"))
    settings = validate(OmegaConf.to_container(config, resolve=True))
    original = CheckpointStore.commit
    calls = {"scratch": 0}

    def filling_up(store: CheckpointStore, *arguments, **keywords):
        if store.root == scratch / "checkpoints":
            calls["scratch"] += 1
            if calls["scratch"] == 2:
                raise CheckpointError("no space left on the device (injected)", out_of_space=True)
        return original(store, *arguments, **keywords)

    monkeypatch.setattr(CheckpointStore, "commit", filling_up)
    reset_accelerate()
    summary = Trainer(settings).train()
    assert summary.final_step == 8
    persistent = steps(tmp_path / "default" / "checkpoints")
    assert 4 in persistent, "the save that found scratch full went to the run directory"
    assert 8 in persistent, "the final checkpoint was flushed"
