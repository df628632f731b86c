"""RAM-disk scratch: where checkpoints are committed first, and how they reach persistent storage.

Pure decisions (is the path usable, is there room, is a mirror due) are plain functions; the
`Mirror` is the one effect: a background thread that copies committed scratch checkpoints into
the run directory with the store's commit protocol, one at a time.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from torch import nn
from torch.optim import Optimizer

from voicetrain.checkpoint.background import BackgroundJob, BackgroundWork
from voicetrain.checkpoint.store import Checkpoint, CheckpointError, CheckpointStore
from voicetrain.durable import atomic_write_text, folder_bytes

log = logging.getLogger("voicetrain")

RAM_DISK_HELP = (
    "Make a RAM disk and pass its path as scratch.dir=...:\n"
    "  Linux:   /dev/shm is one on most systems; or `sudo mount -t tmpfs -o size=8g tmpfs /mnt/ramdisk`\n"
    "  macOS:   `diskutil erasevolume APFS RAMDisk $(hdiutil attach -nomount ram://16777216)` "
    "(8 GB; then scratch.dir=/Volumes/RAMDisk)\n"
    "  Windows: create a RAM drive with ImDisk or OSFMount (e.g. R:) and pass scratch.dir=R:/voicetrain\n"
    "or train without scratch by dropping +scratch=ramdisk."
)


class ScratchError(RuntimeError):
    pass


OWNER_FILE = ".voicetrain-owner.json"  # in a scratch folder: the resolved run folder it belongs to


def scratch_path_problem(directory: Path, run_dir: Path) -> str | None:
    """Why `directory` cannot hold this run's scratch checkpoints, or None when it can: not
    creatable or writable, the run folder itself, inside it or holding it (a successful end clears
    scratch, which would delete the run's own checkpoints), or owned by another run."""
    scratch, run = directory.resolve(), run_dir.resolve()
    relation = ("the run folder" if scratch == run else "inside the run folder" if run in scratch.parents
                else "a folder that holds the run folder" if scratch in run.parents else None)
    if relation is not None:
        return (f"scratch.dir={str(directory)!r} is {relation} {run}; scratch is cleared at the end of a run, so it "
                "must be a folder of its own (e.g. on /dev/shm)")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        return f"scratch.dir={str(directory)!r} cannot be created ({error.strerror or error})"
    if not os.access(directory, os.W_OK):
        return f"scratch.dir={str(directory)!r} is not writable"
    owner = scratch_owner(directory)
    if owner is not None and Path(owner) != run:
        return (f"scratch.dir={str(directory)!r} belongs to another run, {owner} (named in {directory / OWNER_FILE}); "
                "give this run a scratch folder of its own (the default +scratch=ramdisk folder is per run), or "
                f"delete {directory} if that run is finished and its checkpoints are safe")
    return None


def scratch_owner(directory: Path) -> str | None:
    try:
        owner = json.loads((directory / OWNER_FILE).read_text()).get("run")
    except (OSError, ValueError, AttributeError):
        return None
    return owner if isinstance(owner, str) else None


def claim_scratch(directory: Path, run_dir: Path) -> None:
    """Marks `directory` as this run's (checked by scratch_path_problem at every launch)."""
    atomic_write_text(directory / OWNER_FILE, json.dumps({"run": str(run_dir.resolve())}))


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux); None elsewhere."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def estimate_checkpoint_bytes(modules: dict[str, nn.Module], optimizers: dict[str, Optimizer]) -> int:
    """Weights and buffers, plus the optimizer state (measured when it exists, else two moments per
    parameter as Adam keeps), plus a margin for RNG states and small files."""
    weights = sum(tensor.numel() * tensor.element_size()
                  for module in modules.values() for tensor in module.state_dict().values())
    optimizer_bytes = 0
    for optimizer in optimizers.values():
        measured = sum(value.numel() * value.element_size() for state in optimizer.state.values()
                       for value in state.values() if hasattr(value, "numel"))
        parameters = sum(parameter.numel() * parameter.element_size()
                         for group in optimizer.param_groups for parameter in group["params"])
        optimizer_bytes += measured or 2 * parameters
    return weights + optimizer_bytes + (1 << 20)


def capacity_problem(checkpoint_bytes: int, keep_last: int, free_bytes: int,
                     available_memory: int | None) -> str | None:
    """None when scratch can hold keep_last checkpoints plus one being written, else the numbers."""
    needed = checkpoint_bytes * (keep_last + 1)
    short = []
    if free_bytes < needed:
        short.append(f"the scratch filesystem has {free_bytes / 1e6:.0f} MB free")
    if available_memory is not None and available_memory < needed:
        short.append(f"only {available_memory / 1e6:.0f} MB of memory is available")
    if not short:
        return None
    return (f"scratch needs about {needed / 1e6:.0f} MB (checkpoint of ~{checkpoint_bytes / 1e6:.0f} MB x "
            f"(scratch.keep_last={keep_last} + 1 in flight)) but {' and '.join(short)}. Lower scratch.keep_last, "
            "point scratch.dir at a bigger RAM disk, set scratch.on_insufficient=fallback to train without "
            "scratch, or drop +scratch=ramdisk")


def mirror_due(save_number: int, step: int, persist_every: int, keep_every: int | None, is_final: bool) -> bool:
    """Whether the `save_number`-th save of this launch (1-based) goes to persistent storage."""
    milestone = keep_every is not None and step % keep_every == 0
    return is_final or milestone or save_number % persist_every == 0


class Mirror(BackgroundWork):
    """Copies scratch checkpoints (and optionally a log folder) to persistent storage in the background."""

    def __init__(self, persistent: CheckpointStore, log_folders: tuple[Path, Path] | None = None):
        self.persistent = persistent
        self.log_folders = log_folders  # (scratch tb, persistent tb), mirrored with each checkpoint
        self.background = BackgroundJob(explain_mirror_failure)
        self.in_flight: int | None = None
        self.checkpoint_bytes = 0  # checkpoints copied to persistent storage
        self.log_bytes = 0  # log files copied to persistent storage

    def submit(self, checkpoint: Checkpoint) -> None:
        self.wait()
        self.in_flight = checkpoint.step
        self.background.start(f"voicetrain-mirror-{checkpoint.step}", self.copy, checkpoint)

    def copy(self, checkpoint: Checkpoint) -> None:
        try:
            committed = self.persistent.import_checkpoint(checkpoint)
            self.checkpoint_bytes += folder_bytes(committed.path)
            log.info("mirrored %s to %s", checkpoint.path.name, self.persistent.root)
            if self.log_folders is not None:
                self.log_bytes += mirror_folder(*self.log_folders)
        finally:
            self.in_flight = None


def explain_mirror_failure(failure: BaseException) -> CheckpointError:
    return CheckpointError(f"mirroring a scratch checkpoint to persistent storage failed: {failure}",
                           getattr(failure, "out_of_space", False))


def mirror_folder(source: Path, destination: Path) -> int:
    """Copies files that are new or changed (by size or mtime); returns the bytes copied."""
    copied = 0
    if not source.is_dir():
        return 0
    for path in sorted(source.rglob("*")):
        if not path.is_file():
            continue
        target = destination / path.relative_to(source)
        stat = path.stat()
        if target.is_file() and target.stat().st_size == stat.st_size and target.stat().st_mtime >= stat.st_mtime:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
        copied += stat.st_size
    return copied
