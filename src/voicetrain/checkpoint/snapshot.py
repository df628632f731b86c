"""In-memory snapshots for asynchronous saves, written later in Accelerate's own layout.

On the training thread a snapshot copies every model and optimizer tensor into CPU buffers that
are allocated once and reused by every later save (so the snapshot is bounded: one checkpoint's
worth of memory, and copying into warm buffers is several times faster than serialising), deep-
copies the small states, and lets Accelerate write its RNG file right away, because the RNG
state must be the one at the save point. A background thread then writes the rest with
Accelerate's own `save_accelerator_state` and `save_custom_state`, so `load_state` reads the
result like any other checkpoint. A snapshot never sees later updates: the training thread
does not touch the buffers until the next save, which first waits for this one to be written.
"""

from __future__ import annotations

import copy
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.checkpointing import save_accelerator_state, save_custom_state
from accelerate.utils import DistributedType


def snapshot_supported(accelerator: Accelerator) -> bool:
    """The fast path covers what voicetrain prepares: one process, no gradient scaler, no
    Accelerate-managed schedulers or data loaders. Anything else uses the RAM-disk snapshot."""
    return (accelerator.num_processes == 1 and accelerator.scaler is None
            and accelerator.distributed_type == DistributedType.NO
            and not accelerator._schedulers and not accelerator._dataloaders)


class StateDictView:
    """Something with a state_dict(), as Accelerate's writers expect."""

    def __init__(self, state: Any):
        self.state = state

    def state_dict(self) -> Any:
        return self.state


@dataclass
class Snapshot:
    model_states: list[dict[str, torch.Tensor]]
    optimizer_states: list[dict[str, Any]]
    custom_states: list[Any]
    step: int
    rng_folder: Path  # holds Accelerate's random_states_0.pkl written at the save point


class SnapshotBuffers:
    def __init__(self) -> None:
        self.buffers: dict[str, torch.Tensor] = {}

    def copy(self, key: str, tensor: torch.Tensor) -> torch.Tensor:
        buffer = self.buffers.get(key)
        if buffer is None or buffer.shape != tensor.shape or buffer.dtype != tensor.dtype:
            buffer = torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu")
            self.buffers[key] = buffer
        return buffer.copy_(tensor.detach())

    def copy_tree(self, key: str, value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return self.copy(key, value)
        if isinstance(value, dict):
            return {name: self.copy_tree(f"{key}/{name}", item) for name, item in value.items()}
        if isinstance(value, list):
            return [self.copy_tree(f"{key}/{index}", item) for index, item in enumerate(value)]
        return copy.deepcopy(value)

    def capture(self, accelerator: Accelerator, rng_folder: Path) -> Snapshot:
        models = [self.copy_tree(f"model{index}", accelerator.get_state_dict(model, unwrap=False))
                  for index, model in enumerate(accelerator._models)]
        optimizers = [self.copy_tree(f"optimizer{index}", optimizer.state_dict())
                      for index, optimizer in enumerate(accelerator._optimizers)]
        custom = [copy.deepcopy(item.state_dict()) for item in accelerator._custom_objects]
        # Accelerate writes the RNG file of this moment; nothing else is passed, so nothing else is written.
        save_accelerator_state(str(rng_folder), [], [], [], [], accelerator.process_index, accelerator.step)
        return Snapshot(models, optimizers, custom, accelerator.step, rng_folder)


def write_snapshot(snapshot: Snapshot, folder: Path, process_index: int) -> None:
    """Writes `snapshot` into `folder` with the files Accelerate's save_state would have written."""
    save_accelerator_state(str(folder), snapshot.model_states, [StateDictView(state) for state in snapshot.optimizer_states],
                           [], [], process_index, snapshot.step)
    # The RNG file just written holds the writer thread's present state; put back the one
    # captured at the save point.
    for rng_file in snapshot.rng_folder.glob("random_states_*.pkl"):
        shutil.copyfile(rng_file, folder / rng_file.name)
    for index, state in enumerate(snapshot.custom_states):
        save_custom_state(StateDictView(state), str(folder), index)
