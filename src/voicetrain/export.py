"""The inference export: only the task's inference modules, in the chosen dtype, verified.

    export/model.safetensors   weights of Task.inference_modules (keys "<module>.<parameter>") and
                               metadata (sample rate, mel settings, speakers, step, source, version)
    export/model.onnx          with export.formats [..., onnx]: Task.inference_model as an ONNX graph
    export/config.json         task class, task settings and context: enough to rebuild the model
    export/manifest.json       written last: file sizes and sha256, dtype, step, metrics, parity

`runs/<name>/export/` is THE artifact of a run (end of training, or `python -m voicetrain.export`);
periodic exports (`export.every_n_steps`) go to `runs/<name>/exports/step_00001200/`, never
pruned. Each folder is written under a staging name, verified from disk (the reloaded model run
on Task.example_inputs() against the trained one, within the dtype's tolerance; the ONNX graph
through onnxruntime the same way) and only then renamed into place. Loading reads safetensors and
JSON only, never pickle, after checking every file against the manifest's sha256.

`python -m voicetrain.export RUN_DIR` re-exports a committed checkpoint: see voicetrain.export_cli.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

import voicetrain
from voicetrain.audio import MelSettings
from voicetrain.checkpoint import checkpoint_name, fsync_path, fsync_tree, write_json_durably
from voicetrain.config import import_target
from voicetrain.task import Task, TaskContext

WEIGHTS = "model.safetensors"
ONNX = "model.onnx"
CONFIG = "config.json"
MANIFEST = "manifest.json"
FORMAT_FILES = {"safetensors": WEIGHTS, "onnx": ONNX}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Max error of the reloaded export against the trained model, relative to the output's largest
# magnitude: rounding the weights to 16 bits costs about 2^-11 (fp16) or 2^-8 (bf16) per layer.
RELATIVE_TOLERANCE = {"fp32": 1e-5, "fp16": 1e-2, "bf16": 6e-2}
# 17: the first opset with a native LayerNormalization (transformer TTS models need it); every
# onnxruntime since 1.12 (2022) reads it.
STAGING_PREFIX = ".tmp-"
TASK_CONTEXT_FILE = "task_context.json"  # in each checkpoint folder, written by Trainer.save


class ExportError(RuntimeError):
    """An export that cannot be written, verified or loaded; the message names the fix."""


@dataclass(frozen=True)
class ExportResult:
    path: Path
    bytes: int  # every file of the export folder
    max_error: float  # worst format's max absolute error against the trained model
    relative_error: float
    parity: dict[str, dict[str, float]] = field(default_factory=dict)  # per format


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def periodic_export_dir(run_dir: Path, step: int) -> Path:
    """Where `export.every_n_steps` writes: beside, never inside, the run's final `export/`."""
    return run_dir / "exports" / checkpoint_name(step)


def inference_state(task: Task, modules: dict[str, nn.Module], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    state = {}
    for name in task.inference_modules:
        for key, tensor in modules[name].state_dict().items():
            tensor = tensor.detach().to("cpu")
            # A copy even in fp32: tied weights share storage, which safetensors refuses to write.
            converted = tensor.to(dtype, copy=True) if tensor.is_floating_point() else tensor.clone()
            state[f"{name}.{key}"] = converted.contiguous()
    return state


def context_to_dict(context: TaskContext) -> dict[str, Any]:
    return dataclasses.asdict(context)


def context_json(context: TaskContext) -> str:
    """The TaskContext as saved beside each checkpoint (TASK_CONTEXT_FILE), so that re-exporting
    needs neither the dataset nor a pass over it."""
    return json.dumps(context_to_dict(context), indent=2)


def context_from_dict(data: dict[str, Any]) -> TaskContext:
    data = dict(data)
    data["features"] = MelSettings(**data["features"])
    return TaskContext(**data)


def export_config(task: Task) -> dict[str, Any]:
    return {
        "task_target": f"{type(task).__module__}.{type(task).__qualname__}",
        "task_settings": dataclasses.asdict(task.settings),
        "context": context_to_dict(task.context),
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
    return task_class(task_class.Settings(**config["task_settings"]), context_from_dict(config["context"]))


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


def read_manifest(directory: Path) -> dict[str, Any]:
    if not directory.is_dir():
        raise ExportError(f"{directory}: no such export folder; a run's export is runs/<name>/export "
                          "(write one with `python -m voicetrain.export RUN_DIR`)")
    manifest_path = directory / MANIFEST
    for required in (manifest_path, directory / CONFIG):
        if not required.is_file():
            raise ExportError(f"{required} is missing: {directory} is not a complete voicetrain export; "
                              "re-export the run with `python -m voicetrain.export RUN_DIR`")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ExportError(f"{manifest_path} cannot be read ({error}); re-export the run") from error
    if not isinstance(manifest, dict) or not isinstance(manifest.get("sha256"), dict):
        raise ExportError(f"{manifest_path} has no sha256 table: not a voicetrain export; re-export the run")
    return manifest


def verify_files(directory: Path, manifest: dict[str, Any]) -> None:
    for name, expected in sorted(manifest["sha256"].items()):
        path = directory / name
        if not path.is_file():
            raise ExportError(f"{path} is missing but listed in {directory / MANIFEST}: the export is incomplete; "
                              "re-export the run")
        if sha256_of(path) != expected:
            raise ExportError(f"{path} does not match the sha256 in {directory / MANIFEST}: the file was "
                              "changed or damaged after export; re-export the run")


def load_inference_modules(directory: Path) -> tuple[Task, dict[str, nn.Module]]:
    """Rebuilds the model from an export folder alone, after checking every file's sha256."""
    manifest = read_manifest(directory)
    if WEIGHTS not in manifest["sha256"]:
        raise ExportError(f"{directory} holds no {WEIGHTS} (export.formats={manifest.get('formats')}); re-export "
                          "the run with safetensors in export.formats")
    verify_files(directory, manifest)
    return rebuild_modules(json.loads((directory / CONFIG).read_text()), load_file(str(directory / WEIGHTS)))


def reference_modules(task: Task, modules: dict[str, nn.Module]) -> dict[str, nn.Module]:
    """fp32 CPU copies of the trained inference modules, in eval mode, to compare the export with.

    A module on the CPU is deep-copied, so state the export cannot carry (a tensor that is not a
    buffer) shows up as a parity failure. One on an accelerator is rebuilt from its weights on the
    CPU instead: a copy would double its memory mid-training, and comparing a GPU run (TF32
    convolutions) with a CPU one would measure the GPU, not the export.
    """
    copies, rebuilt = {}, None
    for name in task.inference_modules:
        module = modules[name]
        if all(tensor.device.type == "cpu" for tensor in module.state_dict().values()):
            copied = copy.deepcopy(module).float().eval()
            # Accelerate's mixed precision patches an autocast wrapper onto the instance's forward;
            # dropping it restores the class's fp32 forward.
            for patched in ("forward", "_original_forward"):
                copied.__dict__.pop(patched, None)
            copies[name] = copied
            continue
        if rebuilt is None:
            rebuilt = rebuild_modules(export_config(task), inference_state(task, modules, torch.float32))[1]
        copies[name] = rebuilt[name]
    return copies


@torch.no_grad()
def run_inference_model(task: Task, modules: dict[str, nn.Module], inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return task.inference_model(modules)(*inputs).float()


def compare(reference: torch.Tensor, candidate: torch.Tensor) -> dict[str, float]:
    if reference.shape != candidate.shape:
        raise ExportError(f"the exported model's output has shape {tuple(candidate.shape)}, the trained model's "
                          f"{tuple(reference.shape)}; check the task's inference_model")
    max_error = float((reference - candidate).abs().max())
    return {"max_abs_error": max_error, "relative_error": max_error / max(float(reference.abs().max()), 1e-12)}


def check_tolerance(name: str, dtype_name: str, result: dict[str, float]) -> None:
    if not result["relative_error"] <= RELATIVE_TOLERANCE[dtype_name]:
        raise ExportError(f"export verification failed: the reloaded {dtype_name} {name} model differs from the "
                          f"trained one by {result['relative_error']:.2e} (relative), above the tolerance "
                          f"{RELATIVE_TOLERANCE[dtype_name]:.0e}; export with +export=fp32 or check the task's "
                          "inference_model")


def safetensors_metadata(task: Task, dtype_name: str, step: int, source_checkpoint: str | None) -> dict[str, str]:
    return {
        "voicetrain_version": voicetrain.__version__,
        "task_target": f"{type(task).__module__}.{type(task).__qualname__}",
        "dtype": dtype_name,
        "step": str(step),
        "source_checkpoint": source_checkpoint or "",
        "sample_rate": str(task.context.features.sample_rate),
        "features": json.dumps(dataclasses.asdict(task.context.features)),
        "speakers": json.dumps(task.context.speakers),
    }


def write_export(task: Task, modules: dict[str, nn.Module], destination: Path, dtype_name: str,
                 step: int, source_checkpoint: str | None, metrics: dict[str, float],
                 formats: Sequence[str] = ("safetensors",)) -> ExportResult:
    """Writes and verifies the export of `modules` (unwrapped, on any device) into `destination`.

    Leaves the global RNG and the modules untouched, so it may run mid-training."""
    unknown = [name for name in formats if name not in FORMAT_FILES]
    if unknown or not formats:
        raise ExportError(f"export.formats={list(formats)}: expected one or more of {sorted(FORMAT_FILES)}")
    staging = destination.parent / f"{STAGING_PREFIX}{destination.name}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        with torch.random.fork_rng(devices=[]):
            parity_by_format, onnx_info = verify_into(staging, task, modules, dtype_name, step, source_checkpoint,
                                                      formats)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    checksums = {path.name: sha256_of(path) for path in sorted(staging.iterdir())}
    manifest = {
        "voicetrain_version": voicetrain.__version__,
        "task_target": f"{type(task).__module__}.{type(task).__qualname__}",
        "dtype": dtype_name,
        "formats": list(formats),
        "step": step,
        "source_checkpoint": source_checkpoint,
        "created_unix": time.time(),
        "metrics": metrics,
        "files": {name: (staging / name).stat().st_size for name in checksums},
        "sha256": checksums,
        "tolerance": {"relative_error": RELATIVE_TOLERANCE[dtype_name]},
        "parity": parity_by_format,
        **({"onnx": {**onnx_info, "weights_rounded_to": dtype_name}} if onnx_info else {}),
    }
    write_json_durably(staging / MANIFEST, manifest)
    commit(staging, destination)
    worst = max(parity_by_format.values(), key=lambda result: result["relative_error"])
    total = sum(path.stat().st_size for path in destination.iterdir() if path.is_file())
    return ExportResult(destination, total, worst["max_abs_error"], worst["relative_error"], parity_by_format)


def verify_into(staging: Path, task: Task, modules: dict[str, nn.Module], dtype_name: str, step: int,
                source_checkpoint: str | None, formats: Sequence[str]) -> tuple[dict[str, dict[str, float]], dict]:
    """Writes each format into `staging` and checks it, read back from disk, against the trained model."""
    state = inference_state(task, modules, DTYPES[dtype_name])
    config = export_config(task)
    # Compact: the export is the artifact people ship, and 160 mel statistics one per line would
    # add kilobytes of whitespace; `python -m json.tool config.json` prints it readably.
    (staging / CONFIG).write_text(json.dumps(config, separators=(",", ":")))
    inputs = task.example_inputs()
    trained = reference_modules(task, modules)
    reference = run_inference_model(task, trained, inputs)
    results, onnx_info = {}, {}
    if "safetensors" in formats:
        save_file(state, str(staging / WEIGHTS), metadata=safetensors_metadata(task, dtype_name, step,
                                                                              source_checkpoint))
        # Verify what is on disk, not what is in memory: reload the written files.
        state = load_file(str(staging / WEIGHTS))
    exported = rebuild_modules(config, state)[1]
    if "safetensors" in formats:
        results["safetensors"] = compare(reference, run_inference_model(task, exported, inputs))
        check_tolerance("safetensors", dtype_name, results["safetensors"])
    if "onnx" in formats:
        # The graph holds the export's weights (rounded to the dtype), computed in fp32: onnxruntime's
        # CPU provider lacks fp16 kernels for many operators, and both files then hold one model.
        # Imported here: ONNX is optional, and its exporter is slow to import.
        from voicetrain.export_onnx import resized_inputs, run_onnx, write_onnx

        onnx_info = write_onnx(task, exported, staging / ONNX)
        results["onnx"] = compare(reference, run_onnx(staging / ONNX, onnx_info["input_names"], inputs))
        check_tolerance("onnx", dtype_name, results["onnx"])
        resized = resized_inputs(inputs, onnx_info["input_names"], task.onnx_dynamic_axes())
        if resized is not None:
            # A traced graph can freeze a size it should not; run it at other sizes of its dynamic axes.
            results["onnx_resized_inputs"] = compare(run_inference_model(task, trained, resized),
                                                     run_onnx(staging / ONNX, onnx_info["input_names"], resized))
            check_tolerance("onnx (inputs resized along their dynamic axes)", dtype_name,
                            results["onnx_resized_inputs"])
    return results, onnx_info


def commit(staging: Path, destination: Path) -> None:
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


if __name__ == "__main__":
    # `python -m voicetrain.export RUN_DIR`: this module is the library, export_cli the command.
    from voicetrain.export_cli import main

    raise SystemExit(main())
