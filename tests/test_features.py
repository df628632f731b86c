"""Tests for voicetrain.features.store: the log-mel cache, its invalidation and bad-file handling."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

import voicetrain.features.store as features
from voicetrain.audio import AudioReadError, MelSettings, MelSpectrogram, load_audio
from voicetrain.data import Utterance, read_speaker_folders
from voicetrain.features.store import FeatureError, FeatureTable, load_features

from helpers import standard_mel

SETTINGS = standard_mel()


def write_tone(path: Path, sample_rate: int, frequency: float, seconds: float = 0.3) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    time = np.arange(int(sample_rate * seconds)) / sample_rate
    wave = sum(0.3 / order * np.sin(2 * np.pi * frequency * order * time) for order in range(1, 4))
    soundfile.write(path, np.asarray(wave, dtype=np.float32), sample_rate)
    return path


@pytest.fixture
def corpus(tmp_path: Path) -> list[Utterance]:
    root = tmp_path / "voices"
    write_tone(root / "alice" / "one.wav", 16000, 220.0)
    write_tone(root / "alice" / "two.flac", 22050, 247.0, seconds=0.4)
    write_tone(root / "bob" / "one.wav", 22050, 110.0)
    write_tone(root / "bob" / "two.wav", 16000, 123.0, seconds=0.5)
    return read_speaker_folders(root)


@pytest.fixture
def count_loads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    loaded: list[Path] = []

    def counting_load_audio(path: str | Path, sample_rate: int) -> np.ndarray:
        loaded.append(Path(path))
        return load_audio(path, sample_rate)

    monkeypatch.setattr(features, "load_audio", counting_load_audio)
    return loaded


def cache_entries(cache_dir: Path, settings: MelSettings = SETTINGS) -> list[Path]:
    return sorted((cache_dir / settings.cache_key()).glob("*.safetensors"))


def test_features_match_direct_computation(corpus: list[Utterance], tmp_path: Path) -> None:
    table = load_features(corpus, SETTINGS, tmp_path / "cache", progress=False)
    assert isinstance(table, FeatureTable)
    assert table.utterances == corpus
    assert table.skipped == []
    assert table.settings == SETTINGS
    extractor = MelSpectrogram(SETTINGS)
    for utterance, mel in zip(table.utterances, table.mels):
        expected = extractor(torch.from_numpy(load_audio(utterance.path, SETTINGS.sample_rate)))
        assert mel.dtype == torch.float32
        assert mel.shape == expected.shape
        torch.testing.assert_close(mel, expected)


def test_second_call_reads_the_cache(corpus: list[Utterance], tmp_path: Path, count_loads: list[Path]) -> None:
    cache_dir = tmp_path / "cache"
    first = load_features(corpus, SETTINGS, cache_dir, progress=True)
    assert len(count_loads) == len(corpus)
    assert len(cache_entries(cache_dir)) == len(corpus)
    second = load_features(corpus, SETTINGS, cache_dir, progress=False)
    assert len(count_loads) == len(corpus), "cached files were decoded again"
    for before, after in zip(first.mels, second.mels):
        assert torch.equal(before, after)
    assert not list((cache_dir / SETTINGS.cache_key()).glob("*.tmp")), "temporary files were left behind"


@pytest.mark.parametrize("change", [{"hop_length": 128}, {"n_mels": 40}])
def test_changed_settings_use_a_new_cache_dir(
    corpus: list[Utterance], tmp_path: Path, count_loads: list[Path], change: dict
) -> None:
    cache_dir = tmp_path / "cache"
    load_features(corpus, SETTINGS, cache_dir, progress=False)
    changed = dataclasses.replace(SETTINGS, **change)
    table = load_features(corpus, changed, cache_dir, progress=False)
    assert len(count_loads) == 2 * len(corpus)
    assert changed.cache_key() != SETTINGS.cache_key()
    assert len(cache_entries(cache_dir, changed)) == len(corpus)
    assert len(cache_entries(cache_dir, SETTINGS)) == len(corpus)
    first = table.mels[0]
    samples = len(load_audio(corpus[0].path, SETTINGS.sample_rate))
    assert first.shape == (changed.n_mels, samples // changed.hop_length + 1)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong_shape"])
def test_damaged_cache_entry_is_recomputed(
    corpus: list[Utterance], tmp_path: Path, count_loads: list[Path], damage: str
) -> None:
    cache_dir = tmp_path / "cache"
    original = load_features(corpus, SETTINGS, cache_dir, progress=False)
    entry = cache_entries(cache_dir)[0]
    if damage == "garbage":
        entry.write_bytes(b"\x00not a safetensors file")
    elif damage == "truncated":
        entry.write_bytes(entry.read_bytes()[:-10])
    else:
        from safetensors.torch import save_file

        save_file({features.TENSOR_NAME: torch.zeros(7, 3)}, str(entry))
    count_loads.clear()
    again = load_features(corpus, SETTINGS, cache_dir, progress=False)
    assert len(count_loads) == 1
    for before, after in zip(original.mels, again.mels):
        assert torch.equal(before, after)
    count_loads.clear()
    load_features(corpus, SETTINGS, cache_dir, progress=False)
    assert count_loads == [], "the repaired entry was not written back"


def test_changed_audio_file_is_recomputed(corpus: list[Utterance], tmp_path: Path, count_loads: list[Path]) -> None:
    cache_dir = tmp_path / "cache"
    original = load_features(corpus, SETTINGS, cache_dir, progress=False)
    changed = corpus[2].path
    status = changed.stat()
    write_tone(changed, 22050, 440.0, seconds=0.6)
    # Some filesystems have coarse timestamps; make sure the edit is visible as a new mtime.
    os.utime(changed, ns=(status.st_atime_ns, status.st_mtime_ns + 1_000_000_000))
    count_loads.clear()
    again = load_features(corpus, SETTINGS, cache_dir, progress=False)
    assert count_loads == [changed]
    assert again.mels[2].shape != original.mels[2].shape
    assert torch.equal(again.mels[0], original.mels[0])


def test_crash_mid_write_leaves_no_entry(
    corpus: list[Utterance], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache_dir = tmp_path / "cache"
    real_save_file = features.save_file

    def crashing_save_file(tensors: dict, filename: str, metadata: dict | None = None) -> None:
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(features, "save_file", crashing_save_file)
    with pytest.raises(OSError, match="disk full"):
        load_features(corpus, SETTINGS, cache_dir, progress=False)
    settings_dir = cache_dir / SETTINGS.cache_key()
    assert list(settings_dir.iterdir()) == []
    monkeypatch.setattr(features, "save_file", real_save_file)
    assert len(load_features(corpus, SETTINGS, cache_dir, progress=False).mels) == len(corpus)


def test_corrupt_audio_raises_naming_the_path(corpus: list[Utterance], tmp_path: Path) -> None:
    corrupt = corpus[1].path.with_name("corrupt.wav")
    corrupt.write_bytes(np.random.default_rng(0).bytes(3000))
    utterances = [*corpus, Utterance("alice/corrupt", "alice", corrupt)]
    with pytest.raises(AudioReadError) as error:
        load_features(utterances, SETTINGS, tmp_path / "cache", progress=False)
    assert str(corrupt) in str(error.value)


def test_skip_bad_files_records_and_warns(corpus: list[Utterance], tmp_path: Path) -> None:
    corrupt = corpus[1].path.with_name("corrupt.wav")
    corrupt.write_bytes(np.random.default_rng(1).bytes(3000))
    too_short = write_tone(corpus[1].path.with_name("short.wav"), 16000, 200.0, seconds=0.01)
    utterances = [corpus[0], Utterance("alice/corrupt", "alice", corrupt), *corpus[1:],
                  Utterance("alice/short", "alice", too_short)]
    with pytest.warns(UserWarning, match="Skipped 2 of 6") as record:
        table = load_features(utterances, SETTINGS, tmp_path / "cache", skip_bad_files=True, progress=False)
    assert str(corrupt) in str(record[0].message)
    assert table.utterances == corpus
    assert len(table.mels) == len(corpus)
    assert [path for path, _ in table.skipped] == [corrupt, too_short]
    assert "shorter" in table.skipped[1][1]


def test_every_file_bad_is_an_empty_dataset(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF but not really")
    with pytest.warns(UserWarning), pytest.raises(FeatureError, match="empty") as error:
        load_features([Utterance("x", "x", corrupt)], SETTINGS, tmp_path / "cache", skip_bad_files=True, progress=False)
    assert str(corrupt) in str(error.value)


def test_no_utterances_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FeatureError, match="No utterances"):
        load_features([], SETTINGS, tmp_path / "cache", progress=False)


def test_entry_name_depends_on_path_size_and_mtime() -> None:
    base = features.entry_name("/data/a.wav", 100, 5)
    assert base == features.entry_name("/data/a.wav", 100, 5)
    assert base.endswith(".safetensors")
    assert len({base, features.entry_name("/data/b.wav", 100, 5), features.entry_name("/data/a.wav", 101, 5),
                features.entry_name("/data/a.wav", 100, 6)}) == 4
