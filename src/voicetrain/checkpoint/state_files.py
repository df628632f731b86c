"""State as files that hold no code: any state dict becomes NAME.safetensors (its tensors) plus
NAME.json (everything else, with a marker where each tensor was), and reads back exactly.

This is how voicetrain saves what it owns (optimizer, schedule and scaler states, RNG states, the
loop's counters) instead of pickling it: a planted or downloaded checkpoint can hold wrong numbers,
never code. The JSON keeps the Python types a state dict uses (tuples, int dict keys, floats
including inf and nan) so that `read_state(write_state(x)) == x`, which bit-exact resume needs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

TENSOR = "__tensor__"
ARRAY = "__ndarray__"
TUPLE = "__tuple__"
PAIRS = "__pairs__"  # a dict whose keys are not all strings (optimizer states are keyed by int)
FLOAT = "__float__"  # a float JSON cannot spell (inf, -inf, nan)
MARKERS = {TENSOR, ARRAY, TUPLE, PAIRS, FLOAT}


class StateFileError(ValueError):
    """A state file that does not decode to a state; the message names the file."""


def encode(value: Any, tensors: dict[str, torch.Tensor], path: str = "") -> Any:
    """`value` as JSON data; tensors go into `tensors` under their path and leave a marker."""
    if isinstance(value, torch.Tensor):
        key = path or "root"
        # A private contiguous copy: safetensors refuses shared or strided storage.
        tensors[key] = value.detach().to("cpu").contiguous().clone()
        return {TENSOR: key}
    if isinstance(value, np.ndarray):
        return {ARRAY: value.tolist(), "dtype": str(value.dtype), "shape": list(value.shape)}
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {FLOAT: repr(value)}
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return encode(value.item(), tensors, path)
    if isinstance(value, tuple):
        return {TUPLE: [encode(item, tensors, f"{path}.{index}") for index, item in enumerate(value)]}
    if isinstance(value, list):
        return [encode(item, tensors, f"{path}.{index}") for index, item in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(key, str) for key in value) and not MARKERS & set(value):
            return {key: encode(item, tensors, f"{path}.{key}") for key, item in value.items()}
        return {PAIRS: [[encode(key, tensors, f"{path}.key{index}"), encode(item, tensors, f"{path}.{index}")]
                        for index, (key, item) in enumerate(value.items())]}
    raise StateFileError(f"cannot save a {type(value).__name__} at {path or 'the top'} of a state without pickling "
                         "it; keep states to tensors, numbers, strings, lists, tuples and dicts")


def decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [decode(item, tensors) for item in value]
    if not isinstance(value, dict):
        return value
    if TENSOR in value:
        return tensors[value[TENSOR]]
    if ARRAY in value:
        return np.asarray(value[ARRAY], dtype=np.dtype(value["dtype"])).reshape(value["shape"])
    if FLOAT in value:
        return float(value[FLOAT])
    if TUPLE in value:
        return tuple(decode(item, tensors) for item in value[TUPLE])
    if PAIRS in value:
        return {decode(key, tensors): decode(item, tensors) for key, item in value[PAIRS]}
    return {key: decode(item, tensors) for key, item in value.items()}


def state_file_names(name: str) -> tuple[str, str]:
    return f"{name}.json", f"{name}.safetensors"


def write_state(folder: Path, name: str, state: Any) -> list[Path]:
    """Writes `state` as folder/NAME.json (+ folder/NAME.safetensors when it holds tensors);
    returns the files written. `name` may contain a sub-folder ("optimizers/generator")."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = encode(state, tensors)
    json_name, tensor_name = state_file_names(name)
    written = [folder / json_name]
    written[0].parent.mkdir(parents=True, exist_ok=True)
    written[0].write_text(json.dumps(skeleton, separators=(",", ":")))
    if tensors:
        save_file(tensors, str(folder / tensor_name))
        written.append(folder / tensor_name)
    return written


def read_state(folder: Path, name: str) -> Any:
    json_name, tensor_name = state_file_names(name)
    try:
        skeleton = json.loads((folder / json_name).read_text())
        tensors = load_file(str(folder / tensor_name)) if (folder / tensor_name).is_file() else {}
        return decode(skeleton, tensors)
    except (OSError, ValueError, KeyError, TypeError) as error:  # safetensors raises its own ValueError subtypes
        raise StateFileError(f"{folder / json_name} cannot be read as a saved state: {error}") from error
