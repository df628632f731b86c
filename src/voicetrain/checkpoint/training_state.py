"""What a checkpoint holds, and how it is captured at a save point, written and restored.

    modules/<name>.safetensors            weights of each module of Task.build_modules, by name
    optimizers/<name>.{json,safetensors}  each optimizer's state (voicetrain.checkpoint.state_files)
    schedulers/<name>.json                each learning-rate schedule
    scaler.json                           the gradient scaler (fp16 mixed precision only)
    loop_state.json                       step, samples seen, metrics, best-metric tracker
    rng/rank<r>.{json,safetensors}        every RNG of process r (python, numpy, torch, cuda)

Nothing is pickled, so nothing in a checkpoint can run code. The main process writes the shared
files and every process its own RNG file. A capture taken for an asynchronous save copies the
tensors into buffers allocated once and reused (one checkpoint's worth of memory; copying into
warm buffers is several times faster than serialising) and deep-copies the small states, so it
never sees a later update: the training thread does not touch the buffers until the next save,
which first waits for this one to be written.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from voicetrain.checkpoint.loop_state import LoopState
from voicetrain.checkpoint.state_files import read_state, write_state

MODULES = "modules"
OPTIMIZERS = "optimizers"
SCHEDULERS = "schedulers"
SCALER = "scaler"
LOOP_STATE = "loop_state"
RNG = "rng"


def rng_name(rank: int) -> str:
    return f"{RNG}/rank{rank}"


def module_file(name: str) -> str:
    return f"{MODULES}/{name}.safetensors"


@dataclass
class TrainingObjects:
    """Everything a checkpoint saves, as the loop holds it (modules and optimizers as prepared)."""

    accelerator: Accelerator
    modules: dict[str, nn.Module]
    optimizers: dict[str, Optimizer]
    schedulers: dict[str, LRScheduler]
    loop_state: LoopState


@dataclass
class Snapshot:
    """The state at one save point. `shared` is filled on the main process only."""

    rng: dict[str, Any]
    modules: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    optimizers: dict[str, dict[str, Any]] = field(default_factory=dict)
    small: dict[str, Any] = field(default_factory=dict)  # schedulers, scaler and loop state by file name


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class SnapshotBuffers:
    """CPU buffers reused by every asynchronous capture of a run."""

    def __init__(self) -> None:
        self.buffers: dict[str, torch.Tensor] = {}

    def copy(self, key: str, value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            buffer = self.buffers.get(key)
            if buffer is None or buffer.shape != value.shape or buffer.dtype != value.dtype:
                buffer = torch.empty(value.shape, dtype=value.dtype, device="cpu")
                self.buffers[key] = buffer
            return buffer.copy_(value.detach())
        if isinstance(value, dict):
            return {name: self.copy(f"{key}/{name}", item) for name, item in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self.copy(f"{key}/{index}", item) for index, item in enumerate(value))
        return copy.deepcopy(value)


def capture(objects: TrainingObjects, buffers: SnapshotBuffers | None = None) -> Snapshot:
    """The state now. With `buffers`, every tensor is copied (for a write in the background);
    without, the snapshot refers to the live tensors (for a write before the next step)."""
    accelerator = objects.accelerator
    snapshot = Snapshot(rng=copy.deepcopy(rng_state()))
    # Every rank takes part in gathering weights (FSDP); only the main process keeps them.
    states = {name: accelerator.get_state_dict(module) for name, module in objects.modules.items()}
    if not accelerator.is_main_process:
        return snapshot
    keep = (lambda key, value: buffers.copy(key, value)) if buffers is not None else (lambda key, value: value)
    snapshot.modules = {name: keep(f"module/{name}", state) for name, state in states.items()}
    snapshot.optimizers = {name: keep(f"optimizer/{name}", optimizer.state_dict())
                           for name, optimizer in objects.optimizers.items()}
    small = {f"{SCHEDULERS}/{name}": scheduler.state_dict() for name, scheduler in objects.schedulers.items()}
    small[LOOP_STATE] = objects.loop_state.state_dict()
    if accelerator.scaler is not None:
        small[SCALER] = accelerator.scaler.state_dict()
    snapshot.small = copy.deepcopy(small)
    return snapshot


def write_rank_files(snapshot: Snapshot, folder: Path, rank: int) -> None:
    write_state(folder, rng_name(rank), snapshot.rng)


def write_shared_files(snapshot: Snapshot, folder: Path) -> None:
    """The main process's part: weights, optimizer states, schedules, scaler and loop state."""
    (folder / MODULES).mkdir(parents=True, exist_ok=True)
    for name, state in snapshot.modules.items():
        # Tied weights share storage, which safetensors refuses: write private contiguous copies.
        tensors = {key: value.detach().to("cpu").contiguous() for key, value in state.items()}
        save_file(deduplicated(tensors), str(folder / module_file(name)))
    for name, state in snapshot.optimizers.items():
        write_state(folder, f"{OPTIMIZERS}/{name}", state)
    for name, state in snapshot.small.items():
        write_state(folder, name, state)


def deduplicated(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    seen: set[int] = set()
    result = {}
    for key, tensor in tensors.items():
        pointer = tensor.untyped_storage().data_ptr() if tensor.numel() else -1
        result[key] = tensor.clone() if pointer in seen else tensor
        seen.add(pointer)
    return result


def restore(objects: TrainingObjects, folder: Path, rank: int) -> bool:
    """Loads every piece of the state from `folder`; returns whether this rank's RNG file existed
    (it does not when the run resumes with more processes than it saved with)."""
    accelerator = objects.accelerator
    for name, module in objects.modules.items():
        state = load_file(str(folder / module_file(name)))
        accelerator.unwrap_model(module).load_state_dict(state)
    for name, optimizer in objects.optimizers.items():
        optimizer.load_state_dict(read_state(folder, f"{OPTIMIZERS}/{name}"))
    for name, scheduler in objects.schedulers.items():
        scheduler.load_state_dict(read_state(folder, f"{SCHEDULERS}/{name}"))
    if accelerator.scaler is not None and (folder / f"{SCALER}.json").is_file():
        accelerator.scaler.load_state_dict(read_state(folder, SCALER))
    objects.loop_state.load_state_dict(read_state(folder, LOOP_STATE))
    rng_file = folder / f"{rng_name(rank)}.json"
    if rng_file.is_file():
        set_rng_state(read_state(folder, rng_name(rank)))
        return True
    return False


def expected_files(module_names: list[str], optimizer_names: list[str]) -> list[str]:
    """Files every complete checkpoint of this layout has (RNG and optional files excepted)."""
    return ([module_file(name) for name in module_names] + [f"{OPTIMIZERS}/{name}.json" for name in optimizer_names]
            + [f"{LOOP_STATE}.json"])
