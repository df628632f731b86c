"""End to end through the real CLI on the bundled corpus: `python -m voicetrain` trains, validates,
saves, exports, reports; the same command again finds the run finished; `--help` explains the
groups and commands."""

from __future__ import annotations

import re
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from helpers import QUICK, assert_ok, config_groups, output_of, run_cli

STEPS = 12
EVERY = 6


@dataclass
class TrainedRun:
    root: Path
    run_dir: Path
    command: list[str]
    first: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, bundled_cache: Path) -> TrainedRun:
    root = tmp_path_factory.mktemp("cli-train")
    command = [
        f"run.root={root / 'runs'}",
        f"data.cache_dir={bundled_cache}",
        f"trainer.max_steps={STEPS}",
        f"trainer.val_every={EVERY}",
        f"ckpt.every_n_steps={EVERY}",
        "trainer.log_every=4",
        # Fewer conversions scored and previewed than the default (24 and 2): validation is most
        # of a short run's time on a CPU.
        "task.validation_pairs=6",
        "trainer.audio_previews=1",
        *QUICK,
    ]
    # Started from a folder of its own, so nothing can land in the repository by accident.
    first = run_cli(*command, cwd=root)
    return TrainedRun(root, root / "runs" / "default", command, first)


def test_training_exits_cleanly_and_prints_the_summary(trained: TrainedRun) -> None:
    assert_ok(trained.first)
    stdout = trained.first.stdout
    assert "summary" in stdout, output_of(trained.first)
    assert str(trained.run_dir / "export") in stdout, output_of(trained.first)
    assert f"trained steps 0 -> {STEPS}" in stdout, output_of(trained.first)
    assert "Traceback" not in trained.first.stderr, output_of(trained.first)


def test_run_directory_layout(trained: TrainedRun) -> None:
    assert_ok(trained.first)
    run_dir = trained.run_dir
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert (run_dir / "train.log").is_file()
    assert list((run_dir / "tb").glob("events.out.tfevents.*")), "no TensorBoard events file"
    for step in range(EVERY, STEPS + 1, EVERY):
        checkpoint = run_dir / "checkpoints" / f"step_{step:08d}"
        manifest = json.loads((checkpoint / "manifest.json").read_text())
        assert manifest["step"] == step
    for name in ("model.safetensors", "config.json", "manifest.json"):
        assert (run_dir / "export" / name).is_file(), f"export/{name} is missing"
    export_manifest = json.loads((run_dir / "export" / "manifest.json").read_text())
    assert export_manifest["step"] == STEPS
    leftovers = [path for path in trained.root.rglob(".tmp-*")]
    assert leftovers == [], f"staging folders left behind: {leftovers}"


def test_log_file_records_validation(trained: TrainedRun) -> None:
    assert_ok(trained.first)
    log = (trained.run_dir / "train.log").read_text()
    for step in range(EVERY, STEPS + 1, EVERY):
        assert f"validation at step {step}:" in log
    assert "val/mcd=" in log


def test_tensorboard_has_curves_audio_and_images(trained: TrainedRun) -> None:
    assert_ok(trained.first)
    events = EventAccumulator(str(trained.run_dir / "tb"), size_guidance={"scalars": 0, "tensors": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    expected = ["train/mel/l1", "lr/model", "perf/steps_per_second", "perf/data_wait_fraction",
                "val/mcd", "val/mcd_baseline", "val/mcd_source_speaker", "val/logmel_mcd", "val/logmel_mcd_baseline"]
    missing = [tag for tag in expected if tag not in tags["scalars"]]
    assert missing == [], f"missing scalars {missing}; found {sorted(tags['scalars'])}"
    # Step 0 is the untrained model (trainer.validate_at_start), then every trainer.val_every steps.
    assert [event.step for event in events.Scalars("val/mcd")] == list(range(0, STEPS + 1, EVERY))
    training_steps = [event.step for event in events.Scalars("train/mel/l1")]
    assert training_steps == sorted(set(training_steps)) and training_steps[-1] == STEPS
    # Audio is written in the audio plugin's own form (a tensor whose metadata names the plugin).
    audio = [tag for tag in tags["tensors"] if events.SummaryMetadata(tag).plugin_data.plugin_name == "audio"]
    assert audio and all(tag.startswith("audio/") for tag in audio), tags["tensors"]
    assert tags["images"] and all(tag.startswith("mel/") for tag in tags["images"]), tags["images"]


def test_same_command_again_finds_the_run_finished(trained: TrainedRun) -> None:
    assert_ok(trained.first)
    checkpoints = trained.run_dir / "checkpoints"
    before = {path.name: (path / "manifest.json").read_text() for path in checkpoints.iterdir()}
    events_before = sorted(path.name for path in (trained.run_dir / "tb").iterdir())
    again = run_cli(*trained.command, cwd=trained.root)
    assert_ok(again)
    assert "already finished" in again.stdout, output_of(again)
    assert "trained steps" not in again.stdout, output_of(again)
    after = {path.name: (path / "manifest.json").read_text() for path in checkpoints.iterdir()}
    assert after == before, "the finished run saved again"
    assert sorted(path.name for path in (trained.run_dir / "tb").iterdir()) == events_before


@pytest.mark.slow  # long: runs in make test-slow (CI runs both)
def test_a_monitor_that_validation_does_not_report_stops_the_run_at_its_first_validation(
        tmp_path: Path, bundled_cache: Path) -> None:
    # trainer.validate_at_start=false: the first validation comes after two training steps.
    result = run_cli(f"run.root={tmp_path}", f"data.cache_dir={bundled_cache}", "+ckpt=best", "ckpt.monitor=val/mdc",
                     "trainer.validate_at_start=false", "trainer.max_steps=4", "trainer.val_every=2",
                     "ckpt.every_n_steps=4", "export.enabled=false", "task.validation_pairs=2",
                     "trainer.audio_previews=0", *QUICK, cwd=tmp_path)
    assert result.returncode == 2, output_of(result)
    text = result.stdout + result.stderr
    assert "Traceback" not in text, output_of(result)
    assert "validation at step 0" not in text and "validation at step 2:" in text, output_of(result)
    reported = re.search(r"ckpt\.monitor=val/mdc is not a metric this task's validation reports \(([^)]*)\)", text)
    assert reported, output_of(result)
    assert {"val/mcd", "val/logmel_mcd", "val/reconstruction_mcd"} <= set(reported.group(1).split(", "))
    assert not list((tmp_path / "default").glob("checkpoints/step_*")), "trained on after the error"


@pytest.mark.slow  # long: runs in make test-slow (CI runs both)
def test_run_name_chooses_the_run_directory(tmp_path: Path, bundled_cache: Path) -> None:
    result = run_cli(f"run.root={tmp_path}", "run.name=alice", f"data.cache_dir={bundled_cache}",
                     "trainer.max_steps=2", "trainer.val_every=100", "ckpt.every_n_steps=100",
                     "export.enabled=false", "task.validation_pairs=2", "trainer.audio_previews=0", *QUICK,
                     cwd=tmp_path)
    assert_ok(result)
    run_dir = tmp_path / "alice"
    assert (run_dir / "train.log").is_file()
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert json.loads((run_dir / "checkpoints" / "step_00000002" / "manifest.json").read_text())["step"] == 2
    assert not (tmp_path / "default").exists()
    assert str(run_dir) in result.stdout, output_of(result)


def test_help_lists_groups_presets_and_commands(tmp_path: Path) -> None:
    result = run_cli("--help", cwd=tmp_path)
    assert_ok(result)
    text = result.stdout
    listed = {line.split(": ", 1)[0]: set(line.split(": ", 1)[1].split(", "))
              for line in text.split("== Config groups and their presets ==", 1)[1].split("==", 1)[0].splitlines()
              if ": " in line}
    assert {"vc"} <= listed.get("task", set())
    assert {"bundled", "ljspeech", "speakers"} <= listed.get("data", set())
    assert {"adam", "adamw"} <= listed.get("optim", set())
    for group, presets in config_groups().items():  # add-on groups and new presets too
        assert listed.get(group) == set(presets), f"--help lists {group}: {listed.get(group)}, conf/ has {presets}"
    for command in ("python -m voicetrain +ckpt=", "data=speakers data.root=", "python -m voicetrain -m ",
                    "--cfg job"):
        assert command in text, f"--help does not show {command!r}"
    assert not list(tmp_path.iterdir()), "--help created files"
