"""The ONNX side of the export: Task.inference_model to a graph through torch's current exporter
(`torch.export` + onnxscript: `torch.onnx.export(..., dynamo=True)`, the TorchScript path being
deprecated since torch 2.9), and onnxruntime to verify it. Imported only when export.formats
includes onnx.

Dynamic axes come from Task.onnx_dynamic_axes(); an axis of the example inputs that has size 1 is
grown before export, because torch.export fixes a size-1 dimension to 1 ("0/1 specialisation").
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from voicetrain.export.artifact import ONNX, ExportError
from voicetrain.tasks.base import Task

ONNX_OPSET = 18  # the dynamo exporter's; every onnxruntime since 1.14 (2023) reads it


def onnx_names(task: Task) -> tuple[list[str], list[str]]:
    count = len(task.example_inputs())
    names = list(task.inference_input_names) or [f"input_{index}" for index in range(count)]
    if len(names) != count:
        raise ExportError(f"{type(task).__name__}.inference_input_names has {len(names)} name(s) for "
                          f"{count} example input(s); give one name per input")
    return names, ["output"]


@contextlib.contextmanager
def quiet_loggers(*names: str) -> Iterator[None]:
    """The exporter's own INFO lines (every optimisation pass it runs) stay out of the run's log."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def write_onnx(task: Task, modules: dict[str, nn.Module], path: Path) -> dict[str, Any]:
    """Exports Task.inference_model to ONNX (fp32 compute) and returns what the manifest records."""
    input_names, output_names = onnx_names(task)
    dynamic_axes = task.onnx_dynamic_axes()
    unknown = set(dynamic_axes) - set(input_names) - set(output_names)
    if unknown:
        raise ExportError(f"{type(task).__name__}.onnx_dynamic_axes names {sorted(unknown)}, which are not among "
                          f"the graph's inputs {input_names} or outputs {output_names}")
    example = task.example_inputs()
    traced = resized_inputs(example, input_names, dynamic_axes) or example
    shapes = tuple({axis: torch.export.Dim.DYNAMIC for axis in dynamic_axes.get(name, {})} or None
                   for name in input_names)
    try:
        with warnings.catch_warnings():
            # The exporter narrates its own progress; InstanceNorm without running statistics uses
            # the input's statistics, which is what it does in eval mode too.
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=UserWarning)
            with contextlib.redirect_stdout(io.StringIO()), quiet_loggers("onnxscript", "onnx_ir", "torch.onnx"):
                torch.onnx.export(task.inference_model(modules), traced, str(path), input_names=input_names,
                                  output_names=output_names, dynamic_shapes=shapes if dynamic_axes else None,
                                  opset_version=ONNX_OPSET, dynamo=True, external_data=False)
    except Exception as error:  # the exporter raises many types for unsupported operations
        frozen = frozen_dimensions(str(error))
        if frozen:
            raise ExportError(f"ONNX export of {type(task).__name__}.inference_model failed: the trace froze a size "
                              f"that Task.onnx_dynamic_axes() declares dynamic ({'; '.join(frozen)}). Compute sizes "
                              "with tensor operations instead of Python ints (e.g. int(x.shape[-1]) in forward), or "
                              "drop onnx from export.formats") from error
        raise ExportError(f"ONNX export of {type(task).__name__}.inference_model failed: {error}. Export without "
                          "ONNX (drop it from export.formats) or make the model exportable with torch.export") from error
    return {
        "file": ONNX,
        "opset": ONNX_OPSET,
        "exporter": f"torch.onnx dynamo exporter (torch {torch.__version__})",
        "compute_dtype": "fp32",
        "input_names": input_names,
        "output_names": output_names,
        "dynamic_axes": {name: {str(axis): label for axis, label in axes.items()}
                         for name, axes in dynamic_axes.items()},
    }


def frozen_dimensions(message: str) -> list[str]:
    """The lines of torch.export's shape-conflict report that name a dimension declared dynamic but
    traced as a constant ("... static shape of 151 for dimension inputs['log_mel'].shape[2].")."""
    return [line.strip(" -.") for line in message.splitlines() if "static shape" in line]


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
