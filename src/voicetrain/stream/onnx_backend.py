"""`--backend onnx`: the streaming step's network through ONNX Runtime, as a deployment runs it.

A step that supports it (`onnx_module()`: the part of its model that runs per block, with the
stream's state as explicit inputs) is exported from the export's own weights with torch's
exporter into the system's temporary folder once per start, checked against PyTorch on its
example inputs and run by an onnxruntime session with the stream's thread count. The running
statistics and the other state stay in Python: they are a few vectors per block.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from voicetrain.stream.latency import StreamSettingError
from voicetrain.tasks.base import StreamingStep

ONNX_OPSET = 18  # as the export's own graph (voicetrain.export.onnx)
ONNX_TOLERANCE = 1e-3  # max abs difference to PyTorch on the example inputs, on a wave of peak ~1


class OnnxRunner:
    """Calls an onnxruntime session like the module it was exported from (tensors in, tensor out)."""

    def __init__(self, session: Any, names: list[str]):
        self.session = session
        self.names = names

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """The output, or all of them as a tuple where the module returns several (a step's new state)."""
        feeds = {name: np.ascontiguousarray(value.detach().numpy()) for name, value in zip(self.names, inputs)}
        outputs = [torch.from_numpy(output) for output in self.session.run(None, feeds)]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


def use_onnx_runtime(step: StreamingStep, export_dir: Path, threads: int) -> None:
    """Switches `step` to ONNX Runtime, or refuses naming the fix."""
    if not hasattr(step, "onnx_module"):
        raise StreamSettingError(f"--backend onnx: the streaming step of {export_dir} ({type(step).__name__}) runs in "
                                 "PyTorch only; drop --backend onnx")
    try:
        import onnxruntime
    except ImportError as error:
        raise StreamSettingError("--backend onnx needs onnxruntime: pip install 'voicetrain[onnx]'") from error
    module, inputs, names, dynamic = step.onnx_module()
    folder = Path(tempfile.mkdtemp(prefix="voicetrain-stream-"))
    path = folder / "step.onnx"
    shapes: tuple[Any, ...] = tuple({axis: torch.export.Dim.DYNAMIC for axis in dynamic.get(name, {})} or None
                                    for name in names)
    parameters = list(inspect.signature(module.forward).parameters.values())
    if len(parameters) == 1 and parameters[0].kind is inspect.Parameter.VAR_POSITIONAL:
        shapes = (shapes,)  # forward(*inputs): the exporter sees one argument, a tuple of them
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # the exporter narrates its passes
        for name in ("onnxscript", "onnx_ir", "torch.onnx"):
            logging.getLogger(name).setLevel(logging.ERROR)
        with torch.no_grad():
            expected = module(*inputs)
        outputs = ["output"] if isinstance(expected, torch.Tensor) else [f"output_{index}" for index in range(len(expected))]
        torch.onnx.export(module, inputs, str(path), input_names=names, output_names=outputs,
                          dynamic_shapes=shapes, opset_version=ONNX_OPSET, dynamo=True, external_data=False)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    runner = OnnxRunner(session, names)
    produced = runner(*inputs)
    pairs = [(produced, expected)] if isinstance(expected, torch.Tensor) else list(zip(produced, expected))
    difference = max(float((onnx_output - torch_output).abs().max()) for onnx_output, torch_output in pairs)
    if not difference <= ONNX_TOLERANCE:
        raise StreamSettingError(f"--backend onnx: ONNX Runtime's output differs from PyTorch's by {difference:.2g} "
                                 f"(more than {ONNX_TOLERANCE}); use --backend torch")
    step.use_runner(runner)
