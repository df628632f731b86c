"""Features through the real CLI: a task preset that brings F0 and the wave resumes bit for bit with
data-loader workers; a fork's own extractor is one class and a `_target_` line; a missing or moved
feature key is a configuration error that names the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from export_helpers import with_tests_on_path
from helpers import TINY_MODEL, output_of, run_cli, training_state_bytes

CUSTOM_CONF = Path(__file__).resolve().parents[1] / "custom_conf"
STATE_FILES = ("modules/model.safetensors", "optimizers/model.safetensors", "optimizers/model.json",
               "schedulers/model.json", "loop_state.json", "rng/rank0.json")


def launch(root: Path, cache: Path, name: str, *extra: str):
    return run_cli(f"run.root={root}", f"run.name={name}", f"data.cache_dir={cache}", *TINY_MODEL, *extra, cwd=root,
                   env=with_tests_on_path())


def ok(result) -> str:
    assert result.returncode == 0, output_of(result)
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def pitch_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pitch-cache")


@pytest.mark.slow  # long: runs in make test-slow (CI runs both)
def test_f0_and_wave_features_resume_bit_for_bit_with_workers(tmp_path: Path, pitch_cache: Path) -> None:
    preset = [f"hydra.searchpath=[file://{CUSTOM_CONF}]", "task=vc_pitch", "ckpt.every_n_steps=2",
              "trainer.num_workers=2", "data.feature_workers=2"]
    ok(launch(tmp_path, pitch_cache, "whole", *preset, "trainer.max_steps=6"))
    # Dot files are the store's own (its lock); each feature has one folder.
    assert {path.name.split("-")[0] for path in pitch_cache.iterdir() if not path.name.startswith(".")} == \
        {"mel", "f0", "wave"}
    ok(launch(tmp_path, pitch_cache, "halves", *preset, "trainer.max_steps=3"))
    resumed = ok(launch(tmp_path, pitch_cache, "halves", *preset, "trainer.max_steps=6"))
    assert "resuming from step 3" in resumed
    for step in (4, 6):
        for name in STATE_FILES:
            expected = tmp_path / "whole" / "checkpoints" / f"step_{step:08d}" / name
            actual = tmp_path / "halves" / "checkpoints" / f"step_{step:08d}" / name
            assert training_state_bytes(expected) == training_state_bytes(actual), f"{actual} differs"


@pytest.mark.slow  # long: runs in make test-slow (CI runs both)
def test_a_forks_own_extractor_is_a_class_and_a_target_line(tmp_path: Path, bundled_cache: Path) -> None:
    output = ok(launch(tmp_path, bundled_cache, "custom", "+features.zcr._target_=custom_extractor.ZeroCrossings",
                       "+features.zcr.window=512", "trainer.max_steps=2"))
    assert "trained steps 0 -> 2" in output
    assert any(path.name.startswith("zcr-") for path in bundled_cache.iterdir())


def test_feature_configuration_errors_name_the_fix(tmp_path: Path, bundled_cache: Path) -> None:
    moved = launch(tmp_path, bundled_cache, "moved", "features.n_mels=40")
    assert moved.returncode == 2 and "write features.mel.n_mels=40" in moved.stderr, output_of(moved)
    missing = launch(tmp_path, bundled_cache, "missing", f"hydra.searchpath=[file://{CUSTOM_CONF}]", "task=vc_pitch",
                     "~features.f0")
    assert missing.returncode == 2, output_of(missing)
    assert "features.f0: task VoiceConversionWithPitch needs this feature" in missing.stdout + missing.stderr
    bad = launch(tmp_path, bundled_cache, "bad", "features.mel.fmax=9000")
    assert bad.returncode == 2 and "features.mel.fmax=9000.0 is above the Nyquist" in bad.stdout + bad.stderr
