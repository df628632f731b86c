"""The one-folder-per-speaker layout: `root/<speaker>/**/<file>.<ext>`, with optional `.txt`/`.lab`
transcripts beside the audio."""

from __future__ import annotations

import logging
from pathlib import Path

from voicetrain.data.readers.common import (
    DataError,
    Utterance,
    check_fraction,
    check_root,
    check_unique,
    is_hidden,
    read_transcript,
    tail_splits,
    visible_folders,
)

logger = logging.getLogger(__name__)

TRANSCRIPT_SUFFIXES = (".txt", ".lab")


def _normalise_extensions(extensions: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(
        extension.lower() if extension.startswith(".") else f".{extension.lower()}" for extension in extensions
    )


def sidecar_transcript(audio: Path) -> str | None:
    for suffix in TRANSCRIPT_SUFFIXES:
        candidate = audio.with_suffix(suffix)
        if candidate.is_file():
            return read_transcript(candidate)
    return None


def read_speaker_folders(
    root: Path, extensions: tuple[str, ...] = (".wav", ".flac", ".ogg", ".mp3"), val_fraction: float = 0.05
) -> list[Utterance]:
    """Read a one-folder-per-speaker layout: `root/<speaker>/**/<file>.<ext>`.

    Files are sorted for determinism; `utterance_id` is `"<speaker>/<relative path without suffix>"`; a sibling
    `<file>.txt` or `<file>.lab` (same stem) is read as the transcript. For each speaker with at least two files,
    the last `max(1, round(n * val_fraction))` files form the validation split.
    """
    check_fraction(val_fraction, Path(root))
    root = check_root(root, "speaker-folders")
    wanted = _normalise_extensions(extensions)
    speaker_folders = visible_folders(root)
    loose_files = sorted(
        child
        for child in root.iterdir()
        if child.is_file() and child.suffix.lower() in wanted and not child.name.startswith(".")
    )
    if not speaker_folders and loose_files:
        raise DataError(
            f"Dataset root {root} holds {len(loose_files)} audio files (e.g. {loose_files[0].name}) but no speaker "
            f"sub-folders. The speaker_folders layout expects root/<speaker>/<file> (the folder name is the speaker): "
            f"move the files into one folder per speaker, e.g. {root / 'speaker1' / loose_files[0].name}."
        )
    if loose_files:
        logger.warning(
            "Ignoring %d audio files directly inside %s (e.g. %s): only files inside speaker sub-folders are used.",
            len(loose_files), root, loose_files[0].name,
        )
    utterances: list[Utterance] = []
    for folder in speaker_folders:
        files = sorted(
            (
                path
                for path in folder.rglob("*")
                if path.suffix.lower() in wanted and path.is_file() and not is_hidden(path, folder)
            ),
            key=lambda path: path.relative_to(folder).as_posix(),
        )
        for audio, split in zip(files, tail_splits(len(files), val_fraction)):
            relative = audio.relative_to(folder).with_suffix("").as_posix()
            utterances.append(
                Utterance(
                    utterance_id=f"{folder.name}/{relative}",
                    speaker=folder.name,
                    path=audio,
                    text=sidecar_transcript(audio),
                    sentence_id=None,
                    split=split,
                )
            )
    if not utterances:
        raise DataError(
            f"No audio files with extensions {list(wanted)} found under the speaker folders of {root}; "
            f"check data.root, or add the right suffix to data.extensions."
        )
    check_unique(utterances, root)
    return utterances
