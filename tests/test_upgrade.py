"""Checkpoints written by an older voicetrain (Accelerate's save_state files, which are pickles)
are refused with a one-time conversion command; `python -m voicetrain.upgrade RUN --trust`
converts them, without a plain unpickler, into exactly the state the current layout holds."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from voicetrain.checkpoint.store import CheckpointStore
from voicetrain.checkpoint.training_state import restore
from voicetrain.config import validate
from voicetrain.run.trainer import Trainer

from helpers import TINY_MODEL, compose_config, environment, output_of, reset_accelerate, run_cli

STATE_FILES = ("modules/model.safetensors", "optimizers/model.safetensors", "optimizers/model.json",
               "schedulers/model.json", "loop_state.json", "rng/rank0.json", "rng/rank0.safetensors")


class LegacyProgress:
    """What the older loop registered with Accelerate: its progress, as a state dict."""

    def __init__(self, state: dict):
        self.state = state

    def state_dict(self) -> dict:
        return self.state

    def load_state_dict(self, state: dict) -> None:
        self.state = state


def write_legacy_checkpoint(current: Path, legacy: Path, overrides: list[str]) -> None:
    """The older voicetrain's layout of the same state: Accelerate's save_state with the progress
    and the schedule registered for checkpointing, plus config.yaml, task_context.json and a
    manifest of sizes (no layout version)."""
    settings = validate(OmegaConf.to_container(compose_config(*overrides), resolve=True))
    reset_accelerate()
    trainer = Trainer(settings)
    trainer.setup()
    assert restore(trainer.objects, current, rank=0)
    accelerator = trainer.accelerator
    accelerator.register_for_checkpointing(LegacyProgress(trainer.loop_state.state_dict()),
                                           *trainer.objects.schedulers.values())
    accelerator.save_state(str(legacy))
    reset_accelerate()
    for name in ("config.yaml", "task_context.json"):
        shutil.copyfile(current / name, legacy / name)
    manifest = json.loads((current / "manifest.json").read_text())
    files = {path.name: path.stat().st_size for path in legacy.iterdir()}
    legacy_manifest = {key: value for key, value in manifest.items() if key not in ("layout", "files")}
    (legacy / "manifest.json").write_text(json.dumps({**legacy_manifest, "files": files}))


@pytest.mark.slow  # long: runs in make test-slow (CI runs both)
def test_an_old_checkpoint_is_refused_then_converted_exactly(tmp_path: Path, bundled_cache: Path) -> None:
    overrides = [f"run.root={tmp_path}", f"data.cache_dir={bundled_cache}", *TINY_MODEL, "trainer.max_steps=2",
                 "ckpt.every_n_steps=2"]
    assert run_cli(*overrides, cwd=tmp_path).returncode == 0
    checkpoints = tmp_path / "default" / "checkpoints"
    current = tmp_path / "current"
    shutil.copytree(checkpoints / "step_00000002", current)
    shutil.rmtree(checkpoints / "step_00000002")
    write_legacy_checkpoint(current, checkpoints / "step_00000002", overrides)
    assert (checkpoints / "step_00000002" / "custom_checkpoint_0.pkl").is_file()

    refused = run_cli(*overrides[:-2], "trainer.max_steps=4", cwd=tmp_path)
    assert refused.returncode == 2, output_of(refused)
    assert "python -m voicetrain.upgrade" in refused.stdout + refused.stderr and "--trust" in refused.stdout + refused.stderr

    untrusted = subprocess.run([sys.executable, "-m", "voicetrain.upgrade", str(tmp_path / "default")],
                               capture_output=True, text=True, env=environment(), timeout=300)
    assert untrusted.returncode == 2 and "--trust" in untrusted.stderr, output_of(untrusted)
    converted = subprocess.run([sys.executable, "-m", "voicetrain.upgrade", str(tmp_path / "default"), "--trust"],
                               capture_output=True, text=True, env=environment(), timeout=300)
    assert converted.returncode == 0, output_of(converted)
    (checkpoint,) = CheckpointStore(checkpoints).list()
    assert checkpoint.manifest["layout"] == 2 and (checkpoints / "step_00000002.legacy").is_dir()
    for name in STATE_FILES:
        assert (checkpoint.path / name).read_bytes() == (current / name).read_bytes(), name

    resumed = run_cli(*overrides[:-2], "trainer.max_steps=4", cwd=tmp_path)
    assert resumed.returncode == 0, output_of(resumed)
    assert "resuming from step 2" in resumed.stdout + resumed.stderr
