"""`python -m voicetrain.infer`: voice conversion from the export folder alone, at any input
sample rate, with clear errors (exit status 2, no traceback) for what a user can get wrong."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from voicetrain.audio_files import load_audio
from voicetrain.data import BUNDLED_CORPUS
from voicetrain.export.infer import main as infer_main

from export_helpers import vc_run, with_tests_on_path
from helpers import output_of, write_speech

SPEAKERS = ["awb", "kal16", "rms", "slt"]


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory, bundled_cache: Path) -> Path:
    return vc_run(tmp_path_factory, bundled_cache).run_dir / "export"


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundled utterance at 22050 Hz, so inference has to resample it to the export's 16 kHz."""
    return write_speech(tmp_path_factory.mktemp("speech") / "h01_09_22k.wav", BUNDLED_CORPUS / "slt" / "h01_09.flac",
                        22050)


def infer_error(capsys: pytest.CaptureFixture[str], *arguments: str) -> str:
    """Runs the command in-process, expects exit status 2, returns what it printed on stderr."""
    assert infer_main([str(argument) for argument in arguments]) == 2
    error = capsys.readouterr().err
    assert "error:" in error and "Traceback" not in error, error
    return error


def test_conversion_writes_a_wav_of_the_input_length(export_dir: Path, speech: Path, tmp_path: Path) -> None:
    output = tmp_path / "converted.wav"
    # The real command in a subprocess: it must work from the export folder alone.
    result = subprocess.run([sys.executable, "-m", "voicetrain.infer", str(export_dir), "--input", str(speech),
                             "--speaker", "awb", "--output", str(output)],
                            capture_output=True, text=True, env=with_tests_on_path(), timeout=300, cwd=tmp_path)
    assert result.returncode == 0, output_of(result)
    assert f"wrote {output}" in result.stdout, output_of(result)
    wave, rate = soundfile.read(output, dtype="float32")
    features = json.loads((export_dir / "config.json").read_text())["context"]["features"]
    assert rate == features["sample_rate"] == 16000 and soundfile.info(speech).samplerate == 22050
    expected = len(load_audio(speech, rate))
    assert abs(len(wave) - expected) < features["hop_length"], (len(wave), expected)
    assert np.all(np.isfinite(wave)) and float(np.sqrt(np.mean(wave ** 2))) > 1e-3, "the output is silent"


def test_list_speakers(export_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert infer_main([str(export_dir), "--list-speakers"]) == 0
    assert capsys.readouterr().out.split() == SPEAKERS


def test_unknown_speaker_lists_the_valid_ones(export_dir: Path, speech: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    error = infer_error(capsys, export_dir, "--input", speech, "--speaker", "bob", "--output", tmp_path / "out.wav")
    assert "unknown speaker 'bob'" in error and ", ".join(SPEAKERS) in error, error
    error = infer_error(capsys, export_dir, "--input", speech, "--output", tmp_path / "out.wav")
    assert "no speaker given" in error and ", ".join(SPEAKERS) in error, error
    assert not (tmp_path / "out.wav").exists()


def test_text_is_refused_by_a_voice_conversion_export(export_dir: Path, speech: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    error = infer_error(capsys, export_dir, "--input", speech, "--text", "hello", "--speaker", "awb",
                        "--output", tmp_path / "out.wav")
    assert "drop --text" in error, error
    assert not (tmp_path / "out.wav").exists()


def test_missing_or_unreadable_input(export_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "out.wav"
    error = infer_error(capsys, export_dir, "--input", tmp_path / "nothing.wav", "--speaker", "awb", "--output", output)
    assert "nothing.wav: no such file" in error, error
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"RIFF not really a wave file" * 10)
    error = infer_error(capsys, export_dir, "--input", garbage, "--speaker", "awb", "--output", output)
    assert "garbage.wav cannot be read as audio" in error, error
    tiny = tmp_path / "tiny.wav"
    soundfile.write(tiny, np.zeros(100, dtype=np.float32), 16000)
    error = infer_error(capsys, export_dir, "--input", tiny, "--speaker", "awb", "--output", output)
    assert "at least" in error, error
    error = infer_error(capsys, export_dir, "--input", garbage, "--speaker", "awb", "--output", tmp_path / "out.mp3")
    assert "suffix" in error, error
    assert not output.exists()


def test_tampered_or_incomplete_export(export_dir: Path, speech: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    tampered = tmp_path / "tampered"
    shutil.copytree(export_dir, tampered)
    weights = tampered / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one weight
    weights.write_bytes(bytes(data))
    arguments = ["--input", speech, "--speaker", "awb", "--output", tmp_path / "out.wav"]
    error = infer_error(capsys, tampered, *arguments)
    assert "model.safetensors does not match the SHA-256" in error, error

    incomplete = tmp_path / "incomplete"
    shutil.copytree(export_dir, incomplete)
    (incomplete / "manifest.json").unlink()
    error = infer_error(capsys, incomplete, *arguments)
    assert "manifest.json is missing" in error, error
    error = infer_error(capsys, tmp_path / "no-export", *arguments)
    assert "no such export folder" in error, error
    assert not (tmp_path / "out.wav").exists()
