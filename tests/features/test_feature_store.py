"""The feature store: features computed once per (audio file version, extractor settings), read
back exactly and lazily, recomputed when settings change (that feature only), when the audio file
changes or when an entry is damaged; extraction resumable, parallel with the same numbers, once for
concurrent launches, and refused up front when the disk is too small."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile
import torch

import voicetrain.features.extraction as extraction
from voicetrain.audio_files import load_audio
from voicetrain.config_features import ExtractorSpec, FeatureSettings
from voicetrain.data import BUNDLED_CORPUS, read_bundled_corpus
from voicetrain.features.building import build_extractors
from voicetrain.features.mel import LogMel, LogMelSettings
from voicetrain.features.pitch import PitchSettings
from voicetrain.features.reading import CorpusFeatures, FeatureReader
from voicetrain.features.store import DAMAGED, INDEX, FeatureSpaceError, FeatureStore, audio_key
from voicetrain.features.wave import WaveformSettings
from voicetrain.tasks.base import crop

from custom_extractor import ZeroCrossings, ZeroCrossingSettings
from export_helpers import with_tests_on_path

SAMPLE_RATE, HOP = 16000, 256
MEL = LogMelSettings(n_fft=1024, win_length=1024, n_mels=80, fmin=0.0, fmax=8000.0)


def features(**extra: ExtractorSpec) -> FeatureSettings:
    return FeatureSettings(SAMPLE_RATE, HOP, {"mel": ExtractorSpec("voicetrain.features.mel.LogMel", MEL),
                                              "wave": ExtractorSpec("voicetrain.features.wave.Waveform",
                                                                    WaveformSettings()), **extra})


def store_of(root: Path, settings: FeatureSettings) -> FeatureStore:
    return FeatureStore(root, build_extractors(settings), settings.sample_rate, settings.hop_length)


@pytest.fixture(scope="module")
def audio() -> list[Path]:
    return sorted((BUNDLED_CORPUS / "slt").glob("*.flac"))[:6]


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    loaded: list[str] = []

    def counting(path, sample_rate):
        loaded.append(str(path))
        return load_audio(path, sample_rate)

    monkeypatch.setattr(extraction, "load_audio", counting)
    return loaded


def corpus(store: FeatureStore, paths: list[Path]) -> CorpusFeatures:
    stored = store.ensure(paths, workers=1, progress=False)
    readers = {name: FeatureReader(folder.folder, folder.dtype, stored.entries[name], [audio_key(path) for path in paths], paths,
                                   folder.extractor, SAMPLE_RATE) for name, folder in store.folders.items()}
    return CorpusFeatures(readers, [entry.shape[-1] for entry in stored.entries["mel"]])


def test_stored_features_read_back_exactly_and_line_up(tmp_path: Path, audio: list[Path]) -> None:
    read = corpus(store_of(tmp_path, features(zcr=ExtractorSpec("custom_extractor.ZeroCrossings",
                                                                 ZeroCrossingSettings(512)))), audio)
    mel_extractor = LogMel(MEL, SAMPLE_RATE, HOP)
    for position, path in enumerate(audio):
        wave = load_audio(path, SAMPLE_RATE)
        example = read.example(position)
        assert torch.equal(example["mel"], torch.from_numpy(mel_extractor.extract(wave, SAMPLE_RATE)))
        # 16-bit PCM in the store: within half a quantisation step of the float wave.
        assert example["wave"].shape == (len(wave),)
        assert float((example["wave"] - torch.from_numpy(wave)).abs().max()) <= 0.5 / 32767 + 1e-7
        zcr = ZeroCrossings(ZeroCrossingSettings(512), SAMPLE_RATE, HOP).extract(wave, SAMPLE_RATE)
        assert torch.allclose(example["zcr"], torch.from_numpy(zcr.astype(np.float16).astype(np.float32)))
        assert example["mel"].shape[-1] == example["zcr"].shape[-1] == len(wave) // HOP + 1 == read.frames(position)


def test_one_crop_cuts_every_feature_at_the_same_place() -> None:
    frames, hop = 20, 4
    wave = torch.arange(frames * hop - 3, dtype=torch.float32)  # not a whole number of hops
    mel = torch.arange(frames, dtype=torch.float32).repeat(3, 1)
    cut = crop({"mel": mel, "wave": wave}, start=17, frames=5, hop_length=hop)
    assert cut["mel"][0].tolist() == [17, 18, 19, 0, 0]
    assert cut["wave"].tolist() == [*range(68, 77), *[0.0] * 11]
    assert cut["wave"].shape[-1] == cut["mel"].shape[-1] * hop


def test_a_warm_store_reads_no_audio_and_changed_settings_recompute_that_feature_only(
        tmp_path: Path, audio: list[Path], loads: list[str]) -> None:
    store_of(tmp_path, features()).ensure(audio, workers=1, progress=False)
    assert len(loads) == len(audio)
    loads.clear()
    store_of(tmp_path, features()).ensure(audio, workers=1, progress=False)
    assert loads == [], "a warm start decoded audio"
    wave_folder = store_of(tmp_path, features()).folders["wave"].folder
    before = {path.name: path.stat().st_mtime_ns for path in wave_folder.iterdir()}
    changed = features()
    changed.extractors["mel"] = ExtractorSpec("voicetrain.features.mel.LogMel",
                                              LogMelSettings(n_fft=1024, win_length=1024, n_mels=40, fmin=0.0,
                                                             fmax=8000.0))
    read = corpus(store_of(tmp_path, changed), audio)
    assert len(loads) == len(audio) and read.example(0)["mel"].shape[0] == 40
    assert {path.name: path.stat().st_mtime_ns for path in wave_folder.iterdir()} == before, "the wave was redone"


def test_an_edited_audio_file_is_recomputed(tmp_path: Path, audio: list[Path], loads: list[str]) -> None:
    files = []
    for path in audio[:3]:
        copy = tmp_path / "audio" / path.name
        copy.parent.mkdir(exist_ok=True)
        copy.write_bytes(path.read_bytes())
        files.append(copy)
    store_of(tmp_path / "store", features()).ensure(files, workers=1, progress=False)
    loads.clear()
    wave, rate = soundfile.read(files[1])
    soundfile.write(files[1], wave[: len(wave) // 2], rate, format="FLAC")
    read = corpus(store_of(tmp_path / "store", features()), files)
    assert loads == [str(files[1])]
    assert read.example(1)["wave"].shape[-1] == len(load_audio(files[1], SAMPLE_RATE))


def test_a_damaged_entry_is_recomputed_never_trusted(tmp_path: Path, audio: list[Path], loads: list[str],
                                                     caplog: pytest.LogCaptureFixture) -> None:
    store = store_of(tmp_path, features())
    expected = corpus(store, audio).example(2)["mel"]
    folder = store.folders["mel"].folder
    shard = next(folder.glob("shard-*.bin"))
    stored = store.ensure(audio, workers=1, progress=False)
    data = bytearray(shard.read_bytes())
    data[stored.entries["mel"][2].offset + 100] ^= 0x40
    shard.write_bytes(bytes(data))
    loads.clear()
    read = corpus(store_of(tmp_path, features()), audio)
    assert torch.equal(read.example(2)["mel"], expected)
    assert "damaged; recomputed" in caplog.text and (folder / DAMAGED).is_file()
    store_of(tmp_path, features()).ensure(audio, workers=1, progress=False)  # the next launch rewrites it
    assert not (folder / DAMAGED).exists()
    caplog.clear()
    assert torch.equal(corpus(store_of(tmp_path, features()), audio).example(2)["mel"], expected)
    assert "damaged" not in caplog.text


def test_unusable_files_are_remembered_with_their_reason(tmp_path: Path, audio: list[Path],
                                                         loads: list[str]) -> None:
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not really audio")
    short = tmp_path / "short.wav"
    soundfile.write(short, np.zeros(100, dtype=np.float32), SAMPLE_RATE)
    stored = store_of(tmp_path / "store", features()).ensure([audio[0], broken, short], workers=1, progress=False)
    assert set(stored.unusable) == {1, 2}
    assert "broken.wav" in stored.unusable[1] and "data.skip_bad_files=true" in stored.unusable[1]
    assert "short.wav" in stored.unusable[2]
    loads.clear()
    again = store_of(tmp_path / "store", features()).ensure([audio[0], broken, short], workers=1, progress=False)
    assert again.unusable == stored.unusable and loads == [], "a known unusable file was decoded again"


def test_extraction_checks_free_space_before_writing(tmp_path: Path, audio: list[Path],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(extraction.shutil, "disk_usage", lambda path: SimpleNamespace(total=1000, used=0, free=1000))
    with pytest.raises(FeatureSpaceError, match=r"need about \d+ MB .* has 0 MB free") as raised:
        store_of(tmp_path, features()).ensure(audio, workers=1, progress=False)
    assert "data.cache_dir" in str(raised.value)
    assert not list(tmp_path.rglob("shard-*.bin")), "something was written"


def test_two_workers_fill_the_store_exactly_like_one(tmp_path: Path, audio: list[Path]) -> None:
    settings = features(f0=ExtractorSpec("voicetrain.features.pitch.Pitch",
                                         PitchSettings("dio", 60.0, 500.0, "zero", None)))
    paths = audio * 2  # enough jobs for the pool to start
    copies = []
    for index, path in enumerate(paths):
        copy = tmp_path / "audio" / f"{index}-{path.name}"
        copy.parent.mkdir(exist_ok=True)
        copy.write_bytes(path.read_bytes())
        copies.append(copy)
    one = store_of(tmp_path / "one", settings)
    one.ensure(copies, workers=1, progress=False)
    two = store_of(tmp_path / "two", settings)
    two.ensure(copies, workers=2, progress=False)
    for name in settings.extractors:
        first, second = one.folders[name].folder, two.folders[name].folder
        assert sorted(path.name for path in first.glob("shard-*")) == sorted(path.name for path in second.glob("shard-*"))
        for shard in first.glob("shard-*"):
            assert shard.read_bytes() == (second / shard.name).read_bytes(), f"{name} differs with two workers"


EXTRACT = """
import sys
from pathlib import Path
from voicetrain.config_features import ExtractorSpec, FeatureSettings
from voicetrain.features.building import build_extractors
from voicetrain.features.mel import LogMelSettings
from voicetrain.features.store import FeatureStore
import voicetrain.features.extraction as extraction
computed = []
original = extraction.compute
extraction.compute = lambda job, *rest: computed.append(job.path) or original(job, *rest)
settings = FeatureSettings(16000, 256, {"mel": ExtractorSpec("voicetrain.features.mel.LogMel",
    LogMelSettings(n_fft=1024, win_length=1024, n_mels=80, fmin=0.0, fmax=8000.0))})
paths = [Path(line) for line in Path(sys.argv[2]).read_text().split()]
FeatureStore(Path(sys.argv[1]), build_extractors(settings), 16000, 256).ensure(paths, workers=1, progress=False)
print("computed", len(computed), flush=True)
"""


def extraction_process(root: Path, listing: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", EXTRACT, str(root), str(listing)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=with_tests_on_path())


def rows(root: Path) -> int:
    (index,) = root.glob(f"mel-*/{INDEX}")
    with sqlite3.connect(index) as connection:
        return connection.execute("SELECT COUNT(*) FROM entries").fetchone()[0]


@pytest.mark.slow  # long: runs in make test-slow (CI runs both)
def test_concurrent_launches_extract_each_file_once_and_a_killed_one_continues(tmp_path: Path) -> None:
    paths = [utterance.path for utterance in read_bundled_corpus()][:60]
    listing = tmp_path / "files.txt"
    listing.write_text("\n".join(map(str, paths)))
    first, second = extraction_process(tmp_path / "store", listing), extraction_process(tmp_path / "store", listing)
    counts = [int(process.communicate(timeout=600)[0].split("computed")[-1]) for process in (first, second)]
    assert sorted(counts) == [0, len(paths)], counts

    killed_root = tmp_path / "killed"
    process = extraction_process(killed_root, listing)
    deadline = time.monotonic() + 600
    while not (list(killed_root.glob(f"mel-*/{INDEX}")) and rows(killed_root) >= extraction.COMMIT_FILES):
        assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = rows(killed_root)
    assert 0 < done < len(paths)
    resumed = extraction_process(killed_root, listing)
    output, _ = resumed.communicate(timeout=600)
    assert f"computed {len(paths) - done}" in output, (done, output)
    assert rows(killed_root) == len(paths)


def test_a_missing_file_is_unusable_not_an_error_of_the_store(tmp_path: Path, audio: list[Path]) -> None:
    stored = store_of(tmp_path, features()).ensure([audio[0], tmp_path / "gone.wav"], workers=1, progress=False)
    assert list(stored.unusable) == [1] and "gone.wav does not exist" in stored.unusable[1]
    assert "data.skip_bad_files=true" in stored.unusable[1]
