"""The inference export: only the task's inference modules, in the chosen dtype, verified.

    export/model.safetensors   weights of Task.inference_modules (keys "<module>.<parameter>")
    export/config.json         task class, task settings and context: enough to rebuild the model
    export/manifest.json       written last: file sizes and sha256, dtype, step, metrics, parity

The folder is written under a staging name and renamed into place, like checkpoints. Loading
reads safetensors and JSON only, never pickle.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

import voicetrain
from voicetrain.audio import MelSettings
from voicetrain.checkpoint import fsync_path, fsync_tree, write_json_durably
from voicetrain.config import import_target
from voicetrain.task import Task, TaskContext

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
MANIFEST = "manifest.json"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Max error of the reloaded export against the trained model, relative to the output's largest
# magnitude: rounding the weights to 16 bits costs about 2^-11 (fp16) or 2^-8 (bf16) per layer.
RELATIVE_TOLERANCE = {"fp32": 1e-5, "fp16": 1e-2, "bf16": 6e-2}


class ExportError(RuntimeError):
    pass


@dataclass(frozen=True)
class ExportResult:
    path: Path
    bytes: int
    max_error: float
    relative_error: float


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def inference_state(task: Task, modules: dict[str, nn.Module], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    state = {}
    for name in task.inference_modules:
        for key, tensor in modules[name].state_dict().items():
            tensor = tensor.detach().to("cpu")
            state[f"{name}.{key}"] = (tensor.to(dtype) if tensor.is_floating_point() else tensor).contiguous()
    return state


def export_config(task: Task) -> dict[str, Any]:
    return {
        "task_target": f"{type(task).__module__}.{type(task).__qualname__}",
        "task_settings": dataclasses.asdict(task.settings),
        "context": dataclasses.asdict(task.context),
        "inference_modules": list(task.inference_modules),
    }


def rebuild_task(config: dict[str, Any]) -> Task:
    task_class = import_target(config["task_target"])
    context_data = dict(config["context"])
    context_data["features"] = MelSettings(**context_data["features"])
    return task_class(task_class.Settings(**config["task_settings"]), TaskContext(**context_data))


def rebuild_modules(config: dict[str, Any], state: dict[str, torch.Tensor]) -> tuple[Task, dict[str, nn.Module]]:
    """The task and its inference modules, in fp32 and eval mode, from an export's config and weights."""
    task = rebuild_task(config)
    modules = task.build_modules()
    for name in task.inference_modules:
        prefix = f"{name}."
        own = {key[len(prefix):]: value.float() if value.is_floating_point() else value
               for key, value in state.items() if key.startswith(prefix)}
        modules[name].load_state_dict(own)
        modules[name].eval()
    return task, {name: modules[name] for name in task.inference_modules}


def load_inference_modules(directory: Path) -> tuple[Task, dict[str, nn.Module]]:
    """Rebuilds the model from an export folder alone, after checking every file's sha256."""
    manifest_path = directory / MANIFEST
    for required in (manifest_path, directory / CONFIG, directory / WEIGHTS):
        if not required.is_file():
            raise ExportError(f"{required} is missing: {directory} is not a complete voicetrain export; "
                              "re-export it with `python -m voicetrain.export RUN_DIR`")
    manifest = json.loads(manifest_path.read_text())
    for name, expected in manifest["sha256"].items():
        if sha256_of(directory / name) != expected:
            raise ExportError(f"{directory / name} does not match the sha256 in {manifest_path}: the file was "
                              "changed or damaged after export; re-export the run")
    return rebuild_modules(json.loads((directory / CONFIG).read_text()), load_file(str(directory / WEIGHTS)))


@torch.no_grad()
def parity(task: Task, trained: dict[str, nn.Module], exported: dict[str, nn.Module]) -> tuple[float, float]:
    inputs = task.example_inputs()
    reference = task.inference_model(trained)(*inputs).float()
    candidate = task.inference_model(exported)(*inputs).float()
    max_error = float((reference - candidate).abs().max())
    return max_error, max_error / max(float(reference.abs().max()), 1e-12)


def write_export(task: Task, modules: dict[str, nn.Module], destination: Path, dtype_name: str,
                 step: int, source_checkpoint: str | None, metrics: dict[str, float]) -> ExportResult:
    """Writes and verifies the export of `modules` (unwrapped, on any device) into `destination`."""
    staging = destination.parent / f".tmp-{destination.name}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    cpu_modules = {name: modules[name] for name in task.inference_modules}
    metadata = {
        "voicetrain_version": voicetrain.__version__,
        "dtype": dtype_name,
        "step": str(step),
        "source_checkpoint": source_checkpoint or "",
        "sample_rate": str(task.context.features.sample_rate),
        "features": json.dumps(dataclasses.asdict(task.context.features)),
        "speakers": json.dumps(task.context.speakers),
    }
    save_file(inference_state(task, cpu_modules, DTYPES[dtype_name]), str(staging / WEIGHTS), metadata=metadata)
    (staging / CONFIG).write_text(json.dumps(export_config(task), indent=2))
    checksums = {name: sha256_of(staging / name) for name in (WEIGHTS, CONFIG)}
    # Verify what is on disk, not what is in memory: reload the written files.
    _, reloaded = rebuild_modules(json.loads((staging / CONFIG).read_text()), load_file(str(staging / WEIGHTS)))
    trained = {name: copy.deepcopy(module).to("cpu").float().eval() for name, module in cpu_modules.items()}
    max_error, relative_error = parity(task, trained, reloaded)
    if not relative_error <= RELATIVE_TOLERANCE[dtype_name]:
        raise ExportError(f"export verification failed: the reloaded {dtype_name} model differs from the trained "
                          f"one by {relative_error:.2e} (relative), above the tolerance "
                          f"{RELATIVE_TOLERANCE[dtype_name]:.0e}; export with +export=fp32 or check the task's "
                          "inference_model")
    manifest = {
        "voicetrain_version": voicetrain.__version__,
        "dtype": dtype_name,
        "step": step,
        "source_checkpoint": source_checkpoint,
        "metrics": metrics,
        "files": {name: (staging / name).stat().st_size for name in checksums},
        "sha256": checksums,
        "parity": {"max_abs_error": max_error, "relative_error": relative_error},
    }
    write_json_durably(staging / MANIFEST, manifest)
    fsync_tree(staging)
    if destination.exists():
        # Keep the previous export until the new one is complete, then swap.
        previous = destination.parent / f".old-{destination.name}"
        shutil.rmtree(previous, ignore_errors=True)
        os.replace(destination, previous)
        os.replace(staging, destination)
        shutil.rmtree(previous, ignore_errors=True)
    else:
        os.replace(staging, destination)
    fsync_path(destination.parent)
    total = sum((destination / name).stat().st_size for name in (WEIGHTS, CONFIG, MANIFEST))
    return ExportResult(destination, total, max_error, relative_error)
