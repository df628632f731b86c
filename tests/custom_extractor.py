"""A feature a forked project adds without touching voicetrain: one class and a `_target_` line
(`+features.zcr._target_=custom_extractor.ZeroCrossings +features.zcr.window=512`, with this
folder on PYTHONPATH). Imports nothing from the test suite."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from voicetrain.features.base import FeatureExtractor, frame_count


@dataclass(frozen=True)
class ZeroCrossingSettings:
    window: int  # samples around each frame's centre

    def __post_init__(self) -> None:
        if self.window < 2:
            raise ValueError(f"ZeroCrossingSettings.window={self.window!r}: must be at least 2 samples")


class ZeroCrossings(FeatureExtractor):
    """The zero-crossing rate around each frame's centre: [1, frames], on the shared frame grid."""

    Settings = ZeroCrossingSettings
    storage_dtype = "float16"

    def extract(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        frames = frame_count(len(wave), self.hop_length)
        half = self.settings.window // 2
        padded = np.pad(wave, half)
        signs = np.signbit(padded).astype(np.int8)
        crossings = np.concatenate([[0], np.abs(np.diff(signs))]).cumsum()
        centres = np.arange(frames) * self.hop_length + half
        counts = crossings[np.minimum(centres + half, len(padded) - 1)] - crossings[centres - half]
        return (counts / self.settings.window).astype(np.float32)[None]

    def channels(self) -> int:
        return 1
