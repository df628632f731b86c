"""F0 from frame features: a small ConvNeXt network that predicts log-F0 and a voiced logit per
frame, for a source-filter vocoder whose input is a log-mel alone (a VC or TTS model's output),
and the decoding of its prediction to Hz. Its training loss is `losses.pitch_losses`."""

from __future__ import annotations

import math

import torch
from torch import nn

from voicetrain.tasks.layers.generators import ConvNeXtBackbone


class PitchPredictor(nn.Module):
    """Features [B, C, F] -> (log-F0 [B, F] in log-Hz, voiced logit [B, F]).

    The log-F0 output is offset by log(`reference_hz`), so an untrained network starts near a
    speaking voice instead of at 1 Hz.
    """

    def __init__(self, input_channels: int, dim: int = 64, intermediate_dim: int = 192, layers: int = 3,
                 reference_hz: float = 150.0) -> None:
        super().__init__()
        self.backbone = ConvNeXtBackbone(input_channels, dim, intermediate_dim, layers)
        self.project = nn.Linear(dim, 2)
        self.reference = math.log(reference_hz)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_f0, voiced_logit = self.project(self.backbone(features).transpose(1, 2)).unbind(-1)
        return log_f0 + self.reference, voiced_logit


def f0_from_prediction(log_f0: torch.Tensor, voiced_logit: torch.Tensor) -> torch.Tensor:
    """F0 in Hz where the voiced logit is positive, 0 elsewhere (the synthesisers' unvoiced value)."""
    return torch.exp(log_f0) * (voiced_logit > 0).to(log_f0.dtype)
