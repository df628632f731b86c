"""Resume and retention through the real CLI: presets keep what they promise, a resumed run
equals an uninterrupted one bit for bit (mid-epoch, with data-loader workers, with gradient
accumulation, with async saves), a damaged checkpoint falls back loudly, and every resume mode
does what its preset's comment says.

Every scenario is a short chain of CLI launches on a tiny model. The chains run two at a time
in background threads (each launch is its own process, mostly busy importing), and each test
waits for the chains it checks. `reference` (10 steps, a save every 2, default retention) is
the uninterrupted baseline that other chains copy, damage or compare against."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import TINY_MODEL, compose_config, output_of, run_cli
from voicetrain.checkpoint.store import Checkpoint, CheckpointStore, verify

TINY = [*TINY_MODEL, "trainer.log_every=1"]
STATE_FILES = ("model.safetensors", "optimizer.bin")
PARALLEL_LAUNCHES = 2


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
        assert (expected / name).read_bytes() == (actual / name).read_bytes(), \
            f"{actual / name} differs from {expected}"


def assert_all_complete(run: Run) -> None:
    listed = run.listed()
    assert {path.name for path in run.checkpoints.glob("step_*")} == {item.path.name for item in listed}
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


# ----- the chains -----

Chains = dict[str, "Future[dict[str, Any]]"]


def chain_reference(root: Path, base: list[str], chains: Chains) -> dict[str, Any]:
    run = Run(root, "reference", [*base, "trainer.max_steps=10", "ckpt.every_n_steps=2"])
    ok(run.launch())
    return {"run": run}


def reference_of(chains: Chains) -> Run:
    return chains["reference"].result()["run"]


def chain_last_only(root: Path, base: list[str], chains: Chains) -> dict[str, Any]:
    run = Run(root, "last_only", [*base, "+ckpt=save_last_only", "ckpt.every_n_steps=2"])
    ok(run.launch("trainer.max_steps=6"))
    first = run.steps()
    resumed = run.launch("trainer.max_steps=10")
    return {"run": run, "first": first, "resumed": resumed}


def chain_milestones(root: Path, base: list[str], chains: Chains) -> dict[str, Any]:
    # Exports too, for the fine-tune-from-export chain.
    run = Run(root, "milestones", [*base, "+ckpt=milestones", "ckpt.keep_every=8", "ckpt.every_n_steps=2",
                                   "trainer.max_steps=20", "export.enabled=true"])
    ok(run.launch())
    return {"run": run}


def chain_best(root: Path, base: list[str], chains: Chains) -> dict[str, Any]:
    # val/mcd falls steadily in a run this short, so with mode=min the best would be the newest;
    # mode=max makes "best" the oldest, which tells best-K apart from keeping the newest.
    run = Run(root, "best", [*base, "+ckpt=best", "ckpt.mode=max", "trainer.max_steps=12", "ckpt.every_n_steps=2",
                             "trainer.val_every=2"])
    result = run.launch()
    return {"run": run, "result": result}


def chain_interrupted(root: Path, base: list[str], chains: Chains) -> dict[str, Any]:
    """Stopped at step 5 (mid-epoch: 96 utterances / batch 8 = 12 steps per epoch), the same
    command again, then trainer.max_steps raised to the reference's 10."""
    run = Run(root, "interrupted", [*base, "ckpt.every_n_steps=2"])
    ok(run.launch("trainer.max_steps=5"))
    at_five = run.steps()
    again = run.launch("trainer.max_steps=5")
    unchanged = manifests(run)
    extended = run.launch("trainer.max_steps=10")
    return {"run": run, "at_five": at_five, "again": again, "unchanged": unchanged, "extended": extended}


def chain_accumulate(root: Path, base: list[str], chains: Chains) -> dict[str, Any]:
    """Gradient accumulation, resumed mid-epoch (3 steps x 2 micro-batches x 8 of 96) by a
    launch that also uses two data-loader workers."""
    overrides = [*base, "ckpt.every_n_steps=2", "trainer.grad_accum_steps=2"]
    whole = Run(root, "accumulate_whole", overrides)
    ok(whole.launch("trainer.max_steps=8"))
    halves = Run(root, "accumulate_halves", overrides)
    ok(halves.launch("trainer.max_steps=3"))
    resumed = halves.launch("trainer.max_steps=8", "trainer.num_workers=2")
    return {"whole": whole, "halves": halves, "resumed": resumed}


def chain_async_keep_all(root: Path, base: list[str], chains: Chains) -> dict[str, Any]:
    # The reference's training with async saves, keeping every checkpoint.
    run = Run(root, "async_keep_all", [*base, "trainer.max_steps=10", "ckpt.every_n_steps=2", "ckpt.async_save=true",
                                       "+ckpt=keep_all"])
    result = run.launch()
    return {"run": run, "result": result}


def chain_crash_replay(root: Path, base: list[str], chains: Chains) -> dict[str, Any]:
    """A crash that lost the newest checkpoints: step 10's weights are truncated and step 8 has
    no manifest (a save killed before its manifest is never renamed into place, but a folder
    damaged by hand looks like this). Steps 7-10 were logged to TensorBoard already. The same
    command with max_steps 12 must fall back to step 6 loudly and replay 7-10 exactly."""
    reference = reference_of(chains)
    run = reference.copy("crash_replay")
    truncate(run.checkpoint(10) / "model.safetensors")
    (run.checkpoint(8) / "manifest.json").unlink()
    listed_before = run.steps()
    result = run.launch("trainer.max_steps=12")
    return {"run": run, "listed_before": listed_before, "result": result}


def chain_all_damaged(root: Path, base: list[str], chains: Chains) -> dict[str, Any]:
    run = reference_of(chains).copy("all_damaged")
    for step in (6, 8, 10):
        truncate(run.checkpoint(step) / "model.safetensors")
    before = manifests(run)
    result = run.launch()
    return {"run": run, "before": before, "result": result}


def chain_never(root: Path, base: list[str], chains: Chains) -> dict[str, Any]:
    run = reference_of(chains).copy("never")
    before = manifests(run)
    refused = run.launch("+resume=never")
    after_refusal = manifests(run)
    overwritten = run.launch("+resume=never", "resume.overwrite=true", "trainer.max_steps=2")
    return {"run": run, "before": before, "refused": refused, "after_refusal": after_refusal,
            "overwritten": overwritten}


def chain_drift(root: Path, base: list[str], chains: Chains) -> dict[str, Any]:
    run = reference_of(chains).copy("drift")
    before = manifests(run)
    refused = run.launch("task.hidden_channels=24", "trainer.max_steps=12")
    allowed = run.launch("task.hidden_channels=24", "trainer.max_steps=12", "resume.allow_config_change=true")
    after = manifests(run)
    free = run.launch("trainer.max_steps=12", "optim.lr=0.0005", "ckpt.keep_last=2")
    return {"run": run, "before": before, "refused": refused, "allowed": allowed, "after": after, "free": free}


def chain_from_path(root: Path, base: list[str], chains: Chains) -> dict[str, Any]:
    reference = reference_of(chains)
    run = Run(root, "branch", [*reference.overrides, "+resume=from_path", f"resume.path={reference.checkpoint(8)}"])
    first = run.launch()
    again = run.launch()
    return {"run": run, "first": first, "again": again}


def chain_finetune_checkpoint(root: Path, base: list[str], chains: Chains) -> dict[str, Any]:
    source = reference_of(chains).checkpoint(10)
    run = Run(root, "finetune_checkpoint", [*base, "+resume=finetune", f"resume.path={source}", "trainer.max_steps=1"])
    return {"run": run, "source": source, "result": run.launch()}


def chain_finetune_export(root: Path, base: list[str], chains: Chains) -> dict[str, Any]:
    """From an export into a wider model: the tensors whose shape depends on hidden_channels
    cannot load; the rest (feature statistics, the speaker table, ...) can."""
    source = chains["milestones"].result()["run"].run_dir / "export"
    run = Run(root, "finetune_export", [*base, "+resume=finetune", f"resume.path={source}", "trainer.max_steps=1",
                                        "task.hidden_channels=24"])
    return {"run": run, "source": source, "result": run.launch()}


# Independent chains first, so no worker waits on the reference while it could be running one.
CHAINS: dict[str, Callable[[Path, list[str], Chains], dict[str, Any]]] = {
    "reference": chain_reference,
    "interrupted": chain_interrupted,
    "accumulate": chain_accumulate,
    "last_only": chain_last_only,
    "milestones": chain_milestones,
    "best": chain_best,
    "async_keep_all": chain_async_keep_all,
    "crash_replay": chain_crash_replay,
    "all_damaged": chain_all_damaged,
    "never": chain_never,
    "drift": chain_drift,
    "from_path": chain_from_path,
    "finetune_checkpoint": chain_finetune_checkpoint,
    "finetune_export": chain_finetune_export,
}


@pytest.fixture(scope="module")
def chains(tmp_path_factory: pytest.TempPathFactory, bundled_cache: Path) -> Iterator[Chains]:
    root = tmp_path_factory.mktemp("resume")
    base = [f"data.cache_dir={bundled_cache}", *TINY]
    # Fill the shared feature cache once, here, rather than in two processes at once.
    from voicetrain.config import validate
    from voicetrain.data.prepare import prepare_data

    settings = validate(OmegaConf.to_container(compose_config(f"run.root={root}", *base), resolve=True))
    prepare_data(settings.data, settings.features, progress=False)
    futures: Chains = {}
    with ThreadPoolExecutor(max_workers=PARALLEL_LAUNCHES, thread_name_prefix="chain") as executor:
        for name, chain in CHAINS.items():
            futures[name] = executor.submit(chain, root, base, futures)
        yield futures


def result_of(chains: Chains, name: str) -> dict[str, Any]:
    return chains[name].result()


# ----- retention presets -----

def test_default_keeps_the_newest_three(chains: Chains) -> None:
    run = reference_of(chains)
    assert run.steps() == [6, 8, 10]
    assert_all_complete(run)


def test_save_last_only_keeps_exactly_the_newest_even_after_a_resume(chains: Chains) -> None:
    outcome = result_of(chains, "last_only")
    assert outcome["first"] == [6]
    output = ok(outcome["resumed"])
    assert "resuming from step 6" in output
    # protect_resumed=false in the preset: the step-6 checkpoint it resumed from goes too.
    assert outcome["run"].steps() == [10]
    assert_all_complete(outcome["run"])


def test_a_resumed_run_keeps_the_checkpoint_it_resumed_from(chains: Chains) -> None:
    """Default retention keeps the newest 3 (6, 8, 10); step 5, which this launch resumed from,
    stays too until a later launch prunes it."""
    outcome = result_of(chains, "interrupted")
    ok(outcome["extended"])
    assert outcome["run"].steps() == [5, 6, 8, 10]


def test_milestones_keep_multiples_plus_the_newest_two(chains: Chains) -> None:
    run = result_of(chains, "milestones")["run"]
    assert run.steps() == [8, 16, 18, 20]
    assert_all_complete(run)


def test_keep_all_keeps_every_checkpoint(chains: Chains) -> None:
    outcome = result_of(chains, "async_keep_all")
    ok(outcome["result"])
    assert outcome["run"].steps() == [2, 4, 6, 8, 10]
    assert_all_complete(outcome["run"])


def test_best_keeps_the_best_three_by_the_monitor_plus_the_newest(chains: Chains) -> None:
    outcome = result_of(chains, "best")
    ok(outcome["result"])
    run: Run = outcome["run"]
    # Every checkpoint's score, deleted ones included, from TensorBoard (float32 of the manifest's);
    # step 0 is the untrained model's (trainer.validate_at_start), which no checkpoint holds.
    scores = dict(scalars(run, "val/mcd"))
    assert sorted(scores) == [0, 2, 4, 6, 8, 10, 12]
    del scores[0]
    for checkpoint in run.listed():
        assert checkpoint.metrics["val/mcd"] == pytest.approx(scores[checkpoint.step], rel=1e-6)
    # mode=max: higher is better; among equal scores the newer checkpoint wins.
    ranked = sorted(scores, key=lambda step: (-scores[step], -step))
    expected = set(ranked[:3]) | {12}
    assert set(run.steps()) == expected, scores
    assert expected != {6, 8, 10, 12}, f"best-3 equals the newest 3 here, so this run cannot tell them apart: {scores}"
    assert_all_complete(run)


# ----- damaged checkpoints -----

def test_damaged_newest_checkpoints_fall_back_loudly(chains: Chains) -> None:
    outcome = result_of(chains, "crash_replay")
    run: Run = outcome["run"]
    assert outcome["listed_before"] == [6, 10], "a folder without manifest.json must not be listed"
    output = ok(outcome["result"])
    assert "RESUMED FROM AN OLDER CHECKPOINT, step 6" in output, output
    assert str(run.checkpoint(10) / "model.safetensors") in output
    assert "trained steps 6 -> 12" in output
    # The manifest-less step-8 folder was replaced by a complete one; 6 stays (resumed from).
    assert run.steps() == [6, 8, 10, 12]
    assert_all_complete(run)


def test_replayed_steps_after_a_fallback_are_bit_identical(chains: Chains) -> None:
    outcome = result_of(chains, "crash_replay")
    ok(outcome["result"])
    reference = reference_of(chains)
    for step in (8, 10):
        assert_same_state(reference.checkpoint(step), outcome["run"].checkpoint(step))


def test_tensorboard_has_no_duplicated_steps_after_a_crash(chains: Chains) -> None:
    outcome = result_of(chains, "crash_replay")
    ok(outcome["result"])
    points = scalars(outcome["run"], "train/mel/l1")
    steps = [step for step, _ in points]
    assert sorted(steps) == list(range(1, 13)), f"duplicated or missing steps: {steps}"
    replayed = dict(points)
    for step, value in scalars(reference_of(chains), "train/mel/l1"):
        assert replayed[step] == value, f"step {step} differs after the resume"


def test_all_checkpoints_damaged_stops_with_the_files_named(chains: Chains) -> None:
    outcome = result_of(chains, "all_damaged")
    run: Run = outcome["run"]
    output = failed(outcome["result"], 2)
    assert "no checkpoint could be loaded" in output
    for step in (6, 8, 10):
        assert str(run.checkpoint(step) / "model.safetensors") in output
    assert "training VoiceConversionTask" not in output, "it trained anyway"
    assert "starting a fresh run" not in output
    assert manifests(run) == outcome["before"]


# ----- finished runs, longer runs, bit-exact resumes -----

def test_finished_run_says_so_and_exits_0(chains: Chains) -> None:
    outcome = result_of(chains, "interrupted")
    assert outcome["at_five"] == [2, 4, 5]
    output = ok(outcome["again"])
    assert "already finished" in output
    assert "training VoiceConversionTask" not in output


def test_raising_max_steps_continues_from_the_last_step(chains: Chains) -> None:
    outcome = result_of(chains, "interrupted")
    output = ok(outcome["extended"])
    assert "resuming from step 5" in output
    assert "trained steps 5 -> 10" in output
    assert json.loads((outcome["run"].checkpoint(10) / "manifest.json").read_text())["step"] == 10


def test_resume_mid_epoch_is_bit_identical(chains: Chains) -> None:
    outcome = result_of(chains, "interrupted")
    ok(outcome["extended"])
    reference = reference_of(chains)
    for step in (6, 8, 10):
        assert_same_state(reference.checkpoint(step), outcome["run"].checkpoint(step))


def test_resume_with_accumulation_and_workers_is_bit_identical(chains: Chains) -> None:
    outcome = result_of(chains, "accumulate")
    output = ok(outcome["resumed"])
    assert "resuming from step 3" in output
    for step in (4, 6, 8):
        assert_same_state(outcome["whole"].checkpoint(step), outcome["halves"].checkpoint(step))


def test_async_saves_commit_the_same_checkpoints_as_sync_saves(chains: Chains) -> None:
    outcome = result_of(chains, "async_keep_all")
    output = ok(outcome["result"])
    assert "cannot be honoured" not in output, "async save fell back to sync on this machine"
    reference = reference_of(chains)
    for step in reference.steps():
        assert_same_state(reference.checkpoint(step), outcome["run"].checkpoint(step))


# ----- resume modes -----

def test_never_refuses_a_run_with_checkpoints(chains: Chains) -> None:
    outcome = result_of(chains, "never")
    output = failed(outcome["refused"], 2)
    assert "run.name=" in output and "resume.overwrite=true" in output
    assert "training VoiceConversionTask" not in output
    assert outcome["after_refusal"] == outcome["before"]


def test_never_with_overwrite_starts_at_step_0(chains: Chains) -> None:
    outcome = result_of(chains, "never")
    output = ok(outcome["overwritten"])
    assert "trained steps 0 -> 2" in output
    assert outcome["run"].steps() == [2]
    # The old run's TensorBoard curves are gone too: only the new run's steps remain.
    assert [step for step, _ in scalars(outcome["run"], "train/mel/l1")] == [1, 2]


def test_config_drift_is_refused_with_the_differing_key(chains: Chains) -> None:
    outcome = result_of(chains, "drift")
    output = failed(outcome["refused"], 2)
    assert re.search(r"task\.hidden_channels: 16 -> 24", output), output
    assert "resume.allow_config_change=true" in output
    assert "training VoiceConversionTask" not in output
    assert "damaged" not in output, "a changed model was reported as a damaged checkpoint"


def test_allow_config_change_passes_the_drift_check_then_stops_on_weights_that_do_not_fit(chains: Chains) -> None:
    """The drift check lets it through (with a warning naming the key); the smaller model's
    weights then cannot load into the wider one. The run must stop with exit 2 and the shapes
    named (not call its intact checkpoints damaged), never train from scratch, and delete nothing."""
    outcome = result_of(chains, "drift")
    output = failed(outcome["allowed"], 2)
    assert re.search(r"task\.hidden_channels: 16 -> 24", output), output
    assert "do not fit the model" in output and "size mismatch" in output
    assert "+resume=finetune" in output
    assert "damaged" not in output, "intact checkpoints of another shape were reported as damaged"
    assert "training VoiceConversionTask" not in output
    assert "starting a fresh run" not in output
    assert outcome["after"] == outcome["before"]


def test_trainer_optim_and_ckpt_settings_may_change_on_resume(chains: Chains) -> None:
    outcome = result_of(chains, "drift")
    output = ok(outcome["free"])
    assert "resuming from step 10" in output and "trained steps 10 -> 12" in output
    assert outcome["run"].steps() == [10, 12]


def test_a_changed_learning_rate_takes_effect_on_resume(chains: Chains) -> None:
    """optim.lr may change on resume; then the new value must be used, or a warning must say
    that it is not: never silently replaced by the one saved in the optimizer and schedule state
    (invariant 7)."""
    from voicetrain.config import validate
    from voicetrain.run.optimizers import learning_rate_factor

    outcome = result_of(chains, "drift")
    output = ok(outcome["free"])
    settings = validate(OmegaConf.to_container(
        compose_config(*TINY, "trainer.max_steps=12", "optim.lr=0.0005"), resolve=True))
    logged = dict(scalars(outcome["run"], "lr/model"))
    # The scheduler has stepped `step` times when step `step` is logged.
    expected = settings.optim.lr * learning_rate_factor(12, settings.optim, 12)
    if logged[12] != pytest.approx(expected, rel=1e-5):
        assert re.search(r"optim\.lr\b.*\b(ignored|not applied|kept|saved)", output), (
            f"optim.lr=0.0005 was silently ignored: lr at step 12 is {logged[12]}, the new value gives {expected}")


def test_from_path_starts_a_new_run_at_that_step_then_continues_its_own(chains: Chains) -> None:
    outcome = result_of(chains, "from_path")
    reference = reference_of(chains)
    output = ok(outcome["first"])
    assert "trained steps 8 -> 10" in output
    assert outcome["run"].steps() == [10]
    assert_same_state(reference.checkpoint(10), outcome["run"].checkpoint(10))
    again = ok(outcome["again"])
    assert "already finished at step 10" in again
    assert "resume.path is only used to start a new run" in again
    assert reference.steps() == [6, 8, 10], "the source run was changed"


def loaded_count(output: str) -> int:
    found = re.search(r"loaded (\d+) tensors", output)
    assert found, output
    return int(found.group(1))


def test_finetune_from_a_checkpoint_loads_every_tensor_at_step_0(chains: Chains) -> None:
    outcome = result_of(chains, "finetune_checkpoint")
    output = ok(outcome["result"])
    assert loaded_count(output) == len(load_file(str(outcome["source"] / "model.safetensors")))
    assert "fine-tune: missing" not in output and "fine-tune: shape mismatch" not in output
    assert "trained steps 0 -> 1" in output
    assert outcome["run"].steps() == [1]


def test_finetune_from_an_export_into_another_shape_reports_the_mismatches(chains: Chains) -> None:
    outcome = result_of(chains, "finetune_export")
    output = ok(outcome["result"])
    assert "fine-tune: shape mismatch" in output
    assert "model.decoder_input.weight (16, 8, 1) vs (24, 8, 1)" in output
    assert 0 < loaded_count(output) < len(load_file(str(outcome["source"] / "model.safetensors")))
    assert "trained steps 0 -> 1" in output
    assert outcome["run"].steps() == [1]


# ----- a failed background save (in-process, with one write made to fail) -----

def test_a_failed_background_save_stops_training_loudly(tmp_path: Path, bundled_cache: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from accelerate.state import AcceleratorState, GradientState

    import voicetrain.checkpoint.store
    from voicetrain.checkpoint.store import CheckpointError
    from voicetrain.config import validate
    from voicetrain.run.trainer import Trainer

    if voicetrain.checkpoint.store.ram_snapshot_root() is None:
        pytest.skip("no writable /dev/shm for async saves")
    original = voicetrain.checkpoint.store.shutil.copyfile

    def copyfile(source, target, *args, **kwargs):
        if "step_00000004" in str(target):  # the second async save
            raise OSError(5, "Input/output error", str(target))
        return original(source, target, *args, **kwargs)

    monkeypatch.setattr(voicetrain.checkpoint.store.shutil, "copyfile", copyfile)
    config = compose_config(f"run.root={tmp_path}", f"data.cache_dir={bundled_cache}", *TINY,
                            "trainer.max_steps=10", "ckpt.every_n_steps=2", "ckpt.async_save=true")
    settings = validate(OmegaConf.to_container(config, resolve=True))
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    try:
        with pytest.raises(CheckpointError, match="background checkpoint save failed") as raised:
            Trainer(settings).train()
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    assert "Input/output error" in str(raised.value)
    run = Run(tmp_path, "default", [])
    assert run.steps() == [2]
    assert_all_complete(run)
    assert sorted(path.name for path in run.checkpoints.iterdir()) == ["step_00000002"]
