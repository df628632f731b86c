"""What a fork reads instead of voicetrain's source (issue 23): the error for a missing feature
prints the `# @package _global_` form whole, `python -m voicetrain.new --with f0` writes an
F0-conditioned task, a separate project is registered with voicetrain's trust boundary by a
pyproject.toml entry point (an existing one is never touched), `TaskContext.extractor` rebuilds a
run's extractor, and held-out features are read from the store when validation indexes them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from voicetrain.config import ConfigError, validate
from voicetrain.data.prepare import prepare_data
from voicetrain.features.mel import LogMel
from voicetrain.features.reading import FeatureSequence
from voicetrain.new import main
from voicetrain.tasks import TaskContext

from helpers import compose_config

REPOSITORY = Path(__file__).resolve().parents[1]


def settings_of(*overrides: str):
    return validate(OmegaConf.to_container(compose_config(*overrides), resolve=True))


def test_a_missing_feature_names_the_global_package_form_and_prints_a_whole_node() -> None:
    with pytest.raises(ConfigError) as error:
        settings_of("task=svc", "~features.f0")
    message = str(error.value)
    assert "features.f0: task SingingVoiceConversionTask needs this feature" in message, message
    assert "# @package _global_" in message and "\n      task:\n" in message and "\n      features:\n" in message
    # The whole node, as conf/task/svc.yaml declares it: every key, nothing cut off.
    for line in ("_target_: voicetrain.features.pitch.Pitch", "method: swift", "f0_min: 50.0", "f0_max: 1100.0",
                 "unvoiced: zero", "voicing_threshold: 0.5"):
        assert f"\n          {line}" in message, message
    assert "+features.f0.voicing_threshold=0.5" in message, "the command-line form is whole too"
    assert "..." not in message.split("or give it on the command line:")[1], message


def test_a_features_block_under_task_says_how_to_write_the_global_form() -> None:
    with pytest.raises(ConfigError) as error:
        settings_of("+task.features.f0._target_=voicetrain.features.pitch.Pitch")
    assert "task.features: the task's YAML put a features: block under task:" in str(error.value)
    assert "'# @package _global_' the file's first line" in str(error.value)


def lint(files: list[Path]) -> None:
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--config",
                             str(REPOSITORY / "pyproject.toml"), *map(str, files)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_with_f0_writes_a_transposing_task_and_a_registering_pyproject(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sing", "--with", "f0", "--into", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    yaml = (tmp_path / "conf" / "task" / "sing.yaml").read_text()
    assert yaml.startswith("# @package _global_\n")
    assert "\ntask:\n  _target_: sing.SingTask\n" in yaml and "\n    _target_: voicetrain.features.pitch.Pitch\n" in yaml
    task = (tmp_path / "sing.py").read_text()
    assert 'inference_inputs = ("audio", "speaker", "transpose")' in task and "transposed_f0(" in task
    assert "self.context.extractor(name)" in task
    test = (tmp_path / "tests" / "test_sing.py").read_text()
    assert "ckpt.monitor=val/" not in test, "the test reads the metric validate reports"
    pyproject = (tmp_path / "pyproject.toml").read_text()
    assert '[project.entry-points."voicetrain.tasks"]\nsing = "sing:SingTask"\n' in pyproject
    assert 'py-modules = ["sing"]' in pyproject
    assert f"pip install -e {tmp_path}" in printed and "--trust-code sing" in printed, printed
    lint([tmp_path / "sing.py", tmp_path / "tests" / "test_sing.py"])


def test_an_existing_pyproject_is_left_alone_and_the_lines_to_add_are_printed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mine = '[project]\nname = "mine"\n'
    (tmp_path / "pyproject.toml").write_text(mine)
    assert main(["mymodel", "--into", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert (tmp_path / "pyproject.toml").read_text() == mine
    assert '  [project.entry-points."voicetrain.tasks"]\n  mymodel = "mymodel:MymodelTask"\n' in printed, printed
    assert "pyproject.toml" not in printed.split("train it:")[0], "it was not written, so it is not listed"


def test_the_context_rebuilds_any_extractor_of_the_run() -> None:
    settings = settings_of("task=svc")
    context = TaskContext.of_run(settings.features, type("Data", (), {"speakers": ["a"], "mel_mean": [],
                                                                        "mel_std": [], "statistics": {}})())
    restored = TaskContext.from_dict(context.to_dict())  # as an export keeps it
    mel = restored.extractor("mel")
    assert isinstance(mel, LogMel) and mel.settings == settings.features.extractors["mel"].settings
    assert restored.extractor("mel") is mel, "built once"
    assert type(restored.extractor("f0")).__name__ == "Pitch"
    assert "_built_extractors" not in restored.to_dict(), "the cache is no part of what is saved"
    with pytest.raises(KeyError, match=r"features\.tilt: this run has no such feature \(it has \['f0', 'loudness'"):
        restored.extractor("tilt")


def test_held_out_features_are_read_from_the_store_when_indexed(bundled_cache: Path) -> None:
    settings = settings_of(f"data.cache_dir={bundled_cache}")
    data = prepare_data(settings.data, settings.features, bundled_cache, progress=False, workers=1)
    mels = data.val_features["mel"]
    assert isinstance(mels, FeatureSequence), "no held-out array is loaded before validate() asks"
    reader = mels.reader
    assert len(mels) == len(data.val_utterances) > 2
    assert torch.equal(mels[1], reader.read(1)) and torch.equal(mels[-1], reader.read(len(mels) - 1))
    assert [tensor.shape for tensor in mels[:2]] == [reader.read(0).shape, reader.read(1).shape]
    with pytest.raises(IndexError):
        mels[len(mels)]
