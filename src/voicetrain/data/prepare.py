"""Turns `data` + `features` settings into a corpus split for training and validation, its features
in the store, and their statistics over the training set.

Neither split's features are held in memory: the training set's are read per example, the held-out
set's when `Task.validate` indexes them (`data.features["mel"][i]`), so a process's memory does not
grow with the corpus, whatever `data.val_fraction` holds out."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from voicetrain.audio_files import AudioReadError
from voicetrain.config import DataSettings, FeatureSettings
from voicetrain.data.readers import (DataError, Utterance, read_bundled_corpus, read_libritts, read_ljspeech,
                                     read_speaker_folders, read_vctk)
from voicetrain.features.base import frame_count, mean_and_std
from voicetrain.features.building import build_extractors
from voicetrain.features.extraction import usable_cores
from voicetrain.features.reading import CorpusFeatures, FeatureReader, FeatureSequence
from voicetrain.features.store import FeatureStore, Stored, audio_key, statistics_of

LISTED_SKIPPED_PATHS = 3


@dataclass(frozen=True)
class FeatureStatistics:
    """Per-channel mean and standard deviation of one feature over the training set, and per speaker."""

    mean: list[float]
    std: list[float]
    speakers: dict[str, dict[str, list[float]]]  # speaker -> {"mean": [...], "std": [...]}

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "speakers": self.speakers}


@dataclass(frozen=True)
class PreparedData:
    """The corpus split for training and validation, with its features, both read from the store
    when asked for: `train_features` per example, `val_features[name][i]` per held-out utterance."""

    train_utterances: list[Utterance]
    val_utterances: list[Utterance]
    speakers: list[str]
    train_features: CorpusFeatures
    val_features: dict[str, FeatureSequence]  # read on access: len(), [i], iteration, slices
    all_features: CorpusFeatures  # training then validation utterances, for Task.check_data
    statistics: dict[str, FeatureStatistics]
    skipped: list[tuple[Path, str]]

    @property
    def mel_mean(self) -> list[float]:
        return self.statistics["mel"].mean if "mel" in self.statistics else []

    @property
    def mel_std(self) -> list[float]:
        return self.statistics["mel"].std if "mel" in self.statistics else []


def read_utterances(settings: DataSettings) -> list[Utterance]:
    if settings.kind == "bundled":
        return read_bundled_corpus(Path(settings.root) if settings.root else None)
    if settings.kind == "ljspeech":
        return read_ljspeech(Path(settings.root), val_fraction=settings.val_fraction)
    if settings.kind == "vctk":
        return read_vctk(Path(settings.root), val_fraction=settings.val_fraction)
    if settings.kind == "libritts":
        return read_libritts(Path(settings.root), val_fraction=settings.val_fraction)
    return read_speaker_folders(Path(settings.root), val_fraction=settings.val_fraction)


def summed(vectors: list[np.ndarray], layout: list[tuple[str, int]]) -> dict[str, np.ndarray]:
    total = np.sum(vectors, axis=0) if vectors else np.zeros(sum(size for _, size in layout))
    return statistics_of(total, layout)


def statistics_over(stored: Stored, name: str, positions: list[int], utterances: list[Utterance]
                    ) -> FeatureStatistics | None:
    """A feature's statistics over `positions` (the training set), overall and per speaker, summed
    from what extraction stored: no feature is read."""
    layout = stored.layouts[name]
    if not layout:
        return None
    vectors = stored.statistics[name]
    overall_mean, overall_std = mean_and_std(summed([vectors[p] for p in positions], layout))
    speakers = {}
    for speaker in sorted({utterances[p].speaker for p in positions}):
        own = [vectors[p] for p in positions if utterances[p].speaker == speaker]
        mean, std = mean_and_std(summed(own, layout))
        speakers[speaker] = {"mean": mean.tolist(), "std": std.tolist()}
    return FeatureStatistics(overall_mean.tolist(), overall_std.tolist(), speakers)


def readers_for(store: FeatureStore, stored: Stored, positions: list[int], utterances: list[Utterance]
                ) -> CorpusFeatures:
    readers = {}
    for name, folder in store.folders.items():
        readers[name] = FeatureReader(folder.folder, folder.dtype, [stored.entries[name][p] for p in positions],
                                      [audio_key(utterances[p].path) for p in positions],
                                      [utterances[p].path for p in positions], folder.extractor, store.sample_rate)
    # Every frame-level feature has the same count; with the wave alone it follows from the samples.
    name = next(iter(store.folders))
    samples_only = not store.extractors[name].frame_level
    counts = [frame_count(shape[-1], store.hop_length) if samples_only else shape[-1]
              for shape in (stored.entries[name][p].shape for p in positions)]
    return CorpusFeatures(readers, counts)


def prepare_data(settings: DataSettings, features: FeatureSettings, cache_dir: Path | None = None,
                 progress: bool = True, workers: int | None = None) -> PreparedData:
    """The corpus split for training and validation with its features, extracted into the store
    under `cache_dir` (default data.cache_dir) where missing."""
    utterances = read_utterances(settings)
    if not utterances:
        raise DataError(f"no utterances in data.root={settings.root!r}; check the dataset reader and data.root")
    extractors = build_extractors(features)
    store = FeatureStore(cache_dir or Path(settings.cache_dir), extractors, features.sample_rate, features.hop_length)
    stored = store.ensure([utterance.path for utterance in utterances], workers or usable_cores(), progress)
    skipped = [(utterances[position].path, reason) for position, reason in sorted(stored.unusable.items())]
    report_unusable(skipped, len(utterances), settings.skip_bad_files)
    usable = [position for position in range(len(utterances)) if position not in stored.unusable]
    train = [position for position in usable if utterances[position].split != "val"]
    val = [position for position in usable if utterances[position].split == "val"]
    if not train:
        raise DataError(f"no training utterances in data.root={settings.root!r}: every file is held out for "
                        "validation; add more files or lower data.val_fraction")
    held_out = readers_for(store, stored, val, utterances)
    statistics = {name: found for name in extractors
                  if (found := statistics_over(stored, name, train, utterances)) is not None}
    return PreparedData(
        train_utterances=[utterances[position] for position in train],
        val_utterances=[utterances[position] for position in val],
        speakers=sorted({utterances[position].speaker for position in usable}),
        train_features=readers_for(store, stored, train, utterances),
        val_features={name: held_out[name] for name in extractors},
        all_features=readers_for(store, stored, train + val, utterances),
        statistics=statistics,
        skipped=skipped,
    )


def report_unusable(skipped: list[tuple[Path, str]], total: int, skip_bad_files: bool) -> None:
    """An unusable file stops the run, naming it; with data.skip_bad_files=true it is left out with
    one warning that gives the count and the first few."""
    if not skipped:
        return
    if not skip_bad_files:
        raise AudioReadError(skipped[0][1])
    listed = ", ".join(str(path) for path, _ in skipped[:LISTED_SKIPPED_PATHS])
    more = f" and {len(skipped) - LISTED_SKIPPED_PATHS} more" if len(skipped) > LISTED_SKIPPED_PATHS else ""
    warnings.warn(f"Skipped {len(skipped)} of {total} audio files that could not be used "
                  f"(data.skip_bad_files=true): {listed}{more}.", stacklevel=2)
    if len(skipped) == total:
        raise DataError(f"Every one of the {total} audio files was unreadable and skipped (first: {skipped[0][0]}: "
                        f"{skipped[0][1]}); the dataset is empty. Check data.root and the audio files.")
