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
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from voicetrain.config import import_target
from voicetrain.durable import MANIFEST, read_manifest, staging_leftovers, verify_folder
from voicetrain.tasks.base import Task, TaskContext

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


def rebuild_task(config: dict[str, Any]) -> Task:
    target = config["task_target"]
    try:
        task_class = import_target(target)
    except (ImportError, AttributeError) as error:
        raise ExportError(f"the export's task {target!r} cannot be imported ({error}); install the project that "
                          "trained it") from error
    if not (isinstance(task_class, type) and issubclass(task_class, Task)):
        raise ExportError(f"the export's task_target {target!r} is not a voicetrain Task")
    return task_class(task_class.Settings(**config["task_settings"]), TaskContext.from_dict(config["context"]))


def rebuild_modules(config: dict[str, Any], state: dict[str, torch.Tensor]) -> tuple[Task, dict[str, nn.Module]]:
    """The task and its inference modules, in fp32 and eval mode, from an export's config and weights."""
    task = rebuild_task(config)
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


def load_inference_modules(directory: Path) -> tuple[Task, dict[str, nn.Module]]:
    """Rebuilds the model from an export folder alone, after checking every file's SHA-256."""
    manifest = read_export_manifest(directory)
    if WEIGHTS not in manifest["files"]:
        raise ExportError(f"{directory} holds no {WEIGHTS} (export.formats={manifest.get('formats')}); re-export "
                          "the run with safetensors in export.formats")
    verify_export(directory, manifest)
    return rebuild_modules(json.loads((directory / CONFIG).read_text()), load_file(str(directory / WEIGHTS)))


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
