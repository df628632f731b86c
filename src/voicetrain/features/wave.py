"""The waveform extractor: the resampled audio itself, kept by the store as 16-bit PCM, so that a
crop of frames [a, b) comes with the samples [a * hop_length, b * hop_length)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from voicetrain.features.base import FeatureExtractor
from voicetrain.features.checks import check_wave


@dataclass(frozen=True)
class WaveformSettings:
    """No keys: the wave is defined by the shared features.sample_rate alone."""


class Waveform(FeatureExtractor):
    """[samples] float32 in [-1, 1], the wave as the store was given it (load_audio resamples)."""

    Settings = WaveformSettings
    frame_level = False
    storage_dtype = "int16"

    def extract(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        samples = check_wave("Waveform", wave, sample_rate, self.sample_rate, minimum_samples=1)
        # Clipped as load_audio clips: int16 PCM cannot hold more than full scale.
        return np.clip(samples, -1.0, 1.0)

    def channels(self) -> int:
        return 1

    def statistics(self, array: np.ndarray) -> dict[str, np.ndarray]:
        # Models normalise the mel or the F0, never the raw wave; summing every sample of the corpus
        # would cost time for numbers nothing reads.
        return {}
