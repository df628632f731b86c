"""What every corpus reader shares: the `Utterance` record, `DataError`, the validation-count rule and the checks
of roots, fractions, metadata files and unique ids."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "val")


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
    """How many of `total` items go to validation: `max(1, round(total * val_fraction))`, 0 below 2 items.

    At least one item always stays in training, so a tiny speaker is never validation-only.
    """
    if total < 2:
        return 0
    return min(total - 1, max(1, round(total * val_fraction)))


def check_fraction(val_fraction: float, where: Path) -> None:
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(
            f"val_fraction={val_fraction!r} for dataset {where} must be in [0, 1); "
            f"set data.val_fraction to e.g. 0.02."
        )


def check_root(root: Path, layout: str) -> Path:
    root = Path(root)
    if not root.exists():
        raise DataError(f"Dataset root {root} does not exist; set data.root to the folder holding the {layout} corpus.")
    if not root.is_dir():
        raise DataError(
            f"Dataset root {root} is not a directory; set data.root to the folder holding the {layout} corpus."
        )
    return root


def metadata_path(root: Path, layout: str) -> Path:
    metadata = root / "metadata.csv"
    if not metadata.is_file():
        raise DataError(
            f"Metadata file {metadata} is missing; a {layout} corpus needs root/metadata.csv. "
            f"Check data.root, or use the speaker_folders layout for a corpus without metadata."
        )
    return metadata


def metadata_rows(metadata: Path, expected_fields: int, line_format: str) -> Iterator[tuple[int, list[str]]]:
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


def missing_audio(audio: Path, metadata: Path, line_number: int) -> DataError:
    return DataError(
        f"Audio file {audio} named in {metadata}, line {line_number} does not exist; "
        f"restore the file or remove that line from the metadata."
    )


def check_unique(utterances: list[Utterance], where: Path) -> None:
    seen: dict[str, Path] = {}
    for utterance in utterances:
        if utterance.utterance_id in seen:
            raise DataError(
                f"Duplicate utterance_id {utterance.utterance_id!r} in {where} (files {seen[utterance.utterance_id]} "
                f"and {utterance.path}); give every utterance a unique id."
            )
        seen[utterance.utterance_id] = utterance.path


def is_hidden(path: Path, root: Path) -> bool:
    # Skips editor/OS debris such as macOS "._x.wav" resource forks and ".git" folders.
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def visible_folders(folder: Path) -> list[Path]:
    """The sub-folders of `folder` whose names do not start with a dot, sorted by name."""
    return sorted(child for child in folder.iterdir() if child.is_dir() and not child.name.startswith("."))


def tail_splits(total: int, val_fraction: float) -> list[str]:
    """Split names for `total` items in their order: the last `validation_count` are "val", the rest "train"."""
    first_val = total - validation_count(total, val_fraction)
    return ["val" if index >= first_val else "train" for index in range(total)]


def read_transcript(path: Path) -> str | None:
    """The stripped text of a transcript file, or None when the file is missing or blank."""
    if not path.is_file():
        return None
    return path.read_text(encoding="utf-8").strip() or None
