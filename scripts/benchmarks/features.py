"""Benchmarks of the feature store at two corpus sizes (issue 13): a training process's private
memory against the feature bytes it could read (feature_memory), a warm launch's time to its first
step (warm_start), extraction with 2 workers against 1 (cold_extraction), and `python -m
voicetrain.extract` as 4 shards on 2 local processes against 1 process (sharded_extraction, issue 25).

The corpora are the bundled corpus copied to SMALL and LARGE utterances (benchmarks.corpora), both
in one store that the first benchmark to need it fills."""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from benchmarks.common import (NEVER, NO_VALIDATION, QUIET, REPOSITORY_ROOT, compose_settings, load_text, per_round,
                               ratio_of_medians, seconds_to_first_step, spread_text)
from benchmarks.corpora import Corpora
from benchmarks.memory_driver import RESULT_PREFIX
from voicetrain.config import Settings
from voicetrain.data.prepare import PreparedData, prepare_data

SMALL, LARGE = 500, 4000
MEGABYTE = 1e6


def speakers_settings(corpora: Corpora, utterances: int, cache: Path, *overrides: str) -> Settings:
    run_root = corpora.folder / "runs"
    return compose_settings(run_root, cache, "data=speakers", f"data.root={corpora.corpus(utterances)}", *overrides)


def warm(corpora: Corpora, utterances: int) -> PreparedData:
    """The corpus's features in the shared store (extracted on first use, with a progress bar)."""
    settings = speakers_settings(corpora, utterances, corpora.store)
    return prepare_data(settings.data, settings.features, corpora.store, progress=True)


# --- feature memory ------------------------------------------------------------------------

MEMORY_ROUNDS = 2


def train_and_measure(corpora: Corpora, utterances: int, steps: int) -> dict[str, int]:
    """One training process (benchmarks.memory_driver) on the corpus; what it reports."""
    run_root = tempfile.mkdtemp(prefix="memory-", dir=corpora.folder)
    try:
        completed = subprocess.run(
            [sys.executable, "-m", "benchmarks.memory_driver", str(corpora.corpus(utterances)), str(corpora.store),
             run_root, str(steps)],
            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPOSITORY_ROOT / "scripts")})
    finally:
        shutil.rmtree(run_root, ignore_errors=True)
    lines = [line for line in completed.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if completed.returncode != 0 or not lines:
        raise RuntimeError(f"the memory driver on {utterances} utterances exited with {completed.returncode}:\n"
                           f"{completed.stderr[-3000:]}")
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def memory_line(utterances: int, runs: list[dict[str, int]]) -> str:
    first = runs[0]
    ends = ", ".join(f"{run['private_at_end'] / MEGABYTE:.1f}" for run in runs)
    return (f"  {utterances}: private at end {ends} MB (after setup {first['private_after_setup'] / MEGABYTE:.1f}, "
            f"after import {first['private_after_import'] / MEGABYTE:.1f}); "
            f"{first['feature_bytes'] / MEGABYTE:.1f} MB of features in the store; "
            f"{first['train_utterances']} training utterances ({first['distinct_read']} read), "
            f"{first['val_utterances']} held out ({first['val_bytes_in_memory'] / MEGABYTE:.1f} MB of their features "
            "held in memory: validate() reads the ones it indexes from the store)")


def feature_memory(options: argparse.Namespace) -> None:
    """Private memory growth of a training process ÷ the feature bytes added, from the SMALL to the
    LARGE corpus (warm store, the same number of steps: by default enough to read every training
    utterance of the LARGE one once). Private = Private_Clean + Private_Dirty of smaps_rollup, read
    inside the process after training; MEMORY_ROUNDS processes per corpus, alternating."""
    corpora = Corpora(options.corpora)
    warm(corpora, SMALL)
    large = warm(corpora, LARGE)
    steps = options.memory_steps or math.ceil(len(large.train_utterances) / batch_size(corpora))
    runs: dict[int, list[dict[str, int]]] = {SMALL: [], LARGE: []}
    for _ in range(MEMORY_ROUNDS):
        for utterances in (SMALL, LARGE):
            runs[utterances].append(train_and_measure(corpora, utterances, steps))
    median_end = {size: statistics.median(run["private_at_end"] for run in found) for size, found in runs.items()}
    growth = median_end[LARGE] - median_end[SMALL]
    added = runs[LARGE][0]["feature_bytes"] - runs[SMALL][0]["feature_bytes"]
    print(f"feature memory: private memory growth {LARGE} vs {SMALL} utterances {growth / MEGABYTE:.1f} MB / feature "
          f"bytes added {added / MEGABYTE:.1f} MB = {growth / added:.3f} (goal <= 0.1; medians of {MEMORY_ROUNDS} "
          f"processes each, {steps} steps of batch {batch_size(corpora)})")
    for utterances in (SMALL, LARGE):
        print(memory_line(utterances, runs[utterances]))
    setup_growth = (statistics.median(run["private_after_setup"] for run in runs[LARGE])
                    - statistics.median(run["private_after_setup"] for run in runs[SMALL]))
    held_out = runs[LARGE][0]["val_bytes_in_memory"] - runs[SMALL][0]["val_bytes_in_memory"]
    print(f"  of the growth: {setup_growth / MEGABYTE:.1f} MB by the end of setup (held-out features "
          f"{held_out / MEGABYTE:.1f} MB of it), {(growth - setup_growth) / MEGABYTE:.1f} MB during training")
    print(f"  corpora: {corpora.description(SMALL)}; and {LARGE} the same way")


def batch_size(corpora: Corpora) -> int:
    return speakers_settings(corpora, SMALL, corpora.store).trainer.batch_size


# --- warm start ----------------------------------------------------------------------------

WARM_ROUNDS = 5


def launch_arguments(corpora: Corpora, utterances: int, name: str) -> list[str]:
    return [f"run.root={corpora.folder / 'runs'}", f"run.name={name}", "data=speakers",
            f"data.root={corpora.corpus(utterances)}", f"data.cache_dir={corpora.store}", "trainer.max_steps=1",
            f"ckpt.every_n_steps={NEVER}", *NO_VALIDATION, *QUIET]


def warm_start(options: argparse.Namespace) -> None:
    """Launch-to-first-step of `python -m voicetrain data=speakers data.root=<LARGE corpus>` ÷ the
    same on the SMALL corpus, warm store, WARM_ROUNDS launches of each alternating (each launch is
    killed once its first step is done); then what scales with the corpus: prepare_data alone, in
    this process, and the files a launch opens under the corpus and the store (strace)."""
    corpora = Corpora(options.corpora)
    warm(corpora, SMALL)
    warm(corpora, LARGE)
    seconds: dict[int, list[float]] = {SMALL: [], LARGE: []}
    for round_number in range(WARM_ROUNDS):
        order = (SMALL, LARGE) if round_number % 2 == 0 else (LARGE, SMALL)
        for utterances in order:
            name = f"warm{utterances}-{round_number}"
            seconds[utterances].append(seconds_to_first_step(launch_arguments(corpora, utterances, name),
                                                             stop_there=True))
    print(f"warm start: launch-to-first-step {LARGE} utterances {statistics.median(seconds[LARGE]):.1f} s / {SMALL} "
          f"{statistics.median(seconds[SMALL]):.1f} s = {ratio_of_medians(seconds[LARGE], seconds[SMALL]):.2f} "
          f"(goal <= 1.2; medians of {WARM_ROUNDS}, alternating; {load_text()})")
    print(f"  per-round ratios {spread_text(per_round(seconds[LARGE], seconds[SMALL]))}")
    settings = {utterances: speakers_settings(corpora, utterances, corpora.store) for utterances in (SMALL, LARGE)}
    prepare_seconds: dict[int, list[float]] = {SMALL: [], LARGE: []}
    for _ in range(WARM_ROUNDS):
        for utterances in (SMALL, LARGE):
            started = time.perf_counter()
            prepare_data(settings[utterances].data, settings[utterances].features, corpora.store, progress=False)
            prepare_seconds[utterances].append(time.perf_counter() - started)
    print(f"  prepare_data alone (warm, in this process): {statistics.median(prepare_seconds[LARGE]):.2f} s / "
          f"{statistics.median(prepare_seconds[SMALL]):.2f} s = "
          f"{ratio_of_medians(prepare_seconds[LARGE], prepare_seconds[SMALL]):.2f}")
    if shutil.which("strace") is None:
        print("  (strace is not installed: the files a launch opens are not counted)")
        return
    for utterances in (SMALL, LARGE):
        print(f"  a warm launch on {utterances} utterances, by strace: {touched_files(corpora, utterances)}")


def touched_files(corpora: Corpora, utterances: int) -> str:
    """The open and stat calls a whole warm launch (its one step, the last step's validation and
    previews, the save) makes under the corpus folder and the store, by kind of file."""
    corpus = str(corpora.corpus(utterances))
    with tempfile.NamedTemporaryFile(prefix="strace-", dir=corpora.folder) as trace:
        subprocess.run(["strace", "-f", "-qq", "-o", trace.name, "-e", "trace=open,openat,stat,lstat,newfstatat,statx",
                        sys.executable, "-m", "voicetrain",
                        *launch_arguments(corpora, utterances, f"strace{utterances}")],
                       check=True, capture_output=True)
        lines = Path(trace.name).read_text().splitlines()
    counts: Counter[tuple[str, str]] = Counter()
    for line in lines:
        call = line.split(maxsplit=1)[-1].split("(", 1)[0]
        kind = "open" if call.startswith("open") else "stat"
        if f'"{corpus}/' in line:
            counts[(kind, file_kind(line))] += 1
        elif f'"{corpora.store}/' in line:
            counts[(kind, "store")] += 1
    return "; ".join(calls_text(counts, kind, utterances) for kind in ("open", "stat"))


def calls_text(counts: Counter[tuple[str, str]], kind: str, utterances: int) -> str:
    """E.g. `stat 5008 calls (5000 on audio files, 8 on folders; 10.0 per utterance)`."""
    mine = {what: count for (found, what), count in sorted(counts.items()) if found == kind}
    total = sum(mine.values())
    listed = ", ".join(f"{count} on {what}" for what, count in mine.items())
    return f"{kind} {total} calls ({listed}; {total / utterances:.1f} per utterance)"


def file_kind(line: str) -> str:
    if '.flac"' in line:
        return "audio files"
    if '.txt"' in line or '.lab"' in line:
        return "transcript names"
    return "folders"


# --- cold extraction -----------------------------------------------------------------------

COLD_ROUNDS = 3
# The default log-mel plus WORLD's dio F0 (+ stonemask): enough computation per file that
# extraction is bound by the cores, not by reading the audio.
F0_OVERRIDES = ("+features.f0._target_=voicetrain.features.pitch.Pitch", "+features.f0.method=dio",
                "+features.f0.f0_min=60.0", "+features.f0.f0_max=500.0", "+features.f0.unvoiced=zero",
                "+features.f0.voicing_threshold=null")


def extraction_seconds(corpora: Corpora, settings: Settings, workers: int) -> float:
    with tempfile.TemporaryDirectory(prefix="cold-store-", dir=corpora.folder) as store:
        started = time.perf_counter()
        prepare_data(settings.data, settings.features, Path(store), progress=False, workers=workers)
        return time.perf_counter() - started


def cold_extraction(options: argparse.Namespace) -> None:
    """Extraction of the `--cold-utterances` corpus (SMALL by default; log-mel + dio F0) into an
    empty store with data.feature_workers=2 ÷ with 1, a fresh store each time, COLD_ROUNDS rounds
    alternating which goes first. The workers' start-up is a fixed cost, so the ratio falls with the
    corpus: LARGE shows what extraction of a real corpus gains."""
    corpora = Corpora(options.corpora)
    utterances = getattr(options, "cold_utterances", SMALL)
    settings = speakers_settings(corpora, utterances, corpora.store, *F0_OVERRIDES)
    two, one = [], []
    print(f"cold extraction of {utterances} utterances (mel + f0 dio), {load_text()} before the first round:")
    for round_number in range(COLD_ROUNDS):
        order = (2, 1) if round_number % 2 == 0 else (1, 2)
        measured = {workers: extraction_seconds(corpora, settings, workers) for workers in order}
        two.append(measured[2])
        one.append(measured[1])
        print(f"  round {round_number + 1}: 2 workers {measured[2]:.1f} s, 1 worker {measured[1]:.1f} s = "
              f"{measured[2] / measured[1]:.2f} ({load_text()})")
    print(f"cold extraction: 2 single-threaded workers {statistics.median(two):.1f} s / 1 worker "
          f"{statistics.median(one):.1f} s = {ratio_of_medians(two, one):.2f} (goal <= 0.6 on 2 idle cores; "
          f"medians of {COLD_ROUNDS}; {os.cpu_count()} cores here, shared)")
    print(f"  per-round ratios {spread_text(per_round(two, one))}")
    print(f"  what starting the workers costs: {startup_text(corpora)}")


STARTUP_FILES = 4  # the fewest files extraction starts 2 workers for (2 per worker)


def startup_text(corpora: Corpora) -> str:
    """Extraction of STARTUP_FILES files with 2 workers against 1: the difference is mostly the
    start of the worker pool (a process per worker, each loading the extractors)."""
    settings = speakers_settings(corpora, STARTUP_FILES, corpora.store, *F0_OVERRIDES)
    two, one = [], []
    for _ in range(2):
        two.append(extraction_seconds(corpora, settings, 2))
        one.append(extraction_seconds(corpora, settings, 1))
    return (f"{STARTUP_FILES} files take {statistics.median(two):.1f} s with 2 workers, "
            f"{statistics.median(one):.1f} s with 1 ({load_text()})")


# --- sharded extraction (issue 25) ----------------------------------------------------------

SHARDED_ROUNDS = 3


def extract_command_seconds(corpora: Corpora, utterances: int, *arguments: str) -> float:
    """Wall time of one `python -m voicetrain.extract` command (start-up included) into a fresh store."""
    with tempfile.TemporaryDirectory(prefix="sharded-store-", dir=corpora.folder) as store:
        command = [sys.executable, "-m", "voicetrain.extract", *arguments, "data=speakers",
                   f"data.root={corpora.corpus(utterances)}", f"data.cache_dir={store}", f"run.root={store}/runs",
                   "data.feature_workers=1", "trainer.progress=false", *F0_OVERRIDES]
        started = time.perf_counter()
        completed = subprocess.run(command, capture_output=True, text=True)
        seconds = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{completed.stdout}\n{completed.stderr}")
    return seconds


def sharded_extraction(options: argparse.Namespace) -> None:
    """`python -m voicetrain.extract` of the `--sharded-utterances` corpus (log-mel + dio F0) as 4
    shards on 2 local processes (hydra/launcher=parallel) ÷ as 1 process, each with one
    single-threaded worker and a fresh store, SHARDED_ROUNDS rounds alternating which goes first.
    Both include their processes' start-up, which weighs less the larger the corpus."""
    corpora = Corpora(options.corpora)
    utterances = getattr(options, "sharded_utterances", SMALL)
    sharded_arguments = ("-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", "extract.shards=4",
                         "extract.shard=0,1,2,3")
    sharded, single = [], []
    print(f"sharded extraction of {utterances} utterances (mel + f0 dio), {load_text()} before the first round:")
    for round_number in range(SHARDED_ROUNDS):
        order = ("sharded", "single") if round_number % 2 == 0 else ("single", "sharded")
        measured = {side: extract_command_seconds(corpora, utterances, *(sharded_arguments if side == "sharded"
                                                                          else ())) for side in order}
        sharded.append(measured["sharded"])
        single.append(measured["single"])
        print(f"  round {round_number + 1}: 4 shards on 2 processes {measured['sharded']:.1f} s, 1 process "
              f"{measured['single']:.1f} s = {measured['sharded'] / measured['single']:.2f} ({load_text()})")
    print(f"sharded extraction: 4 shards on 2 local processes {statistics.median(sharded):.1f} s / 1 process "
          f"{statistics.median(single):.1f} s = {ratio_of_medians(sharded, single):.2f} (goal <= 0.6 on 2 idle "
          f"cores; medians of {SHARDED_ROUNDS}; {os.cpu_count()} cores here, shared)")
    print(f"  per-round ratios {spread_text(per_round(sharded, single))}")
