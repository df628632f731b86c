"""Fourier transforms as fixed-basis convolutions and matrix products, for the waveform graphs.

ONNX Runtime runs its DFT op several times slower than PyTorch runs `torch.fft` on one CPU thread,
so the exported vocoder and SVC graphs spent most of their time there. Here the same transforms are
dense products with bases computed once in float64 (numpy) and stored in float32: a centred STFT is
a strided `conv1d`, an inverse STFT a strided `conv_transpose1d` divided by the overlap-added squared
window, and a short real DFT of frames a `matmul`. Convolutions and matrix products are what both
runtimes are fastest at, and PyTorch and ONNX Runtime run the very same graph (one module, one
numerics, checked against `torch.stft` / `torch.istft` / `torch.fft` in the tests).

Frame convention (a centred STFT, like `voicetrain.audio.MelSpectrogram`): frame i is centred on
sample i * hop, so `frames` frames cover the samples [0, frames * hop).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import nn
from torch.nn import functional


def periodic_hann(size: int) -> np.ndarray:
    """`torch.hann_window(size)` (periodic) in float64."""
    return 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(size) / size)


@lru_cache(maxsize=16)
def real_dft_matrix(length: int, size: int) -> np.ndarray:
    """[length, 2 * bins] float64: x [length] (zero-padded to `size`) @ it = the real and imaginary
    parts of `rfft(x, n=size)`, bins = size // 2 + 1, real parts first."""
    if length > size:
        raise ValueError(f"real_dft_matrix: length={length} exceeds the DFT size={size}; pass size >= length")
    angle = 2 * np.pi * np.outer(np.arange(length), np.arange(size // 2 + 1)) / size
    return np.concatenate([np.cos(angle), -np.sin(angle)], axis=1)


@lru_cache(maxsize=16)
def inverse_real_dft_matrix(size: int, length: int) -> np.ndarray:
    """[2 * bins, length] float64: [real parts, imaginary parts] @ it = the first `length` samples of
    `irfft(X, n=size)`. As `irfft`, it ignores the imaginary parts of the 0 Hz and Nyquist bins."""
    bins = size // 2 + 1
    angle = 2 * np.pi * np.outer(np.arange(bins), np.arange(length)) / size
    weight = np.full((bins, 1), 2.0)
    weight[0] = 1.0
    if size % 2 == 0:
        weight[-1] = 1.0
    return np.concatenate([weight * np.cos(angle), -weight * np.sin(angle)], axis=0) / size


_CONVERTED: dict[tuple[int, torch.dtype, torch.device], tuple[np.ndarray, torch.Tensor]] = {}


def constant(array: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """A float64 numpy basis as a tensor of `like`'s dtype and device (a constant in an exported graph).
    Converted once per basis, dtype and device: a stream filters a frame or two per block, where
    converting a 640 x 642 basis each call would cost more than the product itself. The bases come
    from lru caches, so one array is one basis; the entry keeps the array, so its id is not reused."""
    if type(like) is not torch.Tensor or torch.compiler.is_compiling():
        # Traced (ONNX export: fake or functional tensors): a constant of the graph, never cached.
        return torch.as_tensor(array, dtype=like.dtype, device=like.device)
    key = (id(array), like.dtype, like.device)
    entry = _CONVERTED.get(key)
    if entry is None or entry[0] is not array:
        # Outside inference mode even when called inside it: the tensor is reused by training steps
        # that save it for backward, which an inference tensor refuses.
        with torch.inference_mode(False):
            entry = (array, torch.tensor(array, dtype=like.dtype, device=like.device))
        _CONVERTED[key] = entry
    return entry[1]


class ConvSTFT(nn.Module):
    """Centred, Hann-windowed STFT by one strided convolution: wave [B, S] -> (real, imaginary),
    each [B, n_fft // 2 + 1, S // hop + 1]. The edges are zero-padded (n_fft // 2 each side)."""

    basis: torch.Tensor

    def __init__(self, n_fft: int, hop_length: int) -> None:
        super().__init__()
        if n_fft < 2 * hop_length:
            raise ValueError(f"ConvSTFT: n_fft={n_fft} must be at least 2 * hop_length={2 * hop_length} so that "
                             "frames overlap; raise n_fft")
        self.n_fft, self.hop_length = n_fft, hop_length
        basis = (real_dft_matrix(n_fft, n_fft) * periodic_hann(n_fft)[:, None]).T[:, None, :]
        # Not saved: rebuilt from n_fft, so checkpoints and exports hold learned weights only.
        self.register_buffer("basis", torch.tensor(basis, dtype=torch.float32), persistent=False)

    def forward(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        padded = functional.pad(wave.unsqueeze(1), (self.n_fft // 2, self.n_fft // 2))
        spectrum = functional.conv1d(padded, self.basis.to(wave.dtype), stride=self.hop_length)
        return spectrum.chunk(2, dim=1)


class ConvISTFT(nn.Module):
    """Inverse of a centred Hann STFT by one strided transposed convolution: (real, imaginary), each
    [B, n_fft // 2 + 1, F] -> wave [B, F * hop], the overlap-add divided by the summed squared
    window (as `torch.istft(center=True, length=F * hop)`)."""

    basis: torch.Tensor
    squared_window: torch.Tensor

    def __init__(self, n_fft: int, hop_length: int) -> None:
        super().__init__()
        if n_fft < 2 * hop_length:
            raise ValueError(f"ConvISTFT: n_fft={n_fft} must be at least 2 * hop_length={2 * hop_length}, or some "
                             "samples are covered by one frame only; raise n_fft")
        self.n_fft, self.hop_length = n_fft, hop_length
        window = periodic_hann(n_fft)
        basis = (inverse_real_dft_matrix(n_fft, n_fft) * window[None, :])[:, None, :]
        self.register_buffer("basis", torch.tensor(basis, dtype=torch.float32), persistent=False)
        self.register_buffer("squared_window", torch.tensor(window ** 2, dtype=torch.float32).view(1, 1, -1),
                             persistent=False)

    def forward(self, real: torch.Tensor, imaginary: torch.Tensor) -> torch.Tensor:
        frames = real.shape[-1]
        spectrum = torch.cat([real, imaginary], dim=1)
        summed = functional.conv_transpose1d(spectrum, self.basis.to(real.dtype), stride=self.hop_length)
        # The envelope depends only on the frame count; ones_like keeps that count symbolic in an export.
        ones = torch.ones_like(real[:1, :1])
        envelope = functional.conv_transpose1d(ones, self.squared_window.to(real.dtype), stride=self.hop_length)
        start = self.n_fft // 2
        end = start + frames * self.hop_length
        return summed[:, 0, start:end] / envelope[:, 0, start:end]
