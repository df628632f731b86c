"""Where `python -m voicetrain.export RUN --output DIR` may write: the decision, and the facts it needs.

Writing an export replaces the folder it is written to, so the folder must hold nothing of the
user's: it is the run's own `export/`, or an empty or missing folder, or one that holds a
voicetrain export and nothing else (the files its manifest lists). Never the run itself, a folder
above it (or above the current folder), nor anything inside the run's `checkpoints/`.
`destination_problem` is pure; `inspect_destination` gathers the facts from the disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voicetrain.durable import MANIFEST, read_manifest

SHOWN_ENTRIES = 3
EXPORT_CONFIG = "config.json"  # voicetrain.export.artifact.CONFIG; every export lists it


@dataclass(frozen=True)
class DestinationFacts:
    destination: Path  # resolved
    run_dir: Path  # resolved
    current_folder: Path  # resolved
    exists: bool
    is_folder: bool
    foreign_entries: tuple[str, ...]  # names directly inside that are not part of a voicetrain export
    holds_export: bool  # its manifest.json is a voicetrain export's


def destination_problem(facts: DestinationFacts, given: str) -> str | None:
    """Why an export must not be written to `facts.destination` (`given` as the user typed it), or
    None when it may. The message names the path and the fix."""
    destination, run_dir = facts.destination, facts.run_dir
    fix = f"pass --output a new or empty folder, or leave --output out to write {run_dir / 'export'}"
    if destination == run_dir:
        return f"--output {given} is the run folder {run_dir} itself: the export would replace its checkpoints; {fix}"
    if run_dir.is_relative_to(destination):
        return f"--output {given} ({destination}) holds the run {run_dir}: the export would replace it; {fix}"
    if destination.is_relative_to(run_dir / "checkpoints"):
        return f"--output {given} ({destination}) is inside the run's checkpoints/, which only training writes; {fix}"
    if facts.current_folder.is_relative_to(destination):
        return (f"--output {given} ({destination}) is the current folder or above it: the export would replace it; "
                f"{fix}")
    if facts.exists and not facts.is_folder:
        return f"--output {given} ({destination}) is a file, not a folder; {fix}"
    if destination == run_dir / "export":
        return None  # the run's own export, which this command exists to rewrite
    if facts.foreign_entries:
        shown = ", ".join(facts.foreign_entries[:SHOWN_ENTRIES])
        more = f" and {len(facts.foreign_entries) - SHOWN_ENTRIES} more" if len(facts.foreign_entries) > SHOWN_ENTRIES \
            else ""
        what = "a voicetrain export and other files" if facts.holds_export else "files that are not a voicetrain export"
        return f"--output {given} ({destination}) holds {what} ({shown}{more}), which the export would delete; {fix}"
    return None


def export_entries(manifest: dict[str, Any] | None) -> set[str] | None:
    """The top-level names of a voicetrain export's manifest (itself included), or None when the
    manifest is not an export's (a checkpoint's names a step and no task_target)."""
    if manifest is None or not isinstance(manifest.get("files"), dict) or "task_target" not in manifest \
            or EXPORT_CONFIG not in manifest["files"]:
        return None
    return {MANIFEST} | {str(name).split("/", 1)[0] for name in manifest["files"]}


def inspect_destination(destination: Path, run_dir: Path) -> DestinationFacts:
    resolved = destination.resolve()
    is_folder = resolved.is_dir()
    names = sorted(path.name for path in resolved.iterdir()) if is_folder else []
    own = export_entries(read_manifest(resolved)) if is_folder else None
    foreign = tuple(name for name in names if own is None or name not in own)
    return DestinationFacts(resolved, run_dir.resolve(), Path.cwd().resolve(), resolved.exists(), is_folder,
                            foreign, own is not None)
