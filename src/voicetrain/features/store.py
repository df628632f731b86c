"""The feature store: every feature of every audio file computed once, kept on disk, read lazily.

    <data.cache_dir>/                   shared by every run on the same corpus
      <name>-<identity>/                one folder per extractor identity (class, settings, sample rate,
                                        hop, the computing code's version (base.version_key), the store format)
        index.sqlite                    one row per audio file version: where its array lies, its shape,
                                        a CRC-32 of its bytes and its additive statistics
        shard-<n>.bin                   the arrays back to back, in the extractor's storage dtype
        extract.lock                    held while extracting (concurrent launches extract once)
        damaged.txt                     entries found damaged while training, recomputed next launch

Why not one file per utterance (as before) or lhotse: a warm start must not open a file per
utterance, a run must not hold the corpus in memory, and nothing may be unpickled. An SQLite index
(stdlib, transactional, safe for several readers) answers "where is this file's feature" for the
whole corpus in one query; flat shards are read with pread at an offset (not memory-mapped: a map
would count every page an epoch touches in the process's resident memory). lhotse's manifests and
Lilcom storage would add a large dependency whose lossy compression changes the log-mel's numbers.
An audio file version is (resolved path, size, mtime): an edited file gets a new entry.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from voicetrain.durable import FILE_MODE
from voicetrain.features.base import FeatureExtractor
from voicetrain.features.extraction import CommitClock, Computed, Job, bytes_needed, check_space, computed

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


class FeatureFolder:
    """One extractor identity's folder: its index and shards."""

    def __init__(self, root: Path, name: str, extractor: FeatureExtractor):
        self.name = name
        self.extractor = extractor
        self.folder = root / folder_name(name, extractor)
        self.dtype = np.dtype(STORAGE_DTYPES[extractor.storage_dtype])

    def create(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise FeatureError(f"cannot create the feature store folder {self.folder} ({error.strerror or error}); "
                               "set data.cache_dir to a writable folder") from error
        with self.connect() as connection:
            connection.executescript(SCHEMA)
            connection.execute("INSERT OR IGNORE INTO meta VALUES ('identity', ?)",
                               (json.dumps(self.extractor.identity(), sort_keys=True, default=str),))

    @contextlib.contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        connection = sqlite3.connect(self.folder / INDEX, timeout=600)
        try:
            with connection:  # one transaction: committed on success, rolled back on an error
                yield connection
        finally:
            connection.close()

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Held while extracting: a concurrent launch waits here, then finds the entries present."""
        descriptor = os.open(self.folder / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.lockf(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            os.close(descriptor)

    def take_damaged(self, connection: sqlite3.Connection) -> None:
        """Entries that training found damaged are dropped here, so this launch recomputes them."""
        path = self.folder / DAMAGED
        if path.is_file():
            keys = {line.strip() for line in path.read_text().splitlines() if line.strip()}
            connection.executemany("DELETE FROM entries WHERE key = ?", [(key,) for key in keys])
            path.unlink()

    def rows(self, keys: list[str]) -> dict[str, tuple[Any, ...]]:
        """Index rows of `keys` (those present), in one query per thousand keys."""
        found: dict[str, tuple[Any, ...]] = {}
        with self.connect() as connection:
            for start in range(0, len(keys), 1000):
                chunk = keys[start:start + 1000]
                marks = ",".join("?" * len(chunk))
                for row in connection.execute(f"SELECT key, status, reason, shard, offset, nbytes, shape, crc, "
                                              f"statistics FROM entries WHERE key IN ({marks})", chunk):
                    found[row[0]] = row[1:]
        return found

    def shard_path(self, number: int) -> Path:
        return self.folder / f"shard-{number:06d}.bin"


class ShardWriter:
    """Appends arrays to a folder's shards (one writer: the extracting process holds the lock)."""

    def __init__(self, folder: FeatureFolder, connection: sqlite3.Connection):
        self.folder = folder
        row = connection.execute("SELECT MAX(shard) FROM entries").fetchone()
        self.shard = row[0] if row[0] is not None else 0
        self.handle = None

    def append(self, array: np.ndarray) -> Entry:
        data = np.ascontiguousarray(array, dtype=self.folder.dtype).tobytes()
        path = self.folder.shard_path(self.shard)
        if path.exists() and path.stat().st_size + len(data) > SHARD_BYTES and path.stat().st_size > 0:
            self.close()
            self.shard += 1
            path = self.folder.shard_path(self.shard)
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


# ----- what the store holds for a list of audio files -----

@dataclass(frozen=True)
class Stored:
    """For a list of audio files: per feature, each usable file's entry and statistics vector; the
    files that cannot be used, with the reason."""

    entries: dict[str, list[Entry | None]]
    statistics: dict[str, list[np.ndarray | None]]
    layouts: dict[str, list[tuple[str, int]]]  # per feature: (statistic name, length) in vector order
    unusable: dict[int, str]  # position -> reason


def statistics_vector(statistics: dict[str, np.ndarray]) -> tuple[np.ndarray, list[tuple[str, int]]]:
    names = sorted(statistics)
    values = [np.asarray(statistics[name], dtype=np.float64).ravel() for name in names]
    layout = [(name, value.size) for name, value in zip(names, values)]
    return (np.concatenate(values) if values else np.zeros(0)), layout


def statistics_of(vector: np.ndarray, layout: list[tuple[str, int]]) -> dict[str, np.ndarray]:
    result, start = {}, 0
    for name, size in layout:
        result[name] = vector[start:start + size]
        start += size
    return result


class FeatureStore:
    """The features of one configuration (shared rate and hop, named extractors) under a cache root."""

    def __init__(self, root: Path, extractors: dict[str, FeatureExtractor], sample_rate: int, hop_length: int):
        self.root = Path(root)
        self.extractors = extractors
        self.sample_rate = sample_rate
        self.hop_length = hop_length
        self.folders = {name: FeatureFolder(self.root, name, extractor) for name, extractor in extractors.items()}

    def ensure(self, paths: list[Path], workers: int, progress: bool) -> Stored:
        """Every feature of every file in `paths`, computed where missing (under the folders'
        locks, in parallel, resumably), then described from the index alone."""
        for folder in self.folders.values():
            folder.create()
        keys = [audio_key(path) for path in paths]
        damaged = any((folder.folder / DAMAGED).is_file() for folder in self.folders.values())
        if damaged or self.missing(keys):
            with contextlib.ExitStack() as stack:
                for name in sorted(self.folders):  # one order everywhere: two launches cannot deadlock
                    stack.enter_context(self.folders[name].locked())
                self.extract_missing(paths, keys, workers, progress)
        return self.describe(paths, keys)

    def extract_missing(self, paths: list[Path], keys: list[str | None], workers: int, progress: bool) -> None:
        """Under the locks: what another launch did not extract meanwhile is computed now, and the
        index committed every few seconds (an interrupted extraction continues from there)."""
        for folder in self.folders.values():
            with folder.connect() as connection:
                folder.take_damaged(connection)
        missing = self.missing(keys)
        by_position: dict[int, list[str]] = {}
        for name, positions in missing.items():
            for position in positions:
                by_position.setdefault(position, []).append(name)
        jobs = [Job(position, str(paths[position]), tuple(sorted(names)))
                for position, names in sorted(by_position.items())]
        check_space(self.root, bytes_needed(jobs, self.extractors, self.sample_rate, self.hop_length),
                    FeatureSpaceError)
        connections = {name: sqlite3.connect(folder.folder / INDEX, timeout=600)
                       for name, folder in self.folders.items()}
        writers = {name: ShardWriter(folder, connections[name]) for name, folder in self.folders.items()}
        clock = CommitClock()
        try:
            results = computed(jobs, self.extractors, self.sample_rate, workers)
            for result in tqdm(results, total=len(jobs), desc="extracting features", unit="file",
                               disable=not progress, mininterval=0.5):
                self.record(result, by_position[result.position], keys[result.position], writers, connections)
                if clock.due():
                    self.commit(writers, connections)
            self.commit(writers, connections)
        finally:
            for writer in writers.values():
                writer.close()
            for connection in connections.values():
                connection.close()

    def record(self, result: Computed, names: list[str], key: str | None, writers: dict[str, ShardWriter],
               connections: dict[str, sqlite3.Connection]) -> None:
        if key is None:
            return  # the file vanished: described as unusable, nothing to store
        for name in names:
            if result.problem is not None:
                connections[name].execute("INSERT OR REPLACE INTO entries (key, status, reason) VALUES (?, ?, ?)",
                                          (key, "unusable", result.problem))
                continue
            array, statistics = result.arrays[name]
            entry = writers[name].append(array)
            vector, layout = statistics_vector(statistics)
            connections[name].execute("INSERT OR IGNORE INTO meta VALUES ('statistic_layout', ?)",
                                      (json.dumps(layout),))
            connections[name].execute(
                "INSERT OR REPLACE INTO entries VALUES (?, 'ok', NULL, ?, ?, ?, ?, ?, ?)",
                (key, entry.shard, entry.offset, entry.nbytes, json.dumps(list(entry.shape)), entry.crc,
                 vector.tobytes()))

    @staticmethod
    def commit(writers: dict[str, ShardWriter], connections: dict[str, sqlite3.Connection]) -> None:
        for name, writer in writers.items():
            writer.flush()  # the bytes first, then the rows that point at them
            connections[name].commit()

    def missing(self, keys: list[str | None]) -> dict[str, list[int]]:
        """Positions each feature lacks (a file that cannot be found lacks all of them)."""
        wanted = [key for key in keys if key is not None]
        result = {}
        for name, folder in self.folders.items():
            rows = folder.rows(wanted)
            absent = [position for position, key in enumerate(keys) if key is None or key not in rows]
            if absent:
                result[name] = absent
        return result

    def describe(self, paths: list[Path], keys: list[str | None]) -> Stored:
        entries: dict[str, list[Entry | None]] = {}
        statistics: dict[str, list[np.ndarray | None]] = {}
        layouts: dict[str, list[tuple[str, int]]] = {}
        unusable: dict[int, str] = {}
        for name, folder in self.folders.items():
            rows = folder.rows([key for key in keys if key is not None])
            entries[name], statistics[name] = [], []
            for position, key in enumerate(keys):
                row = rows.get(key) if key is not None else None
                if row is None or row[0] != "ok":
                    unusable.setdefault(position, row[1] if row is not None else (
                        f"Audio file {paths[position]} does not exist (or is not a file). Check the dataset "
                        "root/metadata, or set data.skip_bad_files=true to skip it."))
                    entries[name].append(None)
                    statistics[name].append(None)
                    continue
                _, _, shard, offset, nbytes, shape, crc, blob = row
                entries[name].append(Entry(shard, offset, nbytes, tuple(json.loads(shape)), crc))
                statistics[name].append(np.frombuffer(blob, dtype=np.float64) if blob else np.zeros(0))
            with folder.connect() as connection:
                layout = connection.execute("SELECT value FROM meta WHERE name = 'statistic_layout'").fetchone()
            layouts[name] = [tuple(item) for item in json.loads(layout[0])] if layout else []
        return Stored(entries, statistics, layouts, unusable)
