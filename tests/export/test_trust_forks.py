"""Forks keep working through the trust boundary with no flag: a model registered by its package's
entry point, and a model `python -m voicetrain.new` writes into a clone, each train, re-export and
infer as their users run them (in fresh processes, from a folder of their own)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from voicetrain.data import BUNDLED_CORPUS

from helpers import QUICK, assert_ok, environment, run_cli
from test_new import TINY_TASK, copy_of_repository, new_command
from test_trust import install_fork, run_module

SOURCE = BUNDLED_CORPUS / "slt" / "h01_09.flac"
TINY_RUN = ["trainer.max_steps=2", "ckpt.every_n_steps=2", "trainer.validate_at_start=false",
            "trainer.audio_previews=0", *QUICK]


def export_and_infer(run: Path, cwd: Path, **extra_env: str) -> None:
    """`python -m voicetrain.export RUN` and `python -m voicetrain.infer` on its export, no --trust-code."""
    exported = run_module("voicetrain.export", run, "--output", cwd / "reexport", cwd=cwd, **extra_env)
    assert_ok(exported)
    for export in (run / "export", cwd / "reexport"):
        output = cwd / f"{export.name}.wav"
        converted = run_module("voicetrain.infer", export, "--input", SOURCE, "--speaker", "slt", "--output", output,
                               cwd=cwd, **extra_env)
        assert_ok(converted)
        assert output.is_file()


@pytest.mark.slow  # two short trainings in fresh processes
def test_a_fork_registered_by_its_entry_point_trains_exports_and_infers_without_a_flag(
        tmp_path: Path, bundled_cache: Path) -> None:
    site = tmp_path / "site"
    install_fork(site)
    trained = run_cli(f"run.root={tmp_path}", "run.name=fork", f"data.cache_dir={bundled_cache}",
                      "task._target_=fork_project.ForkTask", "task.hidden_channels=32", *TINY_RUN, cwd=tmp_path,
                      env=environment(PYTHONPATH=str(site)))
    assert_ok(trained)
    config = json.loads((tmp_path / "fork" / "export" / "config.json").read_text())
    assert config["task_target"] == "fork_project.ForkTask"
    export_and_infer(tmp_path / "fork", tmp_path, PYTHONPATH=str(site))


@pytest.mark.slow
def test_a_task_written_into_a_clone_by_voicetrain_new_exports_and_infers_without_a_flag(tmp_path: Path) -> None:
    clone = copy_of_repository(tmp_path / "voicetrain")
    assert_ok(new_command("my_vc", cwd=clone))
    work = tmp_path / "work"
    work.mkdir()
    # The clone's own sources first, as its editable install would put them.
    on_path = {"PYTHONPATH": str(clone / "src")}
    trained = run_cli("task=my_vc", *[option for option in TINY_TASK if not option.startswith("export.")],
                      f"run.root={work}", "run.name=my_vc", f"data.cache_dir={tmp_path / 'features'}",
                      "trainer.max_steps=1", cwd=work, env=environment(**on_path))
    assert_ok(trained)
    export_and_infer(work / "my_vc", work, **on_path)
