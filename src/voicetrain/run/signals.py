"""Graceful stops: SIGINT, SIGTERM, SIGUSR1 and SIGUSR2 (what SLURM sends before preempting a
job, by default and under submitit) ask the loop to save and exit at the next step boundary.

A second signal stops at once (the default behaviour), so a stuck save can still be
interrupted. When a launcher had its own handler (submitit requeues a preempted job from its
SIGUSR2 handler), that handler runs after the save.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

from voicetrain.config import ResumeSettings


class StopRequested(Exception):
    """Raised by the loop after the state was saved because a signal asked it to stop."""

    def __init__(self, signal_number: int, step: int, hint: str = "run the same command again to continue"):
        self.signal_number = signal_number
        self.step = step
        name = signal.Signals(signal_number).name
        super().__init__(f"stopped by {name} after saving step {step}; {hint}")


def continue_hint(resume: ResumeSettings) -> str:
    """How to continue a stopped run. Under +resume=never the same command would refuse (or, with
    resume.overwrite=true, delete what was just saved), so the hint drops those settings."""
    if resume.mode != "never":
        return "run the same command again to continue"
    dropped = "+resume=never resume.overwrite=true" if resume.overwrite else "+resume=never"
    return f"to continue, run the command again without {dropped}"


class GracefulStop:
    # SIGUSR1 is what `sbatch --signal` sends by default; submitit asks SLURM for SIGUSR2.
    SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR1", "SIGUSR2")
                    if hasattr(signal, name))

    def __init__(self) -> None:
        self.received: int | None = None
        self.previous: dict[int, object] = {}

    def handle(self, signal_number: int, frame: FrameType | None) -> None:
        if self.received is not None:
            self.restore()
            signal.raise_signal(signal_number)
            return
        self.received = signal_number

    def __enter__(self) -> "GracefulStop":
        # Signal handlers can only be installed from the main thread (not, e.g., under a
        # notebook's worker thread); there the default behaviour stays.
        if threading.current_thread() is threading.main_thread():
            for number in self.SIGNALS:
                self.previous[number] = signal.signal(number, self.handle)
        return self

    def restore(self) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)
        self.previous = {}

    def __exit__(self, *exc_info: object) -> None:
        launcher_handler = self.previous.get(self.received) if self.received is not None else None
        self.restore()
        if self.received not in (None, signal.SIGINT) and callable(launcher_handler):
            # The state is saved: let the launcher act on the signal (e.g. requeue the job).
            signal.raise_signal(self.received)
