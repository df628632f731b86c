"""The input folder: which recordings it holds, whose they are, and their transcripts.

Either one sub-folder per speaker (`input/<speaker>/**/<file>`), or one speaker's recordings
directly inside the input (then named by `speaker=`), which is also how a folder with an
LJSpeech-style `metadata.csv` is read. Recordings are the audio files soundfile reads (wav,
flac, ogg, mp3), any sample rate, stereo allowed; hidden files and folders are skipped. A
transcript is a `.txt` or `.lab` file beside a recording, or a line `id|text` or
`id|text|normalized` of a `metadata.csv` at the top of the speaker's folder (or of the input),
where `id` is the recording's file name without suffix. Nothing here writes anything.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

# The corpus reader's own rules for hidden files and transcript files, so that what this command
# reads as a transcript is what the reader of its output reads.
from voicetrain.data.readers.common import is_hidden
from voicetrain.data.readers.speaker_folders import sidecar_transcript as sidecar_text
from voicetrain.preprocess.journal import Dropped
from voicetrain.preprocess.settings import PreprocessSettings

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
METADATA = "metadata.csv"


class InputError(ValueError):
    """The input folder cannot be read as configured; the message names the path and the fix."""


@dataclass(frozen=True)
class Recording:
    path: Path
    source: str  # relative to the input folder (posix): the recording's identity across launches
    speaker: str
    relative: str  # relative to the speaker's folder, without suffix (posix)
    text: str | None = None  # the transcript as written
    normalised_text: str | None = None  # a metadata.csv's third column, when it has one


@dataclass(frozen=True)
class Inventory:
    recordings: list[Recording]
    dropped: list[Dropped]  # transcripts naming no recording


def audio_files(folder: Path, recursive: bool = True) -> list[Path]:
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    return sorted((path for path in candidates
                   if path.suffix.lower() in AUDIO_SUFFIXES and path.is_file() and not is_hidden(path, folder)),
                  key=lambda path: path.relative_to(folder).as_posix())


def read_metadata(path: Path) -> dict[str, tuple[str, str | None, int]]:
    """id -> (text, normalised text or None, line number) of a metadata.csv."""
    entries = {}
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="|", quoting=csv.QUOTE_NONE)
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) not in (2, 3) or not row[0].strip():
                raise InputError(f"{path}, line {reader.line_num}: expected 'id|text' or 'id|text|normalized', "
                                 f"found {len(row)} field(s); fix or remove that line")
            text = row[1].strip()
            normalised = row[2].strip() if len(row) == 3 else ""
            entries[row[0].strip()] = (text, normalised or None, reader.line_num)
    return entries


def speaker_recordings(folder: Path, speaker: str, input_root: Path, recursive: bool) -> Inventory:
    """The recordings of one speaker's folder, with their transcripts."""
    metadata_path = folder / METADATA
    metadata = read_metadata(metadata_path) if metadata_path.is_file() else {}
    recordings = []
    for path in audio_files(folder, recursive):
        text, normalised = sidecar_text(path), None
        if text is None and path.stem in metadata:
            text, normalised, _ = metadata[path.stem]
        recordings.append(Recording(path=path, source=path.relative_to(input_root).as_posix(), speaker=speaker,
                                    relative=path.relative_to(folder).with_suffix("").as_posix(), text=text or None,
                                    normalised_text=normalised if text else None))
    names = {Path(recording.relative).name for recording in recordings}
    dropped = [Dropped(f"{metadata_path.relative_to(input_root).as_posix()} line {line}",
                       f"no recording named {name!r} (with one of the suffixes {', '.join(AUDIO_SUFFIXES)})")
               for name, (_, _, line) in metadata.items() if name not in names]
    return Inventory(recordings, dropped)


def single_speaker(settings: PreprocessSettings, root: Path) -> str:
    if settings.speaker is not None:
        return settings.speaker
    if settings.layout == "ljspeech":
        return "ljspeech"  # the layout has no speaker names; the corpus reader calls it this
    raise InputError(f"input={settings.input!r} holds the recordings of one speaker (no speaker sub-folders); "
                     f"name that speaker with speaker=NAME, e.g. speaker={root.name}")


def discover(settings: PreprocessSettings) -> Inventory:
    """Every recording of the input folder, in a stable order."""
    root = settings.input_root
    folders = sorted(child for child in root.iterdir() if child.is_dir() and not child.name.startswith("."))
    speaker_folders = [folder for folder in folders if audio_files(folder)]
    loose = audio_files(root, recursive=False)
    if not speaker_folders and not loose:
        raise InputError(f"input={settings.input!r}: no recordings found (looked for {', '.join(AUDIO_SUFFIXES)} "
                         "files, hidden ones skipped); check the path")
    if (root / METADATA).is_file() or not speaker_folders:
        # One speaker: an LJSpeech-style folder (metadata.csv and wavs/), or loose recordings.
        inventory = speaker_recordings(root, single_speaker(settings, root), root, recursive=True)
    elif loose:
        raise InputError(f"input={settings.input!r} holds both speaker folders ({speaker_folders[0].name}, ...) and "
                         f"recordings outside them (e.g. {loose[0].name}); move those into a speaker's folder")
    elif settings.speaker is not None:
        raise InputError(f"speaker={settings.speaker!r}: names the speaker of loose recordings, but input="
                         f"{settings.input!r} has one folder per speaker ({speaker_folders[0].name}, ...); "
                         "drop speaker=")
    else:
        parts = [speaker_recordings(folder, folder.name, root, recursive=True) for folder in speaker_folders]
        inventory = Inventory([item for part in parts for item in part.recordings],
                              [item for part in parts for item in part.dropped])
    return inventory
