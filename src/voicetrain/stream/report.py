"""The report a stream prints at exit: compute time per block against the block's length, the
underruns and overruns, and the devices' own latency as PortAudio reports it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from voicetrain.stream.audio_io import DeviceCounts
from voicetrain.stream.latency import StreamTiming


@dataclass(frozen=True)
class ComputeSummary:
    blocks: int
    p50_seconds: float
    p99_seconds: float
    block_seconds: float

    @property
    def p99_ratio(self) -> float:
        """p99 compute per block / block length: below 1 keeps up; the goal is <= 0.5."""
        return self.p99_seconds / self.block_seconds


def compute_summary(seconds: list[float], timing: StreamTiming) -> ComputeSummary:
    values = np.asarray(seconds if seconds else [float("nan")])
    return ComputeSummary(len(seconds), float(np.percentile(values, 50)), float(np.percentile(values, 99)),
                          timing.block / timing.sample_rate)


def late_blocks(seconds: list[float], timing: StreamTiming) -> int:
    """Blocks whose compute took longer than the block lasts: a live output would have run dry."""
    block_seconds = timing.block / timing.sample_rate
    return sum(1 for value in seconds if value > block_seconds)


def report_lines(summary: ComputeSummary, timing: StreamTiming, devices: DeviceCounts | None, own_step: bool,
                 late: int) -> list[str]:
    ms = 1000.0
    lines = [f"blocks: {summary.blocks} of {summary.block_seconds * ms:.1f} ms; compute per block p50 "
             f"{summary.p50_seconds * ms:.2f} ms, p99 {summary.p99_seconds * ms:.2f} ms "
             f"({summary.p99_ratio:.3f} of the block)",
             f"blocks computed slower than real time: {late}"]
    if devices is not None:
        lines.append(f"underruns (output ran dry): {devices.underruns}; overruns (input dropped): {devices.overruns}")
        latency = [f"{name} {value * ms:.1f} ms" for name, value in (("input", devices.input_latency),
                                                                     ("output", devices.output_latency))
                   if value is not None]
        lines.append("device latency as PortAudio reports it: " + (", ".join(latency) or "none reported"))
    else:
        lines.append("underruns and overruns: none possible (file to file)")
    lines.append(f"{timing.describe()}; step: " + ("the task's streaming hook" if own_step else
                                                   "the generic sliding-window fallback (slower)"))
    return lines
