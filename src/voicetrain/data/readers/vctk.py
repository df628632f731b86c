"""The VCTK 0.92 layout: `root/wav48_silence_trimmed/<speaker>/<speaker>_<nnn>_mic1.flac` (and `_mic2`), with
transcripts in `root/txt/<speaker>/<speaker>_<nnn>.txt`.

Every VCTK speaker first reads the same passages (the elicitation paragraph and the rainbow passage, sentences
001 to about 024), then newspaper sentences of their own under the same numbers. So `sentence_id` is the number
`<nnn>` for the shared sentences only, and None for the rest: the same id must mean the same text. The validation
split of each speaker takes its last shared sentences first, so validation holds parallel pairs across speakers
(what voice conversion measures its MCD on), as the bundled corpus does.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from voicetrain.data.readers.common import (DataError, Utterance, check_fraction, check_root, check_unique,
                                            read_transcript, tail_splits, visible_folders)

logger = logging.getLogger(__name__)

AUDIO_FOLDER = "wav48_silence_trimmed"
TRANSCRIPT_FOLDER = "txt"
MICROPHONES = ("mic1", "mic2")
SHARED_SENTENCES = 24
RECORDING_NAME = re.compile(r"^(?P<speaker>[^_]+)_(?P<number>\d{3})_(?P<microphone>mic[12])\.flac$")
EXPECTED_LAYOUT = (f"root/{AUDIO_FOLDER}/<speaker>/<speaker>_<nnn>_mic1.flac and "
                   f"root/{TRANSCRIPT_FOLDER}/<speaker>/<speaker>_<nnn>.txt")


def _audio_root(root: Path) -> Path:
    """`root/wav48_silence_trimmed`, or a DataError that says what `root` looks like instead."""
    audio_root = root / AUDIO_FOLDER
    if audio_root.is_dir():
        return audio_root
    if root.name == AUDIO_FOLDER:
        hint = f"data.root points at the audio folder itself; set it to its parent {root.parent}"
    elif (root / "wav48").is_dir():
        hint = (f"{root / 'wav48'} looks like VCTK 0.80 (wav48/<speaker>/<speaker>_<nnn>.wav), which this reader does "
                f"not read; use VCTK 0.92, or data=speakers with data.root={root / 'wav48'} (no sentence ids)")
    else:
        nested = [child for child in visible_folders(root) if (child / AUDIO_FOLDER).is_dir()]
        hint = (f"the corpus seems to be one level down: set data.root={nested[0]}" if nested
                else "set data.root to the folder that holds wav48_silence_trimmed/ and txt/")
    raise DataError(f"{audio_root} is missing; a VCTK 0.92 corpus is laid out as {EXPECTED_LAYOUT}. Here, {hint}.")


def _recordings(speaker_folder: Path, microphone: str) -> list[tuple[str, Path]]:
    """(sentence number, path) of the speaker's recordings with `microphone`, sorted by number."""
    found = []
    for path in sorted(speaker_folder.glob("*.flac")):
        if path.name.startswith("."):
            continue
        match = RECORDING_NAME.match(path.name)
        if match is None or match["speaker"] != speaker_folder.name:
            raise DataError(
                f"{path} does not follow VCTK's naming {speaker_folder.name}_<nnn>_mic1.flac (or _mic2); "
                f"rename or remove it."
            )
        if match["microphone"] == microphone:
            found.append((match["number"], path))
    return found


def _validation_order(numbers: list[str], shared_sentences: int) -> list[int]:
    """Indices into `numbers` with the shared sentences last, so that `tail_splits` holds them out first."""
    shared = [index for index, number in enumerate(numbers) if int(number) <= shared_sentences]
    own = [index for index, number in enumerate(numbers) if int(number) > shared_sentences]
    return own + shared


def _speaker_utterances(
    speaker: str, recordings: list[tuple[str, Path, str | None]], shared_sentences: int, val_fraction: float
) -> list[Utterance]:
    numbers = [number for number, _, _ in recordings]
    order = _validation_order(numbers, shared_sentences)
    splits = dict(zip(order, tail_splits(len(order), val_fraction)))
    return [
        Utterance(
            utterance_id=f"{speaker}_{number}",
            speaker=speaker,
            path=path,
            text=text,
            sentence_id=number if int(number) <= shared_sentences else None,
            split=splits[index],
        )
        for index, (number, path, text) in enumerate(recordings)
    ]


def read_vctk(
    root: Path, val_fraction: float = 0.01, microphone: str = "mic1", shared_sentences: int = SHARED_SENTENCES,
    skip_untranscribed: bool = True,
) -> list[Utterance]:
    """Read VCTK 0.92 (see the module docstring): one speaker per folder, recordings of one `microphone`.

    `utterance_id` is `<speaker>_<nnn>`; `sentence_id` is `<nnn>` for sentences up to `shared_sentences`
    and None after. Recordings without a transcript (all of p315's) are left out with a warning when
    `skip_untranscribed` (task=tts needs text), kept with `text=None` otherwise. Each speaker with at least two
    recordings holds out `max(1, round(n * val_fraction))` of them, its last shared sentences first.
    """
    check_fraction(val_fraction, Path(root))
    root = check_root(root, "VCTK 0.92")
    if microphone not in MICROPHONES:
        raise DataError(f"VCTK microphone={microphone!r} must be one of {list(MICROPHONES)}.")
    audio_root = _audio_root(root)
    transcript_root = root / TRANSCRIPT_FOLDER
    if not transcript_root.is_dir():
        raise DataError(
            f"{transcript_root} is missing; a VCTK 0.92 corpus is laid out as {EXPECTED_LAYOUT}. Restore txt/ from "
            f"the VCTK archive, or read the audio alone with data=speakers data.root={audio_root}."
        )
    utterances: list[Utterance] = []
    untranscribed: dict[str, int] = {}
    for speaker_folder in visible_folders(audio_root):
        speaker = speaker_folder.name
        recordings = []
        for number, path in _recordings(speaker_folder, microphone):
            text = read_transcript(transcript_root / speaker / f"{speaker}_{number}.txt")
            if text is None:
                untranscribed[speaker] = untranscribed.get(speaker, 0) + 1
                if skip_untranscribed:
                    continue
            recordings.append((number, path, text))
        utterances.extend(_speaker_utterances(speaker, recordings, shared_sentences, val_fraction))
    if untranscribed:
        counts = ", ".join(f"{speaker} ({count})" for speaker, count in sorted(untranscribed.items()))
        logger.warning(
            "%s %d VCTK recordings that have no transcript in %s: %s.",
            "Leaving out" if skip_untranscribed else "Keeping without text", sum(untranscribed.values()),
            transcript_root, counts,
        )
    if not utterances:
        which = f"{microphone} recordings with a transcript" if skip_untranscribed else f"{microphone} recordings"
        raise DataError(
            f"No {which} found under {audio_root}; a VCTK 0.92 corpus is laid out as {EXPECTED_LAYOUT}. "
            f"Check data.root."
        )
    check_unique(utterances, root)
    return utterances
