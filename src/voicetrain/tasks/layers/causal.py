"""A causal 1-D convolution: padded on the left only, so output frame t reads input frames up to t
and never the future (the recipes' `causal: true`, for streaming with no lookahead in the layers).
Its parameters are a Conv1d's (same names and shapes), so it loads the same state dicts."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional


class CausalConv1d(nn.Conv1d):
    """nn.Conv1d(in, out, kernel, dilation=d, groups=g) with (kernel - 1) * d frames of left padding."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1, groups: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, dilation=dilation, groups=groups, padding=0)
        self.causal_padding = (kernel_size - 1) * dilation  # read by voicetrain.tasks.streaming.convolution_reach

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(functional.pad(x, (self.causal_padding, 0)))


def convolution(in_channels: int, out_channels: int, kernel_size: int, causal: bool, groups: int = 1) -> nn.Conv1d:
    """A same-length convolution: centred (kernel // 2 each side) or causal."""
    if causal:
        return CausalConv1d(in_channels, out_channels, kernel_size, groups=groups)
    return nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, groups=groups)
