"""Benchmarks of saving and resuming: training time blocked by an asynchronous save against a
synchronous one (checkpoint_stall), bytes a RAM-disk scratch keeps off the disk (scratch_bytes),
and launch-to-first-step when resuming against a fresh start (resume_latency)."""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import (NO_CONVERSION_SCORING, NO_VALIDATION, QUIET, RUNS, compose_settings, per_round,
                               ratio_of_medians, seconds_to_first_step, spread_text)
from voicetrain.run.trainer import Trainer

# --- checkpoint stall ----------------------------------------------------------------------

STALL_WIDTH = 4096  # three 4096x4096 layers: about 50M parameters
STALL_ROUNDS = 3


def checkpoint_stall(options: argparse.Namespace) -> None:
    """Training time blocked by one asynchronous save (Saver.save_into(..., background=True): a
    copy into reused buffers, then the write on a thread) ÷ one synchronous save of the same
    state: a ~50M-parameter model with AdamW (weights + two moments, about 600 MB), committed
    into a checkpoint store on the persistent disk, alternating the two kinds of save."""
    from accelerate import Accelerator

    from voicetrain.checkpoint.loop_state import LoopState
    from voicetrain.checkpoint.saving import Saver
    from voicetrain.checkpoint.store import CheckpointStore
    from voicetrain.checkpoint.training_state import TrainingObjects

    accelerator = Accelerator(cpu=True)
    model = torch.nn.Sequential(*(torch.nn.Linear(STALL_WIDTH, STALL_WIDTH) for _ in range(3)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model, optimizer = accelerator.prepare(model, optimizer)
    model(torch.randn(4, STALL_WIDTH)).square().mean().backward()
    optimizer.step()  # fills the two moments
    parameters = sum(parameter.numel() for parameter in model.parameters())
    RUNS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".bench-stall-", dir=RUNS) as root:
        ckpt = compose_settings(Path(root), Path(root) / "features", "ckpt.keep_last=1").ckpt
        store = CheckpointStore(Path(root) / "checkpoints")
        saver = Saver(TrainingObjects(accelerator, {"model": model}, {"model": optimizer}, {}, LoopState()),
                      store, ckpt)

        def blocked(step: int, background: bool) -> float:
            store.wait()  # the previous background write, not counted: training would go on meanwhile
            started = time.perf_counter()
            saver.save_into(store, step, {}, {}, background=background)
            return time.perf_counter() - started

        first_async = blocked(1, background=True)  # allocates the buffers every later save reuses
        synchronous, asynchronous = [], []
        for round_number in range(1, STALL_ROUNDS + 1):
            synchronous.append(blocked(10 * round_number, background=False))
            asynchronous.append(blocked(10 * round_number + 1, background=True))
        store.wait()
    print(f"checkpoint stall: async save blocks {statistics.median(asynchronous):.2f} s / synchronous save "
          f"{statistics.median(synchronous):.2f} s = {ratio_of_medians(asynchronous, synchronous):.2f} "
          f"(goal <= 0.2; {parameters / 1e6:.0f}M parameters with AdamW, medians of {STALL_ROUNDS})")
    print(f"  per-round ratios {spread_text(per_round(asynchronous, synchronous))}; the run's first async save "
          f"(allocating the buffers) blocked {first_async:.2f} s")


# --- scratch bytes -------------------------------------------------------------------------

SCRATCH_STEPS = 120  # 60 saves at ckpt.every_n_steps=2


def process_write_bytes() -> int:
    """Bytes this process sent to block storage (Linux /proc/self/io); a RAM disk counts nothing."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def scratch_bytes(options: argparse.Namespace) -> None:
    """Bytes written to the persistent run directory with +scratch=ramdisk (persist_every=10) ÷
    without scratch, for 60 saves of the default recipe; and the training time blocked per save."""
    results = {}
    RUNS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="voicetrain-bench-", dir=RUNS) as run_root:
        for label, extra in (("without", []), ("with", ["+scratch=ramdisk", "scratch.persist_every=10",
                                                       f"scratch.dir=/dev/shm/voicetrain-bench-{os.getpid()}"])):
            settings = compose_settings(Path(run_root), options.cache_dir, f"run.name={label}",
                                        f"trainer.max_steps={SCRATCH_STEPS}", "ckpt.every_n_steps=2",
                                        *NO_VALIDATION, *NO_CONVERSION_SCORING, *QUIET, *extra)
            before = process_write_bytes()
            trainer = Trainer(settings)
            trainer.train()
            device_bytes = process_write_bytes() - before
            scratch = trainer.scratch
            results[label] = (scratch.bytes_to_persistent(), device_bytes,
                              trainer.saver.blocked_seconds / max(scratch.saves, 1), scratch.saves)
    with_scratch, without = results["with"], results["without"]
    print(f"scratch bytes: persistent checkpoint bytes with +scratch=ramdisk {with_scratch[0] / 1e6:.1f} MB / without "
          f"{without[0] / 1e6:.1f} MB = {with_scratch[0] / without[0]:.3f} (goal <= 0.12; {without[3]} saves, "
          "persist_every=10)")
    print(f"  block-device writes of the whole process (/proc/self/io): {with_scratch[1] / 1e6:.1f} MB / "
          f"{without[1] / 1e6:.1f} MB = {with_scratch[1] / max(without[1], 1):.3f}")
    print(f"  training time blocked per save: {with_scratch[2] * 1e3:.0f} ms with scratch, "
          f"{without[2] * 1e3:.0f} ms without = {with_scratch[2] / without[2]:.2f}")


# --- resume latency ------------------------------------------------------------------------

RESUME_ROUNDS = 3


def resume_latency(options: argparse.Namespace) -> None:
    """Launch-to-first-step when resuming a run ÷ when starting a fresh one (same recipe, warm
    feature store), alternating RESUME_ROUNDS launches of each."""
    fresh, resumed = [], []
    RUNS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="voicetrain-bench-", dir=RUNS) as run_root:
        common = [f"run.root={run_root}", f"data.cache_dir={options.cache_dir}", *QUIET, *NO_VALIDATION,
                  *NO_CONVERSION_SCORING, "ckpt.every_n_steps=1"]
        seconds_to_first_step([*common, "run.name=resumed", "trainer.max_steps=1"])
        for round_number in range(1, RESUME_ROUNDS + 1):
            fresh.append(seconds_to_first_step([*common, f"run.name=fresh{round_number}", "trainer.max_steps=1"]))
            resumed.append(seconds_to_first_step([*common, "run.name=resumed",
                                                  f"trainer.max_steps={round_number + 1}"]))
    print(f"resume latency: launch-to-first-step resuming {statistics.median(resumed):.1f} s / fresh "
          f"{statistics.median(fresh):.1f} s = {ratio_of_medians(resumed, fresh):.2f} (goal <= 1.5; medians of "
          f"{RESUME_ROUNDS})")
    print(f"  per-round ratios {spread_text(per_round(resumed, fresh))}")
