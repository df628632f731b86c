"""What an export folder is, and how a model is rebuilt from it alone.

    export/model.safetensors   weights of Task.inference_modules (keys "<module>.<parameter>") and
                               metadata (sample rate, mel settings, speakers, step, source, version)
    export/model.onnx          with export.formats [..., onnx]: Task.inference_model as an ONNX graph
    export/config.json         task class, task settings and context: enough to rebuild the model
    export/manifest.json       written last: every file with its size and SHA-256, dtype, step,
                               metrics, parity

`runs/<name>/export/` is THE artifact of a run; periodic exports (`export.every_n_steps`) go to
`runs/<name>/exports/step_00001200/`, never pruned. Loading reads safetensors and JSON only, never
pickle, after checking every file against the manifest (voicetrain.durable).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

import voicetrain
from voicetrain.config import build_section
from voicetrain.durable import MANIFEST, read_manifest, staging_leftovers, verify_folder
from voicetrain.tasks.base import Task, TaskContext
from voicetrain.trust import UntrustedCodeError, resolve_class

WEIGHTS = "model.safetensors"
ONNX = "model.onnx"
CONFIG = "config.json"
FORMAT_FILES = {"safetensors": WEIGHTS, "onnx": ONNX}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
STEP_DIGITS = 8


class ExportError(RuntimeError):
    """An export that cannot be written, verified or loaded; the message names the fix."""


@dataclass(frozen=True)
class ExportResult:
    path: Path
    bytes: int  # every file of the export folder
    max_error: float  # worst format's max absolute error against the trained model
    relative_error: float
    parity: dict[str, dict[str, float]] = field(default_factory=dict)  # per format


def periodic_export_dir(run_dir: Path, step: int) -> Path:
    """Where `export.every_n_steps` writes: beside, never inside, the run's final `export/`."""
    return run_dir / "exports" / f"step_{step:0{STEP_DIGITS}d}"


def task_target(task: Task) -> str:
    return f"{type(task).__module__}.{type(task).__qualname__}"


def inference_state(task: Task, modules: dict[str, nn.Module], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    state = {}
    for name in task.inference_modules:
        for key, tensor in modules[name].state_dict().items():
            tensor = tensor.detach().to("cpu")
            # A copy even in fp32: tied weights share storage, which safetensors refuses to write.
            converted = tensor.to(dtype, copy=True) if tensor.is_floating_point() else tensor.clone()
            state[f"{name}.{key}"] = converted.contiguous()
    return state


def export_config(task: Task) -> dict[str, Any]:
    return {
        "task_target": task_target(task),
        "task_settings": dataclasses.asdict(task.settings),
        "context": task.context.to_dict(),
        "inference_modules": list(task.inference_modules),
    }


def rebuild_task(config: dict[str, Any], task_class: type[Task], source: str = CONFIG) -> Task:
    """The task `config` describes, as an instance of `task_class` (resolved by the caller: the
    trust boundary for a config read from a file, the trained task's own class when writing)."""
    written = task_class.with_settings_before_keys_existed(config["task_settings"])
    settings, problems = build_section("task_settings", task_class.Settings, written)
    if problems:
        raise ExportError(f"{source}: {'; '.join(problems)}{newer_version_hint(config)}")
    try:
        context = TaskContext.from_dict(config["context"])
    except (TypeError, ValueError, KeyError) as error:
        raise ExportError(f"{source}: context cannot be read ({error}){newer_version_hint(config)}") from error
    return task_class(settings, context)


def newer_version_hint(config: dict[str, Any]) -> str:
    written_by = config.get("voicetrain_version")
    if isinstance(written_by, str) and written_by != voicetrain.__version__:
        return (f" (written by voicetrain {written_by}, this is {voicetrain.__version__}: read it with the version "
                "that wrote it)")
    return " (an export from another version of voicetrain, or an edited file)"


def rebuild_modules(config: dict[str, Any], state: dict[str, torch.Tensor],
                    task_class: type[Task]) -> tuple[Task, dict[str, nn.Module]]:
    """The task and its inference modules, in fp32 and eval mode, from an export's config and weights."""
    task = rebuild_task(config, task_class)
    # Building initialises every weight from the global RNG; keep it untouched (resume stays bit-exact).
    with torch.random.fork_rng(devices=[]):
        modules = task.build_modules()
    for name in task.inference_modules:
        prefix = f"{name}."
        own = {key[len(prefix):]: value.float() if value.is_floating_point() else value
               for key, value in state.items() if key.startswith(prefix)}
        try:
            modules[name].load_state_dict(own)
        except RuntimeError as error:  # missing, unexpected or mis-shaped keys
            raise ExportError(f"the weights of module {name!r} do not fit the model that config.json "
                              f"describes: {error}") from error
        modules[name].eval()
    return task, {name: modules[name] for name in task.inference_modules}


def read_export_config(directory: Path) -> dict[str, Any]:
    """config.json of a verified export, with the shape every reader relies on checked: a malformed
    file is one ExportError naming the file and the key, never a traceback."""
    path = directory / CONFIG
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ExportError(f"{path} cannot be read as JSON ({error}); re-export the run") from error
    if not isinstance(config, dict):
        raise ExportError(f"{path} holds a {type(config).__name__}, not the mapping an export's config is; "
                          "re-export the run")
    expected = {"task_target": str, "task_settings": dict, "context": dict, "inference_modules": list}
    for key, kind in expected.items():
        if not isinstance(config.get(key), kind):
            found = "missing" if key not in config else f"a {type(config[key]).__name__}"
            raise ExportError(f"{path}: key {key!r} is {found}, expected a {kind.__name__}; re-export the run")
    extractors = config["context"].get("extractors", {})
    if not isinstance(extractors, dict) or not all(isinstance(spec, dict) for spec in extractors.values()):
        raise ExportError(f"{path}: key 'context.extractors' must map each feature name to its settings")
    default_vocoder = config.get("default_vocoder")
    if default_vocoder is not None and not isinstance(default_vocoder, str):
        raise ExportError(f"{path}: key 'default_vocoder' must be a folder path, not {default_vocoder!r}")
    return config


def resolve_export_classes(directory: Path, config: dict[str, Any], trusted_modules: Sequence[str] = ()) -> type[Task]:
    """Every class the export's config names, through the trust boundary: the task, and the feature
    extractors its context lets inference rebuild. Returns the task class."""
    source = f"{directory / CONFIG}"
    try:
        task_class = resolve_class(config["task_target"], f"{source} task_target", trusted_modules)
        for name, spec in config["context"].get("extractors", {}).items():
            resolve_class(spec.get("_target_"), f"{source} context.extractors.{name}._target_", trusted_modules)
    except UntrustedCodeError as error:
        raise ExportError(str(error)) from error
    if not (issubclass(task_class, Task) and dataclasses.is_dataclass(getattr(task_class, "Settings", None))):
        raise ExportError(f"{source}: task_target {config['task_target']!r} is not a voicetrain Task with a Settings "
                          "dataclass")
    return task_class


def weight_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of a safetensors file, from its header alone (nothing is loaded)."""
    try:
        with safe_open(str(path), framework="pt") as weights:
            return {key: tuple(weights.get_slice(key).get_shape()) for key in weights.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise ExportError(f"{path} is not a readable safetensors file ({error}); re-export the run") from error


def check_shapes(task: Task, shapes: dict[str, tuple[int, ...]], source: Path) -> None:
    """The settings read from config.json against the weights' shapes, before any real allocation:
    the modules are built on the meta device (shapes only), so `hidden_channels: 1000000` costs nothing."""
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            modules = task.build_modules()
    except Exception as error:  # noqa: BLE001 - a task's constructor may raise anything on bad settings
        raise ExportError(f"{source.parent / CONFIG}: its task_settings do not build a model ({type(error).__name__}: "
                          f"{error})") from error
    for name in task.inference_modules:
        if name not in modules:
            raise ExportError(f"{source.parent / CONFIG}: inference module {name!r} is not among the task's modules "
                              f"({', '.join(modules)})")
        expected = {f"{name}.{key}": tuple(tensor.shape) for key, tensor in modules[name].state_dict().items()}
        found = {key: shape for key, shape in shapes.items() if key.startswith(f"{name}.")}
        for key in sorted(set(expected) | set(found)):
            if expected.get(key) != found.get(key):
                raise ExportError(f"{source}: tensor {key!r} has shape {found.get(key, 'missing')}, the settings in "
                                  f"{CONFIG} describe {expected.get(key, 'no such tensor')}; the two files do not "
                                  "belong together (re-export the run)")


def read_export_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of a complete export folder, or an ExportError that says how to get one."""
    if not directory.is_dir():
        raise ExportError(f"{directory}: no such export folder; a run's export is runs/<name>/export "
                          "(write one with `python -m voicetrain.export RUN_DIR`)")
    for required in (directory / MANIFEST, directory / CONFIG):
        if not required.is_file():
            raise ExportError(f"{required} is missing: {directory} is not a complete voicetrain export; "
                              "re-export the run with `python -m voicetrain.export RUN_DIR`")
    manifest = read_manifest(directory)
    if manifest is None or not isinstance(manifest.get("files"), dict):
        raise ExportError(f"{directory / MANIFEST} cannot be read as an export manifest; re-export the run")
    return manifest


def verify_export(directory: Path, manifest: dict[str, Any]) -> None:
    problems = verify_folder(directory, manifest)
    if problems:
        raise ExportError(f"the export {directory} is damaged or incomplete: {'; '.join(problems)}; re-export the "
                          "run with `python -m voicetrain.export RUN_DIR`")


def load_inference_modules(directory: Path, trusted_modules: Sequence[str] = ()) -> tuple[Task, dict[str, nn.Module]]:
    """Rebuilds the model from an export folder alone: every file's SHA-256 checked first, then the
    classes config.json names passed through the trust boundary, then the settings checked against the
    weights' shapes, and only then anything built or loaded."""
    manifest = read_export_manifest(directory)
    if WEIGHTS not in manifest["files"]:
        raise ExportError(f"{directory} holds no {WEIGHTS} (export.formats={manifest.get('formats')}); re-export "
                          "the run with safetensors in export.formats")
    verify_export(directory, manifest)
    config = read_export_config(directory)
    task_class = resolve_export_classes(directory, config, trusted_modules)
    config = {**config, "voicetrain_version": manifest.get("voicetrain_version")}
    task = rebuild_task(config, task_class, str(directory / CONFIG))
    check_shapes(task, weight_shapes(directory / WEIGHTS), directory / WEIGHTS)
    try:
        state = load_file(str(directory / WEIGHTS))
    except (SafetensorError, OSError, ValueError) as error:
        raise ExportError(f"{directory / WEIGHTS} cannot be read ({error}); re-export the run") from error
    return rebuild_modules(config, state, task_class)


def export_problem(directory: Path, step: int) -> str | None:
    """Why `directory` is not the finished export of a run whose newest checkpoint is `step`
    (missing, incomplete, damaged, or from another step), or None when it is."""
    old = directory.parent / f".old-{directory.name}"
    leftovers = [path.name for path in [*staging_leftovers(directory), *([old] if old.exists() else [])]]
    if leftovers:
        return f"an interrupted export left {', '.join(sorted(leftovers))} beside {directory}"
    manifest = read_manifest(directory)
    if manifest is None or not isinstance(manifest.get("files"), dict):
        return f"{directory} is missing or incomplete"
    problems = verify_folder(directory, manifest)
    if problems:
        return f"{directory} is damaged ({'; '.join(problems)})"
    if manifest.get("step") != step:
        return f"{directory} was exported at step {manifest.get('step')}, the newest checkpoint is step {step}"
    return None
