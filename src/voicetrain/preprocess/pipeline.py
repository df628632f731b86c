"""One preprocessing launch: find the work, skip what is done, run the rest across cores, report.

The input is only read. The output folder holds the corpus and, in its hidden state folder, one
record per recording (voicetrain.preprocess.journal); a recording whose record is complete and
current is skipped, so an interrupted launch continues where it stopped and a second launch with
the same settings writes nothing. Recordings run in a pool of `workers` single-threaded processes
(one recording per task, the largest first) behind one progress bar. A launch holds a lock on
its output (OUTPUT/.preprocess/lock, voicetrain.run.lock's): a second launch into the same output
refuses naming the first, so neither removes the other's temporary files.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from voicetrain.durable import STAGING_PREFIX, atomic_write_text
from voicetrain.preprocess.journal import Dropped, Record, all_records, forget, is_done, work_key
from voicetrain.preprocess.layout import assign_names, check_layout, write_metadata
from voicetrain.preprocess.recording import Job, process
from voicetrain.preprocess.report import write_report
from voicetrain.preprocess.settings import STATE_FOLDER, PreprocessSettings
from voicetrain.preprocess.sources import discover
from voicetrain.run.lock import RunLock

log = logging.getLogger("voicetrain.preprocess")

CONFIG_RECORD = "config.yaml"
LOCK_FILE = "lock"  # in the state folder
PREPROCESSING = "being written (voicetrain.preprocess)"
LOCK_ADVICE = ("two launches into one output would delete each other's files. Wait for it to finish (the same command "
               "then continues where it stopped), or pass another output=...")
# Libraries that would start a thread per core in every worker; set before the workers start.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")


@dataclass(frozen=True)
class Outcome:
    records: list[Record]  # one per recording of the input, in input order
    dropped: list[Dropped]  # input-level problems: transcripts without a recording, name clashes
    processed: int  # recordings worked on in this launch (the others were done already)
    summary: str  # the report's table and first reasons, for the console


def plan_jobs(settings: PreprocessSettings) -> tuple[list[Job], list[Dropped]]:
    inventory = discover(settings)
    check_layout(inventory.recordings, settings.layout)
    named, clashes = assign_names(inventory.recordings, settings.layout)
    identity = settings.identity()
    jobs = [Job(recording, base, work_key(recording.path, (recording.text, recording.normalised_text), identity),
                settings) for recording, base in named]
    return jobs, inventory.dropped + clashes


def remove_leftovers(output: Path) -> None:
    """Half-written files of an interrupted launch (atomic writes that never got renamed). Called
    under the output's lock: no other launch is writing there."""
    for path in sorted(output.rglob(f"{STAGING_PREFIX}*")):
        if path.is_file():
            path.unlink()


@contextmanager
def single_threaded_children() -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    os.environ.update({name: "1" for name in THREAD_VARIABLES})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def worker_context() -> multiprocessing.context.BaseContext:
    """forkserver where there is one: workers start from a small server process that has imported
    only what a worker needs, not from this process with its threads (tqdm's monitor) and torch."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")  # Windows
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["voicetrain.preprocess.recording"])
    return context


def run_jobs(jobs: list[Job], workers: int, progress: bool) -> Iterator[Record]:
    """Each job's record as it finishes, with one progress bar over them all."""
    largest_first = sorted(jobs, key=lambda job: job.recording.path.stat().st_size, reverse=True)
    with tqdm(total=len(jobs), unit="recording", desc="Preprocessing", disable=not progress or not jobs) as bar:
        if workers == 1 or len(jobs) <= 1:
            for job in largest_first:
                yield process(job)
                bar.update()
            return
        context = worker_context()
        with single_threaded_children(), ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context) as pool:
            futures = [pool.submit(process, job) for job in largest_first]
            try:
                for future in as_completed(futures):
                    yield future.result()
                    bar.update()
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise


def preprocess(settings: PreprocessSettings, config_yaml: str) -> Outcome:
    """Brings the output folder up to date with the input and the settings; `config_yaml` (the
    composed config) is recorded in the state folder."""
    jobs, dropped = plan_jobs(settings)
    state = settings.output_root / STATE_FOLDER
    state.mkdir(parents=True, exist_ok=True)
    # Emptied on release: a second launch with nothing to do leaves the output exactly as it was.
    lock = RunLock(settings.output_root, PREPROCESSING, LOCK_ADVICE, f"{STATE_FOLDER}/{LOCK_FILE}",
                   keep_owner=False).acquire()
    try:
        return preprocess_locked(settings, config_yaml, jobs, dropped)
    finally:
        lock.release()


def preprocess_locked(settings: PreprocessSettings, config_yaml: str, jobs: list[Job],
                      dropped: list[Dropped]) -> Outcome:
    output = settings.output_root
    state = output / STATE_FOLDER
    atomic_write_text(state / CONFIG_RECORD, config_yaml)
    remove_leftovers(output)
    existing = {record.source: record for record in all_records(state)}
    current = {job.recording.source for job in jobs}
    for source, record in existing.items():
        if source not in current:
            forget(state, output, record)
    todo = [job for job in jobs if not is_done(existing.get(job.recording.source), job.key, output)]
    log.info("%d recordings in %s: %d done already, %d to process with %d worker(s)", len(jobs), settings.input,
             len(jobs) - len(todo), len(todo), min(settings.worker_count(), max(len(todo), 1)))
    fresh = {record.source: record for record in run_jobs(todo, settings.worker_count(), settings.progress)}
    records = [fresh.get(job.recording.source) or existing[job.recording.source] for job in jobs]
    if settings.layout == "ljspeech":
        write_metadata(output, [clip for record in records for clip in record.clips])
    summary = write_report(settings, records, dropped)
    return Outcome(records, dropped, processed=len(todo), summary=summary)
