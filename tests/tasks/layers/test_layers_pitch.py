"""The pitch predictor (log-mel -> log-F0 and voicing) and its losses: shapes, decoding to Hz,
and that it learns the F0 of synthetic harmonic tones from their log-mel."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from voicetrain.audio import MelSpectrogram
from voicetrain.tasks.layers.losses import pitch_losses
from voicetrain.tasks.layers.pitch import PitchPredictor, f0_from_prediction
from voicetrain.tasks.layers.synthesis import harmonic_oscillator

from helpers import standard_mel

SAMPLE_RATE = 16000
HOP = 256


def test_prediction_shapes_and_starting_point() -> None:
    torch.manual_seed(0)
    log_f0, voiced_logit = PitchPredictor(20, reference_hz=150.0)(torch.randn(3, 20, 11))
    assert log_f0.shape == voiced_logit.shape == (3, 11)
    assert torch.exp(log_f0).median().item() == pytest.approx(150.0, rel=0.5)


def test_f0_from_prediction_is_zero_where_unvoiced() -> None:
    log_f0 = torch.log(torch.tensor([[100.0, 200.0, 300.0]]))
    f0 = f0_from_prediction(log_f0, torch.tensor([[2.0, -1.0, 0.5]]))
    assert torch.allclose(f0, torch.tensor([[100.0, 0.0, 300.0]]))


def test_pitch_losses_ignore_the_f0_of_unvoiced_frames() -> None:
    target = torch.tensor([[100.0, 0.0, 200.0]])
    right = torch.log(torch.tensor([[100.0, 5000.0, 200.0]]))
    f0_loss, voicing_loss = pitch_losses(right, torch.tensor([[20.0, -20.0, 20.0]]), target)
    assert f0_loss.item() == 0 and voicing_loss.item() < 1e-6
    f0_loss, voicing_loss = pitch_losses(right + math.log(2), torch.tensor([[-20.0, 20.0, -20.0]]), target)
    assert f0_loss.item() == pytest.approx(math.log(2)) and voicing_loss.item() > 10


def tone_log_mels(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-mels of harmonic tones at random F0 in 80-400 Hz whose second half is silent (unvoiced)."""
    frames = 24
    f0 = 80 * 5 ** torch.rand(count, 1, generator=torch.Generator().manual_seed(seed)) * torch.ones(count, frames)
    f0[:, frames // 2:] = 0.0
    amplitudes = 0.3 / torch.arange(1, 21.0).expand(count, frames, 20)
    wave = harmonic_oscillator(f0, amplitudes, SAMPLE_RATE, HOP)
    return MelSpectrogram(dataclasses.replace(standard_mel(), n_mels=40))(wave)[..., :frames], f0


def test_predictor_learns_the_f0_of_harmonic_tones() -> None:
    torch.manual_seed(0)
    predictor = PitchPredictor(40, dim=32, intermediate_dim=64, layers=2)
    optimizer = torch.optim.AdamW(predictor.parameters(), 1e-2)
    log_mel, f0 = tone_log_mels(32, seed=0)
    for _ in range(120):
        f0_loss, voicing_loss = pitch_losses(*predictor(log_mel), f0)
        optimizer.zero_grad()
        (f0_loss + voicing_loss).backward()
        optimizer.step()
    with torch.no_grad():
        log_mel, f0 = tone_log_mels(8, seed=1)
        predicted = f0_from_prediction(*predictor(log_mel))
    voiced = f0 > 0
    clear = torch.cat([torch.arange(2, 10), torch.arange(14, 22)])  # away from the ends and the voicing edge
    assert torch.equal(predicted[:, clear] > 0, voiced[:, clear])
    relative = (predicted[:, 2:10] / f0[:, 2:10] - 1).abs()
    assert relative.median().item() < 0.05
