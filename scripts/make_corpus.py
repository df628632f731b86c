"""Regenerate the tiny parallel speech corpus bundled with voicetrain.

Four built-in flite voices (slt, rms, awb, kal16) each read the same Harvard sentences (IEEE
1969): by default lists 1-3, 30 sentences, because all four lists (40 sentences) come to 6.9 MiB,
over the 6 MiB budget. Every utterance is converted to mono, resampled to 16 kHz, trimmed of
leading/trailing silence (keeping a 50 ms margin), peak-normalised to -1 dBFS and written as
16-bit FLAC to ``OUTPUT/<speaker>/<sentence_id>.flac``. ``OUTPUT/metadata.csv`` lists every
utterance with its speaker, sentence, split and text.

Requires the ``flite`` command (Debian/Ubuntu: ``apt-get install flite``). Run from the
repository root:

    python scripts/make_corpus.py --output src/voicetrain/assets/tiny

The output is deterministic: the same flite build and the same libraries give byte-identical files.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import soxr

# Anchored to the repository root rather than the working directory, so the default works from anywhere.
REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPOSITORY_ROOT / "src" / "voicetrain" / "assets" / "tiny"
SAMPLE_RATE = 16000
MAX_TOTAL_BYTES = 6 * 1024 * 1024

# flite's built-in voices; the key is both the `-voice` name and the speaker id in the corpus.
VOICES: dict[str, str] = {
    "slt": "female, US English (CMU ARCTIC slt, clustergen)",
    "rms": "male, US English (CMU ARCTIC rms, clustergen)",
    "awb": "male, Scottish English (CMU ARCTIC awb, clustergen)",
    "kal16": "male, US English (kal, 16 kHz diphone)",
}

# Harvard sentences, lists 1-4 (IEEE Recommended Practice for Speech Quality Measurements,
# 1969; public domain). Kept in list order, because sentence ids and splits derive from it.
HARVARD_LISTS: tuple[tuple[str, ...], ...] = (
    (
        "The birch canoe slid on the smooth planks.",
        "Glue the sheet to the dark blue background.",
        "It's easy to tell the depth of a well.",
        "These days a chicken leg is a rare dish.",
        "Rice is often served in round bowls.",
        "The juice of lemons makes fine punch.",
        "The box was thrown beside the parked truck.",
        "The hogs were fed chopped corn and garbage.",
        "Four hours of steady work faced us.",
        "A large size in stockings is hard to sell.",
    ),
    (
        "The boy was there when the sun rose.",
        "A rod is used to catch pink salmon.",
        "The source of the huge river is the clear spring.",
        "Kick the ball straight and follow through.",
        "Help the woman get back to her feet.",
        "A pot of tea helps to pass the evening.",
        "Smoky fires lack flame and heat.",
        "The soft cushion broke the man's fall.",
        "The salt breeze came across from the sea.",
        "The girl at the booth sold fifty bonds.",
    ),
    (
        "The small pup gnawed a hole in the sock.",
        "The fish twisted and turned on the bent hook.",
        "Press the pants and sew a button on the vest.",
        "The swan dive was far short of perfect.",
        "The beauty of the view stunned the young boy.",
        "Two blue fish swam in the tank.",
        "Her purse was full of useless trash.",
        "The colt reared and threw the tall rider.",
        "It snowed, rained, and hailed the same morning.",
        "Read verse out loud for pleasure.",
    ),
    (
        "Hoist the load to your left shoulder.",
        "Take the winding path to reach the lake.",
        "Note closely the size of the gas tank.",
        "Wipe the grease off his dirty face.",
        "Mend the coat before you go out.",
        "The wrist was badly strained and hung limp.",
        "The stray cat gave birth to kittens.",
        "The young girl gave no clear response.",
        "The meal was cooked before the bell rang.",
        "What joy there is in living.",
    ),
)

# All four lists with four voices come to 6.9 MiB of FLAC (flite's noisy excitation compresses
# poorly), over MAX_TOTAL_BYTES; three lists come to 5.3 MiB. List 4 stays above for `--lists 4`.
DEFAULT_LIST_COUNT = 3

# The last sentences of every list are held out, so validation draws from every list.
VALIDATION_SENTENCES_PER_LIST = 2

# Silence trimming: 10 ms frames whose RMS is more than 40 dB below the loudest frame count as
# silence. Relative (not absolute) so the voices' different output levels trim alike.
FRAME_SECONDS = 0.010
SILENCE_BELOW_PEAK_DB = 40.0
TRIM_MARGIN_SECONDS = 0.050
PEAK_DBFS = -1.0

METADATA_HEADER = "utterance_id|speaker|sentence_id|split|text"


@dataclass(frozen=True)
class Sentence:
    sentence_id: str
    split: str
    text: str


@dataclass(frozen=True)
class Utterance:
    speaker: str
    sentence: Sentence
    seconds: float

    @property
    def utterance_id(self) -> str:
        return f"{self.speaker}_{self.sentence.sentence_id}"


def harvard_sentences(list_count: int) -> list[Sentence]:
    """Sentences of the first ``list_count`` lists, with ids ``h<list>_<index>`` (1-based) and split."""
    sentences = []
    for list_number, sentence_texts in enumerate(HARVARD_LISTS[:list_count], start=1):
        first_validation_index = len(sentence_texts) - VALIDATION_SENTENCES_PER_LIST + 1
        for index, text in enumerate(sentence_texts, start=1):
            split = "val" if index >= first_validation_index else "train"
            sentences.append(Sentence(f"h{list_number:02d}_{index:02d}", split, text))
    return sentences


def require_flite() -> str:
    flite_path = shutil.which("flite")
    if flite_path is None:
        raise SystemExit(
            "flite was not found on PATH; install it first, e.g. `apt-get install flite` "
            "(Debian/Ubuntu), then rerun this script."
        )
    return flite_path


def synthesize(flite_path: str, voice: str, text: str, wav_path: Path) -> None:
    subprocess.run(
        [flite_path, "-voice", voice, "-t", text, "-o", str(wav_path)],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def load_mono_16k(wav_path: Path) -> np.ndarray:
    audio, sample_rate = soundfile.read(wav_path, dtype="float64", always_2d=True)
    mono = audio.mean(axis=1)
    if sample_rate != SAMPLE_RATE:
        mono = soxr.resample(mono, sample_rate, SAMPLE_RATE, quality="VHQ")
    return mono


def trim_silence(audio: np.ndarray) -> np.ndarray:
    """Cut leading/trailing frames far below the loudest frame, keeping a short margin of context."""
    frame_length = int(round(FRAME_SECONDS * SAMPLE_RATE))
    frame_count = len(audio) // frame_length
    if frame_count == 0:
        return audio
    frames = audio[: frame_count * frame_length].reshape(frame_count, frame_length)
    frame_rms = np.sqrt(np.mean(frames**2, axis=1))
    threshold = frame_rms.max() * 10 ** (-SILENCE_BELOW_PEAK_DB / 20)
    loud_frames = np.flatnonzero(frame_rms > threshold)
    if len(loud_frames) == 0:
        return audio
    margin = int(round(TRIM_MARGIN_SECONDS * SAMPLE_RATE))
    start = max(0, loud_frames[0] * frame_length - margin)
    end = min(len(audio), (loud_frames[-1] + 1) * frame_length + margin)
    return audio[start:end]


def normalize_peak(audio: np.ndarray) -> np.ndarray:
    peak = np.abs(audio).max()
    if peak == 0:
        return audio
    return audio * (10 ** (PEAK_DBFS / 20) / peak)


def render_utterance(flite_path: str, speaker: str, sentence: Sentence, work_dir: Path, output: Path) -> Utterance:
    wav_path = work_dir / "utterance.wav"
    synthesize(flite_path, speaker, sentence.text, wav_path)
    audio = normalize_peak(trim_silence(load_mono_16k(wav_path)))
    flac_path = output / speaker / f"{sentence.sentence_id}.flac"
    # Maximum FLAC compression: smaller files in the repository, still lossless and deterministic.
    soundfile.write(flac_path, audio, SAMPLE_RATE, subtype="PCM_16", format="FLAC", compression_level=1.0)
    return Utterance(speaker, sentence, len(audio) / SAMPLE_RATE)


def prepare_speaker_dir(output: Path, speaker: str) -> None:
    """Create the speaker folder and drop FLACs from earlier runs, so no stale utterance survives."""
    speaker_dir = output / speaker
    speaker_dir.mkdir(parents=True, exist_ok=True)
    for stale_file in speaker_dir.glob("*.flac"):
        stale_file.unlink()


def write_metadata(output: Path, utterances: list[Utterance]) -> None:
    rows = sorted(utterances, key=lambda utterance: (utterance.speaker, utterance.sentence.sentence_id))
    lines = [METADATA_HEADER]
    for utterance in rows:
        sentence = utterance.sentence
        lines.append(f"{utterance.utterance_id}|{utterance.speaker}|{sentence.sentence_id}|{sentence.split}|{sentence.text}")
    (output / "metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def folder_size_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def print_summary(utterances: list[Utterance], total_bytes: int) -> None:
    speakers = sorted({utterance.speaker for utterance in utterances})
    print(f"speakers: {len(speakers)} ({', '.join(speakers)})")
    print(f"utterances: {len(utterances)}")
    for speaker in speakers:
        durations = [utterance.seconds for utterance in utterances if utterance.speaker == speaker]
        print(
            f"  {speaker:6s} {len(durations):3d} utterances, {sum(durations):7.2f} s total "
            f"(min {min(durations):.2f} s, max {max(durations):.2f} s)"
        )
    print(f"total bytes: {total_bytes} ({total_bytes / 1024 / 1024:.2f} MiB)")


def build_corpus(output: Path, list_count: int) -> list[Utterance]:
    flite_path = require_flite()
    sentences = harvard_sentences(list_count)
    utterances = []
    with tempfile.TemporaryDirectory() as work_dir:
        for speaker in VOICES:
            prepare_speaker_dir(output, speaker)
            for sentence in sentences:
                utterances.append(render_utterance(flite_path, speaker, sentence, Path(work_dir), output))
    write_metadata(output, utterances)
    return utterances


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help="folder to write the corpus into (default: src/voicetrain/assets/tiny in this repository)",
    )
    parser.add_argument(
        "--lists",
        type=int,
        choices=range(1, len(HARVARD_LISTS) + 1),
        default=DEFAULT_LIST_COUNT,
        help=f"how many Harvard lists to render (default: {DEFAULT_LIST_COUNT}; 4 exceeds the size budget)",
    )
    return parser.parse_args()


def main() -> None:
    arguments = parse_arguments()
    utterances = build_corpus(arguments.output, arguments.lists)
    total_bytes = folder_size_bytes(arguments.output)
    print_summary(utterances, total_bytes)
    # The corpus ships inside the package, so it must stay small enough for the repository.
    assert total_bytes <= MAX_TOTAL_BYTES, f"corpus is {total_bytes} bytes, over the {MAX_TOTAL_BYTES}-byte budget"


if __name__ == "__main__":
    main()
