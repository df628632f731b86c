"""Graceful stops: SIGINT and SIGTERM ask the loop to save and exit at the next step boundary.

A second signal of either kind stops at once (the default behaviour), so a stuck save can
still be interrupted.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType


class StopRequested(Exception):
    """Raised by the loop after the state was saved because a signal asked it to stop."""

    def __init__(self, signal_number: int, step: int):
        self.signal_number = signal_number
        self.step = step
        name = signal.Signals(signal_number).name
        super().__init__(f"stopped by {name} after saving step {step}; run the same command again to continue")


class GracefulStop:
    SIGNALS = (signal.SIGINT, signal.SIGTERM)

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
        self.restore()
