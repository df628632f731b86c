"""The short report printed at the end of training."""

from __future__ import annotations

from voicetrain.checkpoint.store import Checkpoint
from voicetrain.run.trainer import TrainingSummary


def checkpoint_size(checkpoint: Checkpoint | None) -> int:
    return checkpoint.bytes if checkpoint is not None else 0


def size_ratio(export_bytes: int, checkpoint_bytes: int) -> str:
    if checkpoint_bytes <= 0 or export_bytes <= 0:
        return ""
    return f", 1/{checkpoint_bytes / export_bytes:.1f} of the checkpoint"


def format_summary(summary: TrainingSummary) -> str:
    lines = [f"run directory: {summary.run_dir}"]
    if summary.already_finished:
        done = "the missing or stale export was written" if summary.export is not None else "nothing to do"
        lines.append(f"already finished at step {summary.final_step}; {done}")
    else:
        lines.append(f"trained steps {summary.start_step} -> {summary.final_step}")
    for name, value in sorted(summary.metrics.items()):
        lines.append(f"  {name}: {value:.4f}")
    if summary.checkpoint is not None:
        lines.append(f"checkpoint:  {summary.checkpoint.path} ({checkpoint_size(summary.checkpoint) / 1e6:.1f} MB)")
    if summary.export is not None:
        lines.append(f"export:      {summary.export.path} ({summary.export.bytes / 1e6:.1f} MB"
                     f"{size_ratio(summary.export.bytes, checkpoint_size(summary.checkpoint))})")
    scratch = summary.scratch
    if scratch is not None and scratch.enabled:
        lines.append(f"scratch:     {scratch.bytes_to_persistent() / 1e6:.1f} MB written to persistent storage, "
                     f"{scratch.bytes_without_scratch() / 1e6:.1f} MB without scratch")
    lines.append(f"logs:        {summary.run_dir / 'train.log'}")
    lines.append(f"tensorboard: tensorboard --logdir {summary.run_dir / 'tb'}")
    return "summary\n" + "\n".join(lines)
