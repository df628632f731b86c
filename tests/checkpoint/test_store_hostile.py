"""Checkpoint and manifest folders edited the way an attacker or an unlucky user edits them: a
`step_*` that is a symbolic link to a valid checkpoint elsewhere, manifests that name files outside
their folder with every size and SHA-256 recomputed, a link inside a committed folder. Each test
asserts that nothing outside was touched or read, and that the damage is named in one line."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

import voicetrain.durable
from voicetrain.checkpoint.resume import plan_resume
from voicetrain.checkpoint.resuming import Resumer, committed, problems_of
from voicetrain.checkpoint.retention import RetentionPolicy
from voicetrain.checkpoint.store import CheckpointError, CheckpointStore, copy_verified
from voicetrain.config import ResumeSettings
from voicetrain.durable import MANIFEST, confined_path, file_table, sha256_of, verify_folder

KEEP_ONE = RetentionPolicy(keep_last=1, keep_every=None, keep_best=0, monitor="val/loss", mode="min")


def make_checkpoint(root: Path, name: str, step: int) -> Path:
    folder = root / name
    (folder / "modules").mkdir(parents=True)
    (folder / "modules" / "model.safetensors").write_bytes(b"w" * 100)
    (folder / MANIFEST).write_text(json.dumps({"step": step, "layout": 2, "files": file_table(folder)}))
    return folder


def tree_digest(root: Path) -> dict[str, str]:
    return {path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.fixture
def planted(tmp_path: Path) -> tuple[CheckpointStore, Path, Path]:
    """A store with two committed checkpoints, and a newer `step_*` that is a link to a valid
    checkpoint outside the run (its manifest consistent, so only the link betrays it)."""
    root = tmp_path / "run" / "checkpoints"
    for step in (10, 20):
        make_checkpoint(root, f"step_{step:08d}", step)
    outside = make_checkpoint(tmp_path / "elsewhere", "precious", 99)
    (root / "step_00000099").symlink_to(outside, target_is_directory=True)
    return CheckpointStore(root), root / "step_00000099", outside


def test_a_symlinked_step_folder_is_damage_never_listed(planted: tuple[CheckpointStore, Path, Path]) -> None:
    store, link, outside = planted
    assert [checkpoint.step for checkpoint in store.list()] == [10, 20]
    (damaged,) = store.damaged()
    assert damaged.path == link and "symbolic link" in damaged.reason and "\n" not in damaged.reason
    assert str(outside) in damaged.reason


def test_retention_prunes_around_a_symlinked_step_without_following_it(
        planted: tuple[CheckpointStore, Path, Path]) -> None:
    store, link, outside = planted
    before = tree_digest(outside)
    store.prune(KEEP_ONE, protected=set())  # used to crash: "Cannot call rmtree on a symbolic link"
    assert [checkpoint.step for checkpoint in store.list()] == [20]
    assert link.is_symlink() and tree_digest(outside) == before
    with pytest.raises(CheckpointError, match="symbolic link"):
        store.delete(CheckpointStore.read(link))


def test_resume_never_loads_a_symlinked_step(planted: tuple[CheckpointStore, Path, Path]) -> None:
    store, link, _ = planted
    decision = plan_resume("auto", committed([store]), store.damaged(), store.root.parent, None, None)
    assert decision.kind == "full" and decision.candidates[0].step == 20
    assert all(candidate.path != link for candidate in decision.candidates)
    assert [folder.path for folder in decision.skipped] == [link]


def test_overwrite_removes_the_link_and_never_what_it_points_to(tmp_path: Path,
                                                                 planted: tuple[CheckpointStore, Path, Path]) -> None:
    store, link, outside = planted
    before = tree_digest(outside)
    settings = ResumeSettings(mode="never", path=None, allow_config_change=False, overwrite=True)
    Resumer(settings, store.root.parent, [store], {}, []).overwrite(tmp_path / "tb")
    assert not link.is_symlink() and store.list() == []
    assert tree_digest(outside) == before


def hostile_manifest(folder: Path, names: dict[str, Path]) -> dict:
    """The folder's own manifest plus `names`, each with the size and SHA-256 of the file it
    really reaches (recomputed, as anyone can)."""
    manifest = {"step": 5, "layout": 2, "files": file_table(folder)}
    for name, target in names.items():
        manifest["files"][name] = {"bytes": target.stat().st_size, "sha256": sha256_of(target)}
    (folder / MANIFEST).write_text(json.dumps(manifest))
    return manifest


def test_manifest_names_outside_the_folder_are_damage_and_never_read(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("the user's own file")
    folder = make_checkpoint(tmp_path / "checkpoints", "step_00000005", 5)
    (folder / "modules" / "link.bin").symlink_to(secret)
    manifest = hostile_manifest(folder, {"../../secret.txt": secret, str(secret): secret, "modules/link.bin": secret})
    hashed: list[Path] = []
    real_sha256_of = voicetrain.durable.sha256_of
    monkeypatch.setattr(voicetrain.durable, "sha256_of", lambda path: hashed.append(Path(path)) or real_sha256_of(path))
    problems = verify_folder(folder, manifest)
    assert secret not in [path.resolve() for path in hashed], hashed
    joined = "\n".join(problems)
    assert "'../../secret.txt', which is not a file inside" in joined
    assert f"{str(secret)!r}, which is not a file inside" in joined
    assert "modules/link.bin', which is not a file inside" in joined
    assert all("\n" not in problem for problem in problems)
    checkpoint = CheckpointStore.read(folder)
    assert any("not a file inside" in problem for problem in problems_of(checkpoint))
    with pytest.raises(CheckpointError, match="not a file inside"):
        copy_verified(folder, tmp_path / "copy", manifest["files"])
    assert secret.read_text() == "the user's own file" and not (tmp_path / "copy" / "secret.txt").exists()


def test_a_link_inside_a_folder_that_stays_inside_is_still_damage(tmp_path: Path) -> None:
    folder = make_checkpoint(tmp_path, "step_00000005", 5)
    (folder / "modules" / "again.safetensors").symlink_to(folder / "modules" / "model.safetensors")
    manifest = hostile_manifest(folder, {})
    problems = verify_folder(folder, manifest)
    assert problems == [f"{folder / 'modules' / 'again.safetensors'} is a symbolic link; a committed folder holds "
                        "plain files only"]


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/../../x", "", "."])
def test_confined_path_refuses_names_that_leave_the_folder(tmp_path: Path, name: str) -> None:
    assert confined_path(tmp_path, name) is None


def test_confined_path_accepts_names_inside(tmp_path: Path) -> None:
    assert confined_path(tmp_path, "modules/model.safetensors") == tmp_path / "modules" / "model.safetensors"
    assert confined_path(tmp_path, "a/./b") == tmp_path / "a" / "b"
