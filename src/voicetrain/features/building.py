"""Extractors from validated settings: each `features.<name>` node's `_target_` class, built with
its settings and the shared sample rate and hop."""

from __future__ import annotations

from voicetrain.audio import MelSettings
from voicetrain.config_features import FeatureSettings
from voicetrain.schema import import_target
from voicetrain.features.base import FeatureExtractor


def build_extractors(features: FeatureSettings) -> dict[str, FeatureExtractor]:
    return {name: import_target(spec.target)(spec.settings, features.sample_rate, features.hop_length)
            for name, spec in features.extractors.items()}


def mel_settings(features: FeatureSettings) -> MelSettings | None:
    """The log-mel's settings with the shared rate and hop (what Griffin-Lim and MelSpectrogram
    take), from `features.mel`; None when the run has no log-mel."""
    spec = features.extractors.get("mel")
    if spec is None or not all(hasattr(spec.settings, key) for key in ("n_fft", "win_length", "n_mels")):
        return None
    settings = spec.settings
    return MelSettings(sample_rate=features.sample_rate, n_fft=settings.n_fft, hop_length=features.hop_length,
                       win_length=settings.win_length, n_mels=settings.n_mels, fmin=settings.fmin, fmax=settings.fmax)
