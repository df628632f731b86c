"""One feature folder of the store (voicetrain.features.store): its SQLite index of where each audio
file version's array lies, the flat shards that hold the arrays, and the damage checks of both.
The store's layout on disk is described in voicetrain.features.store.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from voicetrain.durable import FILE_MODE
from voicetrain.features.base import FeatureExtractor
from voicetrain.features.sharding import part_folders, plan_problems, read_part_record

log = logging.getLogger("voicetrain")

INDEX = "index.sqlite"
LOCK = "extract.lock"
DAMAGED = "damaged.txt"
SHARD_BYTES = 256 << 20  # a new shard after this many bytes: small enough to copy, few enough to open
STORAGE_DTYPES = {"float32": np.float32, "float16": np.float16, "int16": np.int16}
SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY,        -- audio file version
    status TEXT NOT NULL,        -- 'ok', or 'unusable' (the reason is in `reason`)
    reason TEXT,
    shard INTEGER, offset INTEGER, nbytes INTEGER,
    shape TEXT,                  -- JSON list: [channels, frames] or [samples]
    crc INTEGER,
    statistics BLOB              -- float64 values of the extractor's statistics, in `statistic_layout` order
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class FeatureError(ValueError):
    """Features cannot be computed or stored as configured; the message names the path and the fix."""


class FeatureSpaceError(FeatureError):
    """Too little free space for the features to extract (a problem of the machine, exit status 1)."""


def audio_key(path: Path) -> str | None:
    """The identity of one version of an audio file; None when it cannot be read (reported later)."""
    try:
        resolved = path.resolve()
        status = resolved.stat()
    except OSError:
        return None
    return hashlib.sha256(f"{resolved}\0{status.st_size}\0{status.st_mtime_ns}".encode()).hexdigest()[:32]


def folder_name(name: str, extractor: FeatureExtractor) -> str:
    identity = json.dumps(extractor.identity(), sort_keys=True, default=str)
    return f"{name}-{hashlib.sha256(identity.encode()).hexdigest()[:16]}"


@dataclass(frozen=True)
class Entry:
    """Where one utterance's array lies in a feature folder."""

    shard: int
    offset: int
    nbytes: int
    shape: tuple[int, ...]
    crc: int
    part: str = ""  # the part folder (parts/<shard>-of-<shards>) holding it; "" = the feature folder itself


class FeatureFolder:
    """One extractor identity's folder: its index and shards."""

    def __init__(self, root: Path, name: str, extractor: FeatureExtractor):
        self.name = name
        self.extractor = extractor
        self.folder = root / folder_name(name, extractor)
        self.dtype = np.dtype(STORAGE_DTYPES[extractor.storage_dtype])

    def create(self, directory: Path | None = None) -> None:
        """The index of the folder itself, or of one of its parts (`directory`)."""
        directory = directory or self.folder
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise FeatureError(f"cannot create the feature store folder {directory} ({error.strerror or error}); "
                               "set data.cache_dir to a writable folder") from error
        with self.connect(directory) as connection:
            connection.executescript(SCHEMA)
            connection.execute("INSERT OR IGNORE INTO meta VALUES ('identity', ?)",
                               (json.dumps(self.extractor.identity(), sort_keys=True, default=str),))

    @contextlib.contextmanager
    def connect(self, directory: Path | None = None) -> Iterator[sqlite3.Connection]:
        """A writing connection to the folder's own index (or a part's): for its one writer only."""
        connection = sqlite3.connect((directory or self.folder) / INDEX, timeout=600)
        try:
            with connection:  # one transaction: committed on success, rolled back on an error
                yield connection
        finally:
            connection.close()

    def indexes(self) -> list[tuple[str, Path]]:
        """(part, index path) of every index there is, the folder's own first."""
        found = [("", self.folder / INDEX)] if (self.folder / INDEX).is_file() else []
        return found + [(str(path.relative_to(self.folder)), path / INDEX) for path in part_folders(self.folder)
                        if (path / INDEX).is_file()]

    @contextlib.contextmanager
    def read_only(self, part: str, index: Path) -> Iterator[sqlite3.Connection]:
        """Reading never takes a write lock, and an index that cannot be read is named with what fixes it."""
        try:
            connection = sqlite3.connect(f"{index.resolve().as_uri()}?mode=ro", uri=True, timeout=600)
        except sqlite3.Error as error:
            raise FeatureError(self.unreadable(part, index, error)) from error
        try:
            yield connection
        except sqlite3.Error as error:  # e.g. a killed writer's journal, which a read-only reader cannot roll back
            raise FeatureError(self.unreadable(part, index, error)) from error
        finally:
            connection.close()

    def unreadable(self, part: str, index: Path, error: sqlite3.Error) -> str:
        if not part:
            return (f"the feature store index {index} cannot be read ({error}); delete {self.folder} and launch "
                    "again to extract this feature anew")
        record = read_part_record(self.folder / part)
        fix = f"run its shard again: {record.command}" if record else "run the shard that made it again"
        return (f"the part {self.folder / part} of the feature store cannot be read ({error}): unfinished or "
                f"damaged; {fix} (delete the part folder first if it is damaged)")

    @contextlib.contextmanager
    def locked(self, directory: Path | None = None) -> Iterator[None]:
        """Held while extracting into the folder (or a part): a concurrent launch waits here, then
        finds the entries present."""
        path = (directory or self.folder) / LOCK
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.lockf(descriptor, fcntl.LOCK_EX)
            except OSError as error:
                raise FeatureError(f"cannot lock {path} ({error.strerror or error}): its filesystem has no working "
                                   "file locks, so this launch cannot extract there safely; extract first with "
                                   "`python -m voicetrain.extract` and the same overrides (one index per process), "
                                   "or set data.cache_dir to a folder on local disk") from error
            yield
        finally:
            os.close(descriptor)

    def take_damaged(self, connection: sqlite3.Connection) -> None:
        """Entries that training found damaged are dropped here, from the folder's own index and
        from every finished part (its shard's process is done with it), so this launch recomputes them."""
        path = self.folder / DAMAGED
        if path.is_file():
            keys = [(key,) for key in {line.strip() for line in path.read_text().splitlines() if line.strip()}]
            connection.executemany("DELETE FROM entries WHERE key = ?", keys)
            for part in part_folders(self.folder):
                record = read_part_record(part)
                if record is not None and record.complete and (part / INDEX).is_file():
                    with self.connect(part) as part_connection:
                        part_connection.executemany("DELETE FROM entries WHERE key = ?", keys)
            path.unlink()

    def rows(self, keys: list[str], skip_parts: set[str] = frozenset()) -> dict[str, tuple[Any, ...]]:
        """Index rows of `keys` (those present) from every index, the first that holds a key
        winning, in one query per thousand keys and index; each row ends with its part."""
        found: dict[str, tuple[Any, ...]] = {}
        for part, index in self.indexes():
            if part in skip_parts:
                continue
            wanted = [key for key in keys if key not in found]
            with self.read_only(part, index) as connection:
                for start in range(0, len(wanted), 1000):
                    chunk = wanted[start:start + 1000]
                    marks = ",".join("?" * len(chunk))
                    for row in connection.execute(f"SELECT key, status, reason, shard, offset, nbytes, shape, crc, "
                                                  f"statistics FROM entries WHERE key IN ({marks})", chunk):
                        found[row[0]] = (*row[1:], part)
        return found

    def statistic_layout(self) -> list[tuple[str, int]]:
        for part, index in self.indexes():
            with self.read_only(part, index) as connection:
                layout = connection.execute("SELECT value FROM meta WHERE name = 'statistic_layout'").fetchone()
            if layout:
                return [tuple(item) for item in json.loads(layout[0])]
        return []

    def part_problems(self, with_plan: bool) -> list[str]:
        """Damaged parts (an unreadable part.json, index, or a shard file shorter than its index
        says), and with `with_plan` also the parts of a shard count that are missing or unfinished."""
        folders = part_folders(self.folder)
        records = {folder: read_part_record(folder) for folder in folders}
        problems = [problem for problem in plan_problems(self.folder, records)
                    if with_plan or "damaged" in problem]
        for folder, record in records.items():
            if record is None or not record.complete:
                continue
            part = str(folder.relative_to(self.folder))
            if not (folder / INDEX).is_file():
                problems.append(f"{folder}: its {INDEX} is missing (damaged part); delete {folder} and run: "
                                f"{record.command}")
                continue
            try:
                with self.read_only(part, folder / INDEX) as connection:
                    ends = connection.execute("SELECT shard, MAX(offset + nbytes) FROM entries WHERE status = 'ok' "
                                              "GROUP BY shard").fetchall()
            except FeatureError as error:
                problems.append(str(error))
                continue
            for shard, end in ends:
                path = folder / f"shard-{shard:06d}.bin"
                size = path.stat().st_size if path.is_file() else None
                if size is None or size < end:
                    problems.append(f"{path}: {'missing' if size is None else f'{size} bytes'} where its index needs "
                                    f"{end} (damaged part); delete {folder} and run: {record.command}")
        return problems


class ShardWriter:
    """Appends arrays to the shards of a folder or of one of its parts (one writer: the extracting
    process holds its lock)."""

    def __init__(self, directory: Path, dtype: np.dtype, connection: sqlite3.Connection):
        self.directory = directory
        self.dtype = dtype
        row = connection.execute("SELECT MAX(shard) FROM entries").fetchone()
        self.shard = row[0] if row[0] is not None else 0
        self.handle = None

    def shard_path(self, number: int) -> Path:
        return self.directory / f"shard-{number:06d}.bin"

    def append(self, array: np.ndarray) -> Entry:
        data = np.ascontiguousarray(array, dtype=self.dtype).tobytes()
        path = self.shard_path(self.shard)
        if path.exists() and path.stat().st_size + len(data) > SHARD_BYTES and path.stat().st_size > 0:
            self.close()
            self.shard += 1
            path = self.shard_path(self.shard)
        if self.handle is None:
            self.handle = open(path, "ab")
            os.chmod(path, FILE_MODE)
        offset = self.handle.tell()
        self.handle.write(data)
        return Entry(self.shard, offset, len(data), tuple(array.shape), zlib_crc(data))

    def flush(self) -> None:
        """Before the index rows that point into the shard are committed."""
        if self.handle is not None:
            self.handle.flush()
            os.fsync(self.handle.fileno())

    def close(self) -> None:
        if self.handle is not None:
            self.flush()
            self.handle.close()
            self.handle = None


def zlib_crc(data: bytes) -> int:
    import zlib

    return zlib.crc32(data)
