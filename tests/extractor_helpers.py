"""Signals of known content and built extractors for the extractor tests.

The settings below are the values the recipes' YAML gives (the settings dataclasses carry no
defaults: the YAML is the one source of them); each test states any value it changes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from voicetrain.features.base import FeatureExtractor
from voicetrain.features.content import ContentEncoder, ContentSettings
from voicetrain.features.loudness import Loudness, LoudnessSettings
from voicetrain.features.mel import LogMel, LogMelSettings
from voicetrain.features.pitch import Pitch, PitchSettings
from voicetrain.features.wave import Waveform, WaveformSettings

MEL = LogMelSettings(n_fft=1024, win_length=1024, n_mels=80, fmin=0.0, fmax=8000.0)
HARVEST = PitchSettings(method="harvest", f0_min=50.0, f0_max=1100.0, unvoiced="zero", voicing_threshold=None)
DIO = PitchSettings(method="dio", f0_min=50.0, f0_max=1100.0, unvoiced="zero", voicing_threshold=None)
SWIFT = PitchSettings(method="swift", f0_min=50.0, f0_max=1100.0, unvoiced="zero", voicing_threshold=0.5)
A_WEIGHTED = LoudnessSettings(method="a_weighted", n_fft=1024, floor_db=-100.0)
RMS = LoudnessSettings(method="rms", n_fft=1024, floor_db=-100.0)

# HuBERT's geometry (a 400-sample receptive field, a 320-sample stride at 16 kHz) with a few
# narrow layers: a random model of 128 kB that runs in milliseconds.
TINY_HUBERT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                   conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)


def save_tiny_hubert(folder: Path) -> Path:
    """A randomly initialised HubertModel written by save_pretrained (safetensors) into `folder`."""
    from transformers import HubertConfig, HubertModel

    generator_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        HubertModel(HubertConfig(**TINY_HUBERT)).save_pretrained(folder, safe_serialization=True)
    finally:
        torch.random.set_rng_state(generator_state)
    return folder


def every_extractor(sample_rate: int, hop_length: int, hubert: Path) -> dict[str, FeatureExtractor]:
    return {
        "mel": LogMel(MEL, sample_rate, hop_length),
        "wave": Waveform(WaveformSettings(), sample_rate, hop_length),
        "harvest": Pitch(HARVEST, sample_rate, hop_length),
        "dio": Pitch(DIO, sample_rate, hop_length),
        "swift": Pitch(SWIFT, sample_rate, hop_length),
        "a_weighted": Loudness(A_WEIGHTED, sample_rate, hop_length),
        "rms": Loudness(RMS, sample_rate, hop_length),
        "content": ContentEncoder(ContentSettings(model=str(hubert), layer=2, sample_rate=16000, normalize=False),
                                  sample_rate, hop_length),
    }


def glide(sample_rate: int, start_hz: float = 120.0, end_hz: float = 240.0, seconds: float = 1.0,
          silence: float = 0.3, harmonics: int = 6, peak: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """A harmonic tone whose F0 glides exponentially from `start_hz` to `end_hz`, with `silence`
    seconds of digital silence before and after. Returns (wave float32, true F0 per sample, 0 in
    the silence)."""
    count = int(seconds * sample_rate)
    f0 = start_hz * (end_hz / start_hz) ** (np.arange(count) / count)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    tone = sum(np.sin(order * phase) / order for order in range(1, harmonics + 1))
    tone = peak * tone / np.abs(tone).max()
    quiet = np.zeros(int(silence * sample_rate))
    wave = np.concatenate([quiet, tone, quiet]).astype(np.float32)
    return wave, np.concatenate([quiet, f0, quiet])


def sine(sample_rate: int, frequency: float, amplitude: float, seconds: float = 1.0) -> np.ndarray:
    time = np.arange(int(seconds * sample_rate)) / sample_rate
    return (amplitude * np.sin(2 * np.pi * frequency * time)).astype(np.float32)
