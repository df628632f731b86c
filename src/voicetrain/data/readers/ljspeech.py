"""The LJSpeech-1.1 layout: `root/metadata.csv` with lines `id|text|normalized_text` and audio at
`root/wavs/<id>.wav`; one speaker."""

from __future__ import annotations

from pathlib import Path

from voicetrain.data.readers.common import (
    DataError,
    Utterance,
    check_fraction,
    check_root,
    check_unique,
    metadata_path,
    metadata_rows,
    missing_audio,
    tail_splits,
)

LJSPEECH_FIELDS = 3


def read_ljspeech(root: Path, speaker: str = "ljspeech", val_fraction: float = 0.02) -> list[Utterance]:
    """Read the LJSpeech-1.1 layout: `root/metadata.csv` with header-less lines `id|text|normalized_text`
    and audio at `root/wavs/<id>.wav`.

    The transcript is the normalized text (the raw text when that is empty). The last
    `max(1, round(n * val_fraction))` ids in file order form the validation split.
    """
    check_fraction(val_fraction, Path(root))
    root = check_root(root, "LJSpeech")
    metadata = metadata_path(root, "LJSpeech")
    records: list[tuple[str, Path, str | None]] = []
    for line_number, (utterance_id, text, normalized_text) in metadata_rows(
        metadata, LJSPEECH_FIELDS, "id|text|normalized_text"
    ):
        utterance_id = utterance_id.strip()
        if not utterance_id:
            raise DataError(f"{metadata}, line {line_number}: the id field is empty; fix that line.")
        audio = root / "wavs" / f"{utterance_id}.wav"
        if not audio.is_file():
            raise missing_audio(audio, metadata, line_number)
        transcript = normalized_text.strip() or text.strip() or None
        records.append((utterance_id, audio, transcript))
    if not records:
        raise DataError(
            f"{metadata} lists no utterances; an LJSpeech metadata.csv has one id|text|normalized_text line per clip."
        )
    utterances = [
        Utterance(utterance_id, speaker, audio, transcript, None, split)
        for (utterance_id, audio, transcript), split in zip(records, tail_splits(len(records), val_fraction))
    ]
    check_unique(utterances, metadata)
    return utterances
