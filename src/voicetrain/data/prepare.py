"""Turns `data` + `features` settings into cached features split for training and validation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from voicetrain.audio import MelSettings
from voicetrain.config import DataSettings
from voicetrain.features.store import load_features
from voicetrain.data.readers import (DataError, Utterance, read_bundled_corpus, read_libritts, read_ljspeech,
                                     read_speaker_folders, read_vctk)


@dataclass(frozen=True)
class PreparedData:
    train_utterances: list[Utterance]
    train_mels: list[torch.Tensor]
    val_utterances: list[Utterance]
    val_mels: list[torch.Tensor]
    speakers: list[str]
    mel_mean: list[float]
    mel_std: list[float]
    skipped: list[tuple[Path, str]]


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


def feature_statistics(mels: list[torch.Tensor]) -> tuple[list[float], list[float]]:
    frames = torch.cat(mels, dim=1).double()
    return frames.mean(dim=1).float().tolist(), frames.std(dim=1).clamp(min=1e-3).float().tolist()


def prepare_data(settings: DataSettings, features: MelSettings, progress: bool = True) -> PreparedData:
    table = load_features(read_utterances(settings), features, Path(settings.cache_dir),
                          skip_bad_files=settings.skip_bad_files, progress=progress)
    pairs = list(zip(table.utterances, table.mels))
    train = [(utterance, mel) for utterance, mel in pairs if utterance.split != "val"]
    val = [(utterance, mel) for utterance, mel in pairs if utterance.split == "val"]
    if not train:
        raise DataError(f"no training utterances in data.root={settings.root!r}: every file is held out for "
                        "validation; add more files or lower data.val_fraction")
    train_mels = [mel for _, mel in train]
    mel_mean, mel_std = feature_statistics(train_mels)
    return PreparedData(
        train_utterances=[utterance for utterance, _ in train],
        train_mels=train_mels,
        val_utterances=[utterance for utterance, _ in val],
        val_mels=[mel for _, mel in val],
        speakers=sorted({utterance.speaker for utterance, _ in pairs}),
        mel_mean=mel_mean,
        mel_std=mel_std,
        skipped=table.skipped,
    )
