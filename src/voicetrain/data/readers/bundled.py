"""The bundled-corpus layout: `root/metadata.csv` with a header row and audio at
`root/<speaker>/<sentence_id>.flac`."""

from __future__ import annotations

from pathlib import Path

from voicetrain.data.readers.common import (
    SPLITS,
    DataError,
    Utterance,
    check_root,
    check_unique,
    metadata_path,
    metadata_rows,
    missing_audio,
)

BUNDLED_CORPUS: Path = Path(__file__).resolve().parent.parent.parent / "assets" / "tiny"
BUNDLED_HEADER = ("utterance_id", "speaker", "sentence_id", "split", "text")


def read_bundled_corpus(root: Path | None = None) -> list[Utterance]:
    """Read the bundled corpus layout: `root/metadata.csv` with header
    `utterance_id|speaker|sentence_id|split|text` and audio at `root/<speaker>/<sentence_id>.flac`.

    `root=None` reads the corpus shipped inside the package (`BUNDLED_CORPUS`).
    """
    root = check_root(BUNDLED_CORPUS if root is None else Path(root), "bundled-layout")
    metadata = metadata_path(root, "bundled-layout")
    utterances: list[Utterance] = []
    rows = metadata_rows(metadata, len(BUNDLED_HEADER), "|".join(BUNDLED_HEADER))
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
            raise missing_audio(audio, metadata, line_number)
        utterances.append(Utterance(utterance_id, speaker, audio, text or None, sentence_id, split))
    if not utterances:
        raise DataError(f"{metadata} lists no utterances; add lines below the header.")
    check_unique(utterances, metadata)
    return utterances
