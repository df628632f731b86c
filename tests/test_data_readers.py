"""Tests for voicetrain.data.readers: the three corpus layouts, their splits and their error messages."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile

from voicetrain.data import (
    BUNDLED_CORPUS,
    DataError,
    Utterance,
    read_bundled_corpus,
    read_ljspeech,
    read_speaker_folders,
)
from voicetrain.data.readers import validation_count

SPEAKER_PITCH = {"alice": 220.0, "bob": 110.0, "carol": 330.0}


def write_chirp(path: Path, sample_rate: int, start_frequency: float, seconds: float = 0.2) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    time = np.arange(int(sample_rate * seconds)) / sample_rate
    phase = 2 * np.pi * (start_frequency * time + start_frequency * time**2)
    soundfile.write(path, (0.3 * np.sin(phase)).astype(np.float32), sample_rate)
    return path


# --- layout builders ---------------------------------------------------------------------------------------


def build_bundled(root: Path, speakers: tuple[str, ...] = ("alice", "bob"), sentences: int = 3) -> Path:
    lines = ["utterance_id|speaker|sentence_id|split|text"]
    for speaker in speakers:
        for number in range(1, sentences + 1):
            sentence_id = f"s{number:02d}"
            write_chirp(root / speaker / f"{sentence_id}.flac", 16000, SPEAKER_PITCH[speaker] * number)
            split = "val" if number == sentences else "train"
            lines.append(f"{speaker}_{sentence_id}|{speaker}|{sentence_id}|{split}|Sentence \"{number}\" here.")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def build_ljspeech(root: Path, count: int = 10) -> Path:
    lines = []
    for number in range(1, count + 1):
        utterance_id = f"LJ001-{number:04d}"
        write_chirp(root / "wavs" / f"{utterance_id}.wav", 22050, 100.0 + 10 * number)
        normalized = "" if number == 2 else f"sentence number {number}"
        lines.append(f'{utterance_id}|"Quoted" text {number}, Mr. X|{normalized}')
    (root / "metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def build_speaker_folders(root: Path) -> Path:
    for number in range(4):
        write_chirp(root / "alice" / f"a{number}.wav", 16000, 200.0 + number)
    write_chirp(root / "alice" / "session2" / "b0.flac", 22050, 250.0)
    (root / "alice" / "a1.txt").write_text("hello there\n", encoding="utf-8")
    (root / "alice" / "session2" / "b0.lab").write_text("lab transcript", encoding="utf-8")
    (root / "alice" / "notes.md").write_text("not audio", encoding="utf-8")
    write_chirp(root / "bob" / "only.wav", 16000, 120.0)
    return root


# --- bundled layout ----------------------------------------------------------------------------------------


def test_bundled_layout(tmp_path: Path) -> None:
    root = build_bundled(tmp_path / "corpus")
    utterances = read_bundled_corpus(root)
    assert len(utterances) == 6
    first = utterances[0]
    assert first == Utterance(
        utterance_id="alice_s01",
        speaker="alice",
        path=root / "alice" / "s01.flac",
        text='Sentence "1" here.',
        sentence_id="s01",
        split="train",
    )
    val = [utterance for utterance in utterances if utterance.split == "val"]
    assert {utterance.sentence_id for utterance in val} == {"s03"}
    assert {utterance.speaker for utterance in val} == {"alice", "bob"}


def test_bundled_default_root_is_package_assets() -> None:
    assert BUNDLED_CORPUS.parts[-3:] == ("voicetrain", "assets", "tiny")


def test_bundled_wrong_header(tmp_path: Path) -> None:
    root = build_bundled(tmp_path / "corpus")
    metadata = root / "metadata.csv"
    lines = metadata.read_text().splitlines()
    metadata.write_text("\n".join(["id|speaker|sentence|split|text", *lines[1:]]))
    with pytest.raises(DataError, match="header") as error:
        read_bundled_corpus(root)
    assert str(metadata) in str(error.value)


def test_bundled_bad_split_value(tmp_path: Path) -> None:
    root = build_bundled(tmp_path / "corpus")
    metadata = root / "metadata.csv"
    metadata.write_text(metadata.read_text().replace("|val|", "|test|", 1))
    with pytest.raises(DataError, match="'test'"):
        read_bundled_corpus(root)


def test_bundled_duplicate_id(tmp_path: Path) -> None:
    root = build_bundled(tmp_path / "corpus")
    metadata = root / "metadata.csv"
    lines = metadata.read_text().splitlines()
    metadata.write_text("\n".join([*lines, lines[1]]) + "\n")
    with pytest.raises(DataError, match="alice_s01"):
        read_bundled_corpus(root)


# --- LJSpeech layout ---------------------------------------------------------------------------------------


def test_ljspeech_layout_text_and_split(tmp_path: Path) -> None:
    root = build_ljspeech(tmp_path / "LJSpeech-1.1", count=10)
    utterances = read_ljspeech(root, val_fraction=0.2)
    assert [utterance.utterance_id for utterance in utterances] == [f"LJ001-{n:04d}" for n in range(1, 11)]
    assert all(utterance.speaker == "ljspeech" for utterance in utterances)
    assert utterances[0].text == "sentence number 1"
    # Empty normalized text falls back to the raw text, quotes and all.
    assert utterances[1].text == '"Quoted" text 2, Mr. X'
    assert utterances[0].path == root / "wavs" / "LJ001-0001.wav"
    assert [utterance.split for utterance in utterances] == ["train"] * 8 + ["val"] * 2


def test_ljspeech_default_fraction_still_gives_one_val(tmp_path: Path) -> None:
    root = build_ljspeech(tmp_path / "lj", count=5)
    utterances = read_ljspeech(root, speaker="linda")
    assert [utterance.split for utterance in utterances] == ["train"] * 4 + ["val"]
    assert utterances[0].speaker == "linda"


def test_validation_count_rule() -> None:
    assert validation_count(100, 0.02) == 2
    assert validation_count(10, 0.02) == 1
    assert validation_count(2, 0.9) == 1  # at least one item stays in training
    assert validation_count(1, 0.5) == 0


# --- speaker-folder layout ---------------------------------------------------------------------------------


def test_speaker_folders_layout(tmp_path: Path) -> None:
    root = build_speaker_folders(tmp_path / "voices")
    utterances = read_speaker_folders(root, val_fraction=0.2)
    by_id = {utterance.utterance_id: utterance for utterance in utterances}
    assert list(by_id) == ["alice/a0", "alice/a1", "alice/a2", "alice/a3", "alice/session2/b0", "bob/only"]
    assert by_id["alice/a1"].text == "hello there"
    assert by_id["alice/session2/b0"].text == "lab transcript"
    assert by_id["alice/a0"].text is None
    assert by_id["alice/session2/b0"].path == root / "alice" / "session2" / "b0.flac"
    assert by_id["alice/a0"].speaker == "alice"
    # round(5 * 0.2) = 1 val file for alice; bob has a single file, which stays in training.
    assert [by_id[key].split for key in by_id] == ["train"] * 4 + ["val", "train"]


def test_speaker_folders_extension_filter(tmp_path: Path) -> None:
    root = build_speaker_folders(tmp_path / "voices")
    utterances = read_speaker_folders(root, extensions=("flac",))
    assert [utterance.utterance_id for utterance in utterances] == ["alice/session2/b0"]


def test_speaker_folders_split_is_per_speaker(tmp_path: Path) -> None:
    root = tmp_path / "voices"
    for speaker in ("alice", "bob", "carol"):
        for number in range(20):
            write_chirp(root / speaker / f"{number:03d}.wav", 16000, SPEAKER_PITCH[speaker], seconds=0.05)
    utterances = read_speaker_folders(root)
    val = defaultdict(list)
    for utterance in utterances:
        if utterance.split == "val":
            val[utterance.speaker].append(utterance.utterance_id)
    assert dict(val) == {speaker: [f"{speaker}/019"] for speaker in ("alice", "bob", "carol")}


# --- errors ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reader", [read_bundled_corpus, read_ljspeech, read_speaker_folders])
def test_missing_root(tmp_path: Path, reader) -> None:
    root = tmp_path / "does_not_exist"
    with pytest.raises(DataError, match="does not exist") as error:
        reader(root)
    assert str(root) in str(error.value)
    assert "data.root" in str(error.value)


def test_root_that_is_a_file(tmp_path: Path) -> None:
    root = tmp_path / "a_file"
    root.write_text("x")
    with pytest.raises(DataError, match="not a directory"):
        read_speaker_folders(root)


@pytest.mark.parametrize("reader", [read_bundled_corpus, read_ljspeech])
def test_missing_metadata(tmp_path: Path, reader) -> None:
    root = tmp_path / "corpus"
    root.mkdir()
    with pytest.raises(DataError, match="missing") as error:
        reader(root)
    assert str(root / "metadata.csv") in str(error.value)


def test_bad_metadata_line_names_line_number(tmp_path: Path) -> None:
    root = build_ljspeech(tmp_path / "lj", count=4)
    metadata = root / "metadata.csv"
    lines = metadata.read_text().splitlines()
    lines[2] = "LJ001-0003|only two fields"
    metadata.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="line 3") as error:
        read_ljspeech(root)
    assert str(metadata) in str(error.value)
    assert "expected 3" in str(error.value)


def test_bad_bundled_line_names_line_number(tmp_path: Path) -> None:
    root = build_bundled(tmp_path / "corpus")
    metadata = root / "metadata.csv"
    with metadata.open("a") as handle:
        handle.write("extra|alice|s01|train|too|many\n")
    with pytest.raises(DataError, match="line 8"):
        read_bundled_corpus(root)


def test_missing_audio_file(tmp_path: Path) -> None:
    root = build_bundled(tmp_path / "corpus")
    missing = root / "bob" / "s02.flac"
    missing.unlink()
    with pytest.raises(DataError, match="does not exist") as error:
        read_bundled_corpus(root)
    assert str(missing) in str(error.value)
    assert "line 6" in str(error.value)

    lj = build_ljspeech(tmp_path / "lj", count=3)
    (lj / "wavs" / "LJ001-0003.wav").unlink()
    with pytest.raises(DataError, match="LJ001-0003.wav"):
        read_ljspeech(lj)


def test_empty_dataset_names_extensions(tmp_path: Path) -> None:
    root = tmp_path / "voices"
    (root / "alice").mkdir(parents=True)
    (root / "alice" / "readme.txt").write_text("no audio here")
    with pytest.raises(DataError, match="No audio files") as error:
        read_speaker_folders(root)
    assert ".wav" in str(error.value) and ".mp3" in str(error.value)
    assert str(root) in str(error.value)


def test_empty_metadata(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    root.mkdir()
    (root / "metadata.csv").write_text("utterance_id|speaker|sentence_id|split|text\n")
    with pytest.raises(DataError, match="no utterances"):
        read_bundled_corpus(root)


def test_loose_files_without_speaker_folders(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    write_chirp(root / "one.wav", 16000, 200.0)
    write_chirp(root / "two.wav", 16000, 300.0)
    with pytest.raises(DataError, match="speaker") as error:
        read_speaker_folders(root)
    message = str(error.value)
    assert str(root) in message
    assert "root/<speaker>/<file>" in message


def test_bad_val_fraction(tmp_path: Path) -> None:
    root = build_speaker_folders(tmp_path / "voices")
    with pytest.raises(DataError, match="val_fraction"):
        read_speaker_folders(root, val_fraction=1.5)


# --- the corpus shipped with the package -------------------------------------------------------------------


@pytest.mark.skipif(
    not (BUNDLED_CORPUS / "metadata.csv").is_file(),
    reason=f"the bundled corpus is not generated yet ({BUNDLED_CORPUS / 'metadata.csv'} is missing)",
)
def test_real_bundled_corpus_is_parallel_with_both_splits() -> None:
    utterances = read_bundled_corpus()
    speakers = {utterance.speaker for utterance in utterances}
    assert len(speakers) >= 4
    assert {utterance.split for utterance in utterances} == {"train", "val"}
    recorded_by: dict[str, set[str]] = defaultdict(set)
    for utterance in utterances:
        assert utterance.path.is_file()
        if utterance.split == "val":
            recorded_by[utterance.sentence_id].add(utterance.speaker)
    assert recorded_by, "no val sentences"
    for sentence_id, sentence_speakers in recorded_by.items():
        assert sentence_speakers == speakers, f"val sentence {sentence_id} lacks {speakers - sentence_speakers}"
