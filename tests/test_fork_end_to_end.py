"""Issue 23's exercise, repeated with a different custom feature: a new model forked from the
scaffold alone. `python -m voicetrain.new sing --with f0` writes an F0-conditioned waveform task in
an empty project folder; the project adds a feature voicetrain does not ship (log energy in a few
frequency bands, `bands.py`) by naming it in the task's `conditioning` and declaring its
`features:` node in the scaffold's YAML, as the guide says. The run is killed with SIGKILL after a
checkpoint and relaunched with the same command, and ends bit-identical to an uninterrupted run;
its export then converts a recording with `--transpose 7`, whose F0 is the source's times 2^(7/12).
No file of the framework changes along the way."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from voicetrain.data import BUNDLED_CORPUS

from helpers import CLI_TIMEOUT_SECONDS, assert_ok, environment, output_of, write_speech

REPOSITORY = Path(__file__).resolve().parents[1]
STEPS = 8
BANDS_EXTRACTOR = '''"""bands.py: log energy in a few equal-width frequency bands per frame, a feature of this project."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from voicetrain.features.base import FeatureExtractor, frame_count


@dataclass(frozen=True)
class EnergyBandSettings:
    bands: int
    n_fft: int


class EnergyBands(FeatureExtractor):
    """[bands, frames]: natural-log energy of each band of each frame's spectrum."""

    Settings = EnergyBandSettings

    def extract(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        frames, half = frame_count(len(wave), self.hop_length), self.settings.n_fft // 2
        padded = np.pad(wave, half)
        starts = np.arange(frames) * self.hop_length
        windows = padded[starts[:, None] + np.arange(self.settings.n_fft)] * np.hanning(self.settings.n_fft)
        power = np.abs(np.fft.rfft(windows, axis=1)) ** 2
        edges = np.linspace(0, power.shape[1], self.settings.bands + 1).astype(int)
        energy = np.stack([power[:, low:high].sum(axis=1) for low, high in zip(edges[:-1], edges[1:])])
        return np.log(energy + 1e-8).astype(np.float32)

    def channels(self) -> int:
        return self.settings.bands
'''
BANDS_NODE = "  bands:\n    _target_: bands.EnergyBands\n    bands: 4\n    n_fft: 512\n"
TINY = ["task.hidden_channels=8", "task.bottleneck_channels=4", "task.speaker_channels=8", "task.generator_channels=16",
        "task.generator_layers=1", "task.segment_frames=16", "task.validation_utterances=1", "trainer.batch_size=4",
        "trainer.progress=false", "trainer.validate_at_start=false", "trainer.validate_at_end=false",
        "trainer.val_every=1000", "trainer.log_every=1", f"trainer.max_steps={STEPS}", "ckpt.every_n_steps=2",
        "ckpt.keep_last=10"]


def framework_digest() -> dict[str, str]:
    """SHA-256 of every file of the framework (src/, conf/): a fork must not need to change one."""
    return {path.relative_to(REPOSITORY).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for folder in ("src", "conf") for path in sorted((REPOSITORY / folder).rglob("*"))
            if path.is_file() and "__pycache__" not in path.parts}


def project_environment(project: Path) -> dict[str, str]:
    return environment(PYTHONPATH=str(project))  # the project's modules, as `export PYTHONPATH=$PWD` does


def train_command(project: Path, name: str) -> list[str]:
    return [sys.executable, "-m", "voicetrain", f"hydra.searchpath=[file://{project.as_posix()}/conf]", "task=sing",
            *TINY, f"run.root={project / 'runs'}", f"run.name={name}", f"data.cache_dir={project / 'features'}"]


def kill_after_first_checkpoint(process: subprocess.Popen, checkpoints: Path) -> bool:
    """SIGKILLs the process once step 2 is committed; False if it finished first."""
    deadline = time.monotonic() + CLI_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if (checkpoints / "step_00000002" / "manifest.json").is_file():
            process.send_signal(signal.SIGKILL)
            process.wait()
            return True
        time.sleep(0.005)
    raise AssertionError("no checkpoint at step 2 in time")


def infer(project: Path, export: Path, transpose: str, trust: list[str]) -> dict[str, torch.Tensor]:
    outputs = project / f"outputs-{transpose}"
    result = subprocess.run([sys.executable, "-m", "voicetrain.infer", str(export), "--input", str(project / "in.wav"),
                             "--speaker", "slt", "--transpose", transpose, "--output", str(project / f"{transpose}.wav"),
                             "--save-outputs", str(outputs), *trust],
                            cwd=project, env=project_environment(project), capture_output=True, text=True,
                            timeout=CLI_TIMEOUT_SECONDS)
    assert_ok(result)
    return load_file(str(outputs / "outputs.safetensors"))


# The project is on PYTHONPATH, not installed: its export names sing.SingTask and bands.EnergyBands,
# which voicetrain imports only for modules the command trusts.
TRUST = ["--trust-code", "sing", "--trust-code", "bands"]


@pytest.mark.slow  # trains three times and converts twice: runs in make test-slow (CI runs both)
def test_a_fork_with_its_own_feature_trains_resumes_bit_exactly_exports_and_transposes(tmp_path: Path) -> None:
    before = framework_digest()
    project = tmp_path / "my-singer"
    project.mkdir()
    scaffold = subprocess.run([sys.executable, "-m", "voicetrain.new", "sing", "--with", "f0"], cwd=project,
                              env=environment(), capture_output=True, text=True, timeout=CLI_TIMEOUT_SECONDS)
    assert_ok(scaffold)
    # What the project adds: one extractor file, its name in conditioning, its node under features:.
    (project / "bands.py").write_text(BANDS_EXTRACTOR)
    yaml_file = project / "conf" / "task" / "sing.yaml"
    yaml = yaml_file.read_text()
    assert "\n  conditioning: [mel]" in yaml and yaml.endswith("_target_: voicetrain.features.wave.Waveform\n")
    yaml_file.write_text(yaml.replace("\n  conditioning: [mel]", "\n  conditioning: [mel, bands]") + BANDS_NODE)

    env = project_environment(project)
    reference = subprocess.run([*train_command(project, "reference"), "export.enabled=false"], cwd=project, env=env,
                               capture_output=True, text=True, timeout=2 * CLI_TIMEOUT_SECONDS)
    assert_ok(reference)
    assert "bands" in {path.name.split("-")[0] for path in (project / "features").iterdir()}, "bands was extracted"

    checkpoints = project / "runs" / "killed" / "checkpoints"
    process = subprocess.Popen(train_command(project, "killed"), cwd=project, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    assert kill_after_first_checkpoint(process, checkpoints), "the run finished before it could be killed"
    assert not (checkpoints / f"step_{STEPS:08d}").exists()
    resumed = subprocess.run(train_command(project, "killed"), cwd=project, env=env, capture_output=True, text=True,
                             timeout=2 * CLI_TIMEOUT_SECONDS)
    assert_ok(resumed)
    assert "resuming from step" in resumed.stdout + resumed.stderr, output_of(resumed)

    expected_dir = project / "runs" / "reference" / "checkpoints" / f"step_{STEPS:08d}"
    actual_dir = checkpoints / f"step_{STEPS:08d}"
    expected, actual = (load_file(str(folder / "modules" / "model.safetensors")) for folder in (expected_dir, actual_dir))
    assert expected.keys() == actual.keys()
    for key in expected:
        assert expected[key].equal(actual[key]), f"{key} differs after the SIGKILL and resume"
    for name in ("optimizers/model.safetensors", "loop_state.json", "rng/rank0.json"):
        assert (expected_dir / name).read_bytes() == (actual_dir / name).read_bytes(), name

    write_speech(project / "in.wav", BUNDLED_CORPUS / "rms" / "h01_09.flac", 16000)
    export = project / "runs" / "killed" / "export"
    assert (export / "manifest.json").is_file()
    refused = subprocess.run([sys.executable, "-m", "voicetrain.infer", str(export), "--input", str(project / "in.wav"),
                              "--speaker", "slt", "--output", str(project / "refused.wav")], cwd=project,
                             env=project_environment(project), capture_output=True, text=True,
                             timeout=CLI_TIMEOUT_SECONDS)
    assert refused.returncode == 2 and "--trust-code sing" in refused.stderr, output_of(refused)
    plain, shifted = infer(project, export, "0", TRUST)["f0"], infer(project, export, "7", TRUST)["f0"]
    voiced = plain > 0
    assert voiced.float().mean() > 0.3, "the recording is mostly voiced"
    assert torch.equal(shifted > 0, voiced), "transposing keeps voicing"
    assert torch.allclose(shifted[voiced] / plain[voiced], torch.full_like(plain[voiced], 2 ** (7 / 12)), rtol=1e-5)

    assert framework_digest() == before, "the fork changed a file of the framework"
    assert not any(path.suffix in (".py", ".yaml") for path in (REPOSITORY / "src" / "voicetrain" / "tasks").glob("sing*"))
    assert sorted(os.listdir(project / "runs")) == ["killed", "reference"]
