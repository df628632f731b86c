"""Feature statistics a model carries: the training set's per-bin log-mel mean and standard
deviation, registered as buffers so that checkpoints and exports hold them and inference needs no
dataset (the buffer names, `mel_mean` and `mel_std`, are part of every saved model's keys)."""

from __future__ import annotations

import torch
from torch import nn


def register_mel_statistics(module: nn.Module, mel_mean: list[float], mel_std: list[float]) -> None:
    """Adds buffers `mel_mean` and `mel_std`, shaped [1, n_mels, 1] to broadcast over [B, n_mels, T]."""
    module.register_buffer("mel_mean", torch.tensor(mel_mean, dtype=torch.float32).view(1, -1, 1))
    module.register_buffer("mel_std", torch.tensor(mel_std, dtype=torch.float32).view(1, -1, 1))
