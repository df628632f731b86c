"""One piece of background work at a time, whose failure surfaces on the caller's thread.

Used for asynchronous checkpoint writes and scratch mirroring: the training thread starts a
job, keeps training, and learns of a failed write at its next `raise_if_failed` or `wait`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class BackgroundJob:
    def __init__(self, explain: Callable[[BaseException], Exception]):
        self.explain = explain  # turns the worker's exception into the error raised on the caller's thread
        self.worker: threading.Thread | None = None
        self.failure: BaseException | None = None

    def start(self, name: str, target: Callable[..., None], *arguments: Any) -> None:
        """Waits for the previous job (raising its failure), then runs `target` on a daemon thread."""
        self.wait()
        self.worker = threading.Thread(target=self.run, args=(target, arguments), name=name, daemon=True)
        self.worker.start()

    def run(self, target: Callable[..., None], arguments: tuple[Any, ...]) -> None:
        try:
            target(*arguments)
        except BaseException as error:  # kept, and raised on the caller's thread by raise_if_failed
            self.failure = error

    def busy(self) -> bool:
        return self.worker is not None and self.worker.is_alive()

    def wait(self) -> None:
        if self.worker is not None:
            self.worker.join()
            self.worker = None
        self.raise_if_failed()

    def raise_if_failed(self) -> None:
        if self.failure is not None:
            failure, self.failure = self.failure, None
            raise self.explain(failure) from failure


class BackgroundWork:
    """Base of an owner of one BackgroundJob (the checkpoint store, the scratch mirror): what its
    callers ask of the work in flight."""

    background: BackgroundJob

    def busy(self) -> bool:
        return self.background.busy()

    def wait(self) -> None:
        """Blocks until the work in flight (if any) is done; raises if it failed."""
        self.background.wait()

    def raise_if_failed(self) -> None:
        self.background.raise_if_failed()
