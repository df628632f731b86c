"""The output corpus on disk, in one of the layouts the corpus readers read as they are.

`speakers` (voicetrain.data.read_speaker_folders): `OUTPUT/<speaker>/<name>.wav`, with
`<name>.txt` holding the normalised transcript and `<name>.original.txt` the text as written,
where the recording has one. `ljspeech` (voicetrain.data.read_ljspeech), for one speaker whose
every recording has a transcript: `OUTPUT/wavs/<id>.wav` and `OUTPUT/metadata.csv` with lines
`id|text|normalized_text`. Audio is 16-bit PCM wav. Every file is written atomically, so an
interrupted launch leaves whole files or none. An `ljspeech` id is the recording's name made
safe for metadata.csv (`metadata_id`), so the corpus always reads back with its own reader.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import soundfile

from voicetrain.durable import atomic_write, atomic_write_text
from voicetrain.preprocess.journal import Clip, Dropped
from voicetrain.preprocess.sources import InputError, Recording

ORIGINAL_SUFFIX = ".original.txt"
# What metadata.csv cannot hold in an id: '|' separates its fields, line breaks its lines, and
# other control characters would be invisible in it.
UNSAFE_ID_CHARACTERS = re.compile(r"[|\x00-\x1f\x7f]")


def metadata_id(name: str) -> str:
    """`name` as an LJSpeech id: unsafe characters become '_', and the spaces around it go (the
    reader strips them, so the id would no longer name its wav)."""
    return UNSAFE_ID_CHARACTERS.sub("_", name).strip() or "_"


def base_name(recording: Recording, layout: str) -> str:
    """Where a recording's clips go, relative to the output folder, without suffix."""
    if layout == "ljspeech":
        return f"wavs/{metadata_id(Path(recording.relative).name)}"
    return f"{recording.speaker}/{recording.relative}"


def clip_name(base: str, piece: int | None) -> str:
    """A recording that is cut keeps its name with the piece's number; one that is not, its name."""
    return base if piece is None else f"{base}_{piece:04d}"


def assign_names(recordings: list[Recording], layout: str) -> tuple[list[tuple[Recording, str]], list[Dropped]]:
    """Each recording with its base name; a recording whose name (ignoring case) an earlier one
    already has, e.g. take.wav beside take.flac, is left out with the reason."""
    taken: dict[str, Recording] = {}
    named, dropped = [], []
    for recording in recordings:
        base = base_name(recording, layout)
        earlier = taken.get(base.lower())
        if earlier is not None:
            dropped.append(Dropped(recording.source, f"its output name {base!r} is already {earlier.source}'s; "
                                                     "rename one of them"))
            continue
        taken[base.lower()] = recording
        named.append((recording, base))
    return named, dropped


def check_layout(recordings: list[Recording], layout: str) -> None:
    if layout != "ljspeech":
        return
    speakers = sorted({recording.speaker for recording in recordings})
    if len(speakers) > 1:
        raise InputError(f"layout=ljspeech holds one speaker, and the input has {len(speakers)} "
                         f"({', '.join(speakers)}); use layout=speakers")
    untranscribed = [recording.source for recording in recordings if recording.text is None]
    if untranscribed:
        raise InputError(f"layout=ljspeech needs a transcript for every recording; {len(untranscribed)} have none "
                         f"(e.g. {untranscribed[0]}); add a .txt beside each, or use layout=speakers")


def one_line(text: str) -> str:
    """A transcript as one metadata.csv field: no line breaks, and no '|' (the field separator)."""
    return " ".join(text.replace("|", " ").split())


def clip_files(name: str, layout: str, has_text: bool) -> list[str]:
    """The files of one clip, relative to the output folder: the wav first, then its transcripts."""
    files = [f"{name}.wav"]
    if layout == "speakers" and has_text:
        files += [f"{name}.txt", f"{name}{ORIGINAL_SUFFIX}"]
    return files


def write_clip(output: Path, name: str, wave: np.ndarray, sample_rate: int, text: str | None,
               original_text: str | None, layout: str) -> dict[str, int]:
    """Writes one clip's files; returns each written file (relative to `output`) with its size."""
    wav, *transcripts = [output / file for file in clip_files(name, layout, text is not None)]
    wav.parent.mkdir(parents=True, exist_ok=True)
    # soundfile is told the format: the temporary name's suffix is not .wav.
    atomic_write(wav, lambda temporary: soundfile.write(temporary, wave, sample_rate, subtype="PCM_16", format="WAV"))
    for path, content in zip(transcripts, (text, original_text)):
        atomic_write_text(path, f"{content}\n")
    return {path.relative_to(output).as_posix(): path.stat().st_size for path in (wav, *transcripts)}


def metadata_lines(clips: list[Clip]) -> list[str]:
    lines = []
    for clip in sorted(clips, key=lambda clip: clip.path):
        identifier = Path(clip.path).stem
        lines.append(f"{identifier}|{one_line(clip.original_text or '')}|{one_line(clip.text or '')}")
    return lines


def write_metadata(output: Path, clips: list[Clip]) -> None:
    """The ljspeech layout's metadata.csv, rebuilt from every kept clip."""
    atomic_write_text(output / "metadata.csv", "\n".join(metadata_lines(clips)) + "\n")
