"""Resume and retention through the real CLI: presets keep what they promise, a resumed run
equals an uninterrupted one bit for bit (mid-epoch, with data-loader workers, with gradient
accumulation, with async saves), a damaged checkpoint falls back loudly, and every resume mode
does what its preset's comment says.

Every scenario is its own test: a short chain of CLI launches on a tiny model. `reference` (10
steps, a save every 2, default retention; one run for the module) is the uninterrupted baseline
that scenarios copy, damage or compare against; `interrupted` is shared by the four tests that
look at one stopped-and-continued run."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from voicetrain.checkpoint.store import Checkpoint, CheckpointStore, step_of_folder, verify

from helpers import TINY_MODEL, compose_config, output_of, reset_accelerate, run_cli, training_state_bytes

TINY = [*TINY_MODEL, "trainer.log_every=1"]
STATE_FILES = ("modules/model.safetensors", "optimizers/model.safetensors", "optimizers/model.json",
               "schedulers/model.json", "loop_state.json", "rng/rank0.json", "rng/rank0.safetensors")


@dataclass
class Run:
    root: Path
    name: str
    overrides: list[str]

    @property
    def run_dir(self) -> Path:
        return self.root / self.name

    @property
    def checkpoints(self) -> Path:
        return self.run_dir / "checkpoints"

    def launch(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return run_cli(f"run.root={self.root}", f"run.name={self.name}", *self.overrides, *extra, cwd=self.root)

    def listed(self) -> list[Checkpoint]:
        return CheckpointStore(self.checkpoints).list()

    def steps(self) -> list[int]:
        return [checkpoint.step for checkpoint in self.listed()]

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step_{step:08d}"

    def copy(self, name: str, overrides: list[str] | None = None) -> "Run":
        shutil.copytree(self.run_dir, self.root / name)
        return Run(self.root, name, list(self.overrides if overrides is None else overrides))


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, output_of(result)
    assert "Traceback" not in result.stdout + result.stderr, output_of(result)
    return result.stdout + result.stderr


def failed(result: subprocess.CompletedProcess[str], status: int) -> str:
    assert result.returncode == status, output_of(result)
    assert "Traceback" not in result.stdout + result.stderr, output_of(result)
    return result.stdout + result.stderr


def assert_same_state(expected: Path, actual: Path) -> None:
    for name in STATE_FILES:
        assert training_state_bytes(expected / name) == training_state_bytes(actual / name), \
            f"{actual / name} differs from {expected}"


def assert_all_complete(run: Run) -> None:
    listed = run.listed()
    named = {path.name for path in run.checkpoints.glob("step_*") if step_of_folder(path) is not None}
    assert named == {item.path.name for item in listed}
    assert not list(run.checkpoints.glob(".tmp-*")), "a staging folder was left behind"
    for checkpoint in listed:
        assert verify(checkpoint) == [], checkpoint.path


def manifests(run: Run) -> dict[str, str]:
    return {path.name: (path / "manifest.json").read_text() for path in run.checkpoints.iterdir()}


def truncate(path: Path) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size // 2)


def scalars(run: Run, tag: str) -> list[tuple[int, float]]:
    events = EventAccumulator(str(run.run_dir / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    return [(event.step, event.value) for event in events.Scalars(tag)]


# ----- shared runs -----

@pytest.fixture(scope="module")
def base(bundled_cache: Path) -> list[str]:
    return [f"data.cache_dir={bundled_cache}", *TINY]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("resume")


@pytest.fixture(scope="module")
def reference(root: Path, base: list[str]) -> Run:
    run = Run(root, "reference", [*base, "trainer.max_steps=10", "ckpt.every_n_steps=2"])
    ok(run.launch())
    return run


@pytest.fixture(scope="module")
def interrupted(root: Path, base: list[str]) -> dict[str, Any]:
    """Stopped at step 5 (mid-epoch: 96 utterances / batch 8 = 12 steps per epoch), the same
    command again, then trainer.max_steps raised to the reference's 10."""
    run = Run(root, "interrupted", [*base, "ckpt.every_n_steps=2"])
    ok(run.launch("trainer.max_steps=5"))
    at_five = run.steps()
    again = run.launch("trainer.max_steps=5")
    unchanged = manifests(run)
    extended = run.launch("trainer.max_steps=10")
    return {"run": run, "at_five": at_five, "again": again, "unchanged": unchanged, "extended": extended}


# ----- retention presets -----

def test_default_keeps_the_newest_three(reference: Run) -> None:
    assert reference.steps() == [6, 8, 10]
    assert_all_complete(reference)


def test_save_last_only_keeps_exactly_the_newest_even_after_a_resume(root: Path, base: list[str]) -> None:
    run = Run(root, "last_only", [*base, "+ckpt=save_last_only", "ckpt.every_n_steps=2"])
    ok(run.launch("trainer.max_steps=6"))
    assert run.steps() == [6]
    output = ok(run.launch("trainer.max_steps=10"))
    assert "resuming from step 6" in output
    # protect_resumed=false in the preset: the step-6 checkpoint it resumed from goes too.
    assert run.steps() == [10]
    assert_all_complete(run)


def test_a_resumed_run_keeps_the_checkpoint_it_resumed_from(interrupted: dict[str, Any]) -> None:
    """Default retention keeps the newest 3 (6, 8, 10); step 5, which this launch resumed from,
    stays too until a later launch prunes it."""
    ok(interrupted["extended"])
    assert interrupted["run"].steps() == [5, 6, 8, 10]


def test_milestones_keep_multiples_plus_the_newest_two(root: Path, base: list[str]) -> None:
    run = Run(root, "milestones", [*base, "+ckpt=milestones", "ckpt.keep_every=8", "ckpt.every_n_steps=2",
                                   "trainer.max_steps=20"])
    ok(run.launch())
    assert run.steps() == [8, 16, 18, 20]
    assert_all_complete(run)


def test_async_saves_keeping_all_commit_the_same_checkpoints_as_sync_saves(root: Path, base: list[str],
                                                                           reference: Run) -> None:
    run = Run(root, "async_keep_all", [*base, "trainer.max_steps=10", "ckpt.every_n_steps=2",
                                       "ckpt.async_save=true", "+ckpt=keep_all"])
    output = ok(run.launch())
    assert "cannot be honoured" not in output, "async save fell back to sync on this machine"
    assert run.steps() == [2, 4, 6, 8, 10]
    assert_all_complete(run)
    for step in reference.steps():
        assert_same_state(reference.checkpoint(step), run.checkpoint(step))


def test_best_keeps_the_best_three_by_the_monitor_plus_the_newest(root: Path, base: list[str]) -> None:
    # val/mcd falls steadily in a run this short, so with mode=min the best would be the newest;
    # mode=max makes "best" the oldest, which tells best-K apart from keeping the newest.
    run = Run(root, "best", [*base, "+ckpt=best", "ckpt.mode=max", "trainer.max_steps=12", "ckpt.every_n_steps=2",
                             "trainer.val_every=2", "trainer.validate_at_start=true"])
    ok(run.launch())
    # Every checkpoint's score, deleted ones included, from TensorBoard (float32 of the manifest's);
    # step 0 is the untrained model's (trainer.validate_at_start), which no checkpoint holds.
    scores = dict(scalars(run, "val/mcd"))
    assert sorted(scores) == [0, 2, 4, 6, 8, 10, 12]
    del scores[0]
    for checkpoint in run.listed():
        assert checkpoint.metrics["val/mcd"] == pytest.approx(scores[checkpoint.step], rel=1e-6)
    # mode=max: higher is better; among equal scores the newer checkpoint wins.
    saved = {step: score for step, score in scores.items() if step > 0 and step % 2 == 0}
    ranked = sorted(saved, key=lambda step: (-saved[step], -step))
    expected = set(ranked[:3]) | {12}
    assert set(run.steps()) == expected, scores
    assert expected != {6, 8, 10, 12}, f"best-3 equals the newest 3 here, so this run cannot tell them apart: {scores}"
    assert_all_complete(run)


# ----- damaged checkpoints -----

def test_damaged_newest_checkpoints_fall_back_loudly_and_replay_bit_for_bit(reference: Run) -> None:
    """A crash that lost the newest checkpoints: step 10's weights are truncated and step 8 has
    no manifest (a save killed before its manifest is never renamed into place, but a folder
    damaged by hand looks like this). Steps 7-10 were logged to TensorBoard already. The same
    command with max_steps 12 must fall back to step 6 loudly, replay 7-10 exactly, and leave no
    duplicated TensorBoard steps."""
    run = reference.copy("crash_replay")
    truncate(run.checkpoint(10) / "modules" / "model.safetensors")
    (run.checkpoint(8) / "manifest.json").unlink()
    assert run.steps() == [6, 10], "a folder without manifest.json must not be listed"
    output = ok(run.launch("trainer.max_steps=12"))
    assert "RESUMED FROM AN OLDER CHECKPOINT, step 6" in output, output
    assert str(run.checkpoint(10) / "modules" / "model.safetensors") in output
    assert f"{run.checkpoint(8) / 'manifest.json'} is missing" in output
    assert "trained steps 6 -> 12" in output
    # The damaged folders of steps 8 and 10 were set aside (never deleted) and replaced by complete
    # ones; 6 stays (resumed from).
    assert run.steps() == [6, 8, 10, 12]
    assert_all_complete(run)
    for step in (8, 10):
        assert len(list(run.checkpoints.glob(f"step_{step:08d}.damaged-*"))) == 1
    for step in (8, 10):
        assert_same_state(reference.checkpoint(step), run.checkpoint(step))
    points = scalars(run, "train/mel/l1")
    steps = [step for step, _ in points]
    assert sorted(steps) == list(range(1, 13)), f"duplicated or missing steps: {steps}"
    replayed = dict(points)
    for step, value in scalars(reference, "train/mel/l1"):
        assert replayed[step] == value, f"step {step} differs after the resume"


def test_all_checkpoints_damaged_stops_with_the_files_named(reference: Run) -> None:
    run = reference.copy("all_damaged")
    for step in (6, 8, 10):
        truncate(run.checkpoint(step) / "modules" / "model.safetensors")
    before = manifests(run)
    output = failed(run.launch(), 2)
    assert "no checkpoint could be loaded" in output
    for step in (6, 8, 10):
        assert str(run.checkpoint(step) / "modules" / "model.safetensors") in output
    assert "training VoiceConversionTask" not in output, "it trained anyway"
    assert "starting a fresh run" not in output
    assert manifests(run) == before


# ----- finished runs, longer runs, bit-exact resumes -----

def test_finished_run_says_so_and_exits_0(interrupted: dict[str, Any]) -> None:
    assert interrupted["at_five"] == [2, 4, 5]
    output = ok(interrupted["again"])
    assert "already finished" in output
    assert "training VoiceConversionTask" not in output


def test_raising_max_steps_continues_from_the_last_step(interrupted: dict[str, Any]) -> None:
    output = ok(interrupted["extended"])
    assert "resuming from step 5" in output
    assert "trained steps 5 -> 10" in output
    assert json.loads((interrupted["run"].checkpoint(10) / "manifest.json").read_text())["step"] == 10


def test_resume_mid_epoch_is_bit_identical(interrupted: dict[str, Any], reference: Run) -> None:
    ok(interrupted["extended"])
    for step in (6, 8, 10):
        assert_same_state(reference.checkpoint(step), interrupted["run"].checkpoint(step))


@pytest.mark.slow  # long: runs in make test-slow (CI runs both)
def test_resume_with_accumulation_and_workers_is_bit_identical(root: Path, base: list[str]) -> None:
    """Gradient accumulation, resumed mid-epoch (3 steps x 2 micro-batches x 8 of 96) by a
    launch that also uses two data-loader workers."""
    overrides = [*base, "ckpt.every_n_steps=2", "trainer.grad_accum_steps=2"]
    whole = Run(root, "accumulate_whole", overrides)
    ok(whole.launch("trainer.max_steps=8"))
    halves = Run(root, "accumulate_halves", overrides)
    ok(halves.launch("trainer.max_steps=3"))
    output = ok(halves.launch("trainer.max_steps=8", "trainer.num_workers=2"))
    assert "resuming from step 3" in output
    for step in (4, 6, 8):
        assert_same_state(whole.checkpoint(step), halves.checkpoint(step))


# ----- resume modes -----

def test_never_refuses_a_run_with_checkpoints_and_overwrite_starts_at_step_0(reference: Run) -> None:
    run = reference.copy("never")
    before = manifests(run)
    output = failed(run.launch("+resume=never"), 2)
    assert "run.name=" in output and "resume.overwrite=true" in output
    assert "training VoiceConversionTask" not in output
    assert manifests(run) == before
    output = ok(run.launch("+resume=never", "resume.overwrite=true", "trainer.max_steps=2"))
    assert "trained steps 0 -> 2" in output
    assert run.steps() == [2]
    # The old run's TensorBoard curves are gone too: only the new run's steps remain.
    assert [step for step, _ in scalars(run, "train/mel/l1")] == [1, 2]


def test_config_drift_is_refused_then_allowed_then_stops_on_weights_that_do_not_fit(reference: Run) -> None:
    """A changed model is refused with the differing key named. With resume.allow_config_change the
    drift check lets it through (a warning names the key); the smaller model's weights then cannot
    load into the wider one, and the run stops with exit 2 and the shapes named (not calling its
    intact checkpoints damaged), never trains from scratch and deletes nothing."""
    run = reference.copy("drift")
    before = manifests(run)
    output = failed(run.launch("task.hidden_channels=24", "trainer.max_steps=12"), 2)
    assert re.search(r"task\.hidden_channels: 16 -> 24", output), output
    assert "resume.allow_config_change=true" in output
    assert "training VoiceConversionTask" not in output
    assert "damaged" not in output, "a changed model was reported as a damaged checkpoint"
    output = failed(run.launch("task.hidden_channels=24", "trainer.max_steps=12",
                               "resume.allow_config_change=true"), 2)
    assert re.search(r"task\.hidden_channels: 16 -> 24", output), output
    assert "do not fit the model" in output and "size mismatch" in output
    assert "+resume=finetune" in output
    assert "damaged" not in output, "intact checkpoints of another shape were reported as damaged"
    assert "training VoiceConversionTask" not in output and "starting a fresh run" not in output
    assert manifests(run) == before


def test_trainer_optim_and_ckpt_settings_may_change_on_resume_and_a_new_lr_takes_effect(reference: Run) -> None:
    """optim.lr may change on resume, and then the new value is used (and logged), never silently
    replaced by the one saved in the optimizer and schedule state."""
    from voicetrain.config import validate
    from voicetrain.run.optimizers import learning_rate_factor

    run = reference.copy("changed_settings")
    output = ok(run.launch("trainer.max_steps=12", "optim.lr=0.0005", "ckpt.keep_last=2"))
    assert "resuming from step 10" in output and "trained steps 10 -> 12" in output
    assert run.steps() == [10, 12]
    assert re.search(r"lr of optimizer 'model' changed on resume: 0\.002 \(saved\) -> 0\.0005", output), output
    settings = validate(OmegaConf.to_container(
        compose_config(*TINY, "trainer.max_steps=12", "optim.lr=0.0005"), resolve=True))
    logged = dict(scalars(run, "lr/model"))
    # The scheduler has stepped `step` times when step `step` is logged.
    assert logged[12] == pytest.approx(settings.optim.lr * learning_rate_factor(12, settings.optim, 12), rel=1e-6)
    assert logged[11] == pytest.approx(settings.optim.lr * learning_rate_factor(11, settings.optim, 12), rel=1e-6)


def test_unchanged_settings_on_resume_log_no_change(interrupted: dict[str, Any]) -> None:
    assert "changed on resume" not in ok(interrupted["extended"])


@pytest.mark.slow  # long: runs in make test-slow (CI runs both)
def test_from_path_starts_a_new_run_at_that_step_then_continues_its_own(root: Path, reference: Run) -> None:
    run = Run(root, "branch", [*reference.overrides, "+resume=path", f"resume.path={reference.checkpoint(8)}"])
    output = ok(run.launch())
    assert "trained steps 8 -> 10" in output
    assert run.steps() == [10]
    assert_same_state(reference.checkpoint(10), run.checkpoint(10))
    again = ok(run.launch())
    assert "already finished at step 10" in again
    assert "resume.path is only used to start a new run" in again
    assert reference.steps() == [6, 8, 10], "the source run was changed"


def loaded_count(output: str) -> int:
    found = re.search(r"loaded (\d+) tensors", output)
    assert found, output
    return int(found.group(1))


@pytest.mark.slow  # long: runs in make test-slow (CI runs both)
def test_finetune_from_a_checkpoint_loads_every_tensor_at_step_0(root: Path, base: list[str],
                                                               reference: Run) -> None:
    source = reference.checkpoint(10)
    run = Run(root, "finetune_checkpoint", [*base, "+resume=finetune", f"resume.path={source}", "trainer.max_steps=1"])
    output = ok(run.launch())
    assert loaded_count(output) == len(load_file(str(source / "modules" / "model.safetensors")))
    assert "fine-tune: missing" not in output and "fine-tune: shape mismatch" not in output
    assert "trained steps 0 -> 1" in output
    assert run.steps() == [1]


def test_finetune_from_an_export_into_another_shape_reports_the_mismatches(root: Path, base: list[str]) -> None:
    """From an export into a wider model: the tensors whose shape depends on hidden_channels
    cannot load; the rest (feature statistics, the speaker table, ...) can."""
    trained = Run(root, "exported", [*base, "trainer.max_steps=2", "export.enabled=true"])
    ok(trained.launch())
    source = trained.run_dir / "export"
    run = Run(root, "finetune_export", [*base, "+resume=finetune", f"resume.path={source}", "trainer.max_steps=1",
                                        "task.hidden_channels=24"])
    output = ok(run.launch())
    assert "fine-tune: shape mismatch" in output
    assert "model.decoder_input.weight (16, 8, 1) vs (24, 8, 1)" in output
    assert 0 < loaded_count(output) < len(load_file(str(source / "model.safetensors")))
    assert "trained steps 0 -> 1" in output
    assert run.steps() == [1]


# ----- a failed background save (in-process, with one write made to fail) -----

def test_a_failed_background_save_stops_training_loudly(tmp_path: Path, bundled_cache: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import voicetrain.checkpoint.training_state as training_state
    from voicetrain.checkpoint.store import CheckpointError
    from voicetrain.config import validate
    from voicetrain.run.trainer import Trainer

    original = training_state.save_file

    def save_file(tensors, target, *args, **kwargs):
        if "step_00000004" in str(target):  # the second async save
            raise OSError(5, "Input/output error", str(target))
        return original(tensors, target, *args, **kwargs)

    monkeypatch.setattr(training_state, "save_file", save_file)
    config = compose_config(f"run.root={tmp_path}", f"data.cache_dir={bundled_cache}", *TINY,
                            "trainer.max_steps=10", "ckpt.every_n_steps=2", "ckpt.async_save=true")
    settings = validate(OmegaConf.to_container(config, resolve=True))
    reset_accelerate()
    try:
        with pytest.raises(CheckpointError, match="background checkpoint save failed") as raised:
            Trainer(settings).train()
    finally:
        reset_accelerate()
    assert "Input/output error" in str(raised.value)
    run = Run(tmp_path, "default", [])
    assert run.steps() == [2]
    assert_all_complete(run)
    assert sorted(path.name for path in run.checkpoints.iterdir()) == ["step_00000002"]
