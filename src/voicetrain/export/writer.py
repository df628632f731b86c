"""Writing an export: only the task's inference modules, in the chosen dtype, verified from disk.

Each folder is written under a staging name, verified from disk (the reloaded model run on
Task.verification_inputs() against the trained one, within the dtype's tolerance; the ONNX graph
through onnxruntime the same way) and only then committed with voicetrain.durable's protocol, so a
failed export leaves the previous one in place. The folder's layout is voicetrain.export.artifact's.
"""

from __future__ import annotations

import copy
import dataclasses
import errno
import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

import voicetrain
from voicetrain.durable import commit_folder, file_table, folder_bytes, remove_dead_staging, staged
from voicetrain.export.artifact import (
    CONFIG,
    DTYPES,
    FORMAT_FILES,
    ONNX,
    WEIGHTS,
    ExportError,
    ExportResult,
    export_config,
    inference_state,
    rebuild_modules,
    task_target,
)
from voicetrain.tasks.base import Task

# Max error of the reloaded export against the trained model, relative to the output's largest
# magnitude: rounding the weights to 16 bits costs about 2^-11 (fp16) or 2^-8 (bf16) per layer.
RELATIVE_TOLERANCE = {"fp32": 1e-5, "fp16": 1e-2, "bf16": 6e-2}


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
            rebuilt = rebuild_modules(export_config(task), inference_state(task, modules, torch.float32), type(task))[1]
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
        "task_target": task_target(task),
        "dtype": dtype_name,
        "step": str(step),
        "source_checkpoint": source_checkpoint or "",
        "sample_rate": str(task.context.features.sample_rate),
        "features": json.dumps(dataclasses.asdict(task.context.features)),
        "speakers": json.dumps(task.context.speakers),
    }


def write_export(task: Task, modules: dict[str, nn.Module], destination: Path, dtype_name: str,
                 step: int, source_checkpoint: str | None, metrics: dict[str, float],
                 formats: Sequence[str] = ("safetensors",), default_vocoder: str | None = None) -> ExportResult:
    """Writes and verifies the export of `modules` (unwrapped, on any device) into `destination`;
    `default_vocoder` names a vocoder export that inference uses instead of Griffin-Lim.

    Leaves the global RNG and the modules untouched, so it may run mid-training."""
    check_vocoder(task, default_vocoder)
    unknown = [name for name in formats if name not in FORMAT_FILES]
    if unknown or not formats:
        raise ExportError(f"export.formats={list(formats)}: expected one or more of {sorted(FORMAT_FILES)}")
    destination.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(destination)
    needed = sum(tensor.numel() * tensor.element_size() for tensor in inference_state(
        task, modules, DTYPES[dtype_name]).values()) * len(formats)
    # A staging folder of this process's own: two exports of one destination never remove each other's.
    with staged(destination, lambda error: explain_failure(error, destination, needed), unique=True) as staging:
        with torch.random.fork_rng(devices=[]):
            parity_by_format, onnx_info = write_and_verify_formats(staging, task, modules, dtype_name, step,
                                                                   source_checkpoint, formats, default_vocoder)
        manifest = {
            "voicetrain_version": voicetrain.__version__,
            "task_target": task_target(task),
            "dtype": dtype_name,
            "formats": list(formats),
            "step": step,
            "source_checkpoint": source_checkpoint,
            "created_unix": time.time(),
            "metrics": metrics,
            "files": file_table(staging),
            "tolerance": {"relative_error": RELATIVE_TOLERANCE[dtype_name]},
            "parity": parity_by_format,
            **({"onnx": {**onnx_info, "weights_rounded_to": dtype_name}} if onnx_info else {}),
        }
        commit_folder(staging, destination, manifest)
    worst = max(parity_by_format.values(), key=lambda result: result["relative_error"])
    return ExportResult(destination, folder_bytes(destination), worst["max_abs_error"], worst["relative_error"],
                        parity_by_format)


def check_vocoder(task: Task, vocoder: str | None) -> None:
    """export.vocoder must turn exactly this task's log-mels into a wave, or inference would sound wrong."""
    if vocoder is None:
        return
    config = Path(vocoder) / CONFIG
    if not config.is_file():
        raise ExportError(f"export.vocoder={vocoder!r} holds no {CONFIG}: point it at a task=vocoder run's export")
    described = json.loads(config.read_text())
    own = task.context.features
    if described.get("context", {}).get("features") != (dataclasses.asdict(own) if own else None):
        raise ExportError(f"export.vocoder={vocoder!r} was trained on other log-mels than this task makes "
                          f"({own}); train the vocoder with the same features.sample_rate, features.hop_length and "
                          "features.mel settings, or set export.vocoder=null")


def remove_leftovers(destination: Path) -> None:
    """What an interrupted export left beside `destination` (staging folders of writers that are
    gone, a replaced predecessor); a live writer's staging folder stays."""
    shutil.rmtree(destination.parent / f".old-{destination.name}", ignore_errors=True)
    remove_dead_staging(destination)


def explain_failure(error: BaseException, destination: Path, needed_bytes: int) -> BaseException | None:
    """A full disk while exporting, with the numbers; other failures pass through unchanged."""
    if isinstance(error, ExportError) or not is_disk_full(error):
        return None
    free = shutil.disk_usage(destination.parent).free
    return ExportError(f"no space left on the device holding {destination.parent} while exporting: the export needs "
                       f"about {needed_bytes / 1e6:.1f} MB, {free / 1e6:.1f} MB are free once the partial export was "
                       "removed. Free space there, then run the same command again (training is saved) or re-export "
                       "with `python -m voicetrain.export RUN_DIR --output DIR` onto another disk")


def is_disk_full(error: BaseException) -> bool:
    return (isinstance(error, OSError) and error.errno == errno.ENOSPC) or "no space left" in str(error).lower() \
        or "os error 28" in str(error).lower()


def write_and_verify_formats(staging: Path, task: Task, modules: dict[str, nn.Module], dtype_name: str, step: int,
                             source_checkpoint: str | None, formats: Sequence[str],
                             default_vocoder: str | None = None) -> tuple[dict[str, dict[str, float]], dict]:
    """Writes each format into `staging` and checks it, read back from disk, against the trained model."""
    state = inference_state(task, modules, DTYPES[dtype_name])
    config = export_config(task)
    if default_vocoder is not None:
        config["default_vocoder"] = str(Path(default_vocoder).resolve())
    # Compact: the export is the artifact people ship, and 160 mel statistics one per line would
    # add kilobytes of whitespace; `python -m json.tool config.json` prints it readably.
    (staging / CONFIG).write_text(json.dumps(config, separators=(",", ":")))
    trained = reference_modules(task, modules)
    inputs = task.verification_inputs(trained)
    reference = run_inference_model(task, trained, inputs)
    results, onnx_info = {}, {}
    if "safetensors" in formats:
        save_file(state, str(staging / WEIGHTS), metadata=safetensors_metadata(task, dtype_name, step,
                                                                              source_checkpoint))
        # Verify what is on disk, not what is in memory: reload the written files.
        state = load_file(str(staging / WEIGHTS))
    exported = rebuild_modules(config, state, type(task))[1]
    if "safetensors" in formats:
        results["safetensors"] = compare(reference, run_inference_model(task, exported, inputs))
        check_tolerance("safetensors", dtype_name, results["safetensors"])
    if "onnx" in formats:
        # The graph holds the export's weights (rounded to the dtype), computed in fp32: onnxruntime's
        # CPU provider lacks fp16 kernels for many operators, and both files then hold one model.
        # Imported here: ONNX is optional, and its exporter is slow to import.
        from voicetrain.export.onnx import resized_inputs, run_onnx, write_onnx

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
