"""Shared by export/test_export.py and export/test_infer.py: each tiny training run is made once per test
session, so the two modules train once between them."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import QUICK, assert_ok, environment, run_cli

TESTS_DIR = Path(__file__).resolve().parent
STEPS = 12
EVERY = 6
# Validation metrics still reach the manifest; Griffin-Lim previews and most pairs are skipped.
CHEAP_VALIDATION = ["trainer.audio_previews=0", "task.validation_pairs=4"]


@dataclass(frozen=True)
class TrainedRun:
    run_dir: Path
    result: subprocess.CompletedProcess[str]


_runs: dict[tuple[Path, str], TrainedRun] = {}


def with_tests_on_path() -> dict[str, str]:
    """The environment of a subprocess that can import helper_tasks."""
    return environment(PYTHONPATH=os.pathsep.join(filter(None, [str(TESTS_DIR), os.environ.get("PYTHONPATH")])))


def train_once(tmp_path_factory: pytest.TempPathFactory, bundled_cache: Path, name: str, *overrides: str,
               steps: int = STEPS, every: int = EVERY) -> TrainedRun:
    """Trains `name` once per session (a checkpoint and a validation every `every` steps)."""
    key = (tmp_path_factory.getbasetemp(), name)
    if key not in _runs:
        root = tmp_path_factory.mktemp(f"export-{name}")
        result = run_cli(f"run.root={root}", f"run.name={name}", f"data.cache_dir={bundled_cache}",
                         f"trainer.max_steps={steps}", f"trainer.val_every={every}", f"ckpt.every_n_steps={every}",
                         *CHEAP_VALIDATION, *QUICK, *overrides, cwd=root, env=with_tests_on_path())
        assert_ok(result)
        _runs[key] = TrainedRun(root / name, result)
    return _runs[key]


def vc_run(tmp_path_factory: pytest.TempPathFactory, bundled_cache: Path) -> TrainedRun:
    """The default VC recipe (fp16 safetensors export) with periodic exports."""
    return train_once(tmp_path_factory, bundled_cache, "vc", f"export.every_n_steps={EVERY}")
