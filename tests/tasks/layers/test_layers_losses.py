"""Waveform losses in voicetrain.tasks.layers.losses: the multi-resolution STFT loss, the log-mel
L1 and the least-squares GAN and feature-matching losses."""

from __future__ import annotations

import pytest
import torch

from voicetrain.audio import MelSpectrogram
from voicetrain.tasks.layers.losses import (
    MultiResolutionSTFTLoss,
    discriminator_loss,
    feature_matching_loss,
    generator_adversarial_loss,
    mel_l1_loss,
)
from voicetrain.tasks.layers.synthesis import harmonic_oscillator

from helpers import standard_mel

SAMPLE_RATE = 16000
HOP = 256
SMALL_RESOLUTIONS = ((512, 128, 512), (256, 64, 256), (128, 32, 128))


def waves(seed: int = 0, batch: int = 2, samples: int = 8000) -> torch.Tensor:
    return 0.3 * torch.randn(batch, samples, generator=torch.Generator().manual_seed(seed))


def test_mr_stft_loss_is_zero_for_identical_signals_and_positive_otherwise() -> None:
    loss = MultiResolutionSTFTLoss(SMALL_RESOLUTIONS)
    target = waves()
    assert loss(target, target.clone()) == 0
    assert loss(waves(seed=1), target) > 0.5
    assert 0 < loss(target + 1e-3 * waves(seed=1), target) < loss(waves(seed=1), target)


def test_mr_stft_loss_has_finite_gradients_for_a_nearly_silent_prediction() -> None:
    prediction = (1e-6 * waves(seed=1, samples=4000)).requires_grad_()
    MultiResolutionSTFTLoss(SMALL_RESOLUTIONS)(prediction, waves(samples=4000)).backward()
    assert prediction.grad is not None and torch.isfinite(prediction.grad).all() and prediction.grad.abs().sum() > 0


def test_mr_stft_loss_decreases_when_harmonic_amplitudes_are_fitted() -> None:
    frames = 16
    f0 = torch.full((1, frames), 210.0)
    wanted = torch.tensor([0.5, 0.3, 0.02, 0.2, 0.1, 0.05])
    target = harmonic_oscillator(f0, wanted.expand(1, frames, 6), SAMPLE_RATE, HOP)
    logits = torch.zeros(6, requires_grad=True)
    optimizer = torch.optim.Adam([logits], lr=0.1)
    loss_function = MultiResolutionSTFTLoss(SMALL_RESOLUTIONS)
    losses = []
    for _ in range(40):
        optimizer.zero_grad()
        amplitudes = torch.sigmoid(logits).expand(1, frames, 6)
        loss = loss_function(harmonic_oscillator(f0, amplitudes, SAMPLE_RATE, HOP), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]
    assert torch.allclose(torch.sigmoid(logits), wanted, atol=0.02)


def test_mr_stft_loss_rejects_mismatched_shapes_and_bad_resolutions() -> None:
    with pytest.raises(ValueError, match="same samples"):
        MultiResolutionSTFTLoss(SMALL_RESOLUTIONS)(waves(samples=4000), waves(samples=4096))
    with pytest.raises(ValueError, match="window <= n_fft"):
        MultiResolutionSTFTLoss([(256, 64, 512)])


def test_mel_l1_loss_compares_the_log_mels_of_two_waves() -> None:
    mel = MelSpectrogram(standard_mel())
    target = waves()
    assert mel_l1_loss(target, target.clone(), mel) == 0
    louder = mel_l1_loss(2 * target, target, mel)
    assert float(louder) == pytest.approx(torch.log(torch.tensor(2.0)).item(), rel=0.01)  # log-mel shifts by ln 2


def test_least_squares_gan_losses_reach_zero_at_their_targets() -> None:
    ones, zeros = [torch.ones(2, 5), torch.ones(2, 7)], [torch.zeros(2, 5), torch.zeros(2, 7)]
    assert discriminator_loss(ones, zeros) == 0
    assert generator_adversarial_loss(ones) == 0
    assert discriminator_loss(zeros, ones) == pytest.approx(2.0)  # (1 - 0)^2 + 1^2, averaged over discriminators
    assert generator_adversarial_loss([torch.full((2, 3), 0.5)]) == pytest.approx(0.25)


def test_feature_matching_is_zero_for_equal_features_and_does_not_train_the_real_side() -> None:
    real = [[torch.randn(2, 4, 9, requires_grad=True), torch.randn(2, 1, 9, requires_grad=True)]]
    fake = [[torch.randn(2, 4, 9, requires_grad=True), torch.randn(2, 1, 9, requires_grad=True)]]
    assert feature_matching_loss(real, [[tensor.detach().clone() for tensor in real[0]]]) == 0
    feature_matching_loss(real, fake).backward()
    assert all(tensor.grad is None for tensor in real[0])
    assert all(tensor.grad is not None and tensor.grad.abs().sum() > 0 for tensor in fake[0])
