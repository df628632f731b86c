"""Dataset layout readers: turn a corpus on disk into a list of ``Utterance`` records.

This module owns the knowledge of the supported corpus layouts (the bundled tiny corpus, LJSpeech-1.1 and
one-folder-per-speaker) and the deterministic train/val split of each. It only reads metadata and checks that the
audio files exist; decoding audio is the job of ``voicetrain.audio`` and ``voicetrain.features.store``.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

BUNDLED_CORPUS: Path = Path(__file__).resolve().parent.parent / "assets" / "tiny"
BUNDLED_HEADER = ("utterance_id", "speaker", "sentence_id", "split", "text")
LJSPEECH_FIELDS = 3
SPLITS = ("train", "val")
TRANSCRIPT_SUFFIXES = (".txt", ".lab")


@dataclass(frozen=True)
class Utterance:
    """One recording and what is known about it."""

    utterance_id: str
    speaker: str
    path: Path
    text: str | None = None  # transcript when the layout has one
    sentence_id: str | None = None  # same value for the same sentence read by different speakers (parallel corpora)
    split: str = "train"  # "train" or "val"


class DataError(ValueError):
    """A dataset cannot be read as configured; the message names the path and the fix."""


def validation_count(total: int, val_fraction: float) -> int:
    """How many of ``total`` items go to validation: ``max(1, round(total * val_fraction))``, 0 below 2 items.

    At least one item always stays in training, so a tiny speaker is never validation-only.
    """
    if total < 2:
        return 0
    return min(total - 1, max(1, round(total * val_fraction)))


def _check_fraction(val_fraction: float, where: Path) -> None:
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(
            f"val_fraction={val_fraction!r} for dataset {where} must be in [0, 1); "
            f"set data.val_fraction to e.g. 0.02."
        )


def _check_root(root: Path, layout: str) -> Path:
    root = Path(root)
    if not root.exists():
        raise DataError(f"Dataset root {root} does not exist; set data.root to the folder holding the {layout} corpus.")
    if not root.is_dir():
        raise DataError(
            f"Dataset root {root} is not a directory; set data.root to the folder holding the {layout} corpus."
        )
    return root


def _metadata_path(root: Path, layout: str) -> Path:
    metadata = root / "metadata.csv"
    if not metadata.is_file():
        raise DataError(
            f"Metadata file {metadata} is missing; a {layout} corpus needs root/metadata.csv. "
            f"Check data.root, or use the speaker_folders layout for a corpus without metadata."
        )
    return metadata


def _metadata_rows(metadata: Path, expected_fields: int, line_format: str) -> Iterator[tuple[int, list[str]]]:
    """Yield (line number, fields) for every non-blank line of a pipe-separated metadata file."""
    with metadata.open(encoding="utf-8", newline="") as handle:
        # QUOTE_NONE: quotation marks in transcripts are literal text, not CSV quoting.
        reader = csv.reader(handle, delimiter="|", quoting=csv.QUOTE_NONE)
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != expected_fields:
                raise DataError(
                    f"{metadata}, line {reader.line_num}: expected {expected_fields} '|'-separated fields "
                    f"({line_format}), found {len(row)}; fix or remove that line."
                )
            yield reader.line_num, row


def _missing_audio(audio: Path, metadata: Path, line_number: int) -> DataError:
    return DataError(
        f"Audio file {audio} named in {metadata}, line {line_number} does not exist; "
        f"restore the file or remove that line from the metadata."
    )


def _check_unique(utterances: list[Utterance], where: Path) -> None:
    seen: dict[str, Path] = {}
    for utterance in utterances:
        if utterance.utterance_id in seen:
            raise DataError(
                f"Duplicate utterance_id {utterance.utterance_id!r} in {where} (files {seen[utterance.utterance_id]} "
                f"and {utterance.path}); give every utterance a unique id."
            )
        seen[utterance.utterance_id] = utterance.path


def read_bundled_corpus(root: Path | None = None) -> list[Utterance]:
    """Read the bundled corpus layout: ``root/metadata.csv`` with header
    ``utterance_id|speaker|sentence_id|split|text`` and audio at ``root/<speaker>/<sentence_id>.flac``.

    ``root=None`` reads the corpus shipped inside the package (``BUNDLED_CORPUS``).
    """
    root = _check_root(BUNDLED_CORPUS if root is None else Path(root), "bundled-layout")
    metadata = _metadata_path(root, "bundled-layout")
    utterances: list[Utterance] = []
    rows = _metadata_rows(metadata, len(BUNDLED_HEADER), "|".join(BUNDLED_HEADER))
    header_seen = False
    for line_number, row in rows:
        if not header_seen:
            if tuple(field.strip() for field in row) != BUNDLED_HEADER:
                raise DataError(
                    f"{metadata}, line {line_number}: expected the header {'|'.join(BUNDLED_HEADER)!r}, "
                    f"found {'|'.join(row)!r}; add that header as the first line."
                )
            header_seen = True
            continue
        utterance_id, speaker, sentence_id, split, text = (field.strip() for field in row)
        if split not in SPLITS:
            raise DataError(
                f"{metadata}, line {line_number}: split {split!r} must be one of {list(SPLITS)}; fix that line."
            )
        if not utterance_id or not speaker or not sentence_id:
            raise DataError(
                f"{metadata}, line {line_number}: utterance_id, speaker and sentence_id must not be empty; "
                f"fix that line."
            )
        audio = root / speaker / f"{sentence_id}.flac"
        if not audio.is_file():
            raise _missing_audio(audio, metadata, line_number)
        utterances.append(Utterance(utterance_id, speaker, audio, text or None, sentence_id, split))
    if not utterances:
        raise DataError(f"{metadata} lists no utterances; add lines below the header.")
    _check_unique(utterances, metadata)
    return utterances


def read_ljspeech(root: Path, speaker: str = "ljspeech", val_fraction: float = 0.02) -> list[Utterance]:
    """Read the LJSpeech-1.1 layout: ``root/metadata.csv`` with header-less lines ``id|text|normalized_text``
    and audio at ``root/wavs/<id>.wav``.

    The transcript is the normalized text (the raw text when that is empty). The last
    ``max(1, round(n * val_fraction))`` ids in file order form the validation split.
    """
    _check_fraction(val_fraction, Path(root))
    root = _check_root(root, "LJSpeech")
    metadata = _metadata_path(root, "LJSpeech")
    records: list[tuple[str, Path, str | None]] = []
    for line_number, (utterance_id, text, normalized_text) in _metadata_rows(
        metadata, LJSPEECH_FIELDS, "id|text|normalized_text"
    ):
        utterance_id = utterance_id.strip()
        if not utterance_id:
            raise DataError(f"{metadata}, line {line_number}: the id field is empty; fix that line.")
        audio = root / "wavs" / f"{utterance_id}.wav"
        if not audio.is_file():
            raise _missing_audio(audio, metadata, line_number)
        transcript = normalized_text.strip() or text.strip() or None
        records.append((utterance_id, audio, transcript))
    if not records:
        raise DataError(
            f"{metadata} lists no utterances; an LJSpeech metadata.csv has one id|text|normalized_text line per clip."
        )
    first_val = len(records) - validation_count(len(records), val_fraction)
    utterances = [
        Utterance(utterance_id, speaker, audio, transcript, None, "val" if index >= first_val else "train")
        for index, (utterance_id, audio, transcript) in enumerate(records)
    ]
    _check_unique(utterances, metadata)
    return utterances


def _normalise_extensions(extensions: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(
        extension.lower() if extension.startswith(".") else f".{extension.lower()}" for extension in extensions
    )


def _is_hidden(path: Path, root: Path) -> bool:
    # Skips editor/OS debris such as macOS "._x.wav" resource forks and ".git" folders.
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _transcript(audio: Path) -> str | None:
    for suffix in TRANSCRIPT_SUFFIXES:
        candidate = audio.with_suffix(suffix)
        if candidate.is_file():
            return candidate.read_text(encoding="utf-8").strip() or None
    return None


def read_speaker_folders(
    root: Path, extensions: tuple[str, ...] = (".wav", ".flac", ".ogg", ".mp3"), val_fraction: float = 0.05
) -> list[Utterance]:
    """Read a one-folder-per-speaker layout: ``root/<speaker>/**/<file>.<ext>``.

    Files are sorted for determinism; ``utterance_id`` is ``"<speaker>/<relative path without suffix>"``; a sibling
    ``<file>.txt`` or ``<file>.lab`` (same stem) is read as the transcript. For each speaker with at least two files,
    the last ``max(1, round(n * val_fraction))`` files form the validation split.
    """
    _check_fraction(val_fraction, Path(root))
    root = _check_root(root, "speaker-folders")
    wanted = _normalise_extensions(extensions)
    speaker_folders = sorted(child for child in root.iterdir() if child.is_dir() and not child.name.startswith("."))
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
                if path.suffix.lower() in wanted and path.is_file() and not _is_hidden(path, folder)
            ),
            key=lambda path: path.relative_to(folder).as_posix(),
        )
        first_val = len(files) - validation_count(len(files), val_fraction)
        for index, audio in enumerate(files):
            relative = audio.relative_to(folder).with_suffix("").as_posix()
            utterances.append(
                Utterance(
                    utterance_id=f"{folder.name}/{relative}",
                    speaker=folder.name,
                    path=audio,
                    text=_transcript(audio),
                    sentence_id=None,
                    split="val" if index >= first_val else "train",
                )
            )
    if not utterances:
        raise DataError(
            f"No audio files with extensions {list(wanted)} found under the speaker folders of {root}; "
            f"check data.root, or add the right suffix to data.extensions."
        )
    _check_unique(utterances, root)
    return utterances
