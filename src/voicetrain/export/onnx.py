"""The ONNX side of the export: tracing Task.inference_model to a graph and running it with
onnxruntime for verification. Imported only when export.formats includes onnx."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from voicetrain.export.artifact import ONNX, ExportError
from voicetrain.tasks.base import Task

ONNX_OPSET = 17


def onnx_names(task: Task) -> tuple[list[str], list[str]]:
    count = len(task.example_inputs())
    names = list(task.inference_input_names) or [f"input_{index}" for index in range(count)]
    if len(names) != count:
        raise ExportError(f"{type(task).__name__}.inference_input_names has {len(names)} name(s) for "
                          f"{count} example input(s); give one name per input")
    return names, ["output"]


def write_onnx(task: Task, modules: dict[str, nn.Module], path: Path) -> dict[str, Any]:
    """Exports Task.inference_model to ONNX (fp32 compute) and returns what the manifest records."""
    input_names, output_names = onnx_names(task)
    dynamic_axes = task.onnx_dynamic_axes()
    unknown = set(dynamic_axes) - set(input_names) - set(output_names)
    if unknown:
        raise ExportError(f"{type(task).__name__}.onnx_dynamic_axes names {sorted(unknown)}, which are not among "
                          f"the graph's inputs {input_names} or outputs {output_names}")
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter (dynamo=False: the dynamo one needs onnxscript, which voicetrain
            # does not require) announces its own deprecation, and warns that InstanceNorm without
            # running statistics uses the input's statistics, which is what it does in eval mode too.
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", message=".*instance_norm.*")
            # Tracing warns at every shape test it freezes; verify_into checks the graph at other
            # sizes of the dynamic axes instead, which shows whether any of them mattered.
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(task.inference_model(modules), task.example_inputs(), str(path),
                              input_names=input_names, output_names=output_names, dynamic_axes=dynamic_axes or None,
                              opset_version=ONNX_OPSET, dynamo=False)
    except Exception as error:  # the exporter raises many types for unsupported operations
        raise ExportError(f"ONNX export of {type(task).__name__}.inference_model failed: {error}. Export without "
                          "ONNX (drop it from export.formats) or make the model traceable") from error
    return {
        "file": ONNX,
        "opset": ONNX_OPSET,
        "exporter": f"torch.onnx TorchScript exporter (torch {torch.__version__})",
        "compute_dtype": "fp32",
        "input_names": input_names,
        "output_names": output_names,
        "dynamic_axes": {name: {str(axis): label for axis, label in axes.items()}
                         for name, axes in dynamic_axes.items()},
    }


def resized_inputs(inputs: tuple[torch.Tensor, ...], names: list[str],
                   dynamic_axes: dict[str, dict[int, str]]) -> tuple[torch.Tensor, ...] | None:
    """The example inputs with every dynamic axis grown by half (values repeated from the example,
    so ids stay valid; axes sharing a label grow alike); None when no input axis is dynamic."""
    sizes: dict[str, int] = {}
    for tensor, name in zip(inputs, names):
        for axis, label in dynamic_axes.get(name, {}).items():
            sizes.setdefault(label, tensor.shape[axis] + tensor.shape[axis] // 2 + 1)
    if not sizes:
        return None
    resized = []
    for tensor, name in zip(inputs, names):
        for axis, label in dynamic_axes.get(name, {}).items():
            tensor = tensor.index_select(axis, torch.arange(sizes[label]) % tensor.shape[axis])
        resized.append(tensor)
    return tuple(resized)


def run_onnx(path: Path, input_names: list[str], inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    try:
        import onnxruntime
    except ImportError as error:
        raise ExportError("export.formats includes onnx, whose verification needs onnxruntime: "
                          "pip install 'voicetrain[onnx]'") from error
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings about unused initialisers are noise here
    feeds = {name: tensor.numpy() for name, tensor in zip(input_names, inputs)}
    try:
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(None, feeds)[0]).float()
    except Exception as error:  # onnxruntime raises its own types, not exported under stable names
        shapes = ", ".join(f"{name} {tuple(tensor.shape)}" for name, tensor in zip(input_names, inputs))
        raise ExportError(f"onnxruntime cannot run the exported graph on {shapes}: {error}. If the shapes differ "
                          "from Task.example_inputs(), the trace froze a size that Task.onnx_dynamic_axes() "
                          "declares dynamic (e.g. int(x.shape[-1]) in forward)") from error
