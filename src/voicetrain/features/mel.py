"""The log-mel extractor: today's front end (voicetrain.audio.MelSpectrogram) behind the extractor
contract, so a task that asks for `features.mel` gets exactly the numbers the recipes trained on."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from voicetrain.audio import FEATURE_FORMAT_VERSION, MelSettings, MelSpectrogram, minimum_samples
from voicetrain.features.base import FeatureExtractor
from voicetrain.features.checks import check_wave, number_in_range, positive_integer


@dataclass(frozen=True)
class LogMelSettings:
    """The mel's own keys; the sample rate and the hop are the shared features.sample_rate and
    features.hop_length. fmax=null means the Nyquist frequency."""

    n_fft: int
    win_length: int
    n_mels: int
    fmin: float
    fmax: float | None

    def __post_init__(self) -> None:
        owner = type(self).__name__
        for name in ("n_fft", "win_length", "n_mels"):
            positive_integer(owner, name, getattr(self, name))
        if self.win_length > self.n_fft:
            raise ValueError(f"{owner}.win_length={self.win_length} is larger than n_fft={self.n_fft}; set "
                             f"win_length <= n_fft (usually equal).")
        number_in_range(owner, "fmin", self.fmin, 0.0, float("inf"), "0 is the usual value")
        if self.fmax is not None and float(self.fmax) <= float(self.fmin):
            raise ValueError(f"{owner}.fmax={self.fmax!r} must be above fmin={self.fmin!r}; raise fmax or set null "
                             f"(the Nyquist frequency).")


@functools.lru_cache(maxsize=8)
def _spectrogram(settings: MelSettings) -> MelSpectrogram:
    # One module per process and settings: building the filterbank imports librosa, which is slow.
    return MelSpectrogram(settings).eval()


def _rename_keys(message: str) -> str:
    """MelSettings names its own class; two of its keys are shared, the others the extractor's."""
    for shared in ("sample_rate", "hop_length"):
        message = message.replace(f"MelSettings.{shared}=", f"features.{shared}=")
    return message.replace("MelSettings.", "LogMelSettings.")


class LogMel(FeatureExtractor):
    """[n_mels, frames] natural-log magnitude mel (voicetrain.audio's convention), float32."""

    Settings = LogMelSettings

    def __init__(self, settings: LogMelSettings, sample_rate: int, hop_length: int):
        super().__init__(settings, sample_rate, hop_length)
        try:
            self.mel_settings = MelSettings(sample_rate=sample_rate, n_fft=settings.n_fft, hop_length=hop_length,
                                            win_length=settings.win_length, n_mels=settings.n_mels,
                                            fmin=settings.fmin, fmax=settings.fmax)
        except ValueError as error:
            raise ValueError(_rename_keys(str(error))) from error

    def extract(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        samples = check_wave("LogMel", wave, sample_rate, self.sample_rate, minimum_samples(self.mel_settings))
        with torch.inference_mode():
            mel = _spectrogram(self.mel_settings)(torch.from_numpy(samples))
        return mel.numpy().astype(np.float32, copy=False)

    def channels(self) -> int:
        return self.settings.n_mels

    def identity(self) -> dict[str, Any]:
        # The numbers are voicetrain's own computation (torch's STFT, librosa's filterbank), keyed
        # like today's mel cache by the version of that computation rather than a package's.
        return {**super().identity(), "format_version": FEATURE_FORMAT_VERSION}
