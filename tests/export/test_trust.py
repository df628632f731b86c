"""The trust boundary (DESIGN.md invariant 13): a class named inside a downloaded export or checkpoint
is never imported unless it is voicetrain's own, registered by an installed package's entry point, or
trusted on the command line; the folder verifies first; the current folder is never a source of
modules. Each attack is built as an attacker builds it: a module planted beside the files and every
size and SHA-256 in the manifest recomputed (the manifest proves integrity, not authenticity)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from voicetrain.data import BUNDLED_CORPUS
from voicetrain.durable import MANIFEST, file_table
from voicetrain.trust import refusal_reason

from export_helpers import vc_run
from helpers import environment, output_of

VC_TARGET = "voicetrain.tasks.vc.VoiceConversionTask"
SOURCE = BUNDLED_CORPUS / "slt" / "h01_09.flac"


def payload_module(marker: Path, base: str = VC_TARGET) -> str:
    """A module whose top level leaves `marker` behind: the proof that a file chose code."""
    module, _, name = base.rpartition(".")
    return (f"from pathlib import Path\nPath({str(marker)!r}).write_text('payload ran')\n"
            f"from {module} import {name}\n\nclass Task({name}):\n    pass\n")


def reseal(folder: Path) -> None:
    """What an attacker does after editing a folder: recompute every size and SHA-256 of its manifest."""
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["files"] = file_table(folder)
    (folder / MANIFEST).write_text(json.dumps(manifest))


def edit_config(export: Path, **changes: object) -> None:
    config = json.loads((export / "config.json").read_text())
    config.update(changes)
    (export / "config.json").write_text(json.dumps(config))
    reseal(export)


def run_module(module: str, *arguments: object, cwd: Path, **extra_env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *(str(argument) for argument in arguments)], cwd=cwd,
                          env=environment(**extra_env), capture_output=True, text=True, timeout=300)


def assert_refused(result: subprocess.CompletedProcess[str], marker: Path, *phrases: str) -> None:
    assert result.returncode == 2, output_of(result)
    assert not marker.exists(), "the planted module ran"
    message = result.stderr.strip()
    assert "\n" not in message and "Traceback" not in message, output_of(result)
    for phrase in phrases:
        assert phrase in message, output_of(result)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, bundled_cache: Path) -> Path:
    return vc_run(tmp_path_factory, bundled_cache).run_dir


@pytest.fixture
def downloads(tmp_path: Path, trained: Path) -> Path:
    """A copy of a real export as it would arrive from a model-sharing site, under ./downloads/model/export."""
    export = tmp_path / "downloads" / "model" / "export"
    shutil.copytree(trained / "export", export)
    return export


# ----- the policy, pure -----

def test_the_policy_allows_only_own_registered_and_trusted_names() -> None:
    registered = {"fork_project.model.ForkTask": "voicetrain.tasks entry point 'fork'"}
    assert refusal_reason(VC_TARGET, (), {}) is None
    assert refusal_reason("fork_project.model.ForkTask", (), registered) is None
    assert refusal_reason("fork_project.model.Other", (), registered) is not None  # only the class it names
    assert refusal_reason("downloads.model.export.payload.Task", (), registered) is not None
    assert refusal_reason("downloads.model.export.payload.Task", ("downloads",), {}) is None
    assert refusal_reason("downloadsx.payload.Task", ("downloads",), {}) is not None  # a prefix is not a package
    assert refusal_reason("os.system", (), {}) is not None
    assert refusal_reason("Task", (), {}) is not None
    assert refusal_reason(["not", "a", "name"], (), {}) is not None
    assert refusal_reason("mine.Task", (), {}, {"mine.Task"}) is None  # the user's own config chose it


# ----- point 1: an export's config.json -----

def test_an_export_naming_a_module_planted_in_the_download_is_refused(tmp_path: Path, downloads: Path) -> None:
    marker = tmp_path / "payload-ran"
    (downloads / "payload.py").write_text(payload_module(marker))
    edit_config(downloads, task_target="downloads.model.export.payload.Task")
    output = tmp_path / "out.wav"
    # `python -m` from the folder above `downloads/`: the current folder is first on sys.path.
    result = run_module("voicetrain.infer", "downloads/model/export", "--input", SOURCE, "--speaker", "slt",
                        "--output", output, cwd=tmp_path)
    assert_refused(result, marker, "downloads.model.export.payload.Task", "--trust-code downloads", "config.json")
    assert "install the project" not in result.stderr
    assert not output.exists()
    # The same folder, trusted deliberately: now the code runs (so the refusal above is what stopped it).
    trusted = run_module("voicetrain.infer", "downloads/model/export", "--input", SOURCE, "--speaker", "slt",
                         "--output", output, "--trust-code", "downloads", cwd=tmp_path)
    assert trusted.returncode == 0, output_of(trusted)
    assert marker.exists()


def test_a_vocoder_and_a_default_vocoder_naming_planted_code_are_refused(tmp_path: Path, downloads: Path,
                                                                          trained: Path) -> None:
    marker = tmp_path / "payload-ran"
    (downloads / "payload.py").write_text(payload_module(marker))
    edit_config(downloads, task_target="downloads.model.export.payload.Task")
    honest = tmp_path / "honest-export"
    shutil.copytree(trained / "export", honest)
    output = tmp_path / "out.wav"
    result = run_module("voicetrain.infer", honest, "--input", SOURCE, "--speaker", "slt", "--vocoder",
                        "downloads/model/export", "--output", output, cwd=tmp_path)
    assert_refused(result, marker, "--vocoder", "downloads.model.export.payload.Task")
    # An export whose config names that folder as its default vocoder (export.vocoder).
    edit_config(honest, default_vocoder=str(downloads))
    result = run_module("voicetrain.infer", honest, "--input", SOURCE, "--speaker", "slt", "--output", output,
                        cwd=tmp_path)
    assert_refused(result, marker, "default vocoder", "downloads.model.export.payload.Task")
    assert not output.exists()


def test_an_extractor_named_in_the_export_context_is_refused(tmp_path: Path, downloads: Path) -> None:
    marker = tmp_path / "payload-ran"
    (downloads / "payload.py").write_text(payload_module(marker, "voicetrain.features.mel.LogMel"))
    config = json.loads((downloads / "config.json").read_text())
    config["context"]["extractors"]["mel"]["_target_"] = "downloads.model.export.payload.Task"
    edit_config(downloads, context=config["context"])
    result = run_module("voicetrain.infer", "downloads/model/export", "--list-speakers", cwd=tmp_path)
    assert_refused(result, marker, "context.extractors.mel._target_")


def test_a_folder_that_does_not_verify_is_refused_before_any_name_is_read(tmp_path: Path, downloads: Path) -> None:
    marker = tmp_path / "payload-ran"
    (downloads / "payload.py").write_text(payload_module(marker))
    config = json.loads((downloads / "config.json").read_text())
    config["task_target"] = "downloads.model.export.payload.Task"
    (downloads / "config.json").write_text(json.dumps(config))  # not resealed: the manifest no longer matches
    result = run_module("voicetrain.infer", "downloads/model/export", "--list-speakers", cwd=tmp_path)
    assert_refused(result, marker, "damaged")


# ----- point 2: a checkpoint's config.yaml in python -m voicetrain.export -----

def planted_run(tmp_path: Path, trained: Path, marker: Path, key: str, base: str) -> Path:
    """A copy of a trained run whose newest checkpoint's config.yaml names a module planted in the run."""
    run = tmp_path / "downloads" / "run"
    shutil.copytree(trained, run, ignore=shutil.ignore_patterns("run.lock*", "tb"))
    (run / "payload.py").write_text(payload_module(marker, base))
    checkpoint = sorted((run / "checkpoints").glob("step_*"))[-1]
    saved = yaml.safe_load((checkpoint / "config.yaml").read_text())
    node = saved
    for part in key.split(".")[:-1]:
        node = node[part]
    node[key.split(".")[-1]] = "downloads.run.payload.Task"
    (checkpoint / "config.yaml").write_text(yaml.safe_dump(saved))
    return checkpoint


@pytest.mark.parametrize(("key", "base"), [("task._target_", VC_TARGET),
                                           ("features.mel._target_", "voicetrain.features.mel.LogMel")])
def test_a_checkpoint_naming_planted_code_is_refused_by_export(tmp_path: Path, trained: Path, key: str,
                                                                base: str) -> None:
    marker = tmp_path / "payload-ran"
    checkpoint = planted_run(tmp_path, trained, marker, key, base)
    reseal(checkpoint)
    result = run_module("voicetrain.export", "downloads/run", "--output", tmp_path / "out", cwd=tmp_path)
    assert_refused(result, marker, key, "--trust-code downloads")
    assert not (tmp_path / "out").exists()


def test_an_unlisted_or_changed_config_yaml_is_refused_before_import(tmp_path: Path, trained: Path) -> None:
    marker = tmp_path / "payload-ran"
    checkpoint = planted_run(tmp_path, trained, marker, "task._target_", VC_TARGET)
    result = run_module("voicetrain.export", "downloads/run", "--output", tmp_path / "out", cwd=tmp_path)
    assert_refused(result, marker, "changed after it was written")
    # Dropped from the manifest instead of resealed: a file the manifest does not list.
    manifest = json.loads((checkpoint / MANIFEST).read_text())
    manifest["files"] = {name: entry for name, entry in file_table(checkpoint).items() if name != "config.yaml"}
    (checkpoint / MANIFEST).write_text(json.dumps(manifest))
    result = run_module("voicetrain.export", "downloads/run", "--output", tmp_path / "out", cwd=tmp_path)
    assert_refused(result, marker, "not listed")


# ----- the current folder is never a source; an entry point registers a fork -----

def install_fork(site: Path) -> None:
    """A fork installed the way pip installs one: its module and a dist-info with the entry point."""
    site.mkdir(parents=True, exist_ok=True)
    (site / "fork_project.py").write_text(
        "from voicetrain.tasks.vc import VoiceConversionTask\n\nclass ForkTask(VoiceConversionTask):\n    pass\n")
    info = site / "fork_project-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fork-project\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[voicetrain.tasks]\nfork = fork_project:ForkTask\n")


def test_a_registered_fork_loads_without_a_flag_and_never_from_the_current_folder(tmp_path: Path,
                                                                                  downloads: Path) -> None:
    marker = tmp_path / "payload-ran"
    site = tmp_path / "site"
    install_fork(site)
    edit_config(downloads, task_target="fork_project.ForkTask")
    # A module of the same name planted in the folder the user runs from.
    (tmp_path / "fork_project.py").write_text(payload_module(marker).replace("class Task(", "class ForkTask("))
    output = tmp_path / "out.wav"
    result = run_module("voicetrain.infer", downloads, "--input", SOURCE, "--speaker", "slt", "--output", output,
                        cwd=tmp_path, PYTHONPATH=str(site))
    assert result.returncode == 0, output_of(result)
    assert output.is_file()
    assert not marker.exists(), "the module planted in the current folder ran instead of the installed fork"
    # Without the entry point the same name is refused.
    shutil.rmtree(site / "fork_project-0.1.dist-info")
    result = run_module("voicetrain.infer", downloads, "--list-speakers", cwd=tmp_path, PYTHONPATH=str(site))
    assert_refused(result, marker, "fork_project.ForkTask", "--trust-code fork_project")


# ----- point 8: malformed exports, and settings against the weights' shapes -----

def malformed_error(tmp_path: Path, export: Path) -> str:
    result = run_module("voicetrain.infer", export, "--input", SOURCE, "--speaker", "slt", "--output",
                        tmp_path / "out.wav", cwd=tmp_path)
    assert result.returncode == 2, output_of(result)
    message = result.stderr.strip()
    assert "\n" not in message and "Traceback" not in message, output_of(result)
    assert not (tmp_path / "out.wav").exists()
    return message


@pytest.mark.parametrize(("content", "phrase"), [("{not json", "cannot be read as JSON"),
                                                 ("[]", "holds a list"),
                                                 ('{"task_target": 3}', "'task_target'")])
def test_a_malformed_config_json_is_one_line(tmp_path: Path, downloads: Path, content: str, phrase: str) -> None:
    (downloads / "config.json").write_text(content)
    reseal(downloads)
    message = malformed_error(tmp_path, downloads)
    assert "config.json" in message and phrase in message


def test_settings_from_a_newer_version_or_of_the_wrong_size_are_one_line(tmp_path: Path, downloads: Path) -> None:
    config = json.loads((downloads / "config.json").read_text())
    edit_config(downloads, task_settings={**config["task_settings"], "attention_heads": 4})
    message = malformed_error(tmp_path, downloads)
    assert "task_settings.attention_heads: unknown key" in message
    # A size no weight file matches: refused from the shapes alone, before terabytes are allocated.
    edit_config(downloads, task_settings={**config["task_settings"], "hidden_channels": 1_000_000})
    message = malformed_error(tmp_path, downloads)
    assert "model.safetensors" in message and "shape" in message


def test_a_garbage_weights_file_is_one_line(tmp_path: Path, downloads: Path) -> None:
    (downloads / "model.safetensors").write_bytes(b"\x00" * 64)
    reseal(downloads)
    message = malformed_error(tmp_path, downloads)
    assert "model.safetensors" in message and "safetensors" in message
