"""Sharded feature extraction (`python -m voicetrain.extract`, issue 25): shards run by Hydra's
joblib launcher and by submitit's local executor (standing in for SLURM) give the store a
single-process extraction gives, entry for entry and byte for byte; a shard killed with SIGKILL
continues where it stopped; another shard count over a finished store extracts nothing; missing
and damaged parts are named with the command that makes them; training after sharded extraction
extracts nothing and trains bit-identically to training after local extraction."""

from __future__ import annotations

import json
import logging
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
from hydra import compose
from omegaconf import OmegaConf

from export_helpers import with_tests_on_path
from helpers import TINY_MODEL, bundled_files, composing, environment, output_of, run_cli, training_state_bytes
from voicetrain.config import validate
from voicetrain.data.prepare import prepare_data, read_utterances
from voicetrain.features.building import build_extractors
from voicetrain.features.sharding import PART_FILE, lock_problem, part_name, shard_of
from voicetrain.features.store import INDEX, FeatureError, FeatureStore, audio_key

TIMEOUT = 600
QUIET = ["trainer.progress=false", "data.feature_workers=1"]


def make_corpus(root: Path, per_speaker: int, copies: int = 1) -> Path:
    """A data=speakers corpus of bundled files (copied: a copy is its own audio file version)."""
    for speaker in ("awb", "slt"):
        for source in bundled_files(speaker, per_speaker):
            for copy in range(copies):
                destination = root / speaker / f"c{copy}_{source.name}"
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, destination)
    return root


def corpus_overrides(corpus: Path, cache: Path, *extra: str) -> list[str]:
    return ["data=speakers", f"data.root={corpus}", f"data.cache_dir={cache}", *QUIET, *extra]


def settings_of(*overrides: str) -> Any:
    with composing():
        config = compose(config_name="config", overrides=list(overrides))
    return validate(OmegaConf.to_container(config, resolve=True))


def extract_command(*overrides: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "voicetrain.extract", *overrides], env=with_tests_on_path(),
                          capture_output=True, text=True, timeout=TIMEOUT)


def contents(cache: Path) -> dict[tuple[str, str], tuple[Any, ...]]:
    """Every entry of every index under a cache, by (feature folder, key): its row and its bytes."""
    found: dict[tuple[str, str], tuple[Any, ...]] = {}
    for folder in sorted(path for path in cache.iterdir() if path.is_dir()):
        for index in [folder / INDEX, *sorted(folder.glob(f"parts/*/{INDEX}"))]:
            if not index.is_file():
                continue
            connection = sqlite3.connect(f"{index.resolve().as_uri()}?mode=ro", uri=True)
            rows = connection.execute("SELECT key, status, reason, shard, offset, nbytes, shape, crc, statistics "
                                      "FROM entries").fetchall()
            connection.close()
            for key, status, reason, shard, offset, nbytes, shape, crc, statistics in rows:
                assert (folder.name, key) not in found, f"{key} is in two indexes of {folder}"
                data = b""
                if status == "ok":
                    with open(index.parent / f"shard-{shard:06d}.bin", "rb") as handle:
                        handle.seek(offset)
                        data = handle.read(nbytes)
                found[folder.name, key] = (status, reason, shape, crc, statistics, data)
    return found


def parts_of(cache: Path) -> dict[str, dict[str, Any]]:
    return {str(path.parent.relative_to(cache)): json.loads(path.read_text())
            for path in sorted(cache.glob(f"*/parts/*/{PART_FILE}"))}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus"), per_speaker=4)


@pytest.fixture(scope="module")
def local_cache(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> Path:
    """The corpus extracted the way a training launch does it, in one process."""
    cache = tmp_path_factory.mktemp("local-cache")
    settings = settings_of(*corpus_overrides(corpus, cache))
    prepare_data(settings.data, settings.features, cache, progress=False, workers=1)
    return cache


def extract_in_process(corpus: Path, cache: Path, shards: int, shard: int) -> Any:
    """What `python -m voicetrain.extract extract.shards=SHARDS extract.shard=SHARD` does, in this process."""
    overrides = [*corpus_overrides(corpus, cache), f"extract.shards={shards}", f"extract.shard={shard}"]
    settings = settings_of(*corpus_overrides(corpus, cache))
    store = FeatureStore(cache, build_extractors(settings.features), settings.features.sample_rate,
                         settings.features.hop_length)
    paths = [utterance.path for utterance in read_utterances(settings.data)]
    return store.extract_shard(paths, shard, shards, overrides, workers=1, progress=False)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> tuple[Path, str]:
    """The corpus extracted by four shards that Hydra's joblib launcher runs two at a time."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    cache = tmp_path_factory.mktemp("sharded-cache")
    runs = tmp_path_factory.mktemp("sharded-runs")
    result = extract_command("-m", "hydra/launcher=parallel", f"run.root={runs}", "extract.shards=4",
                             "extract.shard=0,1,2,3", *corpus_overrides(corpus, cache))
    assert result.returncode == 0, output_of(result)
    return cache, result.stdout + result.stderr


@pytest.mark.slow  # four extraction processes, two at a time
def test_four_joblib_shards_equal_a_single_process_extraction(local_cache: Path, sharded: tuple[Path, str]) -> None:
    cache, output = sharded
    assert "sweep finished: 4 job(s) completed, 0 failed" in output
    expected, actual = contents(local_cache), contents(cache)
    assert len(expected) == 8  # the log-mel of 8 files
    assert actual == expected
    assert {name: (part["shards"], part["shard"], part["complete"]) for name, part in parts_of(cache).items()} == {
        f"{folder}/{part_name(shard, 4)}": (4, shard, True)
        for folder in {path.name for path in cache.iterdir() if path.is_dir()} for shard in range(4)}
    for shard in range(4):
        assert f"shard {shard} of 4: extracted " in output


def test_a_second_shard_count_over_a_finished_store_extracts_nothing(tmp_path: Path, corpus: Path,
                                                                    local_cache: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    from voicetrain.extract import run

    cache = tmp_path / "cache"
    extracted = [extract_in_process(corpus, cache, 4, shard).files for shard in range(4)]
    assert sum(extracted) == 8
    before = contents(cache)
    assert before == contents(local_cache)
    owned = [shard_of(key, 3) for key in (audio_key(path) for path in sorted(corpus.rglob("*.flac")))]
    for shard in range(3):
        overrides = [*corpus_overrides(corpus, cache), "extract.shards=3", f"extract.shard={shard}"]
        with composing():
            config = compose(config_name="extract", overrides=overrides)
        with caplog.at_level(logging.INFO, logger="voicetrain"):
            assert run(config, overrides) == 0
        assert (f"shard {shard} of 3: extracted 0 file(s), 0.0 s of audio, {owned.count(shard)} already present, "
                "0 failure(s)") in caplog.text
    assert contents(cache) == before


def test_a_shard_number_outside_the_count_is_one_error(corpus: Path, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    from voicetrain.extract import run

    overrides = [*corpus_overrides(corpus, tmp_path), "extract.shards=4", "extract.shard=4"]
    with composing():
        config = compose(config_name="extract", overrides=overrides)
    assert run(config, overrides) == 2
    assert "extract.shard=4: shards are numbered 0 to 3 for extract.shards=4; pass extract.shard=0..3" in caplog.text
    assert not any(tmp_path.iterdir()), "nothing is written before the settings are valid"


def test_a_key_hydra_refuses_exits_with_status_2(tmp_path: Path) -> None:
    result = extract_command(f"data.cache_dir={tmp_path}", "extract.shard=0", "extract.shardz=4")
    assert result.returncode == 2, output_of(result)
    assert "extract.shardz" in result.stderr and not any(tmp_path.iterdir())


def test_the_shard_of_a_file_is_the_same_in_every_process() -> None:
    keys = [f"{number:032x}" for number in range(200)]
    for shards in (1, 3, 8):
        owners = [shard_of(key, shards) for key in keys]
        assert set(owners) == set(range(shards))  # every shard owns some of 200 keys, each key one shard
        code = (f"from voicetrain.features.sharding import shard_of; "
                f"print([shard_of(f'{{n:032x}}', {shards}) for n in range(200)])")
        other = subprocess.run([sys.executable, "-c", code], env=environment(PYTHONHASHSEED="12345"),
                               capture_output=True, text=True, timeout=TIMEOUT)
        assert other.stdout.strip() == str(owners), other.stderr


def test_missing_and_damaged_parts_are_named_with_the_command_that_makes_them(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "corpus", per_speaker=2)
    (corpus / "awb" / "broken.flac").write_text("not audio")
    cache = tmp_path / "cache"
    overrides = corpus_overrides(corpus, cache, "data.skip_bad_files=true")
    settings = settings_of(*overrides)
    paths = [utterance.path for utterance in read_utterances(settings.data)]
    owners = [shard_of(audio_key(path), 2) for path in paths]
    store = FeatureStore(cache, build_extractors(settings.features), settings.features.sample_rate,
                         settings.features.hop_length)
    summary = store.extract_shard(paths, 1, 2, overrides, workers=1, progress=False)
    assert summary.files == owners.count(1) and summary.present == 0
    assert summary.seconds > 0
    broken = owners[paths.index(corpus / "awb" / "broken.flac")] == 1
    assert [path for path, _ in summary.failures] == ([str(corpus / "awb" / "broken.flac")] if broken else [])

    with pytest.raises(FeatureError) as missing:
        prepare_data(settings.data, settings.features, cache, progress=False, workers=1)
    command = " ".join(["python -m voicetrain.extract", *overrides, "extract.shards=2", "extract.shard=0"])
    assert f"{part_name(0, 2)}: missing (shard 0 of 2 never finished a run here); make it with: {command}" in str(
        missing.value)

    store.extract_shard(paths, 0, 2, overrides, workers=1, progress=False)
    parts = sorted(cache.glob(f"*/parts/*/{INDEX}"))
    written = {path: path.read_bytes() for path in parts}
    prepared = prepare_data(settings.data, settings.features, cache, progress=False, workers=1)
    assert len(prepared.skipped) == 1
    assert {path: path.read_bytes() for path in parts} == written, "reading wrote to a part's index"
    assert not (next(iter(store.folders.values())).folder / "shard-000000.bin").exists(), \
        "the launch extracted something itself"

    damaged = parts[0]
    damaged.write_bytes(b"this is not an SQLite database" * 100)
    with pytest.raises(FeatureError) as unreadable:
        prepare_data(settings.data, settings.features, cache, progress=False, workers=1)
    damaged_shard = 0 if part_name(0, 2) in str(damaged) else 1
    assert str(damaged.parent) in str(unreadable.value)
    assert f"extract.shards=2 extract.shard={damaged_shard}" in str(unreadable.value)


def test_a_damaged_entry_of_a_part_is_recomputed_at_the_next_launch(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "corpus", per_speaker=1)
    cache = tmp_path / "cache"
    extract_in_process(corpus, cache, 1, 0)
    settings = settings_of(*corpus_overrides(corpus, cache))
    expected = contents(cache)
    (shard_file,) = cache.glob("mel-*/parts/0-of-1/shard-000000.bin")
    sound = shard_file.read_bytes()
    shard_file.write_bytes(sound[:100] + bytes(255 - value for value in sound[100:110]) + sound[110:])
    prepared = prepare_data(settings.data, settings.features, cache, progress=False, workers=1)
    first = prepared.all_features.example(0)["mel"]  # read: CRC mismatch, recomputed, noted in damaged.txt
    damaged_keys = (shard_file.parents[2] / "damaged.txt").read_text().split()
    assert len(damaged_keys) == 1
    prepare_data(settings.data, settings.features, cache, progress=False, workers=1)  # the next launch
    again = contents(cache)
    moved = [key for folder, key in again if (folder, key) in expected and again[folder, key] != expected[folder, key]]
    assert moved == [] and not (shard_file.parents[2] / "damaged.txt").exists()
    own_index = shard_file.parents[2] / INDEX
    connection = sqlite3.connect(f"{own_index.resolve().as_uri()}?mode=ro", uri=True)
    assert [row[0] for row in connection.execute("SELECT key FROM entries")] == damaged_keys
    connection.close()
    assert prepare_data(settings.data, settings.features, cache, progress=False, workers=1).all_features.example(
        0)["mel"].equal(first)


def test_the_lock_probe_finds_working_locks_on_local_disk(tmp_path: Path) -> None:
    assert lock_problem(tmp_path) is None


def test_a_filesystem_without_locks_is_said_plainly_and_shards_still_extract(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import errno
    import fcntl

    def no_locks(descriptor: int, command: int, *arguments: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    corpus = make_corpus(tmp_path / "corpus", per_speaker=1)
    cache = tmp_path / "cache"
    monkeypatch.setattr(fcntl, "lockf", no_locks)
    assert lock_problem(cache) == "taking a lock failed (ENOLCK: No locks available)"
    settings = settings_of(*corpus_overrides(corpus, cache))
    with pytest.raises(FeatureError, match="no working file locks, so this launch cannot extract there safely"):
        prepare_data(settings.data, settings.features, cache, progress=False, workers=1)
    with caplog.at_level(logging.WARNING, logger="voicetrain"):
        assert extract_in_process(corpus, cache, 1, 0).files == 2
    assert f"the feature store {cache} is on a filesystem without working file locks" in caplog.text
    assert "cp -r" in caplog.text and "data.cache_dir=/local/features" in caplog.text
    assert len(prepare_data(settings.data, settings.features, cache, progress=False, workers=1).train_utterances) == 2


@pytest.mark.slow  # a joblib job that starts a pool of feature workers
def test_a_shard_in_a_joblib_worker_starts_its_own_feature_workers(tmp_path: Path, corpus: Path,
                                                                   local_cache: Path) -> None:
    """joblib's workers set their own multiprocessing start method, which the feature workers'
    processes cannot use: without care every one of them fails to start and the pool retries forever."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    cache = tmp_path / "cache"
    result = extract_command("-m", "hydra/launcher=parallel", f"run.root={tmp_path / 'runs'}", "extract.shards=1",
                             "extract.shard=0", *corpus_overrides(corpus, cache), "data.feature_workers=2")
    assert result.returncode == 0, output_of(result)
    assert "shard 0 of 1: extracted 8 file(s)" in result.stdout + result.stderr
    assert contents(cache) == contents(local_cache)


@pytest.mark.slow  # two extraction processes on 40 files
def test_a_killed_shard_continues_without_redoing_finished_entries(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "corpus", per_speaker=10, copies=2)
    cache = tmp_path / "cache"
    blocking = ["+features.zcr._target_=blocking_extractor.BlockingZeroCrossings", "+features.zcr.window=512"]
    overrides = corpus_overrides(corpus, cache, *blocking)
    owners = [shard_of(audio_key(path), 2) for path in sorted(corpus.rglob("*.flac"))]
    shard = max((0, 1), key=owners.count)  # at least 20 of the 40 files
    command = [sys.executable, "-m", "voicetrain.extract", *overrides, "extract.shards=2", f"extract.shard={shard}"]
    blocked = tmp_path / "blocked"
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**with_tests_on_path(), "VOICETRAIN_TEST_BLOCK_AFTER": "17",
                                    "VOICETRAIN_TEST_BLOCKED": str(blocked)})
    deadline = time.monotonic() + TIMEOUT
    while not blocked.exists():
        assert process.poll() is None and time.monotonic() < deadline, "the shard did not reach its 18th file"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    index = next(cache.glob(f"zcr-*/{part_name(shard, 2)}/{INDEX}"))
    # A writing connection, as the rerun opens it: it rolls back what the killed process left uncommitted.
    connection = sqlite3.connect(index)
    committed = connection.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
    connection.close()
    owned = owners.count(shard)
    assert 0 < committed <= 17 < owned  # the index is committed every 16 files (or 5 seconds)
    assert json.loads((index.parent / PART_FILE).read_text())["complete"] is False

    again = subprocess.run(command, env=with_tests_on_path(), capture_output=True, text=True, timeout=TIMEOUT)
    assert again.returncode == 0, output_of(again)
    assert (f"shard {shard} of 2: extracted {owned - committed} file(s)" in again.stdout + again.stderr), \
        output_of(again)
    store = contents(cache)
    assert sum(1 for folder, _ in store if folder.startswith("zcr-")) == owned
    for (folder, key), (status, _, _, crc, _, data) in store.items():
        assert status == "ok" and len(data) > 0
        assert zlib.crc32(data) == crc, f"{folder} {key}: its bytes do not match the index"
    assert all(part["complete"] for part in parts_of(cache).values())


@pytest.mark.slow  # submitit starts a process per job
def test_submitit_runs_two_shards_as_jobs(tmp_path: Path, corpus: Path, local_cache: Path) -> None:
    """submitit's local executor stands in for SLURM, as in tests/run/test_sweeps.py."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cache = tmp_path / "cache"
    result = extract_command("-m", "hydra/launcher=submitit_local", f"run.root={tmp_path / 'runs'}", "extract.shards=2",
                             "extract.shard=0,1", *corpus_overrides(corpus, cache))
    assert result.returncode == 0, output_of(result)
    assert "sweep finished: 2 job(s) completed, 0 failed" in result.stdout + result.stderr
    assert contents(cache) == contents(local_cache)
    assert sorted((part["shard"], part["complete"]) for part in parts_of(cache).values()) == [(0, True), (1, True)]


STATE_FILES = ("modules/model.safetensors", "optimizers/model.safetensors", "optimizers/model.json",
               "schedulers/model.json", "loop_state.json", "rng/rank0.json")


@pytest.mark.slow  # two trainings
def test_training_after_sharded_extraction_extracts_nothing_and_trains_identically(
        tmp_path: Path, corpus: Path, local_cache: Path, sharded: tuple[Path, str]) -> None:
    cache = tmp_path / "sharded"
    shutil.copytree(sharded[0], cache)
    parts = {path: path.read_bytes() for path in cache.glob(f"*/parts/*/{INDEX}")}
    training = ["data=speakers", f"data.root={corpus}", *TINY_MODEL, "trainer.max_steps=4", "ckpt.every_n_steps=4",
                "data.feature_workers=1", f"run.root={tmp_path}"]
    for name, store in (("local", local_cache), ("sharded", cache)):
        result = run_cli(*training, f"run.name={name}", f"data.cache_dir={store}", cwd=tmp_path)
        assert result.returncode == 0, output_of(result)
    own_index = next(cache.glob(f"mel-*/{INDEX}"))
    connection = sqlite3.connect(f"{own_index.resolve().as_uri()}?mode=ro", uri=True)
    assert connection.execute("SELECT COUNT(*) FROM entries").fetchone()[0] == 0, "the launch extracted features"
    connection.close()
    assert {path: path.read_bytes() for path in parts} == parts
    for name in STATE_FILES:
        expected = tmp_path / "local" / "checkpoints" / "step_00000004" / name
        actual = tmp_path / "sharded" / "checkpoints" / "step_00000004" / name
        assert training_state_bytes(expected) == training_state_bytes(actual), f"{actual} differs"
