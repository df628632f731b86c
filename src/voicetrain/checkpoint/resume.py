"""Where a run starts from: pure decisions about resume modes and config drift, and the loader
that takes the newest checkpoint that verifies, falling back to older ones loudly.

`plan_resume`, `config_drift` and `describe_*` are pure; `load_first_good` is the one effect.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from voicetrain.checkpoint.store import Checkpoint, DamagedFolder

log = logging.getLogger("voicetrain")

# Sections whose change makes old state meaningless: the model, the data and its features.
# Everything else (trainer, ckpt, export, optim, run, resume, scratch) may change on resume.
DRIFT_SECTIONS = ("task", "data", "features")
DRIFT_EXEMPT_KEYS = {"data.cache_dir"}


class ResumeError(RuntimeError):
    pass


@dataclass(frozen=True)
class ResumePlan:
    kind: Literal["fresh", "full", "weights"]
    candidates: tuple[Checkpoint, ...] = ()  # full: newest first; later ones are fallbacks
    skipped: tuple[DamagedFolder, ...] = ()  # full: folders that are not committed checkpoints
    weights_path: Path | None = None  # weights: a checkpoint folder, an export folder or a .safetensors file
    message: str = ""


def describe_damaged(damaged: Sequence[DamagedFolder]) -> str:
    return "\n  ".join(f"{folder.path}: {folder.reason}" for folder in damaged)


def plan_resume(mode: str, own_checkpoints: list[Checkpoint], damaged: list[DamagedFolder], run_dir: Path,
                path: str | None, path_checkpoint: Checkpoint | None, overwrite: bool = False,
                overrides: list[str] | None = None) -> ResumePlan:
    """Decides how the run starts. `own_checkpoints` are this run's committed checkpoints (oldest
    first), `damaged` its `step_*` folders without a usable manifest; `path_checkpoint` is
    resume.path read as a committed checkpoint, if it is one; `overrides` the command line of this
    launch (a checkpoint records the one that wrote it)."""
    newest_first = tuple(reversed(own_checkpoints))
    if mode == "never" and overwrite and own_checkpoints and overrides is not None \
            and own_checkpoints[-1].manifest.get("overrides") == overrides:
        # Ctrl-C, then "run the same command again": overwrite was meant for the run that existed
        # before this command, not for what this command itself just saved.
        raise ResumeError(
            f"the checkpoints in {run_dir} were written by this same command, whose resume.overwrite=true applied to "
            "the run that existed before it; running it again would delete what it saved. To continue, run it "
            "without +resume=never resume.overwrite=true; to start over once more, pick a new run.name=... or delete "
            f"{own_checkpoints[-1].path.parent}"
        )
    if mode == "never":
        if (own_checkpoints or damaged) and not overwrite:
            count = len(own_checkpoints) + len(damaged)
            raise ResumeError(
                f"{run_dir} already holds {count} checkpoint folder(s) and resume.mode=never asks for a fresh "
                "start. Pick a new run.name=..., drop +resume=never to continue the run, or pass "
                "resume.overwrite=true to delete them and start over"
            )
        return ResumePlan("fresh", message="resume.mode=never: starting a fresh run at step 0")
    if not own_checkpoints and damaged:
        # Never "no checkpoint": a run that saved once must not silently start over and overwrite it.
        raise ResumeError(
            f"{run_dir} has checkpoint folders but none is a committed checkpoint, so the run will not silently "
            f"start over:\n  {describe_damaged(damaged)}\nRestore them (a checkpoint needs its manifest.json), or "
            "start a new run with run.name=..., or delete them with +resume=never resume.overwrite=true"
        )
    if own_checkpoints:
        # Re-running the same command after a crash must continue the run, whatever the mode:
        # resume.path only says where a *new* run starts.
        note = "" if mode == "auto" else " (resume.path is only used to start a new run; this one has checkpoints)"
        return ResumePlan("full", newest_first, tuple(damaged),
                          message=f"resuming from step {own_checkpoints[-1].step}{note}")
    if mode == "auto":
        return ResumePlan("fresh", message=f"no checkpoint in {run_dir}: starting a fresh run at step 0")
    if mode == "path":
        if path_checkpoint is None:
            raise ResumeError(
                f"resume.path={path!r} is not a committed voicetrain checkpoint (a folder like "
                "runs/<name>/checkpoints/step_00001200 with a manifest.json); point it at one"
            )
        return ResumePlan("full", (path_checkpoint,), message=f"resuming the full state of {path_checkpoint.path}")
    if mode == "finetune":
        return ResumePlan("weights", weights_path=Path(str(path)),
                          message=f"fine-tuning from the weights in {path} with a fresh optimizer at step 0")
    raise ResumeError(f"resume.mode={mode!r}: expected auto, never, path or finetune")


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        flat: dict[str, Any] = {}
        for key, value in data.items():
            flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: data}


def config_drift(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Keys of the model, data or feature settings that differ, as 'key: saved -> current'."""
    differences = []
    for section in DRIFT_SECTIONS:
        old, new = flatten(saved.get(section, {}), section), flatten(current.get(section, {}), section)
        for key in sorted(set(old) | set(new)):
            if key in DRIFT_EXEMPT_KEYS:
                continue
            if old.get(key, "<absent>") != new.get(key, "<absent>"):
                differences.append(f"{key}: {old.get(key, '<absent>')!r} -> {new.get(key, '<absent>')!r}")
    return differences


def shape_mismatches(error: BaseException) -> list[str]:
    """The 'size mismatch for KEY: ...' lines of a failed load_state_dict, if that is what failed."""
    if not isinstance(error, RuntimeError):
        return []
    return [line.strip() for line in str(error).splitlines() if line.strip().startswith("size mismatch for ")]


def describe_shape_mismatch(checkpoint: Checkpoint, mismatches: list[str]) -> str:
    shown = "\n  ".join(mismatches[:3]) + (f"\n  ... ({len(mismatches)} tensors in all)" if len(mismatches) > 3 else "")
    return (
        f"the weights in {checkpoint.path} do not fit the model built from the current settings:\n  {shown}\n"
        "The checkpoint is intact. Restore the model settings it was trained with (its config.yaml), or start a new "
        f"run from its weights with run.name=... +resume=finetune resume.path={checkpoint.path}"
    )


def load_first_good(candidates: list[Checkpoint], load: Callable[[Checkpoint], None],
                    problems_of: Callable[[Checkpoint], list[str]], skipped: Sequence[DamagedFolder] = (),
                    agree: Callable[[bool], bool] = lambda ok: ok) -> Checkpoint:
    """Loads the first candidate (newest first) that verifies and loads, warning loudly about each
    newer one that does not and about the damaged `skipped` folders newer than the one loaded;
    raises ResumeError naming every file when none loads (never a silent restart). `problems_of`
    and `agree` make every rank take the same decision."""
    failures: list[str] = []
    for checkpoint in candidates:
        failures += [f"{folder.path}: {folder.reason}" for folder in skipped
                     if folder.step > checkpoint.step and f"{folder.path}: {folder.reason}" not in failures]
        problems = problems_of(checkpoint)
        if not problems:
            try:
                load(checkpoint)
            except Exception as error:  # any failure to load means: try the previous checkpoint
                if shape_mismatches(error):
                    # Not damage: the model built from the current settings has other shapes, and
                    # every older checkpoint of the run would fail the same way.
                    raise ResumeError(describe_shape_mismatch(checkpoint, shape_mismatches(error))) from error
                problems = [f"loading failed: {type(error).__name__}: {error}"]
            if not agree(not problems) and not problems:
                problems = ["another process could not load it"]
        if not problems:
            if failures:
                log.warning("!" * 72)
                log.warning("RESUMED FROM AN OLDER CHECKPOINT, step %d, because newer ones are damaged:\n  %s",
                            checkpoint.step, "\n  ".join(failures))
                log.warning("!" * 72)
            return checkpoint
        failures.append(f"{checkpoint.path}: " + "; ".join(problems))
        log.warning("checkpoint %s is damaged (%s); trying the previous one", checkpoint.path, "; ".join(problems))
    failures += [f"{folder.path}: {folder.reason}" for folder in skipped
                 if f"{folder.path}: {folder.reason}" not in failures]
    listing = "\n  ".join(failures)
    raise ResumeError(
        f"no checkpoint could be loaded, so the run will not silently start over:\n  {listing}\n"
        "Restore a checkpoint, or start a new run with run.name=... (or +resume=never resume.overwrite=true)"
    )
