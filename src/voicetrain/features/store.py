"""The feature store: every feature of every audio file computed once, kept on disk, read lazily.

    <data.cache_dir>/                   shared by every run on the same corpus
      <name>-<identity>/                one folder per extractor identity (class, settings, sample rate,
                                        hop, the computing code's version (base.version_key), the store format)
        index.sqlite                    one row per audio file version: where its array lies, its shape,
                                        a CRC-32 of its bytes and its additive statistics
        shard-<n>.bin                   the arrays back to back, in the extractor's storage dtype
        extract.lock                    held while extracting (concurrent launches extract once)
        damaged.txt                     entries found damaged while training, recomputed next launch
        parts/<shard>-of-<shards>/      what `python -m voicetrain.extract` shards wrote, one index and its
                                        shards each (voicetrain.features.sharding); read as one store with
                                        the folder's own index, which is asked first

Why not one file per utterance (as before) or lhotse: a warm start must not open a file per
utterance, a run must not hold the corpus in memory, and nothing may be unpickled. An SQLite index
(stdlib, transactional, safe for several readers) answers "where is this file's feature" for the
whole corpus in one query; flat shards are read with pread at an offset (not memory-mapped: a map
would count every page an epoch touches in the process's resident memory). lhotse's manifests and
Lilcom storage would add a large dependency whose lossy compression changes the log-mel's numbers.
An audio file version is (resolved path, size, mtime): an edited file gets a new entry.

Readers open every index read-only (`mode=ro`) and never take a write lock; each index has one
writer: the folder's own, the launch holding extract.lock; a part's, its shard's process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from voicetrain.features.base import FeatureExtractor
from voicetrain.features.extraction import (CommitClock, Computed, ExtractionSummary, Job, bytes_needed, check_space,
                                            computed)
from voicetrain.features.folder import (DAMAGED, INDEX, Entry, FeatureError, FeatureFolder, FeatureSpaceError,
                                        ShardWriter, audio_key)
from voicetrain.features.sharding import (PartRecord, lock_problem, lock_warning, part_folders, part_name,
                                          shard_of, write_part_record)

log = logging.getLogger("voicetrain")


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
        locks, in parallel, resumably), then described from the indexes alone. Entries that
        sharded extraction left missing, and damaged parts, stop here with the command that makes them."""
        for folder in self.folders.values():
            folder.create()
        keys = [audio_key(path) for path in paths]
        damaged = any((folder.folder / DAMAGED).is_file() for folder in self.folders.values())
        missing = self.missing(keys)
        sharded = any(part_folders(folder.folder) for folder in self.folders.values())
        if sharded:
            self.raise_part_problems(with_plan=bool(missing), missing=missing)
        if damaged or missing:
            problem = lock_problem(self.root)
            if problem is not None:
                log.warning("%s", lock_warning(self.root, problem))
            with contextlib.ExitStack() as stack:
                for name in sorted(self.folders):  # one order everywhere: two launches cannot deadlock
                    stack.enter_context(self.folders[name].locked())
                self.extract_missing(paths, keys, workers, progress)
        return self.describe(paths, keys)

    def raise_part_problems(self, with_plan: bool, missing: dict[str, list[int]]) -> None:
        problems = [problem for folder in self.folders.values() for problem in folder.part_problems(with_plan)]
        if problems:
            count = len({position for positions in missing.values() for position in positions})
            lacking = (f"{count} audio file(s) lack features that sharded extraction was to write, and " if count
                       else "")
            listing = "\n".join(f"  - {problem}" for problem in problems)
            raise FeatureError(f"the feature store under {self.root} is incomplete: {lacking}these parts are "
                               f"missing, unfinished or damaged:\n{listing}\nRun those commands (a part continues "
                               "where it stopped), or delete the parts folders to extract everything in this launch")

    def extract_missing(self, paths: list[Path], keys: list[str | None], workers: int, progress: bool) -> None:
        """Under the locks: what another launch did not extract meanwhile is computed now, and the
        index committed every few seconds (an interrupted extraction continues from there)."""
        for folder in self.folders.values():
            with folder.connect() as connection:
                folder.take_damaged(connection)
        jobs, by_position = self.jobs_for(paths, self.missing(keys))
        directories = {name: folder.folder for name, folder in self.folders.items()}
        self.extract_jobs(jobs, by_position, keys, directories, workers, progress, "extracting features")

    def jobs_for(self, paths: list[Path], missing: dict[str, list[int]]) -> tuple[list[Job], dict[int, list[str]]]:
        by_position: dict[int, list[str]] = {}
        for name, positions in missing.items():
            for position in positions:
                by_position.setdefault(position, []).append(name)
        jobs = [Job(position, str(paths[position]), tuple(sorted(names)))
                for position, names in sorted(by_position.items())]
        return jobs, by_position

    def extract_jobs(self, jobs: list[Job], by_position: dict[int, list[str]], keys: list[str | None],
                     directories: dict[str, Path], workers: int, progress: bool, label: str) -> ExtractionSummary:
        """Computes `jobs` into the indexes and shards in `directories` (one per feature: the folder
        itself or a part), committing every few seconds; what was computed, for the summary."""
        check_space(self.root, bytes_needed(jobs, self.extractors, self.sample_rate, self.hop_length),
                    FeatureSpaceError)
        connections = {name: sqlite3.connect(directories[name] / INDEX, timeout=600) for name in self.folders}
        writers = {name: ShardWriter(directories[name], folder.dtype, connections[name])
                   for name, folder in self.folders.items()}
        clock = CommitClock()
        summary = ExtractionSummary()
        try:
            results = computed(jobs, self.extractors, self.sample_rate, workers)
            for result, job in zip(tqdm(results, total=len(jobs), desc=label, unit="file", disable=not progress,
                                        mininterval=0.5), jobs):
                self.record(result, by_position[result.position], keys[result.position], writers, connections)
                summary.add(result, job.path, self.sample_rate)
                if clock.due():
                    self.commit(writers, connections)
            self.commit(writers, connections)
        finally:
            for writer in writers.values():
                writer.close()
            for connection in connections.values():
                connection.close()
        return summary

    def extract_shard(self, paths: list[Path], shard: int, shards: int, overrides: list[str], workers: int,
                      progress: bool) -> ExtractionSummary:
        """One shard of a sharded extraction: the files whose key hashes to `shard` and that no
        index holds yet, computed into this shard's own part of every feature folder. Its part.json
        says `complete` only once everything it owns is committed; run again, it continues."""
        keys = [audio_key(path) for path in paths]
        owned = [position for position, key in enumerate(keys) if key is not None and shard_of(key, shards) == shard]
        problem = lock_problem(self.root)
        if problem is not None:
            log.warning("%s", lock_warning(self.root, problem))
            log.warning("the part is written without its lock: run each shard once at a time")
        part = part_name(shard, shards)
        # The other shards of this count own other files: their parts (maybe still being written) are not read.
        siblings = {part_name(other, shards) for other in range(shards)}
        directories = {name: folder.folder / part for name, folder in self.folders.items()}
        with contextlib.ExitStack() as stack:
            for name in sorted(self.folders):
                folder = self.folders[name]
                folder.create(directories[name])
                if problem is None:  # a lock only keeps a shard's duplicate (a requeued job) waiting
                    stack.enter_context(folder.locked(directories[name]))
                write_part_record(directories[name], PartRecord(shard, shards, overrides, complete=False))
            missing = {}
            for name, folder in self.folders.items():
                rows = folder.rows([keys[position] for position in owned], skip_parts=siblings - {part})
                if absent := [position for position in owned if keys[position] not in rows]:
                    missing[name] = absent
            jobs, by_position = self.jobs_for(paths, missing)
            summary = self.extract_jobs(jobs, by_position, keys, directories, workers, progress,
                                        f"extracting shard {shard} of {shards}")
            for name in self.folders:
                write_part_record(directories[name], PartRecord(shard, shards, overrides, complete=True))
        summary.present = len(owned) - len(jobs)
        if shard == 0:  # files that cannot even be found belong to no shard; the first one reports them
            summary.failures += [(str(paths[position]), "the file does not exist (or is not a file)")
                                 for position, key in enumerate(keys) if key is None]
        return summary

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
                _, _, shard, offset, nbytes, shape, crc, blob, part = row
                entries[name].append(Entry(shard, offset, nbytes, tuple(json.loads(shape)), crc, part))
                statistics[name].append(np.frombuffer(blob, dtype=np.float64) if blob else np.zeros(0))
            layouts[name] = folder.statistic_layout()
        return Stored(entries, statistics, layouts, unusable)
