"""The CLI on a user's own corpus: one folder per speaker, and the LJSpeech layout, built in a
temporary folder from the bundled recordings resampled to 22050 Hz (real speech, another rate)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import QUICK, assert_ok, bundled_files, output_of, run_cli, write_speech

SAMPLE_RATE = 22050
SHORT_RUN = ["trainer.max_steps=4", "trainer.val_every=2", "ckpt.every_n_steps=4", "trainer.log_every=2", *QUICK]
ONE_SPEAKER = "this corpus has one speaker"
NO_PARALLEL_PAIRS = "validation found no parallel pairs"


def make_speaker_folders(root: Path, speakers: tuple[str, ...] = ("awb", "rms", "slt"), per_speaker: int = 4) -> Path:
    for speaker in speakers:
        for source in bundled_files(speaker, per_speaker):
            write_speech(root / speaker / f"{source.stem}.wav", source, SAMPLE_RATE)
    return root


def make_ljspeech(root: Path, clips: int = 6) -> Path:
    lines = []
    for number, source in enumerate(bundled_files("slt", clips), start=1):
        clip = f"LJ001-{number:04d}"
        write_speech(root / "wavs" / f"{clip}.wav", source, SAMPLE_RATE)
        lines.append(f"{clip}|Sentence {number}, as printed.|Sentence {number}, as spoken.")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def train(tmp_path: Path, *overrides: str):
    return run_cli(f"run.root={tmp_path / 'runs'}", *SHORT_RUN, *overrides, cwd=tmp_path)


def assert_trained_and_validated(tmp_path: Path, result, steps: int = 4) -> str:
    assert_ok(result)
    run_dir = tmp_path / "runs" / "default"
    manifest = json.loads((run_dir / "checkpoints" / f"step_{steps:08d}" / "manifest.json").read_text())
    assert manifest["step"] == steps
    assert (run_dir / "export" / "model.safetensors").is_file()
    log = (run_dir / "train.log").read_text()
    assert f"validation at step {steps}:" in log, log
    assert "val/reconstruction_mcd=" in log, log
    # Every path of the run stayed under the temporary folder, the feature cache included.
    assert list((tmp_path / "runs" / ".cache" / "features").rglob("shard-*.bin"))
    return log


@pytest.mark.slow  # long: runs in make test-slow (CI runs both)
def test_speaker_folders(tmp_path: Path) -> None:
    corpus = make_speaker_folders(tmp_path / "voices")
    # One preview: a conversion to another speaker's voice, since no sentence is read twice.
    result = train(tmp_path, "data=speakers", f"data.root={corpus}", "trainer.audio_previews=1")
    log = assert_trained_and_validated(tmp_path, result)
    assert "3 speakers" in log
    # No sentence ids in this layout: said once over three validations (steps 0, 2, 4), and val/mcd is absent.
    assert log.count(NO_PARALLEL_PAIRS) == 1 and log.count("validation at step") == 3, log
    assert ONE_SPEAKER not in log and "val/mcd=" not in log, log
    config = json.loads((tmp_path / "runs" / "default" / "export" / "config.json").read_text())
    assert config["context"]["speakers"] == ["awb", "rms", "slt"]


@pytest.mark.slow  # long: runs in make test-slow (CI runs both)
def test_ljspeech_single_speaker_without_parallel_sentences(tmp_path: Path) -> None:
    # One speaker and no sentence read twice: the VC task has no conversion pairs to score but must
    # still train, validate (reconstruction) and export.
    corpus = make_ljspeech(tmp_path / "LJSpeech-1.1")
    result = train(tmp_path, "data=ljspeech", f"data.root={corpus}")
    log = assert_trained_and_validated(tmp_path, result)
    assert "1 speakers" in log
    assert log.count(ONE_SPEAKER) == 1 and log.count(NO_PARALLEL_PAIRS) == 1, log
    assert "val/mcd=" not in log, "nothing stands in for the conversion score"


@pytest.mark.slow  # long: runs in make test-slow (CI runs both)
def test_best_checkpoints_by_a_metric_this_corpus_cannot_give_stop_before_training(tmp_path: Path) -> None:
    # +ckpt=best ranks by val/mcd, which needs parallel sentences; the step-0 validation finds out.
    corpus = make_ljspeech(tmp_path / "LJSpeech-1.1")
    result = train(tmp_path, "data=ljspeech", f"data.root={corpus}", "+ckpt=best")
    assert result.returncode == 2, output_of(result)
    text = result.stdout + result.stderr
    assert "Traceback" not in text and "first step of this launch done" not in text, output_of(result)
    assert "ckpt.monitor=val/mcd is not a metric this task's validation reports (val/reconstruction_mcd)" in text, \
        output_of(result)


def make_corrupt_corpus(root: Path) -> Path:
    corpus = make_speaker_folders(root, speakers=("awb", "slt"), per_speaker=3)
    (corpus / "awb" / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio")
    return corpus


def test_a_corrupt_file_stops_the_run_and_is_named(tmp_path: Path) -> None:
    corpus = make_corrupt_corpus(tmp_path / "voices")
    result = train(tmp_path, "data=speakers", f"data.root={corpus}")
    assert result.returncode == 2, output_of(result)
    text = result.stdout + result.stderr
    assert str(corpus / "awb" / "broken.wav") in text, output_of(result)
    assert "data.skip_bad_files=true" in text, "the message should name the way out"
    assert "Traceback" not in text, output_of(result)
    assert not (tmp_path / "runs" / "default" / "checkpoints").exists()


@pytest.mark.slow  # long: runs in make test-slow (CI runs both)
def test_skip_bad_files_trains_and_warns_with_the_count(tmp_path: Path) -> None:
    corpus = make_corrupt_corpus(tmp_path / "voices")
    result = train(tmp_path, "data=speakers", f"data.root={corpus}", "data.skip_bad_files=true")
    log = assert_trained_and_validated(tmp_path, result)
    warning = [line for line in log.splitlines() if "WARNING" in line and "skipped" in line]
    assert warning and "skipped 1 " in warning[0], log
