"""Multi-period and multi-resolution discriminators: the documented output structure at several
lengths, gradients to the input, and small configurations."""

from __future__ import annotations

import math

import pytest
import torch

from voicetrain.tasks.layers.discriminators import MultiPeriodDiscriminator, MultiResolutionDiscriminator

SMALL_CHANNELS = (4, 8, 16, 16)


@pytest.mark.parametrize("samples", [4000, 4001, 8192])
def test_multi_period_discriminator_folds_by_each_period(samples: int) -> None:
    periods = (2, 3, 5, 7, 11)
    discriminator = MultiPeriodDiscriminator(periods, channels=SMALL_CHANNELS)
    logits, features = discriminator(torch.randn(3, samples))
    assert len(logits) == len(features) == len(periods)
    for period, scores, maps in zip(periods, logits, features):
        assert len(maps) == len(SMALL_CHANNELS) + 1
        rows = math.ceil(samples / period)
        for stride_count, feature in enumerate(maps[:len(SMALL_CHANNELS) - 1], start=1):
            rows = math.ceil(rows / 3)
            assert feature.shape == (3, SMALL_CHANNELS[stride_count - 1], rows, period)
        assert maps[-1].shape == (3, 1, rows, period)
        assert scores.shape == (3, rows * period) and torch.equal(scores, maps[-1].flatten(1))


@pytest.mark.parametrize("samples", [4000, 5555])
def test_multi_resolution_discriminator_strides_along_frequency(samples: int) -> None:
    resolutions = ((512, 128, 512), (256, 64, 256))
    discriminator = MultiResolutionDiscriminator(resolutions, channels=8, layers=4)
    logits, features = discriminator(torch.randn(2, samples))
    assert len(logits) == len(features) == len(resolutions)
    for (n_fft, hop, _), scores, maps in zip(resolutions, logits, features):
        frames, bins = samples // hop + 1, n_fft // 2 + 1
        assert len(maps) == 4 + 2
        assert maps[0].shape == (2, 8, frames, bins)
        for _ in range(3):
            bins = (bins - 1) // 2 + 1
        assert maps[-2].shape == (2, 8, frames, bins) and maps[-1].shape == (2, 1, frames, bins)
        assert scores.shape == (2, frames * bins)


@pytest.mark.parametrize("discriminator", [MultiPeriodDiscriminator((2, 3), channels=SMALL_CHANNELS),
                                           MultiResolutionDiscriminator(((256, 64, 256),), channels=8)])
def test_gradients_reach_the_wave_and_every_parameter(discriminator: torch.nn.Module) -> None:
    wave = torch.randn(2, 4000, requires_grad=True)
    logits, features = discriminator(wave)
    (sum(score.mean() for score in logits) + sum(maps[0].mean() for maps in features)).backward()
    assert wave.grad is not None and wave.grad.abs().sum() > 0
    assert all(parameter.grad is not None for parameter in discriminator.parameters())


def test_small_channels_make_small_discriminators() -> None:
    small = sum(parameter.numel() for parameter in MultiPeriodDiscriminator(channels=SMALL_CHANNELS).parameters())
    default = sum(parameter.numel() for parameter in MultiPeriodDiscriminator().parameters())
    assert small < default / 1000
