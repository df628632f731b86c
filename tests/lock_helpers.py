"""A separate process that holds a voicetrain lock (voicetrain.run.lock) until told to let go: the
other process a lock test needs, since fcntl locks never refuse their own process."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from helpers import environment

HOLD = """
import sys
from pathlib import Path
from voicetrain.run.lock import RunLock
lock = RunLock(Path(sys.argv[1]), sys.argv[2], "wait for it", sys.argv[3]).acquire()
print("held", flush=True)
sys.stdin.read()
lock.release()
"""


@contextmanager
def lock_held(folder: Path, doing: str, file_name: str = "run.lock") -> Iterator[subprocess.Popen[str]]:
    """Holds the lock of `folder` in another process for the body; yields that process."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), doing, file_name], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=environment())
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        release(holder)


def release(holder: subprocess.Popen[str]) -> None:
    if holder.poll() is None:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=60)
