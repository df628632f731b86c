"""The LibriTTS and LibriTTS-R layout: `<subset>/<speaker>/<chapter>/<speaker>_<chapter>_<...>.wav` with
`<same stem>.normalized.txt` and `.original.txt` beside each wav.

`root` is either one subset folder (e.g. `train-clean-100`, whose sub-folders are numeric speaker ids) or the
folder holding several subsets (`LibriTTS_R/`), all of which are read unless `subsets` names some. LibriTTS
is not parallel: `sentence_id` is None.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from voicetrain.data.readers.common import (DataError, Utterance, check_fraction, check_root, check_unique,
                                            read_transcript, tail_splits, visible_folders)

logger = logging.getLogger(__name__)

TRANSCRIPT_KINDS = ("normalized", "original")
EXPECTED_LAYOUT = "<subset>/<speaker>/<chapter>/<speaker>_<chapter>_<n>_<m>.wav with a .normalized.txt beside each wav"


def _numeric_folders(folder: Path) -> list[Path]:
    return [child for child in visible_folders(folder) if child.name.isdigit()]


def _is_subset(folder: Path) -> bool:
    """Whether `folder` holds `<speaker>/<chapter>/` folders, both numeric, as a LibriTTS subset does."""
    return any(_numeric_folders(speaker) for speaker in _numeric_folders(folder))


def _wrong_root_hint(root: Path) -> str:
    if any(any(chapter.glob("*.wav")) for chapter in _numeric_folders(root)):
        return f"it looks like one speaker's folder: set data.root to the subset above it, {root.parent}"
    nested = [child for child in visible_folders(root) if any(_is_subset(grandchild)
                                                              for grandchild in visible_folders(child))]
    if nested:
        return f"the subsets seem to be one level down: set data.root={nested[0]}"
    return "set data.root to a subset folder (e.g. .../LibriTTS_R/train-clean-100) or the folder holding them"


def _subset_folders(root: Path, subsets: tuple[str, ...] | None) -> list[Path]:
    """The subset folders to read: `root` itself when it holds speaker folders, else its subsets."""
    if _is_subset(root):
        if subsets is not None and root.name not in subsets:
            raise DataError(
                f"data.root={root} is a single LibriTTS subset, not one of subsets={list(subsets)}; point data.root "
                f"at the folder holding the subsets, or drop the subsets setting."
            )
        return [root]
    found = [child for child in visible_folders(root) if _is_subset(child)]
    if not found:
        raise DataError(
            f"No LibriTTS <speaker>/<chapter>/ folders (numeric names) in {root} or its sub-folders; a LibriTTS corpus "
            f"is laid out as {EXPECTED_LAYOUT}. Here, {_wrong_root_hint(root)}."
        )
    if subsets is None:
        return found
    missing = sorted(set(subsets) - {folder.name for folder in found})
    if missing:
        raise DataError(
            f"LibriTTS subsets {missing} are not in {root}, which holds {[folder.name for folder in found]}; "
            f"fix the subsets setting or data.root."
        )
    return [folder for folder in found if folder.name in subsets]


def _chapter_recordings(chapter: Path, speaker: str) -> list[Path]:
    recordings = sorted(path for path in chapter.glob("*.wav") if not path.name.startswith("."))
    prefix = f"{speaker}_{chapter.name}_"
    for path in recordings:
        if not path.name.startswith(prefix):
            raise DataError(
                f"{path} does not follow LibriTTS's naming {prefix}<n>_<m>.wav for speaker {speaker}, chapter "
                f"{chapter.name}; move or remove it."
            )
    return recordings


def _speaker_recordings(subsets: list[Path]) -> dict[str, list[Path]]:
    """Every speaker's wav files across the subsets, sorted by file name."""
    by_speaker: dict[str, list[Path]] = {}
    for subset in subsets:
        for speaker_folder in _numeric_folders(subset):
            for chapter in _numeric_folders(speaker_folder):
                by_speaker.setdefault(speaker_folder.name, []).extend(
                    _chapter_recordings(chapter, speaker_folder.name)
                )
    return {speaker: sorted(paths, key=lambda path: path.name) for speaker, paths in sorted(by_speaker.items())}


def read_libritts(
    root: Path, val_fraction: float = 0.01, subsets: tuple[str, ...] | None = None,
    transcript: Literal["normalized", "original"] = "normalized", skip_untranscribed: bool = True,
) -> list[Utterance]:
    """Read LibriTTS or LibriTTS-R (see the module docstring).

    `utterance_id` is the file stem (`<speaker>_<chapter>_<n>_<m>`) and `text` the `.normalized.txt` beside
    it (`transcript="original"`: the `.original.txt`). Utterances without that file are left out with a warning
    that names them when `skip_untranscribed`, kept with `text=None` otherwise. Each speaker with at least two
    utterances holds out its last `max(1, round(n * val_fraction))` in file-name order.
    """
    check_fraction(val_fraction, Path(root))
    root = check_root(root, "LibriTTS")
    if transcript not in TRANSCRIPT_KINDS:
        raise DataError(f"LibriTTS transcript={transcript!r} must be one of {list(TRANSCRIPT_KINDS)}.")
    by_speaker = _speaker_recordings(_subset_folders(root, subsets))
    if not any(by_speaker.values()):
        raise DataError(
            f"No .wav files in the <speaker>/<chapter>/ folders under {root}; a LibriTTS corpus is laid out as "
            f"{EXPECTED_LAYOUT}. (LibriSpeech, with FLAC and one .trans.txt per chapter, is a different layout.)"
        )
    utterances: list[Utterance] = []
    untranscribed: list[Path] = []
    for speaker, recordings in by_speaker.items():
        kept = []
        for path in recordings:
            text = read_transcript(path.with_name(f"{path.stem}.{transcript}.txt"))
            if text is None:
                untranscribed.append(path)
                if skip_untranscribed:
                    continue
            kept.append((path, text))
        utterances.extend(
            Utterance(path.stem, speaker, path, text, None, split)
            for (path, text), split in zip(kept, tail_splits(len(kept), val_fraction))
        )
    if untranscribed:
        logger.warning(
            "%s %d LibriTTS utterances without a .%s.txt beside them, e.g. %s.",
            "Leaving out" if skip_untranscribed else "Keeping without text", len(untranscribed), transcript,
            ", ".join(str(path) for path in untranscribed[:3]),
        )
    if not utterances:
        raise DataError(
            f"None of the {len(untranscribed)} LibriTTS utterances under {root} has a .{transcript}.txt beside it; "
            f"a LibriTTS corpus is laid out as {EXPECTED_LAYOUT}."
        )
    check_unique(utterances, root)
    return utterances
