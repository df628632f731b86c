"""No code runs from a checkpoint and no fault loses data silently (issue 12): planted pickles,
damaged state files, bit flips, missing manifests, a diverged loss, two launches of one run,
shared scratch folders, an unfinished export, a repeated overwrite, and clear errors for what a
user or the machine gets wrong. Each test reproduces a fault that once lost data or ran code."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from voicetrain.checkpoint.store import CheckpointStore
from voicetrain.paths import default_scratch_folder

from export_helpers import with_tests_on_path
from helpers import TINY_MODEL, compose_config, environment, output_of, run_cli

TINY = [*TINY_MODEL, "trainer.log_every=1"]


class Plant:
    """A pickle that, if anything ever unpickled it, would leave a file behind."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def launch(root: Path, name: str, base: list[str], *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli(f"run.root={root}", f"run.name={name}", *base, *extra, cwd=root)


def text(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def exits(result: subprocess.CompletedProcess[str], status: int) -> str:
    assert result.returncode == status, output_of(result)
    assert "Traceback" not in text(result), output_of(result)
    return text(result)


@pytest.fixture(scope="module")
def base(bundled_cache: Path) -> list[str]:
    return [f"data.cache_dir={bundled_cache}", *TINY]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, base: list[str]) -> Path:
    """A finished 4-step run (saves at 2 and 4) with its export, to copy and damage."""
    root = tmp_path_factory.mktemp("safety")
    exits(launch(root, "source", base, "trainer.max_steps=4", "ckpt.every_n_steps=2", "export.enabled=true"), 0)
    return root / "source"


def copy_run(source: Path, root: Path, name: str) -> Path:
    shutil.copytree(source, root / name)
    return root / name


def flip_a_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


# ----- untrusted bytes never run -----

def test_a_planted_pickle_is_damage_and_never_runs(trained: Path, tmp_path: Path, base: list[str]) -> None:
    run = copy_run(trained, tmp_path, "planted")
    marker = tmp_path / "planted-code-ran"
    (run / "checkpoints" / "step_00000004" / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps(Plant(marker)))
    output = exits(launch(tmp_path, "planted", base, "trainer.max_steps=6", "ckpt.every_n_steps=2"), 0)
    assert "RESUMED FROM AN OLDER CHECKPOINT, step 2" in output and "custom_checkpoint_0.pkl" in output, output
    assert not marker.exists(), "the planted pickle ran"

    # A downloaded checkpoint handed to +resume=path is refused the same way.
    downloaded = tmp_path / "downloaded" / "step_00000004"
    shutil.copytree(trained / "checkpoints" / "step_00000004", downloaded)
    (downloaded / "random_states_0.pkl").write_bytes(pickle.dumps(Plant(marker)))
    output = exits(launch(tmp_path, "from_download", base, "+resume=path", f"resume.path={downloaded}",
                          "trainer.max_steps=6"), 2)
    assert "no checkpoint could be loaded" in output and "random_states_0.pkl" in output
    assert not marker.exists(), "the planted pickle ran"


def test_a_damaged_rng_file_is_damage_not_a_quiet_skip(trained: Path, tmp_path: Path, base: list[str]) -> None:
    run = copy_run(trained, tmp_path, "rng")
    rng = run / "checkpoints" / "step_00000004" / "rng" / "rank0.json"
    rng.write_text(rng.read_text().replace("1", "2", 1))
    output = exits(launch(tmp_path, "rng", base, "trainer.max_steps=6", "ckpt.every_n_steps=2"), 0)
    assert "RESUMED FROM AN OLDER CHECKPOINT, step 2" in output and "rank0.json" in output, output


# ----- damage is detected and named -----

def test_a_same_size_bit_flip_in_the_newest_weights_falls_back_and_keeps_the_good_ones(
        trained: Path, tmp_path: Path, base: list[str]) -> None:
    run = copy_run(trained, tmp_path, "bitflip")
    weights = run / "checkpoints" / "step_00000004" / "modules" / "model.safetensors"
    flip_a_bit(weights)
    output = exits(launch(tmp_path, "bitflip", base, "trainer.max_steps=8", "ckpt.every_n_steps=2",
                          "+ckpt=save_last_only"), 0)
    assert "RESUMED FROM AN OLDER CHECKPOINT, step 2" in output, output
    assert f"{weights} does not match the SHA-256" in output, output
    assert "trained steps 2 -> 8" in output
    # The flipped step-4 checkpoint was set aside when step 4 was saved again, never deleted.
    assert len(list((run / "checkpoints").glob("step_00000004.damaged-*"))) == 1
    assert [checkpoint.step for checkpoint in CheckpointStore(run / "checkpoints").list()] == [8]


def test_the_only_checkpoint_without_its_manifest_stops_the_run(trained: Path, tmp_path: Path,
                                                                base: list[str]) -> None:
    run = copy_run(trained, tmp_path, "manifestless")
    shutil.rmtree(run / "checkpoints" / "step_00000002")
    (run / "checkpoints" / "step_00000004" / "manifest.json").unlink()
    before = sorted(path.relative_to(run).as_posix() for path in (run / "checkpoints").rglob("*"))
    output = exits(launch(tmp_path, "manifestless", base, "trainer.max_steps=6", "ckpt.every_n_steps=2"), 2)
    assert "will not silently start over" in output and "step_00000004" in output and "manifest.json is missing" in output
    assert "starting a fresh run" not in output and "training VoiceConversionTask" not in output
    assert sorted(path.relative_to(run).as_posix() for path in (run / "checkpoints").rglob("*")) == before


def test_a_non_finite_loss_stops_the_run_before_it_saves(tmp_path: Path, base: list[str]) -> None:
    result = run_cli(f"run.root={tmp_path}", *base, "task._target_=helper_tasks.DivergesAtStep3",
                     "trainer.max_steps=8", "ckpt.every_n_steps=2", "trainer.log_every=100", cwd=tmp_path,
                     env=with_tests_on_path())
    output = exits(result, 1)
    assert "non-finite" in output and "mel/l1=nan" in output and "step_00000002" in output, output
    assert [checkpoint.step for checkpoint in CheckpointStore(tmp_path / "default" / "checkpoints").list()] == [2]


# ----- one run, one owner -----

def wait_for(condition, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, process.stdout.read() if process.stdout else "the first launch exited"
        assert time.monotonic() < deadline, "the first launch made no progress in time"
        time.sleep(0.05)


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {path.relative_to(folder).as_posix(): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in folder.rglob("*") if path.is_file()}


def test_a_second_launch_of_a_running_run_refuses_and_touches_nothing(tmp_path: Path, base: list[str]) -> None:
    arguments = [sys.executable, "-m", "voicetrain", f"run.root={tmp_path}", *base, "trainer.max_steps=100000",
                 "ckpt.every_n_steps=5"]
    first = subprocess.Popen(arguments, cwd=tmp_path, env=environment(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        run = tmp_path / "default"
        wait_for(lambda: bool(CheckpointStore(run / "checkpoints").list()), first)
        # The first launch keeps saving meanwhile: compare only what it had written when the second started.
        before = snapshot(run / ".hydra") | {"train.log": (run / "train.log").stat().st_size}
        second = run_cli(f"run.root={tmp_path}", *base, "trainer.max_steps=100000", "ckpt.every_n_steps=5",
                         cwd=tmp_path)
        output = exits(second, 2)
        assert f"pid {first.pid}" in output and "already being trained" in output, output
        assert snapshot(run / ".hydra") == {key: value for key, value in before.items() if key != "train.log"}
        assert "already being trained" not in (run / "train.log").read_text(), "the refusal was logged in the run"
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=300)
    assert first.returncode == 128 + signal.SIGTERM


def test_a_lock_left_by_a_dead_process_is_taken_over(trained: Path, tmp_path: Path, base: list[str]) -> None:
    run = copy_run(trained, tmp_path, "stale")
    (run / "run.lock").write_text(json.dumps({"host": "elsewhere", "pid": 999999, "started": 0}))
    exits(launch(tmp_path, "stale", base, "trainer.max_steps=4"), 0)


def test_the_lock_file_fallback_refuses_a_live_owner_and_takes_over_a_dead_one(tmp_path: Path) -> None:
    """Where fcntl locks do not work (some NFS): an exclusive-create owner file with a heartbeat."""
    from voicetrain.run.lock import OWNER_FILE, RunLock, RunLockedError

    first = RunLock(tmp_path).acquire_owner_file()
    with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
        RunLock(tmp_path).acquire_owner_file()
    first.release()
    assert not (tmp_path / OWNER_FILE).exists()
    # A dead owner on this host, and a silent one elsewhere whose heartbeat stopped long ago.
    (tmp_path / OWNER_FILE).write_text(json.dumps({"host": os.uname().nodename, "pid": 999999, "started": 0}))
    RunLock(tmp_path).acquire_owner_file().release()
    (tmp_path / OWNER_FILE).write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": 0}))
    os.utime(tmp_path / OWNER_FILE, (0, 0))
    RunLock(tmp_path).acquire_owner_file().release()


@pytest.mark.slow  # long: runs in make test-slow (CI runs both)
def test_scratch_belongs_to_one_run(tmp_path: Path, base: list[str]) -> None:
    # The same run.name under two run.roots gets two scratch folders.
    first = compose_config(f"run.root={tmp_path / 'a'}", "+scratch=ramdisk")
    second = compose_config(f"run.root={tmp_path / 'b'}", "+scratch=ramdisk")
    assert first.scratch.dir != second.scratch.dir
    assert first.scratch.dir == default_scratch_folder("/dev/shm/voicetrain", str(tmp_path / "a"), "default")

    scratch = tmp_path / "scratch"
    exits(launch(tmp_path, "owner", base, "trainer.max_steps=2", f"scratch.dir={scratch}",
                 "scratch.remove_on_success=false"), 0)
    output = exits(launch(tmp_path, "intruder", base, "trainer.max_steps=2", f"scratch.dir={scratch}"), 2)
    assert "belongs to another run" in output and str(tmp_path / "owner") in output
    assert not (tmp_path / "intruder" / "checkpoints").exists()

    # The run folder itself, or a folder inside it, is refused: clearing it would delete the run.
    run = tmp_path / "owner"
    before = snapshot(run / "checkpoints")
    for inside in (run, run / "scratch"):
        output = exits(launch(tmp_path, "owner", base, "trainer.max_steps=4", f"scratch.dir={inside}"), 2)
        assert "run folder" in output, output
    assert snapshot(run / "checkpoints") == before


@pytest.mark.parametrize("name", ["../elsewhere", "/tmp/absolute", "", "a/b"])
def test_run_name_must_name_one_folder_inside_run_root(name: str) -> None:
    from voicetrain.config import ConfigError
    from voicetrain.run.launch import settings_from

    with pytest.raises(ConfigError, match="run.name=.*must name one folder inside run.root"):
        settings_from(compose_config(f"run.name='{name}'"))


# ----- the end of a run is not "done" until its export is -----

@pytest.mark.slow  # long: runs in make test-slow (CI runs both)
def test_a_finished_run_with_a_missing_incomplete_or_stale_export_writes_it(trained: Path, tmp_path: Path,
                                                                          base: list[str]) -> None:
    run = copy_run(trained, tmp_path, "unexported")
    export = run / "export"
    shutil.rmtree(export)
    output = exits(launch(tmp_path, "unexported", base, "trainer.max_steps=4", "export.enabled=true"), 0)
    assert "writing the export now" in output and (export / "manifest.json").is_file()

    shutil.move(export, run / ".old-export")  # a crash between the two renames of an older voicetrain
    output = exits(launch(tmp_path, "unexported", base, "trainer.max_steps=4", "export.enabled=true"), 0)
    assert "writing the export now" in output and not (run / ".old-export").exists()

    manifest = json.loads((export / "manifest.json").read_text())
    manifest["step"] = 2
    (export / "manifest.json").write_text(json.dumps(manifest))
    output = exits(launch(tmp_path, "unexported", base, "trainer.max_steps=4", "export.enabled=true"), 0)
    assert "exported at step 2, the newest checkpoint is step 4" in output

    output = exits(launch(tmp_path, "unexported", base, "trainer.max_steps=4", "export.enabled=true"), 0)
    assert "already finished at step 4" in output and "writing the export" not in output
    shutil.rmtree(export)
    output = exits(launch(tmp_path, "unexported", base, "trainer.max_steps=4", "export.enabled=false"), 0)
    assert "already finished at step 4" in output and not export.exists()


def test_overwrite_applies_once(trained: Path, tmp_path: Path, base: list[str]) -> None:
    run = copy_run(trained, tmp_path, "overwritten")
    command = [sys.executable, "-m", "voicetrain", f"run.root={tmp_path}", "run.name=overwritten", *base,
               "+resume=never", "resume.overwrite=true", "trainer.max_steps=100000", "ckpt.every_n_steps=3"]
    copied = {checkpoint.path.name for checkpoint in CheckpointStore(run / "checkpoints").list()}
    process = subprocess.Popen(command, cwd=tmp_path, env=environment(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    # Signalled once the copied checkpoints are gone and this launch has saved: the copy holds step 4,
    # so a signal at its first sight of step >= 3 would reach the process before its handler exists.
    wait_for(lambda: (names := {checkpoint.path.name for checkpoint in CheckpointStore(run / "checkpoints").list()})
             and not names & copied, process)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGTERM, output
    assert "run the command again without +resume=never resume.overwrite=true" in output, output
    saved = snapshot(run / "checkpoints")
    again = subprocess.run(command, cwd=tmp_path, env=environment(), capture_output=True, text=True, timeout=600)
    output = exits(again, 2)
    assert "written by this same command" in output
    assert snapshot(run / "checkpoints") == saved, "the same command deleted what it had saved"


# ----- clear errors, nothing lost -----

def test_a_read_only_run_root_is_one_clear_error(tmp_path: Path, base: list[str]) -> None:
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(read_only)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        output = exits(run_cli(f"run.root={read_only}", *base, "trainer.max_steps=2", cwd=tmp_path), 1)
        assert "read-only" in output and str(read_only) in output and "run.root" in output, output
    finally:
        subprocess.run(["umount", str(read_only)], capture_output=True)


def test_unquoted_paths_unknown_presets_bad_task_values_and_garbage_weights_exit_2(tmp_path: Path,
                                                                                  base: list[str]) -> None:
    for words in (["data.root=/data/my", "voices"], ["data.root=/data/stimmen_äöü"]):
        output = exits(run_cli(f"run.root={tmp_path}", *base, "data=speakers", *words, cwd=tmp_path), 2)
        assert "must be quoted" in output and "data.root=\"'/data/my voices'\"" in output, output
    output = exits(run_cli(f"run.root={tmp_path}", *base, "+ckpt=no_such_preset", cwd=tmp_path), 2)
    assert "no_such_preset" in output
    output = exits(run_cli(f"run.root={tmp_path}", *base, "task.hidden_channels=0", cwd=tmp_path), 2)
    assert "task.hidden_channels=0: must be at least 1" in output
    garbage = tmp_path / "weights.safetensors"
    garbage.write_bytes(os.urandom(2000))
    output = exits(run_cli(f"run.root={tmp_path}", *base, "+resume=finetune", f"resume.path={garbage}",
                           "trainer.max_steps=1", cwd=tmp_path), 2)
    assert f"resume.path={str(garbage)!r} cannot be read as safetensors" in output


def test_finetune_from_a_tampered_export_is_refused(trained: Path, tmp_path: Path, base: list[str]) -> None:
    export = tmp_path / "export"
    shutil.copytree(trained / "export", export)
    flip_a_bit(export / "model.safetensors")
    output = exits(launch(tmp_path, "tuned", base, "+resume=finetune", f"resume.path={export}",
                          "trainer.max_steps=1"), 2)
    assert "is damaged" in output and "SHA-256" in output


def test_every_file_a_run_writes_has_the_mode_of_the_rest(trained: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    expected = 0o666 & ~umask
    modes = {path.relative_to(trained).as_posix(): stat.S_IMODE(path.stat().st_mode)
             for path in trained.rglob("*") if path.is_file() and path.name != "run.lock"}
    odd = {name: oct(mode) for name, mode in modes.items() if mode != expected}
    assert not odd, f"files not {oct(expected)}: {odd}"
    assert any(name.endswith("modules/model.safetensors") for name in modes)
    assert "export/model.safetensors" in modes
