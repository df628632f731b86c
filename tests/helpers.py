"""Helpers shared by the tests: driving the real CLI, composing the packaged config, writing speech.

Every run points all its paths at pytest's temporary folders: `run.root` holds the run directory
and `data.cache_dir` the feature cache (conftest's session fixture `bundled_cache` shares one cache
of the bundled corpus between runs, since every test reads the same 120 files).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import soxr
from hydra import compose, initialize_config_module
from omegaconf import DictConfig, OmegaConf

import voicetrain.conf
from voicetrain.audio import MelSettings
from voicetrain.config import validate
from voicetrain.schema import import_target
from voicetrain.data import BUNDLED_CORPUS
from voicetrain.data.prepare import prepare_data

CONFIG_ROOT = Path(voicetrain.conf.__file__).resolve().parent
CLI_TIMEOUT_SECONDS = 600

# Small enough for a 2-core CPU: a few steps, no progress bar (a terminal thing).
QUICK = ["trainer.progress=false", "trainer.batch_size=8"]


def recipe_run_schedule(steps: int) -> list[str]:
    """The trainer settings of the waveform recipes' tiny test runs: batches of four, a loss logged
    at every step, one audio preview, validation at the end and a checkpoint halfway (the point the
    resume tests stop at)."""
    return ["trainer.batch_size=4", "trainer.log_every=1", "trainer.progress=false", "trainer.audio_previews=1",
            f"trainer.val_every={steps}", f"ckpt.every_n_steps={steps // 2}"]

# The VC model at its smallest, no validation or export unless a test asks: for tests of what
# happens around training (saving, retention, resume), not of what it learns.
TINY_MODEL = [
    "task.hidden_channels=16",
    "task.speaker_channels=16",
    "task.encoder_layers=1",
    "task.decoder_layers=1",
    "task.validation_pairs=2",
    "trainer.audio_previews=0",
    "trainer.batch_size=8",
    "trainer.progress=false",
    "trainer.val_every=1000",
    "trainer.validate_at_start=false",
    "export.enabled=false",
]


def environment(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **extra}
    # HYDRA_FULL_ERROR would add tracebacks that the CLI tests check are absent.
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def run_cli(*overrides: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m voicetrain OVERRIDES...` in a subprocess; stdout and stderr captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "voicetrain", *overrides],
        cwd=cwd,
        env=env or environment(),
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_SECONDS,
    )


def output_of(result: subprocess.CompletedProcess[str]) -> str:
    return f"--- exit status {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, output_of(result)


@contextmanager
def composing() -> Iterator[None]:
    """Inside this block, `compose(overrides=[...])` composes the packaged config like the CLI does."""
    with initialize_config_module("voicetrain.conf", version_base="1.3"):
        yield


def compose_config(*overrides: str) -> DictConfig:
    with composing():
        return compose(config_name="config", overrides=list(overrides))


def fill_feature_cache(cache: Path, *overrides: str) -> Path:
    """Extracts the features that the config composed from `overrides` declares into `cache` (one
    worker, no progress bar), so the runs that share the cache read them instead of each extracting."""
    config = compose_config(*overrides, f"data.cache_dir={cache}")
    settings = validate(OmegaConf.to_container(config, resolve=True))
    prepare_data(settings.data, settings.features, cache, progress=False, workers=1)
    return cache


def config_groups() -> dict[str, list[str]]:
    """Every config group under conf/ (hydra's own excepted) and its presets, read from disk so a
    new preset or group is covered without editing the tests."""
    groups = {}
    for folder in sorted(CONFIG_ROOT.iterdir()):
        if folder.is_dir() and folder.name not in ("hydra", "__pycache__"):
            groups[folder.name] = sorted(path.stem for path in folder.glob("*.yaml"))
    return groups


def write_speech(path: Path, source: Path, sample_rate: int) -> Path:
    """Writes the bundled FLAC `source` as a wav at `sample_rate` (real speech, resampled with soxr)."""
    wave, source_rate = soundfile.read(source, dtype="float32")
    if source_rate != sample_rate:
        wave = soxr.resample(wave, source_rate, sample_rate)
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, np.asarray(wave, dtype=np.float32), sample_rate, subtype="PCM_16")
    return path


def bundled_files(speaker: str, count: int) -> list[Path]:
    return sorted((BUNDLED_CORPUS / speaker).glob("*.flac"))[:count]


def standard_mel() -> MelSettings:
    """The log-mel settings of the shipped config (conf/config.yaml is their one source)."""
    features = OmegaConf.to_container(compose_config().features)
    mel = {key: value for key, value in features["mel"].items() if key != "_target_"}
    return MelSettings(sample_rate=features["sample_rate"], hop_length=features["hop_length"], **mel)


def task_settings(task: str, **changes: object) -> Any:
    """The Settings dataclass of conf/task/TASK.yaml (its one source of values) with `changes`."""
    node = OmegaConf.to_container(compose_config(f"task={task}").task)
    settings_class = import_target(node.pop("_target_")).Settings
    return settings_class(**{**node, **changes})


def reset_accelerate() -> None:
    """Accelerate keeps process-wide singletons; tests that run Trainer in-process start and end
    without them. The one place tests touch Accelerate's private reset (a library change fails here)."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def stop_once_training(process: "subprocess.Popen[str]", log: Path, signal_number: int, settle_seconds: float = 0.5,
                       timeout: float = 300) -> str:
    """Waits until the launch's log says it trains, lets it run `settle_seconds`, sends the signal,
    and returns everything the process printed."""
    deadline = time.monotonic() + timeout
    while not (log.is_file() and "training " in log.read_text()):
        assert process.poll() is None and time.monotonic() < deadline, process.stdout.read() if process.stdout else ""
        time.sleep(0.05)
    time.sleep(settle_seconds)
    process.send_signal(signal_number)
    output, _ = process.communicate(timeout=timeout)
    return output


# Validation bookkeeping in loop_state.json: a launch that ends early validates at its last step,
# so an interrupted run has validated at other steps than an uninterrupted one. Everything else in
# a checkpoint (weights, optimizer, schedules, RNGs, step, samples seen) must be bit-identical.
VALIDATION_RECORD = ("last_metrics", "best_metric", "best_step")


def training_state_bytes(path: Path) -> bytes:
    """A checkpoint file's bytes, for comparing training state; loop_state.json without the
    validation record."""
    if path.name != "loop_state.json":
        return path.read_bytes()
    state = json.loads(path.read_text())
    return json.dumps({key: value for key, value in state.items() if key not in VALIDATION_RECORD},
                      sort_keys=True).encode()
