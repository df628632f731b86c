"""The checkpoint store: what is listed (only committed checkpoints, ordered by the step in their
manifest), what start-up cleans, what `verify` reports, and a full disk during a save, both
injected (ENOSPC at each phase of a real training run's save) and real (a tiny tmpfs)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from safetensors.torch import load_file

import voicetrain.checkpoint.training_state
import voicetrain.durable
from voicetrain.checkpoint.store import CheckpointError, CheckpointStore, checkpoint_name, verify
from voicetrain.config import validate
from voicetrain.durable import MANIFEST, file_table

from helpers import TINY_MODEL as TINY
from helpers import compose_config, output_of, reset_accelerate


# The smallest model and run that still saves a real Accelerate state.
@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Accelerate keeps process-wide singletons; each test starts and ends without them."""
    reset_accelerate()
    yield
    reset_accelerate()


def make_checkpoint(root: Path, name: str, step: object, files: dict[str, bytes] | None = None,
                    manifest: object = None) -> Path:
    """A hand-made checkpoint folder; `manifest` replaces the one that would match its files."""
    folder = root / name
    folder.mkdir(parents=True)
    files = {"modules/model.safetensors": b"w" * 100, "optimizers/model.json": b"o" * 50} if files is None else files
    for file_name, data in files.items():
        (folder / file_name).parent.mkdir(parents=True, exist_ok=True)
        (folder / file_name).write_bytes(data)
    if manifest is None:
        manifest = {"step": step, "layout": 2, "files": file_table(folder), "metrics": {}}
    (folder / MANIFEST).write_text(manifest if isinstance(manifest, str) else json.dumps(manifest))
    return folder


# ----- names and listing -----

def test_checkpoint_name_is_zero_padded_to_eight_digits() -> None:
    assert checkpoint_name(0) == "step_00000000"
    assert checkpoint_name(1200) == "step_00001200"
    assert checkpoint_name(99_999_999) == "step_99999999"
    steps = [5, 40, 300, 1200, 20_000, 7]
    assert sorted(checkpoint_name(step) for step in steps) == [checkpoint_name(step) for step in sorted(steps)]


def test_list_of_a_missing_folder_is_empty(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "nowhere")
    assert store.list() == [] and store.newest() is None and store.remove_staging() == []


def test_list_shows_only_committed_checkpoints(tmp_path: Path) -> None:
    make_checkpoint(tmp_path, "step_00000002", 2)
    make_checkpoint(tmp_path, ".tmp-step_00000004", 4)  # staged and complete, but never renamed
    make_checkpoint(tmp_path, ".tmp-deleting-step_00000001", 1)  # a delete interrupted after its rename
    (tmp_path / "step_00000006").mkdir()  # no manifest: the save died before writing it
    (tmp_path / "step_00000006" / "model.safetensors").write_bytes(b"partial")
    make_checkpoint(tmp_path, "step_00000008", 8, manifest='{"step": 8, "files": {"model.saf')  # corrupt JSON
    make_checkpoint(tmp_path, "step_00000010", 10, manifest={"step": "10", "files": {}})  # step not a number
    make_checkpoint(tmp_path, "step_00000012", 12, manifest=[12])  # not a mapping
    make_checkpoint(tmp_path, "step_00000014", 14, manifest="")  # empty file
    make_checkpoint(tmp_path, "step_00000018", 18, manifest={"step": True, "files": {}})  # a bool, not a step
    (tmp_path / "step_00000016").write_text("a file, not a folder")
    listed = CheckpointStore(tmp_path).list()
    assert [(checkpoint.path.name, checkpoint.step) for checkpoint in listed] == [("step_00000002", 2)]


def test_list_orders_by_the_manifest_step_not_by_name_or_mtime(tmp_path: Path) -> None:
    # The folder named like step 9 holds step 30 (e.g. copied by hand), and it is the oldest on disk.
    newest = make_checkpoint(tmp_path, "step_00000009", 30)
    make_checkpoint(tmp_path, "step_00000020", 20)
    make_checkpoint(tmp_path, "step_00000005", 5)
    make_checkpoint(tmp_path, "step_00000003.legacy", 3)  # not named like a checkpoint: the user's, never listed
    os.utime(newest, (1_000_000, 1_000_000))
    os.utime(newest / MANIFEST, (1_000_000, 1_000_000))
    store = CheckpointStore(tmp_path)
    assert [checkpoint.step for checkpoint in store.list()] == [5, 20, 30]
    assert store.newest().path == newest and store.newest().step == 30


def test_remove_staging_deletes_every_leftover_and_nothing_else(tmp_path: Path) -> None:
    make_checkpoint(tmp_path, "step_00000002", 2)
    staged = make_checkpoint(tmp_path, ".tmp-step_00000004", 4)
    (staged / "nested").mkdir()
    (staged / "nested" / "part.bin").write_bytes(b"x" * 10)
    deleting = make_checkpoint(tmp_path, ".tmp-deleting-step_00000001", 1)
    store = CheckpointStore(tmp_path)
    assert sorted(store.remove_staging()) == sorted([staged, deleting])
    assert sorted(path.name for path in tmp_path.iterdir()) == ["step_00000002"]
    assert store.remove_staging() == []
    assert [checkpoint.step for checkpoint in store.list()] == [2]


# ----- verify and delete -----

def test_verify_reports_truncated_missing_changed_and_unlisted_files(tmp_path: Path) -> None:
    folder = make_checkpoint(tmp_path, "step_00000002", 2)
    (checkpoint,) = CheckpointStore(tmp_path).list()
    assert verify(checkpoint) == []

    weights = folder / "modules" / "model.safetensors"
    weights.write_bytes(b"w" * 49 + b"x" + b"w" * 50)  # one byte changed, same size
    problems = verify(checkpoint)
    assert len(problems) == 1 and str(weights) in problems[0] and "SHA-256" in problems[0], problems
    assert verify(checkpoint, check_contents=False) == [], "without contents only sizes are compared"

    with open(weights, "r+b") as handle:
        handle.truncate(40)
    problems = verify(checkpoint)
    assert len(problems) == 1 and str(weights) in problems[0] and "40" in problems[0] and "100" in problems[0]

    (folder / "optimizers" / "model.json").unlink()
    (folder / "custom_checkpoint_0.pkl").write_bytes(b"planted")
    problems = verify(checkpoint)
    assert len(problems) == 3, problems
    assert any("optimizers/model.json" in problem and "missing" in problem for problem in problems)
    assert any("custom_checkpoint_0.pkl" in problem and "not listed" in problem for problem in problems)


def test_damaged_lists_step_folders_that_are_not_committed(tmp_path: Path) -> None:
    make_checkpoint(tmp_path, "step_00000002", 2)
    (tmp_path / "step_00000004").mkdir()
    make_checkpoint(tmp_path, "step_00000006", 6, manifest="{not json")
    make_checkpoint(tmp_path, ".tmp-step_00000008", 8, manifest="{not json")  # staging is not damage
    damaged = CheckpointStore(tmp_path).damaged()
    assert [(folder.path.name, folder.step) for folder in damaged] == [("step_00000004", 4), ("step_00000006", 6)]
    assert "missing" in damaged[0].reason and "unreadable" in damaged[1].reason


def test_delete_leaves_no_committed_named_folder(tmp_path: Path) -> None:
    make_checkpoint(tmp_path, "step_00000002", 2)
    make_checkpoint(tmp_path, "step_00000004", 4)
    store = CheckpointStore(tmp_path)
    first, second = store.list()
    store.delete(first)
    assert not first.path.exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["step_00000004"], "delete left a folder behind"
    assert store.list() == [second]


# ----- a full disk, injected -----

def trainer_settings(root: Path, cache: Path, *extra: str):
    config = compose_config(f"run.root={root}", f"data.cache_dir={cache}", *TINY, *extra)
    return validate(OmegaConf.to_container(config, resolve=True))


def fail_for_step(step: int, error: BaseException, original):
    """`original`, except that it raises `error` when handed a path inside that step's save."""
    marker = checkpoint_name(step)

    def replacement(*args, **kwargs):
        if any(marker in str(value) for value in (*args, *kwargs.values()) if isinstance(value, (str, Path))):
            raise error
        return original(*args, **kwargs)

    return replacement


@pytest.mark.parametrize("phase", ["save_file", "fsync_tree", "write_json_durably"])
def test_enospc_during_a_save_keeps_earlier_checkpoints(tmp_path: Path, bundled_cache: Path,
                                                        monkeypatch: pytest.MonkeyPatch, phase: str) -> None:
    """Saves at steps 2, 4, 6; the third fails with ENOSPC while the weights are written, while
    the files are fsynced, or while the manifest is written."""
    from voicetrain.run.trainer import Trainer

    no_space = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    module = voicetrain.checkpoint.training_state if phase == "save_file" else voicetrain.durable
    monkeypatch.setattr(module, phase, fail_for_step(6, no_space, getattr(module, phase)))
    settings = trainer_settings(tmp_path / "runs", bundled_cache, "trainer.max_steps=8", "ckpt.every_n_steps=2",
                                "ckpt.keep_last=null")
    with pytest.raises(CheckpointError) as raised:
        Trainer(settings).train()
    message = str(raised.value)
    assert "no space left" in message and "MB free" in message and "MB)" in message
    assert "+ckpt=save_last_only (it still needs room for two checkpoints" in message
    assert "run the same command again" in message

    checkpoints = tmp_path / "runs" / "default" / "checkpoints"
    listed = CheckpointStore(checkpoints).list()
    assert [checkpoint.step for checkpoint in listed] == [2, 4]
    for checkpoint in listed:
        assert verify(checkpoint) == []
        load_file(str(checkpoint.path / "modules" / "model.safetensors"))
    assert sorted(path.name for path in checkpoints.iterdir()) == ["step_00000002", "step_00000004"], \
        "a staging folder or an incomplete checkpoint was left behind"


# ----- a full disk, for real -----

@pytest.fixture
def tiny_tmpfs(tmp_path: Path):
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount_point)],
                                 capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("no mount command: cannot make a small filesystem to fill")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a 3 MB tmpfs to fill (needs root or CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def test_a_real_full_disk_stops_with_a_clear_error_and_keeps_earlier_checkpoints(
        tiny_tmpfs: Path, tmp_path: Path, bundled_cache: Path) -> None:
    """Each checkpoint of this model is about 0.8 MB, so a 3 MB disk fills on the 4th save
    (where safetensors reports it without an errno)."""
    result = subprocess.run(
        [sys.executable, "-m", "voicetrain", f"run.root={tiny_tmpfs}", f"data.cache_dir={bundled_cache}", *TINY,
         "task.hidden_channels=32", "task.encoder_layers=4", "task.decoder_layers=4",
         "trainer.max_steps=40", "ckpt.every_n_steps=2", "ckpt.keep_last=null"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": ""},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output_of(result)
    assert "no space left" in output, output_of(result)
    assert "Traceback" not in output, output_of(result)
    checkpoints = tiny_tmpfs / "default" / "checkpoints"
    listed = CheckpointStore(checkpoints).list()
    assert len(listed) >= 2, output_of(result)
    assert [checkpoint.step for checkpoint in listed] == list(range(2, 2 * len(listed) + 1, 2))
    for checkpoint in listed:
        assert verify(checkpoint) == []
        load_file(str(checkpoint.path / "modules" / "model.safetensors"))
    leftovers = sorted(path.name for path in checkpoints.iterdir() if path.name.startswith(".tmp-"))
    assert leftovers == [], f"staging folders left on the full disk: {leftovers}"
