"""Inference memory does not grow with the input (invariant 15): `python -m voicetrain.infer` on
5 minutes of speech peaks at nearly the resident memory it needs for 1 minute, for voice
conversion with Griffin-Lim and for F0-conditioned conversion, and the output is as long as the
input. Peak RSS is the command's own (getrusage in the subprocess), compared as a ratio. Both
inputs are several chunks long (--chunk-seconds 10), so the ratio measures what grows with the
input, not one chunk's working memory. The exports are untrained: memory does not depend on
what a model learned."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from omegaconf import OmegaConf

from voicetrain.audio_files import load_audio
from voicetrain.export.writer import write_export
from voicetrain.tasks.base import TaskContext
from voicetrain.tasks.svc import SingingVoiceConversionTask
from voicetrain.tasks.vc import VoiceConversionTask

from export_helpers import with_tests_on_path
from helpers import bundled_files, compose_config, output_of, standard_mel, task_settings

pytestmark = pytest.mark.slow

SHORT_MINUTES, LONG_MINUTES = 1, 5
# What may grow with the input: the input and output waves (4 bytes a sample each) and frame-rate
# tracks. Four more minutes at 16 kHz are ~30 MB of each wave, beside ~500 MB of libraries and model;
# a computation that held a spectrogram of the whole input (as before chunking) needs several times that.
RATIO_LIMIT = 1.25
# Runs the command in this process and prints its own peak RSS (kB on Linux) as the last line.
MEASURED = ("import resource, runpy, sys\n"
            "sys.argv = ['voicetrain.infer', *sys.argv[1:]]\n"
            "try:\n"
            "    runpy.run_module('voicetrain.infer', run_name='__main__')\n"
            "except SystemExit as exit:\n"
            "    if exit.code:\n"
            "        raise\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("long-input-exports")
    torch.manual_seed(0)
    mel = standard_mel()
    vc = VoiceConversionTask(task_settings("vc"), TaskContext(mel, ["a", "b"], [-4.0] * mel.n_mels, [2.0] * mel.n_mels))
    write_export(vc, vc.build_modules(), root / "vc", "fp32", 0, None, {})
    config = OmegaConf.to_container(compose_config("task=svc"), resolve=True)
    described = {name: node for name, node in config["features"].items() if isinstance(node, dict)}
    statistics = {"mel": {"mean": [-4.0] * 80, "std": [2.0] * 80, "speakers": {}},
                  "f0": {"mean": [5.0, 0.0], "std": [0.3, 1.0], "speakers": {}},
                  "loudness": {"mean": [-40.0], "std": [15.0], "speakers": {}}}
    context = TaskContext(mel, ["a", "b"], [-4.0] * mel.n_mels, [2.0] * mel.n_mels, 16000, 256,
                          {name: described[name] for name in ("mel", "f0", "loudness", "wave")}, statistics)
    svc = SingingVoiceConversionTask(task_settings("svc"), context)
    write_export(svc, svc.build_modules(), root / "svc", "fp32", 0, None, {})
    return {"vc": root / "vc", "svc": root / "svc"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """SHORT_MINUTES and LONG_MINUTES of bundled speech, repeated, as 16 kHz wavs."""
    root = tmp_path_factory.mktemp("long-inputs")
    speech = np.concatenate([load_audio(path, 16000) for path in bundled_files("slt", 20)])
    made = {}
    for minutes in (SHORT_MINUTES, LONG_MINUTES):
        samples = minutes * 60 * 16000
        made[minutes] = root / f"speech_{minutes}min.wav"
        soundfile.write(made[minutes], np.tile(speech, samples // speech.shape[0] + 1)[:samples], 16000,
                        subtype="PCM_16")
    return made


def peak_rss_kilobytes(export_dir: Path, source: Path, output: Path) -> int:
    result = subprocess.run([sys.executable, "-c", MEASURED, str(export_dir), "--input", str(source), "--speaker", "b",
                             "--output", str(output), "--chunk-seconds", "10"],
                            capture_output=True, text=True, env=with_tests_on_path(), timeout=1200, cwd=output.parent)
    assert result.returncode == 0, output_of(result)
    return int(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("recipe", ["vc", "svc"])
def test_peak_memory_of_a_long_input_is_nearly_that_of_a_short_one(recipe: str, exports: dict[str, Path],
                                                                  inputs: dict[int, Path], tmp_path: Path) -> None:
    peaks = {minutes: peak_rss_kilobytes(exports[recipe], source, tmp_path / f"out_{minutes}.wav")
             for minutes, source in inputs.items()}
    ratio = peaks[LONG_MINUTES] / peaks[SHORT_MINUTES]
    print(f"{recipe}: peak RSS {peaks[SHORT_MINUTES] // 1024} MiB for {SHORT_MINUTES} min, "
          f"{peaks[LONG_MINUTES] // 1024} MiB for {LONG_MINUTES} min: ratio {ratio:.3f}")
    assert ratio < RATIO_LIMIT, (peaks, ratio)
    for minutes, source in inputs.items():
        written = soundfile.info(tmp_path / f"out_{minutes}.wav")
        assert written.samplerate == 16000
        assert abs(written.frames - soundfile.info(source).frames) < 256  # within one hop
