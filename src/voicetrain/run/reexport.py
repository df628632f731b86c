"""`python -m voicetrain.export RUN_DIR`: re-export a committed checkpoint without training.

Reads only what the checkpoint folder holds: `config.yaml` (the run's validated settings),
`task_context.json` (speakers and feature statistics) and Accelerate's per-module weight files
`model.safetensors`, `model_1.safetensors`, ... (in the order of Task.build_modules), with
safetensors, never unpickling. The optimizer state is never read. A preset from conf/export/ is
layered on the run's own export settings, as `+export=NAME` is layered on the primary config.
Checkpoints written before task_context.json existed fall back to reading the run's data again.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import sys
from importlib import resources
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from voicetrain.checkpoint.finetune import FinetuneError, read_weights
from voicetrain.checkpoint.store import CONFIG_FILE, TASK_CONTEXT_FILE, Checkpoint, CheckpointStore, verify
from voicetrain.config import DataSettings, ExportSettings, build_task_settings
from voicetrain.config_features import FeatureSettings, build_features, modern_features
from voicetrain.schema import build_section, import_target
from voicetrain.durable import folder_bytes, listed_files
from voicetrain.export.artifact import DTYPES, ExportError, ExportResult
from voicetrain.export.destination import destination_problem, inspect_destination
from voicetrain.export.writer import write_export
from voicetrain.paths import RunPaths
from voicetrain.run.lock import RunLock, RunLockedError
from voicetrain.tasks.base import Task, TaskContext
from voicetrain.trust import UntrustedCodeError, add_trust_argument, resolve_class

log = logging.getLogger("voicetrain")

PROG = "python -m voicetrain.export"
# Prefixes a wrapper adds to every key of a saved state dict: DistributedDataParallel and torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
EXPORTING = "being re-exported"
LOCK_ADVICE = ("training and its final export, or another re-export, hold the run's lock; run this again once it is "
               "done, or add --wait to wait for it")


class CommandError(Exception):
    """A problem the user fixes from the message alone: printed without a traceback, exit status 2."""


def preset_names() -> list[str]:
    folder = resources.files("voicetrain.conf").joinpath("export")
    return sorted(entry.name.removesuffix(".yaml") for entry in folder.iterdir() if entry.name.endswith(".yaml"))


def read_preset(name: str) -> dict[str, Any]:
    text = resources.files("voicetrain.conf").joinpath("export", f"{name}.yaml").read_text()
    return OmegaConf.to_container(OmegaConf.create(text)) or {}


def choose_checkpoint(run_dir: Path, wanted: str | None) -> Checkpoint:
    """The newest committed checkpoint of the run, or the one named by folder name, step or path."""
    checkpoints = CheckpointStore(RunPaths(run_dir).checkpoints).list()
    if wanted is None:
        if not checkpoints:
            raise CommandError(f"{run_dir} has no committed checkpoint in {RunPaths(run_dir).checkpoints}: train it "
                               "first (python -m voicetrain run.name=...), or pass --checkpoint PATH")
        return checkpoints[-1]
    for checkpoint in checkpoints:
        if wanted in (checkpoint.path.name, str(checkpoint.step)):
            return checkpoint
    path = Path(wanted)
    if path.is_dir():
        checkpoint = CheckpointStore.read(path)
        if checkpoint is None:
            raise CommandError(f"--checkpoint {wanted}: {path} is not a committed checkpoint (no manifest.json "
                               "with a step); pick one of the run's checkpoints")
        return checkpoint
    available = ", ".join(checkpoint.path.name for checkpoint in checkpoints) or "none"
    raise CommandError(f"--checkpoint {wanted}: no such checkpoint in {RunPaths(run_dir).checkpoints} "
                       f"(committed: {available}); pass a name, a step or a checkpoint folder")


def read_saved_config(checkpoint: Checkpoint) -> dict[str, Any]:
    """The run's settings as the checkpoint recorded them, read only once every file of the folder
    matches its manifest (config.yaml included: a file the manifest does not list is refused too)."""
    path = checkpoint.path / CONFIG_FILE
    if not path.is_file():
        raise CommandError(f"{path} is missing: the checkpoint does not record the settings it was trained with, "
                           "so the model cannot be rebuilt")
    problems = verify(checkpoint)
    if CONFIG_FILE not in listed_files(checkpoint.manifest):
        problems.append(f"{path} is not listed in its manifest")
    if problems:
        raise CommandError(f"{checkpoint.path} is damaged or was changed after it was written: {'; '.join(problems)}; "
                           "export another checkpoint with --checkpoint")
    try:
        saved = OmegaConf.to_container(OmegaConf.load(path))
    except (OmegaConfBaseException, yaml.YAMLError, UnicodeDecodeError) as error:
        raise CommandError(f"{path} cannot be read as YAML ({' '.join(str(error).split())})") from error
    if not isinstance(saved, dict):
        raise CommandError(f"{path} holds a {type(saved).__name__}, not the mapping of settings a checkpoint records")
    return saved


def resolve_saved_classes(checkpoint: Checkpoint, saved: dict[str, Any], trusted_modules: Sequence[str]) -> None:
    """Every class config.yaml names (the task, each feature extractor), through the trust boundary,
    before the settings are validated (validation imports them)."""
    source = checkpoint.path / CONFIG_FILE
    named = {"task._target_": (saved.get("task") or {}).get("_target_") if isinstance(saved.get("task"), dict)
             else None}
    features = saved.get("features")
    if isinstance(features, dict):
        named.update({f"features.{name}._target_": node.get("_target_") for name, node in features.items()
                      if isinstance(node, dict) and "_target_" in node})
    for key, target in named.items():
        if target is None:
            continue
        try:
            resolve_class(target, f"{source} {key}", trusted_modules)
        except UntrustedCodeError as error:
            raise CommandError(str(error)) from error


def export_settings(saved: dict[str, Any], preset: str | None, dtype: str | None,
                    vocoder: Path | None = None) -> ExportSettings:
    node = {"vocoder": None, **(saved.get("export") or {})}  # runs saved before export.vocoder existed
    if preset is not None:
        node.update(read_preset(preset))
        if node.get("enabled") is False:
            raise CommandError(f"--preset {preset} disables export; pick another preset")
    if dtype is not None:
        node["dtype"] = dtype
    if vocoder is not None:
        node["vocoder"] = str(vocoder)
    # Asking for an export is explicit here, whatever the run's own export.enabled said.
    node["enabled"] = True
    settings, problems = build_section("export", ExportSettings, node)
    if problems:
        raise CommandError("; ".join(problems))
    return settings


def task_context(checkpoint: Checkpoint, saved: dict[str, Any], features: FeatureSettings) -> TaskContext:
    path = checkpoint.path / TASK_CONTEXT_FILE
    if path.is_file():
        return TaskContext.from_dict(json.loads(path.read_text()))
    from voicetrain.data.prepare import prepare_data

    data, problems = build_section("data", DataSettings, saved.get("data") or {})
    if problems:
        raise CommandError("; ".join(problems))
    log.warning("%s has no %s (written by an older voicetrain): reading the run's data (data.kind=%s, "
                "data.root=%s) again for its speakers and feature statistics", checkpoint.path, TASK_CONTEXT_FILE,
                data.kind, data.root)
    return TaskContext.of_run(features, prepare_data(data, features, progress=False))


def build_task(checkpoint: Checkpoint, saved: dict[str, Any], trusted_modules: Sequence[str] = ()) -> Task:
    resolve_saved_classes(checkpoint, saved, trusted_modules)
    written = saved.get("task")
    target = written.get("_target_") if isinstance(written, dict) else None
    if isinstance(target, str):  # resolved (allow-listed) above: importing it runs only trusted code
        fill_in = getattr(import_target(target), "with_settings_before_keys_existed", None)
        written = fill_in(written) if fill_in is not None else written  # a class that is no Task: checked below
    target, task_settings, problems = build_task_settings(written)
    features, feature_problems = build_features(modern_features(saved.get("features") or {}))
    problems += feature_problems
    if problems:
        raise CommandError(f"{checkpoint.path / 'config.yaml'}: " + "; ".join(problems))
    return import_target(target)(task_settings, task_context(checkpoint, saved, features))


def strip_wrapper_prefixes(state: dict[str, Any]) -> dict[str, Any]:
    for prefix in WRAPPER_PREFIXES:
        if state and all(key.startswith(prefix) for key in state):
            state = {key[len(prefix):]: value for key, value in state.items()}
    return state


def load_checkpoint_weights(checkpoint: Checkpoint, modules: dict[str, nn.Module]) -> None:
    """Weights only, by module name (older checkpoints: by position), verified first; never the
    optimizer state."""
    try:
        weights = read_weights(checkpoint.path, list(modules)).modules
    except FinetuneError as error:
        raise CommandError(str(error).replace("resume.path=", "checkpoint ")) from error
    missing = [name for name in modules if name not in weights]
    if missing:
        raise CommandError(f"{checkpoint.path} holds no weights for module(s) {', '.join(missing)} of the task "
                           f"(it has {', '.join(sorted(weights)) or 'none'}): it was written by another task")
    for name, module in modules.items():
        try:
            module.load_state_dict(strip_wrapper_prefixes(weights[name]))
        except RuntimeError as error:
            raise CommandError(f"cannot load module {name!r} from {checkpoint.path}: {error}") from error


def checked_destination(run_dir: Path, output: Path | None) -> Path:
    """Where the export goes (resolved), or a CommandError when that folder holds something else."""
    destination = output if output is not None else RunPaths(run_dir).export
    try:
        problem = destination_problem(inspect_destination(destination, run_dir), str(destination))
    except OSError as error:
        raise CommandError(f"--output {destination}: cannot be read ({error.strerror}); pass a folder you can "
                           "write") from error
    if problem is not None:
        raise CommandError(problem)
    return destination.resolve()


def take_run_lock(run_dir: Path, wait: bool) -> RunLock | None:
    """The run's lock, so a re-export never runs beside training (whose final export writes the same
    folder) or another re-export; None for a run folder this user cannot write (nobody trains it here)."""
    try:
        return RunLock(run_dir, EXPORTING, LOCK_ADVICE).acquire(wait)
    except OSError as error:
        if error.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        log.warning("cannot create the lock file in %s (%s): exporting without the run's lock", run_dir,
                    error.strerror)
        return None


def reexport(run_dir: Path, checkpoint_name: str | None, preset: str | None, dtype: str | None,
             output: Path | None, vocoder: Path | None = None,
             wait: bool = False, trusted_modules: Sequence[str] = ()) -> tuple[Checkpoint, ExportSettings, ExportResult]:
    if not run_dir.is_dir():
        raise CommandError(f"{run_dir}: no such run directory (runs live in run.root/run.name, e.g. runs/default)")
    destination = checked_destination(run_dir, output)
    lock = take_run_lock(run_dir, wait)
    try:
        return export_locked(run_dir, checkpoint_name, preset, dtype, destination, vocoder, trusted_modules)
    finally:
        if lock is not None:
            lock.release()


def export_locked(run_dir: Path, checkpoint_name: str | None, preset: str | None, dtype: str | None,
                  destination: Path, vocoder: Path | None,
                  trusted_modules: Sequence[str] = ()) -> tuple[Checkpoint, ExportSettings, ExportResult]:
    checkpoint = choose_checkpoint(run_dir, checkpoint_name)
    saved = read_saved_config(checkpoint)
    settings = export_settings(saved, preset, dtype, vocoder)
    task = build_task(checkpoint, saved, trusted_modules)
    modules = task.build_modules()
    load_checkpoint_weights(checkpoint, modules)
    log.info("exporting %s (step %d) to %s as %s %s", checkpoint.path, checkpoint.step, destination,
             settings.dtype, "+".join(settings.formats))
    result = write_export(task, modules, destination, settings.dtype, checkpoint.step, str(checkpoint.path),
                          checkpoint.metrics, settings.formats, settings.vocoder)
    return checkpoint, settings, result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Re-export a training run's committed checkpoint as a verified inference model, without "
                    "training: only the inference modules, in the chosen dtype, as safetensors (and ONNX).",
        epilog=f"examples:\n  {PROG} runs/alice                       newest checkpoint, the run's own export "
               f"settings\n  {PROG} runs/alice --preset onnx         add model.onnx\n  {PROG} runs/alice "
               "--checkpoint step_00001200 --preset fp32 --output /tmp/alice-1200\n  "
               f"{PROG} runs/alice --vocoder runs/voc/export  inference uses that vocoder, not Griffin-Lim",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="the run directory, e.g. runs/alice")
    parser.add_argument("--checkpoint", metavar="NAME|STEP|PATH",
                        help="a committed checkpoint: step_00001200, 1200 or a folder (default: the newest)")
    parser.add_argument("--preset", choices=preset_names(),
                        help="an export preset from conf/export/, layered on the run's export settings")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="weight dtype, applied after the preset")
    parser.add_argument("--output", metavar="DIR", type=Path,
                        help="where to write the export (default: RUN_DIR/export, replaced only once verified): a new "
                             "or empty folder, or one holding a voicetrain export; never the run, a folder above it "
                             "or inside its checkpoints/")
    parser.add_argument("--wait", action="store_true",
                        help="while training (or another re-export) holds the run's lock, wait for it instead of "
                             "refusing")
    parser.add_argument("--vocoder", metavar="VOCODER_EXPORT", type=Path,
                        help="a task=vocoder export that inference of this export uses instead of Griffin-Lim "
                             "(export.vocoder; checked against this task's log-mel settings)")
    add_trust_argument(parser, "the checkpoint's config.yaml")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = build_parser()
    arguments = parser.parse_args(argv)
    try:
        checkpoint, settings, result = reexport(arguments.run_dir, arguments.checkpoint, arguments.preset,
                                                arguments.dtype, arguments.output, arguments.vocoder,
                                                arguments.wait, arguments.trust_code)
    except (CommandError, RunLockedError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    except ExportError as error:
        print(f"{PROG}: export failed: {error}", file=sys.stderr)
        return 1
    size = folder_bytes(checkpoint.path)
    print(f"exported {result.path} from {checkpoint.path.name}: {settings.dtype}, {'+'.join(settings.formats)}, "
          f"{result.bytes / 1e6:.1f} MB ({result.bytes / max(size, 1):.2f} of the checkpoint's {size / 1e6:.1f} MB), "
          f"max error vs trained {result.max_error:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
