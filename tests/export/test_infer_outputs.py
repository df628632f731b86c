"""`python -m voicetrain.infer` writes its files whole or not at all, and says in one line why it
could not: a full disk (a tiny tmpfs, exit 1), a read-only folder (a read-only mount: root ignores
chmod, exit 2), a missing folder or a folder given as the file (exit 2). An out.wav from before
stays as it was. Hostile inputs (NaN samples, a 1 Hz "recording") are named for what they are.
The exports are untrained (random weights): writing does not depend on what a model learned."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from voicetrain.export.infer import main as infer_main
from voicetrain.export.writer import write_export
from voicetrain.tasks.base import TaskContext
from voicetrain.tasks.vc import VoiceConversionTask
from voicetrain.tasks.vocoder import VocoderTask

from helpers import bundled_files, compose_config, standard_mel, task_settings, write_speech


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An untrained VC export and an untrained vocoder export (which also returns its F0)."""
    root = tmp_path_factory.mktemp("untrained-exports")
    torch.manual_seed(0)
    mel = standard_mel()
    vc = VoiceConversionTask(task_settings("vc", hidden_channels=16, encoder_layers=1, decoder_layers=1),
                             TaskContext(mel, ["a", "b"], [-4.0] * mel.n_mels, [2.0] * mel.n_mels))
    write_export(vc, vc.build_modules(), root / "vc", "fp32", 0, None, {})
    config = OmegaConf.to_container(compose_config("task=vocoder"), resolve=True)
    context = TaskContext(mel, ["a"], [-4.0] * mel.n_mels, [2.0] * mel.n_mels, mel.sample_rate, mel.hop_length,
                          {name: config["features"][name] for name in ("mel", "f0", "wave")}, {})
    vocoder = VocoderTask(task_settings("vocoder", generator_channels=16, generator_intermediate_channels=32,
                                        generator_layers=1, filter_bins=17, pitch_channels=8,
                                        pitch_intermediate_channels=16, pitch_layers=1), context)
    write_export(vocoder, vocoder.build_modules(), root / "vocoder", "fp32", 0, None, {})
    return {"vc": root / "vc", "vocoder": root / "vocoder"}


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_speech(tmp_path_factory.mktemp("speech") / "speech.wav", bundled_files("slt", 1)[0], 16000)


def infer(capsys: pytest.CaptureFixture[str], *arguments: object) -> tuple[int, str]:
    status = infer_main([str(argument) for argument in arguments])
    return status, capsys.readouterr().err


def one_line(error: str) -> str:
    lines = error.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0] and "Traceback" not in error, error
    return lines[0]


@contextmanager
def mounted_tmpfs(folder: Path, size: str) -> Iterator[Path]:
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root and mount rights): {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_missing_folder_or_a_folder_as_the_output_is_one_line_and_exit_2(exports: dict[str, Path], speech: Path,
                                                                             tmp_path: Path,
                                                                             capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no" / "such" / "out.wav"
    status, error = infer(capsys, exports["vc"], "--input", speech, "--speaker", "b", "--output", missing)
    assert status == 2 and f"{missing}" in one_line(error) and "does not exist" in error, error
    assert not (tmp_path / "no").exists()
    folder = tmp_path / "folder.wav"
    folder.mkdir()
    status, error = infer(capsys, exports["vc"], "--input", speech, "--speaker", "b", "--output", folder)
    assert status == 2 and "is a folder" in one_line(error), error
    assert list(folder.iterdir()) == []
    status, error = infer(capsys, exports["vocoder"], "--input", speech, "--output", tmp_path / "copy.wav",
                          "--save-outputs", tmp_path / "missing" / "outputs")
    assert status == 2 and "--save-outputs" in one_line(error) and "does not exist" in error, error
    assert not (tmp_path / "copy.wav").exists()


def test_outputs_are_written_whole_under_their_names(exports: dict[str, Path], speech: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    status, error = infer(capsys, exports["vocoder"], "--input", speech, "--output", tmp_path / "copy.flac",
                          "--save-outputs", tmp_path / "outputs")
    assert status == 0, error
    wave, rate = soundfile.read(tmp_path / "copy.flac")
    assert rate == 16000 and abs(len(wave) - soundfile.info(speech).frames) < 256
    assert set(load_file(tmp_path / "outputs" / "outputs.safetensors")) == {"f0"}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["copy.flac", "outputs"]  # no temporary left


def test_a_full_disk_is_one_line_exit_1_and_leaves_no_partial_file(exports: dict[str, Path], speech: Path,
                                                                    tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    with mounted_tmpfs(tmp_path / "tiny", "64k") as tiny:
        before = b"an out.wav from an earlier run"
        (tiny / "out.wav").write_bytes(before)
        # The bundled recording converts to ~100 KB of 16-bit samples: more than the disk holds.
        for name in ("out.wav", "new.wav"):
            status, error = infer(capsys, exports["vc"], "--input", speech, "--speaker", "b", "--output", tiny / name)
            assert status == 1, error
            line = one_line(error)
            assert f"{tiny / name}" in line and "No space left on device" in line, line
        assert (tiny / "out.wav").read_bytes() == before  # the earlier file stays whole
        assert sorted(path.name for path in tiny.iterdir()) == ["out.wav"]  # no partial new.wav, no temporary


def test_a_read_only_folder_is_one_line_exit_2_and_leaves_the_old_file(exports: dict[str, Path], speech: Path,
                                                                        tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    with mounted_tmpfs(tmp_path / "readonly", "1m") as folder:
        (folder / "out.wav").write_bytes(b"earlier")
        remounted = subprocess.run(["mount", "-o", "remount,ro", str(folder)], capture_output=True, text=True)
        if remounted.returncode != 0:
            pytest.skip(f"cannot remount the tmpfs read-only: {remounted.stderr.strip()}")
        status, error = infer(capsys, exports["vc"], "--input", speech, "--speaker", "b", "--output",
                              folder / "out.wav")
        assert status == 2, error
        assert "Read-only file system" in one_line(error) and f"{folder / 'out.wav'}" in error, error
        assert (folder / "out.wav").read_bytes() == b"earlier"


def test_nan_samples_and_an_absurd_sample_rate_are_named(exports: dict[str, Path], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    samples = np.full(16000, 0.1, dtype=np.float32)
    samples[100] = np.nan
    samples[200] = np.inf
    poisoned = tmp_path / "poisoned.wav"
    soundfile.write(poisoned, samples, 16000, subtype="FLOAT")
    status, error = infer(capsys, exports["vc"], "--input", poisoned, "--speaker", "b", "--output",
                          tmp_path / "out.wav")
    line = one_line(error)
    assert status == 2 and "poisoned.wav" in line and "NaN or infinite" in line and "usable" not in line, line
    slow = tmp_path / "one_hertz.wav"
    soundfile.write(slow, np.full(10, 0.1, dtype=np.float32), 1)
    status, error = infer(capsys, exports["vc"], "--input", slow, "--speaker", "b", "--output", tmp_path / "out.wav")
    line = one_line(error)
    assert status == 2 and "one_hertz.wav" in line and "1 Hz" in line and "4000 Hz" in line, line
    assert not (tmp_path / "out.wav").exists()
