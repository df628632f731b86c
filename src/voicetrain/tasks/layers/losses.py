"""Losses for waveform models: multi-resolution STFT (spectral convergence + log magnitude), the
log-mel L1 through `voicetrain.audio.MelSpectrogram`, least-squares GAN losses, feature matching,
and a pitch predictor's losses. Each loss averages over its parts (resolutions, discriminators,
layers), so a recipe's weights do not change meaning when a discriminator or a resolution is added."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from voicetrain.audio import MelSpectrogram
from voicetrain.tasks.layers.spectral import stft_magnitude

# (n_fft, hop, window) triples at 16 kHz: from 32 ms down to 8 ms windows, as in Parallel WaveGAN's
# 24 kHz set scaled to the rate.
DEFAULT_RESOLUTIONS: tuple[tuple[int, int, int], ...] = ((1024, 256, 1024), (512, 128, 512), (256, 64, 256),
                                                         (2048, 512, 2048))
LOG_FLOOR = 1e-5


def spectral_convergence(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """|| |Y| - |X| ||_F / || |Y| ||_F over the whole batch (magnitudes)."""
    return torch.linalg.vector_norm(target - prediction) / torch.linalg.vector_norm(target).clamp(min=LOG_FLOOR)


def log_magnitude_distance(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean |log |Y| - log |X||, magnitudes floored at LOG_FLOOR."""
    return torch.mean(torch.abs(torch.log(target.clamp(min=LOG_FLOOR)) - torch.log(prediction.clamp(min=LOG_FLOOR))))


class MultiResolutionSTFTLoss(nn.Module):
    """Mean over resolutions of spectral convergence + log-magnitude L1: waves [B, S] -> scalar.
    Zero only for identical magnitude spectrograms at every resolution."""

    def __init__(self, resolutions: Sequence[Sequence[int]] = DEFAULT_RESOLUTIONS) -> None:
        super().__init__()
        self.resolutions = [tuple(int(value) for value in resolution) for resolution in resolutions]
        for resolution in self.resolutions:
            if len(resolution) != 3 or resolution[2] > resolution[0]:
                raise ValueError(f"MultiResolutionSTFTLoss resolution {resolution} must be (n_fft, hop, window) "
                                 f"with window <= n_fft")

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if prediction.shape != target.shape:
            raise ValueError(f"MultiResolutionSTFTLoss needs waves of one shape; got {tuple(prediction.shape)} "
                             f"and {tuple(target.shape)}; crop both to the same samples")
        total = prediction.new_zeros(())
        for n_fft, hop_length, win_length in self.resolutions:
            predicted = stft_magnitude(prediction, n_fft, hop_length, win_length)
            expected = stft_magnitude(target, n_fft, hop_length, win_length)
            total = total + spectral_convergence(predicted, expected) + log_magnitude_distance(predicted, expected)
        return total / len(self.resolutions)


def mel_l1_loss(prediction: torch.Tensor, target: torch.Tensor, mel: MelSpectrogram) -> torch.Tensor:
    """Mean |log-mel(prediction) - log-mel(target)| of two waves [B, S], both through `mel`, so the
    crops' edges are padded alike (a target log-mel cut from a whole utterance would not be)."""
    return torch.mean(torch.abs(mel(prediction) - mel(target)))


def discriminator_loss(real_logits: Sequence[torch.Tensor], fake_logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """Least-squares GAN: mean over discriminators of E[(1 - D(real))^2] + E[D(fake)^2]."""
    total = sum(torch.mean((1 - real).square()) + torch.mean(fake.square())
                for real, fake in zip(real_logits, fake_logits, strict=True))
    return total / len(real_logits)


def generator_adversarial_loss(fake_logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """Least-squares GAN: mean over discriminators of E[(1 - D(fake))^2]."""
    return sum(torch.mean((1 - fake).square()) for fake in fake_logits) / len(fake_logits)


def feature_matching_loss(real_features: Sequence[Sequence[torch.Tensor]],
                          fake_features: Sequence[Sequence[torch.Tensor]]) -> torch.Tensor:
    """Mean over discriminators and layers of E|D_l(real) - D_l(fake)|; the real side is detached."""
    distances = [torch.mean(torch.abs(real.detach() - fake))
                 for real_maps, fake_maps in zip(real_features, fake_features, strict=True)
                 for real, fake in zip(real_maps, fake_maps, strict=True)]
    return sum(distances) / len(distances)


def pitch_losses(log_f0: torch.Tensor, voiced_logit: torch.Tensor,
                 target_f0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean |log F0 - log target| over the target's voiced frames, binary cross-entropy of the voiced
    logit against target F0 > 0) for predictions and a target F0 [B, F] in Hz (0 = unvoiced)."""
    voiced = (target_f0 > 0).to(log_f0.dtype)
    log_target = torch.log(torch.where(target_f0 > 0, target_f0, torch.ones_like(target_f0)))
    f0_loss = (torch.abs(log_f0 - log_target) * voiced).sum() / voiced.sum().clamp(min=1)
    return f0_loss, nn.functional.binary_cross_entropy_with_logits(voiced_logit, voiced)
