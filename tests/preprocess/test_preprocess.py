"""`python -m voicetrain.preprocess` on recordings made from the bundled corpus: long takes built
by joining utterances of different speakers with known silences and background noise, files in
other formats, rates and channel counts, and broken ones. Cut points, lengths, loudness and peaks
are measured independently of the code under test (pyloudnorm, soundfile, the utterances' own
extent in the joined take)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyloudnorm
import pytest
import soundfile
import soxr
from hydra.core.global_hydra import GlobalHydra

from helpers import QUICK, TINY_MODEL, assert_ok, composing, environment, output_of, run_cli
from voicetrain.config import ConfigError
from voicetrain.data import BUNDLED_CORPUS, read_ljspeech, read_speaker_folders
from voicetrain.preprocess.levels import limit_peaks
from voicetrain.preprocess.pipeline import preprocess
from voicetrain.preprocess.settings import PreprocessSettings, SliceSettings, validate
from voicetrain.preprocess.slicer import plan_segments
from voicetrain.preprocess.sources import InputError
from voicetrain.preprocess.transcripts import normalise_transcript

RATE = 16000
SPEAKERS = ("awb", "kal16", "rms", "slt")
NOISE_DBFS = -60.0
# An utterance's sound is where it exceeds this fraction of its peak: the test's own measure of
# where the speech is, independent of the slicer's.
SOUND_FRACTION = 0.01
# The slicer measures in 10 ms blocks; its idea of a silence's edge may differ from the test's by that.
EDGE_TOLERANCE_SECONDS = 0.03


def utterance(speaker: str, index: int) -> np.ndarray:
    wave, rate = soundfile.read(sorted((BUNDLED_CORPUS / speaker).glob("*.flac"))[index], dtype="float64")
    assert rate == RATE
    return wave


def sound_extent(wave: np.ndarray) -> tuple[int, int]:
    loud = np.flatnonzero(np.abs(wave) > SOUND_FRACTION * np.abs(wave).max())
    return int(loud[0]), int(loud[-1]) + 1


def long_take(count: int, seed: int,
              silences: tuple[float, float] = (0.5, 1.2)) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Utterances of the four speakers in turn, joined by silences of random length, over a
    noise floor; returns the take and the [start, end) of each utterance's sound in it."""
    rng = np.random.default_rng(seed)
    parts, sounds, position = [np.zeros(int(0.7 * RATE))], [], int(0.7 * RATE)
    for number in range(count):
        wave = utterance(SPEAKERS[number % len(SPEAKERS)], number // len(SPEAKERS))
        start, end = sound_extent(wave)
        sounds.append((position + start, position + end))
        gap = np.zeros(int(rng.uniform(*silences) * RATE))
        parts += [wave, gap]
        position += len(wave) + len(gap)
    take = np.concatenate(parts)
    take += rng.normal(0, 10 ** (NOISE_DBFS / 20), len(take))
    return 0.8 * take / np.abs(take).max(), sounds


def write(path: Path, wave: np.ndarray, rate: int = RATE, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, wave, rate, **options)
    return path


def tree_digest(root: Path) -> dict[str, str]:
    return {path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}


def parse(value: str):
    """A command-line value as Hydra reads it: a number, true/false/null, or a string."""
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return {"true": True, "false": False, "null": None}.get(value, value)


def settings_for(source: Path, target: Path, *overrides: str) -> PreprocessSettings:
    """Validated settings as the CLI would build them, one worker and no progress bar (in-process runs)."""
    config = {"input": str(source), "output": str(target), "workers": 1, "progress": False,
              "slice": {}, "loudness": {}}
    for override in overrides:
        key, value = override.split("=", 1)
        *sections, name = key.split(".")
        node = config[sections[0]] if sections else config
        node[name] = parse(value)
    return validate(config)


def run_preprocess(*overrides: str, cwd: Path, **options) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "voicetrain.preprocess", "progress=false", *overrides], cwd=cwd,
                          env=environment(), capture_output=True, text=True, timeout=300, **options)


def clips(output: Path) -> list[Path]:
    return sorted(path for path in output.rglob("*.wav") if ".preprocess" not in path.parts)


# --- slicing -------------------------------------------------------------------------------------

def test_cuts_land_in_the_silences_and_segments_keep_to_the_lengths() -> None:
    take, sounds = long_take(count=12, seed=1)
    slicing = SliceSettings(min_seconds=3.0, max_seconds=8.0)
    segments = plan_segments(take.astype(np.float32), RATE, slicing)
    tolerance = EDGE_TOLERANCE_SECONDS * RATE
    silences = [(0, sounds[0][0])] + [(sounds[k][1], sounds[k + 1][0]) for k in range(len(sounds) - 1)] + \
        [(sounds[-1][1], len(take))]
    for low, high in sounds:  # every utterance lies whole inside one segment: no speech lost or split
        assert sum(start <= low and high <= end for start, end in segments) == 1, (low / RATE, high / RATE)
    for start, end in segments:
        assert slicing.min_seconds * RATE <= end - start <= slicing.max_seconds * RATE, (start, end)
        for cut in (start, end):
            assert any(low - tolerance <= cut <= high + tolerance for low, high in silences), \
                f"a cut at {cut / RATE:.3f} s is inside an utterance"
        # Within padding: at most padding_seconds of silence before the first sound and after the last.
        inside = [(low, high) for low, high in sounds if start <= low and high <= end]
        assert inside[0][0] - start <= slicing.padding_seconds * RATE + tolerance
        assert end - inside[-1][1] <= slicing.padding_seconds * RATE + tolerance
    assert len(segments) < len(sounds), "with min_seconds=3, short utterances are joined"


def test_a_long_stretch_without_silence_is_cut_at_its_quietest_point() -> None:
    time_axis = np.arange(int(20 * RATE)) / RATE
    tone = 0.5 * np.sin(2 * np.pi * 220 * time_axis)
    dip = 9.0  # quieter (-20 dB), but far above the silence threshold: no silence anywhere
    tone[np.abs(time_axis - dip) < 0.1] *= 0.1
    segments = plan_segments(tone.astype(np.float32), RATE, SliceSettings(min_seconds=2, max_seconds=15))
    assert len(segments) == 2
    assert abs(segments[0][1] / RATE - dip) <= 0.1 and segments[0][1] == segments[1][0]


def test_a_recording_that_is_mostly_silence_still_gives_its_speech(tmp_path: Path) -> None:
    # Five minutes of room noise around one 2.7 s sentence: speech is under 1% of the recording.
    noise = np.random.default_rng(6).normal(0, 10 ** (NOISE_DBFS / 20), 300 * RATE)
    sentence = utterance("rms", 1)
    noise[150 * RATE: 150 * RATE + len(sentence)] += sentence
    write(tmp_path / "raw" / "erin" / "session.wav", noise)
    outcome = preprocess(settings_for(tmp_path / "raw", tmp_path / "out"), "")
    ((clip,),) = [record.clips for record in outcome.records]
    assert len(sentence) / RATE <= clip.seconds <= len(sentence) / RATE + 2 * SliceSettings().padding_seconds


# --- levels --------------------------------------------------------------------------------------

def test_the_limiter_holds_the_ceiling_without_touching_quieter_samples() -> None:
    rng = np.random.default_rng(3)
    wave = rng.normal(0, 0.1, RATE)
    wave[RATE // 2] = 0.99  # one spike
    limited = limit_peaks(wave, ceiling=0.5, sample_rate=RATE)
    assert np.abs(limited).max() <= 0.5
    far = np.abs(np.arange(RATE) - RATE // 2) > 0.01 * RATE
    assert np.array_equal(limited[far], wave[far])


@pytest.mark.parametrize("target_lufs, peak_db", [(-23.0, -1.0), (-14.0, -3.0)])
def test_clips_reach_the_loudness_target_under_the_peak_ceiling(tmp_path: Path, target_lufs: float,
                                                                 peak_db: float) -> None:
    take, _ = long_take(count=6, seed=2)
    source = write(tmp_path / "raw" / "mixed" / "take.wav", 0.3 * take)
    outcome = preprocess(settings_for(tmp_path / "raw", tmp_path / "out", f"loudness.target_lufs={target_lufs}",
                                      f"loudness.peak_db={peak_db}"), "")
    written = clips(tmp_path / "out")
    assert len(written) == sum(len(record.clips) for record in outcome.records) >= 3
    # The clips are the planned segments, in order, whole.
    recorded, _ = soundfile.read(source, dtype="float32")
    planned = plan_segments(recorded, RATE, SliceSettings())
    assert [soundfile.info(path).frames for path in written] == [end - start for start, end in planned]
    meter = pyloudnorm.Meter(RATE)
    for path in written:
        wave, rate = soundfile.read(path, dtype="float64")
        assert rate == RATE and wave.ndim == 1 and soundfile.info(path).subtype == "PCM_16"
        assert abs(meter.integrated_loudness(wave) - target_lufs) <= 0.5, path
        assert np.abs(wave).max() <= 10 ** (peak_db / 20), path
    # How many clips a plain gain to the target would have pushed over the ceiling: the limiter's work.
    over = 0
    for start, end in planned:
        piece = recorded[start:end].astype(np.float64)
        gain = 10 ** ((target_lufs - meter.integrated_loudness(piece)) / 20)
        over += np.abs(piece).max() * gain > 10 ** (peak_db / 20)
    assert over > 0 if target_lufs == -14.0 else over == 0


def test_clipped_silent_short_and_unreadable_recordings_are_listed_and_left_out(tmp_path: Path) -> None:
    raw = tmp_path / "raw" / "alice"
    write(raw / "good.wav", utterance("rms", 0))
    write(raw / "clipped.wav", np.clip(4 * utterance("rms", 1), -1, 1))
    write(raw / "silent.wav", np.random.default_rng(0).normal(0, 1e-5, 3 * RATE))
    write(raw / "short.wav", utterance("slt", 2)[: int(1.2 * RATE)])
    (raw / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot audio")
    loud = utterance("rms", 3)
    # Only the left channel clips; the average of the two never reaches full scale.
    write(raw / "left_clipped.wav", np.stack([np.clip(3 * loud, -1, 1), 0.2 * loud], axis=1))
    write(raw / "nan.wav", np.where(np.arange(len(loud)) == 100, np.nan, loud), subtype="FLOAT")
    outcome = preprocess(settings_for(tmp_path / "raw", tmp_path / "out"), "")
    assert [path.name for path in clips(tmp_path / "out")] == ["good_0001.wav"]
    reasons = {item.what.split()[0]: item.reason for record in outcome.records for item in record.dropped}
    assert reasons.keys() == {"alice/clipped.wav", "alice/silent.wav", "alice/short.wav", "alice/broken.wav",
                              "alice/left_clipped.wav", "alice/nan.wav"}
    assert reasons["alice/clipped.wav"].startswith("clipped")
    assert reasons["alice/left_clipped.wav"].startswith("clipped")
    assert reasons["alice/nan.wav"].startswith("unreadable") and "NaN" in reasons["alice/nan.wav"]
    assert reasons["alice/silent.wav"].startswith("silent")
    assert reasons["alice/short.wav"].startswith("too short") and "slice.min_seconds=2" in reasons["alice/short.wav"]
    assert reasons["alice/broken.wav"].startswith("unreadable")
    report = (tmp_path / "out" / "report.md").read_text()
    for source, reason in reasons.items():
        assert source in report and reason in report


def test_a_target_out_of_reach_under_the_ceiling_leaves_the_clip_out(tmp_path: Path) -> None:
    write(tmp_path / "raw" / "fay" / "a.wav", utterance("rms", 0))
    outcome = preprocess(settings_for(tmp_path / "raw", tmp_path / "out", "loudness.target_lufs=-5",
                                      "loudness.peak_db=-20"), "")
    (dropped,) = outcome.records[0].dropped
    assert dropped.reason.startswith("cannot reach loudness.target_lufs=-5") and not clips(tmp_path / "out")


# --- transcripts ---------------------------------------------------------------------------------

@pytest.mark.parametrize("written, spoken", [
    ("It cost $5.50, not $1 or $0.99.", "It cost five dollars and fifty cents, not one dollar or ninety-nine cents."),
    ("A £3 fee and a €2 million deal.", "A three pounds fee and a two million euros deal."),
    ("Mr. Smith met Dr. Jones on the 21st of May, 1999.",
     "Mister Smith met Doctor Jones on the twenty-first of May, nineteen ninety-nine."),
    ("the 1st, 2nd, 3rd and 4th", "the first, second, third and fourth"),
    ("About 1,500 people, 50% of them.", "About one thousand five hundred people, fifty percent of them."),
    ("Pi is 3.14 & it is -5 out; No. 7 said no.",
     "Pi is three point one four and it is minus five out; Number seven said no."),
    ("St. Paul vs. Gen. Lee, etc.", "Saint Paul versus General Lee, et cetera"),
])
def test_transcripts_spell_out_numbers_currencies_ordinals_and_abbreviations(written: str, spoken: str) -> None:
    assert normalise_transcript(written) == spoken


def test_recordings_with_transcripts_are_trimmed_never_cut(tmp_path: Path) -> None:
    raw = tmp_path / "raw" / "bob"
    two, _ = long_take(count=2, seed=4, silences=(0.8, 0.8))  # a silence long enough to cut at
    write(raw / "two.wav", two)
    (raw / "two.txt").write_text("Call Dr. Smith at 5.\n")
    four, _ = long_take(count=4, seed=5)
    write(raw / "four.flac", four)
    (raw / "four.lab").write_text("Four sentences, too long for 6 seconds.")
    outcome = preprocess(settings_for(tmp_path / "raw", tmp_path / "out", "slice.max_seconds=6"), "")
    out = tmp_path / "out" / "bob"
    assert [path.name for path in clips(tmp_path / "out")] == ["two.wav"]
    assert (out / "two.txt").read_text() == "Call Doctor Smith at five.\n"
    assert (out / "two.original.txt").read_text() == "Call Dr. Smith at 5.\n"
    trimmed = soundfile.info(out / "two.wav").frames
    assert trimmed < len(two) - RATE, "the leading 0.7 s and trailing silence are trimmed"
    (dropped,) = [item for record in outcome.records for item in record.dropped]
    assert dropped.what == "bob/four.flac" and "slice.max_seconds=6" in dropped.reason
    utterances = read_speaker_folders(tmp_path / "out", val_fraction=0)
    assert [(item.speaker, item.text) for item in utterances] == [("bob", "Call Doctor Smith at five.")]


def test_an_ljspeech_input_becomes_an_ljspeech_corpus(tmp_path: Path) -> None:
    raw = tmp_path / "LJSpeech"
    lines = []
    for number in range(3):
        write(raw / "wavs" / f"LJ001-{number:04d}.wav", utterance("slt", number), 22050 if number else RATE)
        given = "|Chapter one, page ten." if number == 0 else ""  # a normalised column of its own
        lines.append(f"LJ001-{number:04d}|Chapter {number + 1}, page 10.{given}")
    lines.append("LJ001-0099|A line without a recording.")
    (raw / "metadata.csv").write_text("\n".join(lines) + "\n")
    outcome = preprocess(settings_for(raw, tmp_path / "out", "layout=ljspeech", "slice.min_seconds=1"), "")
    corpus = read_ljspeech(tmp_path / "out", val_fraction=0)
    assert [item.text for item in corpus] == ["Chapter one, page ten.", "Chapter two, page ten.",
                                              "Chapter three, page ten."]
    metadata = (tmp_path / "out" / "metadata.csv").read_text().splitlines()
    assert metadata[1] == "LJ001-0001|Chapter 2, page 10.|Chapter two, page ten."
    assert any("LJ001-0099" in item.reason for item in outcome.dropped)
    assert "LJ001-0099" in (tmp_path / "out" / "report.md").read_text()


# --- formats, the input, resuming ----------------------------------------------------------------

def test_any_format_rate_and_channel_count_becomes_mono_16_bit_at_the_rate(tmp_path: Path) -> None:
    raw = tmp_path / "raw" / "carol"
    stereo = np.stack([utterance("rms", 0), 0.5 * utterance("rms", 0)], axis=1)
    write(raw / "a.flac", soxr.resample(stereo, RATE, 44100), 44100)
    write(raw / "b.ogg", utterance("rms", 1), RATE, format="OGG", subtype="VORBIS")
    write(raw / "c.mp3", soxr.resample(utterance("rms", 2), RATE, 22050), 22050, format="MP3")
    preprocess(settings_for(tmp_path / "raw", tmp_path / "out", "sample_rate=22050"), "")
    written = clips(tmp_path / "out")
    assert [path.name for path in written] == ["a_0001.wav", "b_0001.wav", "c_0001.wav"]
    for path in written:
        info = soundfile.info(path)
        assert (info.samplerate, info.channels, info.subtype) == (22050, 1, "PCM_16")


def speaker_takes(root: Path, takes: int, utterances: int) -> Path:
    for number in range(takes):
        take, _ = long_take(count=utterances, seed=10 + number)
        write(root / SPEAKERS[number % 2] / f"take{number:02d}.wav", take)
    return root


def test_the_cli_writes_the_corpus_and_report_leaves_the_input_alone_and_skips_done_work(tmp_path: Path) -> None:
    raw = speaker_takes(tmp_path / "raw", takes=4, utterances=4)
    before = tree_digest(raw)
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    output = tmp_path / "out"
    first = run_preprocess(f"input={raw}", f"output={output}", "workers=2", cwd=workdir)
    assert_ok(first)
    assert tree_digest(raw) == before, "the input changed"
    assert not list(workdir.iterdir()), "Hydra wrote into the working folder"
    assert "| awb |" in first.stdout and "| all |" in first.stdout, output_of(first)
    assert (output / "report.png").read_bytes().startswith(b"\x89PNG")
    assert "| awb |" in (output / "report.md").read_text()
    assert "slice:" in (output / ".preprocess" / "config.yaml").read_text()
    written = {path: path.stat().st_mtime_ns for path in clips(output)}
    assert len(written) >= 8
    assert "0 done already, 4 to process with 2 worker(s)" in first.stdout, output_of(first)
    second = preprocess(settings_for(raw, output, "workers=1"), "")  # another worker count redoes nothing
    assert second.processed == 0
    assert {path: path.stat().st_mtime_ns for path in clips(output)} == written, "finished work was redone"
    assert tree_digest(raw) == before


def test_changed_settings_or_input_redo_the_work_and_stale_clips_go(tmp_path: Path) -> None:
    raw = speaker_takes(tmp_path / "raw", takes=2, utterances=4)
    output = tmp_path / "out"
    preprocess(settings_for(raw, output), "")
    first = {path.name for path in clips(output)}
    outcome = preprocess(settings_for(raw, output, "slice.min_seconds=4", "slice.max_seconds=9"), "")
    assert outcome.processed == 2
    again = {path.name for path in clips(output)}
    assert len(again) < len(first), "longer clips: fewer of them, and the old extra ones are removed"
    assert all(4 <= soundfile.info(path).duration <= 9 for path in clips(output))
    take, _ = long_take(count=3, seed=99)
    write(raw / "slt" / "take01.wav", take)  # new content for one recording
    outcome = preprocess(settings_for(raw, output, "slice.min_seconds=4", "slice.max_seconds=9"), "")
    assert outcome.processed == 1
    (raw / "awb" / "take00.wav").unlink()
    outcome = preprocess(settings_for(raw, output, "slice.min_seconds=4", "slice.max_seconds=9"), "")
    assert outcome.processed == 0 and not list((output / "awb").glob("*.wav"))


def test_deleted_output_is_made_again(tmp_path: Path) -> None:
    raw = speaker_takes(tmp_path / "raw", takes=2, utterances=3)
    output = tmp_path / "out"
    preprocess(settings_for(raw, output), "")
    complete = tree_digest(output)
    victim = clips(output)[1]
    victim.unlink()
    outcome = preprocess(settings_for(raw, output), "")
    assert outcome.processed == 1
    assert tree_digest(output) == complete


def test_a_killed_run_continues_and_ends_as_an_uninterrupted_one(tmp_path: Path) -> None:
    raw = speaker_takes(tmp_path / "raw", takes=8, utterances=4)
    records = tmp_path / "out" / ".preprocess" / "records"
    process = subprocess.Popen([sys.executable, "-m", "voicetrain.preprocess", f"input={raw}",
                                f"output={tmp_path / 'out'}", "workers=1", "progress=false"],
                               cwd=tmp_path, env=environment(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while not (records.is_dir() and len(list(records.glob("*.json"))) >= 2) and time.monotonic() < deadline:
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    started = [json.loads(path.read_text()) for path in records.glob("*.json")]
    finished = sum(record["complete"] for record in started)
    assert 1 <= finished < 8 and len(started) >= 2, "the kill must land mid-way"
    resumed = preprocess(settings_for(raw, tmp_path / "out"), "")
    assert resumed.processed == 8 - finished, "finished recordings are skipped, the others done"
    preprocess(settings_for(raw, tmp_path / "clean"), "")
    assert tree_digest(tmp_path / "out").keys() - {".preprocess/config.yaml"} == \
        tree_digest(tmp_path / "clean").keys() - {".preprocess/config.yaml"}
    for name in (path.relative_to(tmp_path / "clean") for path in clips(tmp_path / "clean")):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "clean" / name).read_bytes(), name


# --- configuration -------------------------------------------------------------------------------

def problems_of(config: dict) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        validate(config)
    return raised.value.problems


def test_every_config_problem_is_named_at_once(tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    problems = problems_of({"input": str(tmp_path / "raw"), "output": "???", "layout": "folders", "workers": 0,
                            "slice": {"min_seconds": 3, "max_seconds": 4, "max_second": 1},
                            "loudness": {"peak_db": 2}, "sample_rat": 8000, "speaker": "../elsewhere"})
    expected = ["output=???", "layout='folders'", "workers=0", "slice.max_second:", "loudness.peak_db=2",
                "sample_rat:", "speaker='../elsewhere'"]
    for fragment in expected:
        assert sum(problem.startswith(fragment) for problem in problems) == 1, (fragment, problems)
    assert len(problems) == len(expected), problems
    (problem,) = problems_of({"input": str(tmp_path / "raw"), "output": str(tmp_path / "out"),
                              "slice": {"min_seconds": 3, "max_seconds": 5}})
    assert problem.startswith("slice.max_seconds=5") and "twice" in problem


@pytest.mark.parametrize("output, fragment", [
    ("{raw}", "is the input folder"),
    ("{raw}/alice/out", "is inside input="),
    ("{tmp}", "holds input="),
    ("{tmp}/foreign", "not written by voicetrain.preprocess"),
])
def test_the_output_folder_is_never_the_input_or_a_foreign_folder(tmp_path: Path, output: str, fragment: str) -> None:
    raw = tmp_path / "raw"
    (raw / "alice").mkdir(parents=True)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "mine.txt").write_text("keep me")
    (problem,) = problems_of({"input": str(raw), "output": output.format(raw=raw, tmp=tmp_path)})
    assert problem.startswith("output=") and fragment in problem, problem


def test_the_cli_exits_2_naming_each_bad_key_and_writes_nothing(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    (raw / "alice").mkdir(parents=True)
    result = run_preprocess(f"input={tmp_path / 'missing'}", f"output={tmp_path / 'out'}", "slice.max_seconds=ten",
                            "+loudness.target=-20", "layout=tree", cwd=tmp_path)
    assert result.returncode == 2, output_of(result)
    text = result.stdout + result.stderr
    for fragment in ("input=", "missing", "slice.max_seconds='ten'", "loudness.target:", "layout='tree'"):
        assert fragment in text, (fragment, output_of(result))
    assert "Traceback" not in text
    assert not (tmp_path / "out").exists()


def test_an_input_without_recordings_or_with_loose_ones_and_no_speaker_is_refused(tmp_path: Path) -> None:
    (tmp_path / "raw" / "alice").mkdir(parents=True)
    with pytest.raises(InputError, match="no recordings found"):
        preprocess(settings_for(tmp_path / "raw", tmp_path / "out"), "")
    write(tmp_path / "raw" / "a.wav", utterance("awb", 0))
    with pytest.raises(InputError, match="speaker=NAME"):
        preprocess(settings_for(tmp_path / "raw", tmp_path / "out"), "")
    assert not (tmp_path / "out").exists()
    preprocess(settings_for(tmp_path / "raw", tmp_path / "out", "speaker=dave"), "")
    assert [path.relative_to(tmp_path / "out").as_posix() for path in clips(tmp_path / "out")] == ["dave/a_0001.wav"]


def test_speaker_folders_with_loose_recordings_beside_them_are_refused(tmp_path: Path) -> None:
    write(tmp_path / "raw" / "alice" / "a.wav", utterance("awb", 0))
    write(tmp_path / "raw" / "b.wav", utterance("awb", 1))
    with pytest.raises(InputError, match="holds both speaker folders"):
        preprocess(settings_for(tmp_path / "raw", tmp_path / "out"), "")


def test_sub_folders_are_kept_and_a_name_taken_twice_is_listed(tmp_path: Path) -> None:
    raw = tmp_path / "raw" / "gus"
    write(raw / "monday" / "take.wav", utterance("awb", 0))
    write(raw / "monday" / "take.flac", utterance("awb", 1))
    outcome = preprocess(settings_for(tmp_path / "raw", tmp_path / "out"), "")
    assert [path.relative_to(tmp_path / "out").as_posix() for path in clips(tmp_path / "out")] == \
        ["gus/monday/take_0001.wav"]
    # The first in name order is kept (take.flac, the second utterance, whole: its edge silences
    # are shorter than the padding).
    assert soundfile.info(tmp_path / "out" / "gus" / "monday" / "take_0001.wav").frames == len(utterance("awb", 1))
    (clash,) = outcome.dropped
    assert clash.what == "gus/monday/take.wav" and "gus/monday/take.flac" in clash.reason


def test_the_preprocess_config_is_not_a_group_of_the_training_config() -> None:
    with composing():
        listed = GlobalHydra.instance().config_loader().list_groups("")
    assert "task" in listed and "preprocess" not in listed


# --- the output trains ---------------------------------------------------------------------------

def test_the_output_trains_with_data_speakers(tmp_path: Path) -> None:
    raw = speaker_takes(tmp_path / "raw", takes=2, utterances=4)
    output = tmp_path / "corpus"
    preprocess(settings_for(raw, output), "")
    result = run_cli("data=speakers", f"data.root={output}", "trainer.max_steps=2", *TINY_MODEL, *QUICK,
                     f"run.root={tmp_path / 'runs'}", f"data.cache_dir={tmp_path / 'cache'}", cwd=tmp_path)
    assert_ok(result)
    assert "2 speakers" in (tmp_path / "runs" / "default" / "train.log").read_text()
