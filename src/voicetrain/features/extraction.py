"""Computing features for the store: what is missing, whether it fits on the disk, and the work
itself, across `data.feature_workers` single-threaded processes with one progress bar.

A worker loads each audio file once and runs every extractor the file still lacks. Results come
back to the process that holds the folders' locks, which appends them to the shards and commits
the index every few seconds, so an interrupted extraction continues where it stopped.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile

from voicetrain.audio_files import AudioReadError, load_audio
from voicetrain.features.base import FeatureExtractor, frame_count

PCM_SCALE = 32767.0  # int16 storage of a wave in [-1, 1]
SPACE_MARGIN_BYTES = 64 << 20  # room left for the index, the logs and whatever else shares the disk
COMMIT_SECONDS = 5.0
COMMIT_FILES = 16
LISTED_FAILURES = 5  # a summary line names this many unusable files, then counts the rest


@dataclass(frozen=True)
class Job:
    """One audio file and the features it still lacks."""

    position: int  # in the caller's list of files
    path: str
    names: tuple[str, ...]


@dataclass(frozen=True)
class Computed:
    """A job's result: per feature, the array in its storage dtype and its statistics; or why the
    file cannot be used."""

    position: int
    arrays: dict[str, tuple[np.ndarray, dict[str, np.ndarray]]]
    problem: str | None = None
    samples: int = 0  # of the resampled audio, for the seconds an extraction reports


@dataclass
class ExtractionSummary:
    """What one extraction did: the files it computed, their seconds of audio, the files it could
    not use and why, and (for a shard) the files it owns that were already present."""

    files: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)
    present: int = 0

    def add(self, result: Computed, path: str, sample_rate: int) -> None:
        self.files += 1
        self.seconds += result.samples / sample_rate
        if result.problem is not None:
            self.failures.append((path, result.problem))

    def line(self, label: str) -> str:
        failures = "; ".join(f"{path}: {reason}" for path, reason in self.failures[:LISTED_FAILURES])
        more = f" and {len(self.failures) - LISTED_FAILURES} more" if len(self.failures) > LISTED_FAILURES else ""
        return (f"{label}: extracted {self.files} file(s), {self.seconds:.1f} s of audio, {self.present} already "
                f"present, {len(self.failures)} failure(s)" + (f" ({failures}{more})" if self.failures else ""))


def to_storage(array: np.ndarray, storage_dtype: str) -> np.ndarray:
    if storage_dtype == "int16":
        return np.round(np.clip(array, -1.0, 1.0) * PCM_SCALE).astype(np.int16)
    return np.asarray(array, dtype=np.float16 if storage_dtype == "float16" else np.float32)


def from_storage(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.int16:
        return array.astype(np.float32) / PCM_SCALE
    return array.astype(np.float32, copy=False)


def compute(job: Job, extractors: dict[str, FeatureExtractor], sample_rate: int) -> Computed:
    try:
        wave = load_audio(job.path, sample_rate)
    except AudioReadError as error:
        return Computed(job.position, {}, str(error))
    arrays = {}
    for name in job.names:
        extractor = extractors[name]
        try:
            array = extractor.extract(wave, sample_rate)
        except ValueError as error:  # extractors refuse what they cannot analyse (e.g. too short)
            return Computed(job.position, {}, f"Cannot use audio file {job.path}: {error}. Remove it from the "
                                              "dataset, or set data.skip_bad_files=true to skip it.", len(wave))
        arrays[name] = (to_storage(array, extractor.storage_dtype), extractor.statistics(array))
    return Computed(job.position, arrays, samples=len(wave))


# ----- worker processes -----

_worker_extractors: dict[str, FeatureExtractor] = {}
_worker_sample_rate = 0


def start_worker(extractors: dict[str, FeatureExtractor], sample_rate: int) -> None:
    """Each worker computes with one thread: N workers use N cores, and the numbers do not depend
    on how many there are."""
    import torch

    torch.set_num_threads(1)
    global _worker_sample_rate
    _worker_extractors.update(extractors)
    _worker_sample_rate = sample_rate


def run_in_worker(job: Job) -> Computed:
    return compute(job, _worker_extractors, _worker_sample_rate)


def computed(jobs: list[Job], extractors: dict[str, FeatureExtractor], sample_rate: int,
             workers: int) -> Iterator[Computed]:
    """Results in the order of `jobs`; in this process when one worker (or a handful of jobs)
    would not repay starting others."""
    if workers <= 1 or len(jobs) < 2 * workers:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for job in jobs:
                yield compute(job, extractors, sample_rate)
        finally:
            torch.set_num_threads(threads)
        return
    # forkserver: forking a process whose torch thread pools already run can deadlock.
    context = multiprocessing.get_context("forkserver")
    if multiprocessing.get_start_method(allow_none=True) not in (None, *multiprocessing.get_all_start_methods()):
        # A launcher's worker (joblib's loky, running a shard of `python -m voicetrain.extract`) sets
        # its own start method, which new processes are told to use and cannot find: every worker
        # would fail to start, and the pool would retry forever.
        multiprocessing.set_start_method("forkserver", force=True)
    with context.Pool(workers, initializer=start_worker, initargs=(extractors, sample_rate)) as pool:
        yield from pool.imap(run_in_worker, jobs, chunksize=max(1, min(8, len(jobs) // (4 * workers))))


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# ----- space -----

def samples_at(path: str, sample_rate: int) -> int:
    info = soundfile.info(path)
    return math.ceil(info.frames * sample_rate / info.samplerate)


def bytes_needed(jobs: list[Job], extractors: dict[str, FeatureExtractor], sample_rate: int,
                 hop_length: int) -> int:
    """What the jobs will add to the store, from each file's header (no decoding)."""
    total = 0
    for job in jobs:
        try:
            samples = samples_at(job.path, sample_rate)
        except (RuntimeError, OSError):  # unreadable: reported when it is computed
            continue
        for name in job.names:
            extractor = extractors[name]
            itemsize = np.dtype({"int16": np.int16, "float16": np.float16}.get(extractor.storage_dtype,
                                                                                 np.float32)).itemsize
            values = extractor.channels() * frame_count(samples, hop_length) if extractor.frame_level else samples
            total += values * itemsize
    return total


def check_space(folder: Path, needed: int, error: Callable[[str], Exception]) -> None:
    free = shutil.disk_usage(folder).free
    if needed + SPACE_MARGIN_BYTES > free:
        raise error(f"the features to extract need about {needed / 1e6:.0f} MB in {folder}, which has "
                    f"{free / 1e6:.0f} MB free (with {SPACE_MARGIN_BYTES >> 20} MB to spare); free space there or "
                    "point data.cache_dir at a bigger disk. Nothing was written")


class CommitClock:
    """Says when to commit the index: every few seconds or files, so an interrupted extraction
    loses little."""

    def __init__(self, seconds: float = COMMIT_SECONDS, files: int = COMMIT_FILES):
        self.seconds, self.files = seconds, files
        self.last, self.pending = time.monotonic(), 0

    def due(self) -> bool:
        self.pending += 1
        if self.pending >= self.files or time.monotonic() - self.last >= self.seconds:
            self.last, self.pending = time.monotonic(), 0
            return True
        return False
