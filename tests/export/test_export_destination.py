"""`python -m voicetrain.export RUN --output DIR` pointed where an unlucky user points it (the run
itself, a folder above it, its checkpoints, a folder of notes, the current folder), and run beside
another holder of the run's lock (training, another re-export). Each refusal is one line, exit 2,
and leaves every file as it was; staging folders are unique per process, and a clean-up spares a
live writer's."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from export_helpers import TrainedRun, vc_run
from helpers import TINY_MODEL, environment, output_of
from lock_helpers import lock_held
from voicetrain.checkpoint.store import CheckpointStore
import voicetrain.durable
from voicetrain.durable import MANIFEST, remove_dead_staging, staged, staging_owner, unique_staging_path
from voicetrain.export.artifact import ExportError, export_problem, load_inference_modules, read_export_manifest, \
    verify_export
from voicetrain.export.destination import DestinationFacts, destination_problem, inspect_destination
from voicetrain.run.lock import TRAINING
from voicetrain.run.reexport import EXPORTING
from voicetrain.run.reexport import main as export_main

RUN = Path("/data/runs/alice")
EXPORT_MANIFEST = {"task_target": "voicetrain.tasks.vc.VoiceConversionTask", "formats": ["safetensors"], "step": 4,
                   "files": {"config.json": {"bytes": 2, "sha256": "0"}, "model.safetensors": {"bytes": 2,
                                                                                            "sha256": "0"}}}


def facts(destination: Path, exists: bool = False, is_folder: bool = False, foreign: tuple[str, ...] = (),
          holds_export: bool = False, current: Path = Path("/home/user")) -> DestinationFacts:
    return DestinationFacts(destination, RUN, current, exists, is_folder, foreign, holds_export)


# ----- the pure decision -----

@pytest.mark.parametrize("destination, words", [
    (RUN, "is the run folder"),
    (RUN.parent, "holds the run"),
    (Path("/"), "holds the run"),
    (RUN / "checkpoints", "inside the run's checkpoints/"),
    (RUN / "checkpoints" / "step_00001200", "inside the run's checkpoints/"),
    (Path("/home/user"), "the current folder or above it"),
    (Path("/home"), "the current folder or above it"),
])
def test_places_that_hold_what_the_user_keeps_are_refused(destination: Path, words: str) -> None:
    problem = destination_problem(facts(destination, exists=True, is_folder=True, foreign=("a",)), "DIR")
    assert problem is not None and words in problem and "--output DIR" in problem and "\n" not in problem
    assert "new or empty folder" in problem


def test_folders_with_files_of_the_users_are_refused_naming_them() -> None:
    notes = Path("/home/user/notes")
    problem = destination_problem(facts(notes, True, True, ("a.txt", "b.txt", "c.txt", "d.txt")), "notes")
    assert problem is not None and "not a voicetrain export" in problem and "a.txt, b.txt, c.txt and 1 more" in problem
    problem = destination_problem(facts(notes, True, True, ("todo.txt",), holds_export=True), "notes")
    assert problem is not None and "a voicetrain export and other files (todo.txt)" in problem
    assert "is a file" in destination_problem(facts(notes, exists=True), "notes")


@pytest.mark.parametrize("destination, exists, holds_export", [
    (Path("/data/exports/alice"), False, False),  # new
    (Path("/data/exports/alice"), True, False),  # empty
    (Path("/data/exports/alice"), True, True),  # an export and nothing else
    (RUN / "export", True, False),  # the run's own export, whatever it holds
    (RUN / "exports" / "step_00001200", True, True),
])
def test_new_empty_or_export_folders_are_accepted(destination: Path, exists: bool, holds_export: bool) -> None:
    foreign = ("stray.txt",) if destination == RUN / "export" else ()
    assert destination_problem(facts(destination, exists, exists, foreign, holds_export), "DIR") is None


# ----- the facts, from the disk -----

def test_inspect_tells_an_export_from_a_checkpoint_and_from_notes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    export = tmp_path / "export"
    export.mkdir()
    (export / MANIFEST).write_text(json.dumps(EXPORT_MANIFEST))
    for name in ("config.json", "model.safetensors"):
        (export / name).write_text("{}")
    found = inspect_destination(export, run)
    assert found.holds_export and found.foreign_entries == ()
    (export / "notes.txt").write_text("mine")
    assert inspect_destination(export, run).foreign_entries == ("notes.txt",)
    checkpoint = tmp_path / "step_00000004"
    checkpoint.mkdir()
    (checkpoint / MANIFEST).write_text(json.dumps({"step": 4, "files": {"config.yaml": {"bytes": 1}}}))
    assert not inspect_destination(checkpoint, run).holds_export
    link = tmp_path / "link"
    link.symlink_to(run, target_is_directory=True)
    assert inspect_destination(link, run).destination == run.resolve()


# ----- the command -----

@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, bundled_cache: Path) -> TrainedRun:
    return vc_run(tmp_path_factory, bundled_cache)


def tree_digest(root: Path) -> dict[str, str]:
    return {path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file() and path.name != "run.lock"}


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_output_into_the_run_its_parent_or_its_checkpoints_is_refused(run: TrainedRun, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    before = tree_digest(run.run_dir)
    checkpoints = run.run_dir / "checkpoints"
    for output in (run.run_dir, run.run_dir.parent, checkpoints, sorted(checkpoints.glob("step_*"))[-1]):
        assert export_main([str(run.run_dir), "--output", str(output)]) == 2
        line = one_line_error(capsys)
        assert str(output) in line and "new or empty folder" in line, line
    assert tree_digest(run.run_dir) == before


def test_output_into_a_folder_of_notes_keeps_the_notes(run: TrainedRun, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    notes = tmp_path / "notes"
    (notes / "drafts").mkdir(parents=True)
    (notes / "todo.txt").write_text("the user's own")
    (notes / "drafts" / "idea.md").write_text("also the user's")
    before = tree_digest(notes)
    assert export_main([str(run.run_dir), "--output", str(notes)]) == 2
    line = one_line_error(capsys)
    assert "notes" in line and "drafts, todo.txt" in line and "not a voicetrain export" in line, line
    assert tree_digest(notes) == before and sorted(path.name for path in tmp_path.iterdir()) == ["notes"]


def test_output_dot_is_one_line_not_a_traceback(run: TrainedRun, tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("the user's own")
    result = subprocess.run([sys.executable, "-m", "voicetrain.export", str(run.run_dir), "--output", "."],
                            cwd=tmp_path, capture_output=True, text=True, env=environment(), timeout=300)
    assert result.returncode == 2, output_of(result)
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, output_of(result)
    assert "--output ." in result.stderr
    assert [path.name for path in tmp_path.iterdir()] == ["mine.txt"]


def test_export_refuses_while_the_run_trains_naming_its_pid(run: TrainedRun, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    with lock_held(run.run_dir, TRAINING) as training:
        assert export_main([str(run.run_dir), "--output", str(tmp_path / "out")]) == 2
        line = one_line_error(capsys)
    assert f"already being trained by pid {training.pid}" in line and "--wait" in line, line
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []


def test_export_with_wait_waits_for_the_lock_then_exports(run: TrainedRun, tmp_path: Path) -> None:
    output = tmp_path / "out"
    with lock_held(run.run_dir, TRAINING) as training:
        exporter = subprocess.Popen([sys.executable, "-m", "voicetrain.export", str(run.run_dir), "--output",
                                     str(output), "--wait"], stderr=subprocess.PIPE, stdout=subprocess.PIPE,
                                    text=True, env=environment())
        assert exporter.stderr is not None
        waiting = ""
        while "waiting for the lock" not in waiting and exporter.poll() is None:
            waiting = exporter.stderr.readline()
        assert "waiting for the lock" in waiting and f"pid {training.pid}" in waiting, waiting
        assert not output.exists(), "exported while the lock was held"
    stdout, stderr = exporter.communicate(timeout=300)
    assert exporter.returncode == 0, stdout + stderr
    verify_export(output, read_export_manifest(output))


def test_two_reexports_of_one_run_never_crash_each_other(run: TrainedRun, tmp_path: Path) -> None:
    output = tmp_path / "out"
    command = [sys.executable, "-m", "voicetrain.export", str(run.run_dir), "--output", str(output)]
    first = subprocess.Popen([*command, "--wait"], stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env=environment())
    second = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=environment())
    results = [(process.pid, *process.communicate(timeout=600), process.returncode) for process in (first, second)]
    for pid, stdout, stderr, status in results:
        assert "Traceback" not in stderr, stderr
        assert status == 0 or (status == 2 and f"already {EXPORTING} by pid" in stderr), (status, stderr)
    assert results[0][3] == 0, results[0]
    verify_export(output, read_export_manifest(output))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"], "a staging folder was left behind"


def test_an_export_whose_manifest_names_a_file_outside_is_damage_never_read(run: TrainedRun, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("the user's own")
    export = tmp_path / "downloaded" / "export"
    export.parent.mkdir()
    for path in (run.run_dir / "export").iterdir():
        (export / path.name).parent.mkdir(exist_ok=True)
        (export / path.name).write_bytes(path.read_bytes())
    manifest = json.loads((export / MANIFEST).read_text())
    # Recomputed, as anyone can: the size and SHA-256 of the file the name reaches.
    manifest["files"]["../../secret.txt"] = {"bytes": secret.stat().st_size, "sha256": voicetrain.durable.sha256_of(
        secret)}
    (export / MANIFEST).write_text(json.dumps(manifest))
    hashed: list[Path] = []
    real_sha256_of = voicetrain.durable.sha256_of
    monkeypatch.setattr(voicetrain.durable, "sha256_of", lambda path: hashed.append(Path(path)) or real_sha256_of(path))
    with pytest.raises(ExportError, match="lists '../../secret.txt', which is not a file inside") as refused:
        load_inference_modules(export)
    assert "\n" not in str(refused.value) and secret not in [path.resolve() for path in hashed]


@pytest.mark.slow
def test_export_refuses_beside_a_real_training_and_exports_once_it_stopped(tmp_path: Path,
                                                                          bundled_cache: Path) -> None:
    training = subprocess.Popen([sys.executable, "-m", "voicetrain", f"run.root={tmp_path}", "run.name=live",
                                 f"data.cache_dir={bundled_cache}", *TINY_MODEL, "trainer.max_steps=100000",
                                 "ckpt.every_n_steps=5"], cwd=tmp_path, env=environment(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    run_dir, output = tmp_path / "live", tmp_path / "out"
    try:
        while not CheckpointStore(run_dir / "checkpoints").list():
            assert training.poll() is None, training.communicate()[0]
            time.sleep(0.2)
        refused = subprocess.run([sys.executable, "-m", "voicetrain.export", str(run_dir), "--output", str(output)],
                                 capture_output=True, text=True, env=environment(), timeout=300)
    finally:
        training.send_signal(signal.SIGTERM)
        training.communicate(timeout=300)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, output_of(refused)
    assert f"already being trained by pid {training.pid}" in refused.stderr and not output.exists(), output_of(refused)
    assert training.returncode == 128 + signal.SIGTERM
    exported = subprocess.run([sys.executable, "-m", "voicetrain.export", str(run_dir), "--output", str(output)],
                              capture_output=True, text=True, env=environment(), timeout=300)
    assert exported.returncode == 0, output_of(exported)
    verify_export(output, read_export_manifest(output))


# ----- staging names -----

def test_staging_folders_are_unique_per_process_and_name_their_owner(tmp_path: Path) -> None:
    final = tmp_path / "export"
    first, second = unique_staging_path(final), unique_staging_path(final)
    assert first != second and first.name.startswith(".tmp-export.") and second.name.startswith(".tmp-export.")
    assert staging_owner(first.name)[1] == os.getpid()
    with staged(final, unique=True) as one, staged(final, unique=True) as other:
        assert one != other and one.is_dir() and other.is_dir()
    assert sorted(tmp_path.iterdir()) == sorted([one, other])  # committing (or failing) is what removes them


def test_clean_up_removes_only_the_staging_of_writers_that_are_gone(tmp_path: Path) -> None:
    final = tmp_path / "export"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    live = unique_staging_path(final)  # this process: alive
    dead = live.with_name(live.name.replace(f"-{live.name.split('-')[-2]}-", f"-{dead_pid}-"))
    elsewhere = live.with_name(f".tmp-export.00000000-{dead_pid}-abcdef")  # another host: cannot tell, kept
    for folder in (live, dead, elsewhere):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"half")
    assert "interrupted export" in export_problem(final, step=4)
    assert remove_dead_staging(final) == [dead]
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([live.name, elsewhere.name])
    problem = export_problem(final, step=4)
    assert problem is not None and live.name in problem and elsewhere.name in problem
