"""One launch owns a run: a lock on `runs/<name>/run.lock`, holding the owner's host and pid.

The lock is an `fcntl` record lock, which the kernel drops when the owning process dies however it
dies (SIGKILL included), so a stale lock is taken over without any guessing. Some network
filesystems (NFS without lockd, some FUSE mounts) have no working `fcntl` locks; there the lock
falls back to exclusively creating `run.lock.owner` with host, pid and a heartbeat the owner
refreshes, and a lock whose heartbeat stopped (or whose pid is gone, on the same host) is stale.

The same lock guards other writers of one folder: `python -m voicetrain.export` takes the run's
lock (so a re-export never runs beside training or another re-export), and
`python -m voicetrain.preprocess` takes one on its output folder. The record says what its owner
is doing, so a refusal names it; `acquire(wait=True)` waits for the owner instead of refusing.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from voicetrain.durable import process_alive

log = logging.getLogger("voicetrain")

LOCK_FILE = "run.lock"
OWNER_FILE = "run.lock.owner"  # the fallback lock, where fcntl locks do not work
HEARTBEAT_SECONDS = 20.0
STALE_AFTER_SECONDS = 120.0
NO_FCNTL_ERRORS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
WAIT_POLL_SECONDS = 0.5
TRAINING = "being trained"
TRAINING_ADVICE = ("two launches of one run would mix their checkpoints. Wait for it to finish (or stop it: the same "
                   "command continues it afterwards), or start a separate run with run.name=...")


class RunLockedError(RuntimeError):
    """Another live process owns the folder; the message names it and what to do."""


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    started: float
    doing: str = TRAINING  # what the owner does to the folder; lock files of older versions lack it

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"pid {self.pid} on host {self.host} (since {since})"


def this_process(doing: str = TRAINING) -> Holder:
    return Holder(socket.gethostname(), os.getpid(), time.time(), doing)


def read_holder(path: Path) -> Holder | None:
    try:
        data = json.loads(path.read_text())
        return Holder(str(data["host"]), int(data["pid"]), float(data["started"]), str(data.get("doing", TRAINING)))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def refusal(run_dir: Path, holder: Holder | None, advice: str = TRAINING_ADVICE) -> RunLockedError:
    if holder is None:
        return RunLockedError(f"{run_dir} is in use by another process (its details could not be read); {advice}")
    return RunLockedError(f"{run_dir} is already {holder.doing} by {holder.describe()}; {advice}")


class RunLock:
    """The lock of `run_dir` (a run, or any folder one process at a time writes): `doing` is what
    this process records it does, `advice` what a refused process is told to do."""

    def __init__(self, run_dir: Path, doing: str = TRAINING, advice: str = TRAINING_ADVICE,
                 file_name: str = LOCK_FILE, keep_owner: bool = True):
        self.run_dir = run_dir
        self.keep_owner = keep_owner  # False: emptied on release (an output that must not change when nothing is done)
        self.doing = doing
        self.advice = advice
        self.file_name = file_name
        self.descriptor: int | None = None
        self.owner_file: Path | None = None
        self.heartbeat: threading.Thread | None = None
        self.stopped = threading.Event()

    def acquire(self, wait: bool = False) -> "RunLock":
        """Takes the lock, or refuses at once naming its owner; with `wait`, waits for the owner."""
        announced = False
        while True:
            try:
                return self.try_acquire()
            except RunLockedError as refused:
                if not wait:
                    raise
                if not announced:
                    log.info("waiting for the lock: %s", str(refused).split(";")[0])
                    announced = True
            time.sleep(WAIT_POLL_SECONDS)

    def try_acquire(self) -> "RunLock":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / self.file_name
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.lockf(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(descriptor)
            if error.errno in (errno.EAGAIN, errno.EACCES):
                raise refusal(self.run_dir, read_holder(path), self.advice) from error
            if error.errno in NO_FCNTL_ERRORS:
                log.warning("the filesystem of %s has no working fcntl locks (%s); using an exclusive lock file "
                            "with a heartbeat instead", self.run_dir, os.strerror(error.errno))
                return self.acquire_owner_file()
            raise
        self.descriptor = descriptor
        # Written through the locked descriptor: closing another descriptor of this file would drop
        # the lock (fcntl locks belong to the process and file, not to one descriptor).
        record = json.dumps(this_process(self.doing).__dict__).encode()
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, record, 0)
        os.fsync(descriptor)
        return self

    def acquire_owner_file(self) -> "RunLock":
        path = self.run_dir / f"{self.file_name}.owner"
        for _ in range(2):
            try:
                descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                holder = read_holder(path)
                if holder is not None and not self.stale(path, holder):
                    raise refusal(self.run_dir, holder, self.advice) from None
                log.warning("taking over the stale lock of %s", holder.describe() if holder else "an unknown process")
                path.unlink(missing_ok=True)
                continue
            with os.fdopen(descriptor, "w") as handle:
                handle.write(json.dumps(this_process(self.doing).__dict__))
            self.owner_file = path
            self.heartbeat = threading.Thread(target=self.beat, name="voicetrain-run-lock", daemon=True)
            self.heartbeat.start()
            return self
        raise refusal(self.run_dir, read_holder(path), self.advice)

    @staticmethod
    def stale(path: Path, holder: Holder) -> bool:
        if holder.host == socket.gethostname() and not process_alive(holder.pid):
            return True
        try:
            return time.time() - path.stat().st_mtime > STALE_AFTER_SECONDS
        except FileNotFoundError:
            return True

    def beat(self) -> None:
        while not self.stopped.wait(HEARTBEAT_SECONDS):
            if self.owner_file is not None:
                try:
                    os.utime(self.owner_file)
                except OSError:
                    return

    def release(self) -> None:
        self.stopped.set()
        if self.owner_file is not None:
            self.owner_file.unlink(missing_ok=True)
            self.owner_file = None
        if self.descriptor is not None:
            if not self.keep_owner:
                os.ftruncate(self.descriptor, 0)
            os.close(self.descriptor)  # drops the fcntl lock; the file stays, naming the last owner
            self.descriptor = None
