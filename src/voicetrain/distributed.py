"""Agreement between processes: what the main process decided, every rank does.

With one process every helper is a no-op; with several, decisions that depend on the
filesystem, the clock or a signal are taken on (or combined across) all ranks, so no rank can
load a different checkpoint or stop at a different step than the others.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:  # imported where used: the CLI reads the rank before torch is needed
    from accelerate import Accelerator

T = TypeVar("T")


def process_rank() -> int:
    """This process's rank from the launcher's environment (torchrun, accelerate, SLURM); 0 alone."""
    for name in ("RANK", "SLURM_PROCID"):
        if name in os.environ:
            return int(os.environ[name])
    return 0


def from_main(accelerator: Accelerator, value: T) -> T:
    """The main process's `value`, on every rank."""
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    box = [value if accelerator.is_main_process else None]
    broadcast_object_list(box, from_process=0)
    return box[0]


def any_rank(accelerator: Accelerator, flags: list[bool]) -> list[bool]:
    """Element-wise OR of `flags` over all ranks (one small all-reduce)."""
    if accelerator.num_processes == 1:
        return flags
    import torch

    tensor = torch.tensor([1.0 if flag else 0.0 for flag in flags], device=accelerator.device)
    total = accelerator.reduce(tensor, reduction="sum")
    return [bool(value > 0) for value in total.tolist()]


def spans_several_nodes(accelerator: Accelerator) -> bool:
    """Whether the processes of this run are on more than one machine (node-local paths differ)."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
    return accelerator.num_processes > local
