"""What is done: one record per input recording, kept in the output's state folder.

A record names the recording, the key of the work (the file's size and modification time, its
transcript and every setting that shapes the output), the clips written with their sizes, and
what was left out and why. It is written twice: before the clips, listing them as not yet
complete (so a later launch can remove what an interrupted one wrote), and after them, complete.
A recording is done when its record is complete, has the current key, and every file it lists is
on disk with the size it had; anything else is redone, and the files of an outdated record that
the new work does not write again are removed.

A record is read from the output folder, which may have been handed over or edited, so every file
it names must lie inside the output's corpus once resolved (`outside_names`): a record naming
`../x`, an absolute path, a link leading out or the state folder is ignored with a warning, and
nothing it names is ever deleted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voicetrain.durable import atomic_write_text, confined_path
from voicetrain.preprocess.settings import STATE_FOLDER

log = logging.getLogger("voicetrain.preprocess")

RECORDS_FOLDER = "records"
# Bump when the way clips are made changes (not the settings): every record becomes outdated.
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Clip:
    """One written clip: its wav relative to the output folder and what the report needs."""

    path: str
    speaker: str
    seconds: float
    lufs: float
    peak_db: float
    text: str | None = None  # the normalised transcript
    original_text: str | None = None


@dataclass(frozen=True)
class Dropped:
    """Something of the input left out: the recording (with the time range of a piece) and why."""

    what: str
    reason: str


@dataclass
class Record:
    source: str  # the recording, relative to the input folder
    key: str
    speaker: str = ""
    complete: bool = False
    files: dict[str, int] = field(default_factory=dict)  # every file written (relative path: bytes)
    clips: list[Clip] = field(default_factory=list)
    dropped: list[Dropped] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Record:
        return cls(source=data["source"], key=data["key"], speaker=data["speaker"], complete=data["complete"],
                   files=dict(data["files"]),
                   clips=[Clip(**clip) for clip in data["clips"]],
                   dropped=[Dropped(**dropped) for dropped in data["dropped"]])


def work_key(path: Path, transcript: tuple[str | None, str | None], settings_identity: str) -> str:
    status = path.stat()
    identity = [FORMAT_VERSION, status.st_size, status.st_mtime_ns, transcript, settings_identity]
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:24]


def record_path(state: Path, source: str) -> Path:
    return state / RECORDS_FOLDER / f"{hashlib.sha256(source.encode()).hexdigest()[:24]}.json"


def write_record(state: Path, record: Record) -> None:
    path = record_path(state, record.source)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, record.to_json())


def inside_corpus(output: Path, state: Path, name: str) -> Path | None:
    """`output / name` when `name` is a file of the corpus: inside `output` once resolved, outside
    the state folder; None otherwise."""
    path = confined_path(output, name)
    if path is None or path.resolve().is_relative_to(state.resolve()):
        return None
    return path


def outside_names(output: Path, state: Path, record: Record) -> list[str]:
    """The names in `record` (its files and clips) that are not files of the corpus in `output`."""
    names = [*record.files, *(clip.path for clip in record.clips)]
    return [name for name in names if not isinstance(name, str) or inside_corpus(output, state, name) is None]


def read_record(path: Path, warn: bool = False) -> Record | None:
    """The record at `path` (OUTPUT/.preprocess/records/<id>.json), or None when it is missing,
    unreadable, or names a file outside the corpus in OUTPUT (the work is then redone, and nothing
    it names is deleted); `warn` says so."""
    try:
        record = Record.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):  # ValueError: undecodable, not JSON, not a table
        return None
    state = path.parent.parent
    output = state.parent
    outside = outside_names(output, state, record)
    if outside:
        if warn:
            log.warning("ignoring %s: it names %r, which is not a file of the corpus in %s (an edited or foreign "
                        "record); nothing it names is deleted, and its recording, if still in the input, is "
                        "processed again", path, outside[0], output)
        return None
    return record


def all_records(state: Path) -> list[Record]:
    folder = state / RECORDS_FOLDER
    found = (read_record(path, warn=True) for path in sorted(folder.glob("*.json"))) if folder.is_dir() else ()
    return [record for record in found if record is not None]


def is_done(record: Record | None, key: str, output: Path) -> bool:
    if record is None or not record.complete or record.key != key:
        return False
    return all((output / name).is_file() and (output / name).stat().st_size == size
               for name, size in record.files.items())


def remove_files(output: Path, names: list[str]) -> None:
    """Deletes files this command listed in a record (never anything else of the output, never
    anything outside it), and the folders that this leaves empty (an empty folder would read as
    a speaker without recordings)."""
    state = output / STATE_FOLDER
    for name in names:
        path = inside_corpus(output, state, name)
        if path is None:
            log.warning("not deleting %r: a record names it, but it is not a file of the corpus in %s", name, output)
            continue
        path.unlink(missing_ok=True)
        for folder in path.parents:
            if folder == output or not folder.is_relative_to(output) or any(folder.iterdir()):
                break
            folder.rmdir()


def forget(state: Path, output: Path, record: Record) -> None:
    """Removes the clips of a recording that is no longer in the input, then its record."""
    remove_files(output, sorted(record.files))
    record_path(state, record.source).unlink(missing_ok=True)
