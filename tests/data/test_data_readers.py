"""Tests for voicetrain.data.readers: the corpus layouts, their splits and their error messages, and training
through the CLI on VCTK and LibriTTS layouts built from the bundled recordings."""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile
from helpers import TINY_MODEL, assert_ok, run_cli, write_speech

from voicetrain.data import (BUNDLED_CORPUS, DataError, Utterance, read_bundled_corpus, read_libritts, read_ljspeech,
                             read_speaker_folders, read_vctk)
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


# --- VCTK 0.92 ---------------------------------------------------------------------------------------------

# VCTK speaker -> bundled voice. p315 is the VCTK speaker whose transcripts are missing from the release.
VCTK_VOICES = {"p225": "awb", "p226": "slt", "p315": "rms"}
# VCTK sentence number -> bundled sentence: 001-003 are read by every speaker (the shared passages); 030 and 031
# are each speaker's own newspaper sentences, a different text under the same number.
VCTK_SHARED = {"001": "h01_01", "002": "h01_02", "003": "h01_03"}
VCTK_OWN = {"p225": {"030": "h02_01", "031": "h02_02"}, "p226": {"030": "h02_03", "031": "h02_04"},
            "p315": {"030": "h02_05", "031": "h02_06"}}


def bundled_texts() -> dict[tuple[str, str], str]:
    return {(utterance.speaker, utterance.sentence_id): utterance.text for utterance in read_bundled_corpus()}


def build_vctk(root: Path, mic2_numbers: tuple[str, ...] = ("001", "030")) -> Path:
    """VCTK 0.92 as released: 48 kHz FLAC per microphone under wav48_silence_trimmed/, transcripts under txt/
    (none for p315), plus the speaker-info file that the reader ignores."""
    texts = bundled_texts()
    for speaker, voice in VCTK_VOICES.items():
        for number, sentence in {**VCTK_SHARED, **VCTK_OWN[speaker]}.items():
            source = BUNDLED_CORPUS / voice / f"{sentence}.flac"
            microphones = ("mic1", "mic2") if number in mic2_numbers else ("mic1",)
            for microphone in microphones:
                write_speech(root / "wav48_silence_trimmed" / speaker / f"{speaker}_{number}_{microphone}.flac",
                             source, 48000)
            if speaker != "p315":
                transcript = root / "txt" / speaker / f"{speaker}_{number}.txt"
                transcript.parent.mkdir(parents=True, exist_ok=True)
                transcript.write_text(texts[(voice, sentence)] + "\n", encoding="utf-8")
    (root / "speaker-info.txt").write_text("ID  AGE  GENDER  ACCENTS  REGION\np225  23  F  English  Southern England\n")
    return root


@pytest.fixture(scope="module")
def vctk_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_vctk(tmp_path_factory.mktemp("vctk") / "VCTK-Corpus-0.92")


def test_vctk_layout_speakers_texts_and_sentence_ids(vctk_corpus: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        utterances = read_vctk(vctk_corpus, val_fraction=0.2)
    by_id = {utterance.utterance_id: utterance for utterance in utterances}
    assert sorted(by_id) == [f"{speaker}_{number}" for speaker in ("p225", "p226")
                             for number in ("001", "002", "003", "030", "031")]
    first = by_id["p225_001"]
    assert first.speaker == "p225"
    assert first.path == vctk_corpus / "wav48_silence_trimmed" / "p225" / "p225_001_mic1.flac"
    assert first.text == bundled_texts()[("awb", "h01_01")]
    # Shared sentences carry their number, the same text for both speakers; own sentences carry none.
    assert by_id["p225_002"].sentence_id == by_id["p226_002"].sentence_id == "002"
    assert by_id["p225_002"].text == by_id["p226_002"].text
    assert by_id["p225_030"].sentence_id is None and by_id["p225_030"].text != by_id["p226_030"].text
    # p315 has no transcripts: left out, and the warning names it.
    assert "p315 (5)" in caplog.text and "Leaving out 5" in caplog.text


def test_vctk_validation_holds_the_last_shared_sentence_of_every_speaker(vctk_corpus: Path) -> None:
    utterances = read_vctk(vctk_corpus, val_fraction=0.2)
    val = sorted((utterance.speaker, utterance.sentence_id) for utterance in utterances if utterance.split == "val")
    assert val == [("p225", "003"), ("p226", "003")]  # round(5 * 0.2) = 1 each, a parallel pair
    two_each = read_vctk(vctk_corpus, val_fraction=0.4)
    assert sorted(utterance.utterance_id for utterance in two_each if utterance.split == "val") == [
        "p225_002", "p225_003", "p226_002", "p226_003"]
    # More held out than there are shared sentences: the speaker's own sentences come next, last first.
    four_each = read_vctk(vctk_corpus, val_fraction=0.8)
    assert sorted(u.utterance_id for u in four_each if u.split == "val" and u.speaker == "p225") == [
        "p225_001", "p225_002", "p225_003", "p225_031"]
    assert read_vctk(vctk_corpus, val_fraction=0.2) == utterances  # deterministic


def test_vctk_microphone_and_untranscribed_settings(vctk_corpus: Path) -> None:
    mic2 = read_vctk(vctk_corpus, microphone="mic2")
    assert sorted(utterance.utterance_id for utterance in mic2) == ["p225_001", "p225_030", "p226_001", "p226_030"]
    assert all(utterance.path.name.endswith("_mic2.flac") for utterance in mic2)
    kept = read_vctk(vctk_corpus, skip_untranscribed=False)
    p315 = [utterance for utterance in kept if utterance.speaker == "p315"]
    assert len(p315) == 5 and all(utterance.text is None for utterance in p315)
    assert {utterance.sentence_id for utterance in p315} == {"001", "002", "003", None}
    no_sharing = read_vctk(vctk_corpus, shared_sentences=0)
    assert {utterance.sentence_id for utterance in no_sharing} == {None}
    with pytest.raises(DataError, match="microphone='mic3'.*'mic1', 'mic2'"):
        read_vctk(vctk_corpus, microphone="mic3")


def test_vctk_wrong_roots_say_what_to_point_at(tmp_path: Path) -> None:
    corpus = build_vctk(tmp_path / "download" / "VCTK-Corpus-0.92", mic2_numbers=())
    audio = corpus / "wav48_silence_trimmed"
    with pytest.raises(DataError, match="audio folder itself; set it to its parent") as error:
        read_vctk(audio)
    assert str(corpus) in str(error.value)
    with pytest.raises(DataError, match="one level down") as error:
        read_vctk(corpus.parent)
    assert f"data.root={corpus}" in str(error.value)
    old = tmp_path / "VCTK-Corpus"
    (old / "wav48" / "p225").mkdir(parents=True)
    with pytest.raises(DataError, match="VCTK 0.80"):
        read_vctk(old)
    with pytest.raises(DataError, match="does not exist"):
        read_vctk(tmp_path / "nowhere")


def test_vctk_missing_transcripts_odd_files_and_empty_corpora(tmp_path: Path) -> None:
    corpus = build_vctk(tmp_path / "vctk", mic2_numbers=())
    stray = corpus / "wav48_silence_trimmed" / "p225" / "p225_001_mic1 (copy).flac"
    stray.write_bytes(b"")
    with pytest.raises(DataError, match="VCTK's naming p225_<nnn>_mic1.flac") as error:
        read_vctk(corpus)
    assert str(stray) in str(error.value)
    stray.unlink()
    for transcript in (corpus / "txt").rglob("*.txt"):
        transcript.unlink()
    with pytest.raises(DataError, match="No mic1 recordings with a transcript"):
        read_vctk(corpus)
    for folder in sorted((corpus / "txt").iterdir()):
        folder.rmdir()
    (corpus / "txt").rmdir()
    with pytest.raises(DataError, match="txt is missing.*data=speakers"):
        read_vctk(corpus)
    empty = tmp_path / "empty"
    (empty / "wav48_silence_trimmed").mkdir(parents=True)
    (empty / "txt").mkdir()
    with pytest.raises(DataError, match="No mic1 recordings"):
        read_vctk(empty)


# --- LibriTTS and LibriTTS-R -------------------------------------------------------------------------------

# LibriTTS speaker -> (bundled voice, chapters). Speaker and chapter ids are numbers, as in the release.
LIBRITTS_VOICES = {"19": ("slt", ("198", "227")), "103": ("rms", ("1240",))}


def build_libritts_subset(subset: Path, utterances_per_chapter: int = 2) -> Path:
    """One LibriTTS(-R) subset: 24 kHz wavs with .normalized.txt and .original.txt beside each, plus the per-chapter
    .book.tsv and .trans.tsv that the reader ignores."""
    sources = {speaker: iter(sorted((BUNDLED_CORPUS / voice).glob("*.flac")))
               for speaker, (voice, _) in LIBRITTS_VOICES.items()}
    for speaker, (_, chapters) in LIBRITTS_VOICES.items():
        for chapter in chapters:
            folder = subset / speaker / chapter
            for index in range(utterances_per_chapter):
                stem = f"{speaker}_{chapter}_{index:06d}_{index + 1:06d}"
                write_speech(folder / f"{stem}.wav", next(sources[speaker]), 24000)
                (folder / f"{stem}.normalized.txt").write_text(f"Chapter {chapter}, part {index + 1}.")
                (folder / f"{stem}.original.txt").write_text(f"CHAPTER {chapter}, PART {index + 1}")
            (folder / f"{speaker}_{chapter}.book.tsv").write_text("")
            (folder / f"{speaker}_{chapter}.trans.tsv").write_text("")
    return subset


@pytest.fixture(scope="module")
def libritts_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("libritts") / "LibriTTS_R"
    build_libritts_subset(root / "train-clean-100")
    # A second subset with one more speaker, for roots that hold several subsets.
    write_speech(root / "dev-clean" / "84" / "121123" / "84_121123_000007_000001.wav",
                 BUNDLED_CORPUS / "awb" / "h01_01.flac", 24000)
    (root / "dev-clean" / "84" / "121123" / "84_121123_000007_000001.normalized.txt").write_text("Go, do you hear?")
    return root


def test_libritts_subset_root(libritts_corpus: Path) -> None:
    utterances = read_libritts(libritts_corpus / "train-clean-100", val_fraction=0.25)
    by_id = {utterance.utterance_id: utterance for utterance in utterances}
    assert sorted(by_id) == sorted([
        "103_1240_000000_000001", "103_1240_000001_000002", "19_198_000000_000001", "19_198_000001_000002",
        "19_227_000000_000001", "19_227_000001_000002"])
    first = by_id["19_198_000000_000001"]
    assert first.speaker == "19" and first.sentence_id is None
    assert first.text == "Chapter 198, part 1."
    assert first.path == libritts_corpus / "train-clean-100" / "19" / "198" / "19_198_000000_000001.wav"
    # Per speaker, the last files by name: round(4 * 0.25) = 1 of speaker 19's, 1 of speaker 103's.
    assert sorted(utterance.utterance_id for utterance in utterances if utterance.split == "val") == [
        "103_1240_000001_000002", "19_227_000001_000002"]
    original = read_libritts(libritts_corpus / "train-clean-100", transcript="original")
    assert {utterance.text for utterance in original if utterance.utterance_id == first.utterance_id} == {
        "CHAPTER 198, PART 1"}


def test_libritts_root_with_several_subsets(libritts_corpus: Path) -> None:
    every = read_libritts(libritts_corpus)
    assert sorted({utterance.speaker for utterance in every}) == ["103", "19", "84"]
    assert len(every) == 7
    only_dev = read_libritts(libritts_corpus, subsets=("dev-clean",))
    assert [utterance.utterance_id for utterance in only_dev] == ["84_121123_000007_000001"]
    with pytest.raises(DataError, match=r"\['test-other'\] are not in") as error:
        read_libritts(libritts_corpus, subsets=("test-other",))
    assert "dev-clean" in str(error.value) and "train-clean-100" in str(error.value)
    with pytest.raises(DataError, match="single LibriTTS subset"):
        read_libritts(libritts_corpus / "train-clean-100", subsets=("dev-clean",))
    with pytest.raises(DataError, match="one level down") as error:
        read_libritts(libritts_corpus.parent)
    assert f"data.root={libritts_corpus}" in str(error.value)


def test_libritts_utterances_without_a_normalized_transcript(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    subset = build_libritts_subset(tmp_path / "train-clean-100")
    missing = subset / "19" / "227" / "19_227_000001_000002.normalized.txt"
    missing.unlink()
    with caplog.at_level(logging.WARNING):
        utterances = read_libritts(subset)
    assert "19_227_000001_000002" not in {utterance.utterance_id for utterance in utterances}
    assert "Leaving out 1 LibriTTS utterances without a .normalized.txt" in caplog.text
    assert str(missing.with_name("19_227_000001_000002.wav")) in caplog.text
    kept = {utterance.utterance_id: utterance for utterance in read_libritts(subset, skip_untranscribed=False)}
    assert kept["19_227_000001_000002"].text is None
    for transcript in subset.rglob("*.normalized.txt"):
        transcript.unlink()
    with pytest.raises(DataError, match="None of the 6 LibriTTS utterances .* has a .normalized.txt"):
        read_libritts(subset)


def test_libritts_wrong_layouts(tmp_path: Path) -> None:
    subset = build_libritts_subset(tmp_path / "train-clean-100", utterances_per_chapter=1)
    stray = subset / "19" / "198" / "20_198_000000_000001.wav"
    stray.write_bytes(b"")
    with pytest.raises(DataError, match="LibriTTS's naming 19_198_<n>_<m>.wav") as error:
        read_libritts(subset)
    assert str(stray) in str(error.value)
    librispeech = tmp_path / "LibriSpeech" / "train-clean-100" / "19" / "198"
    librispeech.mkdir(parents=True)
    (librispeech / "19-198-0000.flac").write_bytes(b"")
    (librispeech / "19-198.trans.txt").write_text("19-198-0000 NORTHANGER ABBEY\n")
    with pytest.raises(DataError, match="No .wav files.*LibriSpeech"):
        read_libritts(tmp_path / "LibriSpeech" / "train-clean-100")
    with pytest.raises(DataError, match="one speaker's folder") as error:
        read_libritts(subset / "19")
    assert str(subset) in str(error.value)
    (tmp_path / "elsewhere" / "notes").mkdir(parents=True)
    with pytest.raises(DataError, match="No LibriTTS <speaker>/<chapter>/ folders.*a subset folder"):
        read_libritts(tmp_path / "elsewhere")
    with pytest.raises(DataError, match="val_fraction"):
        read_libritts(subset, val_fraction=1.0)


# --- training through the CLI on both layouts --------------------------------------------------------------


def train_two_steps(tmp_path: Path, *overrides: str) -> str:
    result = run_cli(f"run.root={tmp_path / 'runs'}", f"data.cache_dir={tmp_path / 'cache'}", *TINY_MODEL,
                     "trainer.max_steps=2", "trainer.val_every=2", *overrides, cwd=tmp_path)
    assert_ok(result)
    run_dir = tmp_path / "runs" / "default"
    assert json.loads((run_dir / "checkpoints" / "step_00000002" / "manifest.json").read_text())["step"] == 2
    return (run_dir / "train.log").read_text()


@pytest.mark.slow  # long: runs in make test-slow (CI runs both)
def test_cli_trains_on_vctk(tmp_path: Path, vctk_corpus: Path) -> None:
    log = train_two_steps(tmp_path, "data=vctk", f"data.root={vctk_corpus}", "data.val_fraction=0.2")
    assert "2 speakers" in log, log
    # The held-out shared sentence of both speakers is a parallel pair: conversion is scored.
    assert "val/mcd=" in log, log


@pytest.mark.slow  # long: runs in make test-slow (CI runs both)
def test_cli_trains_on_libritts(tmp_path: Path, libritts_corpus: Path) -> None:
    log = train_two_steps(tmp_path, "data=libritts", f"data.root={libritts_corpus}")
    assert "3 speakers" in log, log
    assert "val/reconstruction_mcd=" in log, log
