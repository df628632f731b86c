"""Sharded extraction's layout and decisions: which shard owns an audio file, where a shard's part
of the store lies, what a part says about itself, what is wrong with the parts of a store, and
whether the store's filesystem has working file locks.

    <feature folder>/parts/<shard>-of-<shards>/    written by `python -m voicetrain.extract
                                                   extract.shards=<shards> extract.shard=<shard>` alone
      index.sqlite, shard-*.bin                    the same layout as the folder's own index and shards
      part.json                                    shards, shard, the command that makes the part, and
                                                   whether it finished (written whole: temporary name, rename)
      extract.lock                                 held by the one process writing the part

Why parts instead of one index: SQLite's file locks are what keep two writers of one index apart,
and they are not reliable on the network filesystems clusters share, so no two processes ever
write one index; readers open every index read-only and ask each in turn.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

PARTS = "parts"
PART_FILE = "part.json"
EXTRACT_COMMAND = "python -m voicetrain.extract"


def shard_of(key: str, shards: int) -> int:
    """The shard that extracts an audio file version: a hash that is the same in every process and
    on every machine (Python's hash() is salted per process), so no two shards of one count ever
    both own a file."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:16], 16) % shards


def part_name(shard: int, shards: int) -> str:
    """The part's folder inside a feature folder; zero-padded so that a plain sort is numeric."""
    width = len(str(shards - 1))
    return f"{PARTS}/{shard:0{width}d}-of-{shards}"


def shard_command(overrides: list[str], shard: int, shards: int) -> str:
    """The command that (re)makes one part: the same overrides, this shard and count."""
    kept = [item for item in overrides if item.lstrip("+~").split("=")[0] not in ("extract.shard", "extract.shards")]
    return " ".join([EXTRACT_COMMAND, *map(shlex.quote, kept), f"extract.shards={shards}", f"extract.shard={shard}"])


@dataclass(frozen=True)
class PartRecord:
    """What part.json says: the shard, the count, the overrides of the command that made it, and
    whether that command finished."""

    shard: int
    shards: int
    overrides: list[str]
    complete: bool

    @property
    def command(self) -> str:
        return shard_command(self.overrides, self.shard, self.shards)


def write_part_record(folder: Path, record: PartRecord) -> None:
    """part.json appears whole or not at all: a killed shard leaves the previous record."""
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"shard": record.shard, "shards": record.shards, "overrides": record.overrides,
                       "complete": record.complete}, indent=1)
    descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=".part-", suffix=".json")
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, folder / PART_FILE)


def read_part_record(folder: Path) -> PartRecord | None:
    """None when part.json is absent or unreadable (a damaged part)."""
    try:
        data = json.loads((folder / PART_FILE).read_text())
        return PartRecord(int(data["shard"]), int(data["shards"]), [str(item) for item in data["overrides"]],
                          bool(data["complete"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def part_folders(feature_folder: Path) -> list[Path]:
    """Every part of a feature folder, in name order."""
    root = feature_folder / PARTS
    return sorted(path for path in root.iterdir() if path.is_dir()) if root.is_dir() else []


def plan_problems(feature_folder: Path, records: dict[Path, PartRecord | None]) -> list[str]:
    """What is wrong with the parts of one feature folder, one line each naming the part and the
    command that makes it: a part of a shard count that is absent, unfinished or unreadable.
    `records` maps each part folder to its part.json (None: unreadable)."""
    problems = []
    readable = [record for record in records.values() if record is not None]
    for folder, record in sorted(records.items()):
        if record is None:
            sibling = readable[0] if readable else None
            fix = (f"delete {folder} and run the shard that made it again (a sibling's command: {sibling.command})"
                   if sibling else f"delete {folder} and run its shard again")
            problems.append(f"{folder}: its {PART_FILE} is missing or unreadable (damaged part); {fix}")
        elif not record.complete:
            problems.append(f"{folder}: unfinished (its shard was stopped, or still runs); finish it with: "
                            f"{record.command}")
    for shards in sorted({record.shards for record in readable}):
        present = {record.shard for record in readable if record.shards == shards}
        example = next(record for record in readable if record.shards == shards)
        for shard in range(shards):
            if shard not in present:
                problems.append(f"{feature_folder / part_name(shard, shards)}: missing (shard {shard} of {shards} "
                                f"never finished a run here); make it with: "
                                f"{shard_command(example.overrides, shard, shards)}")
    return problems


# ----- file locks -----

LOCK_PROBE_FILE = ".lock-probe"
PROBE_CHILD = """
import errno, fcntl, os, sys
descriptor = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.lockf(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
except OSError as error:
    sys.exit(0 if error.errno in (errno.EACCES, errno.EAGAIN) else 3)
sys.exit(4)
"""


def lock_problem(folder: Path) -> str | None:
    """Whether fcntl locks work in `folder`, by trying them: this process locks a file and another
    process must be refused the same lock. None when they work; else what went wrong. (A lock
    that works here may still not reach other machines on a filesystem mounted with `nolock`; no
    probe from one machine can see that.)"""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_PROBE_FILE
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.lockf(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            return f"taking a lock failed ({errno.errorcode.get(error.errno, error.errno)}: {error.strerror})"
        child = subprocess.run([sys.executable, "-c", PROBE_CHILD, str(path)], capture_output=True, timeout=60)
        if child.returncode == 4:
            return "a second process was given a lock that this process holds (the locks are not enforced)"
        if child.returncode != 0:
            return f"a second process could not test the lock (exit status {child.returncode})"
        return None
    finally:
        os.close(descriptor)


def lock_warning(folder: Path, problem: str) -> str:
    """What to say about a store whose filesystem has no working locks, and what to do."""
    return (f"the feature store {folder} is on a filesystem without working file locks: {problem}. Two processes "
            "writing one SQLite index there can corrupt it. Readers (training) open every index read-only and take "
            f"no write lock, and `{EXTRACT_COMMAND}` writes one index per shard, so extract with it (one process "
            "per shard) and no two launches at once. To train from local disk, copy the store there and point the "
            f"run at the copy: cp -r {folder} /local/features, then data.cache_dir=/local/features. (scratch.include="
            "[features] puts a separate store on the scratch disk, which is extracted there again, not copied.)")
