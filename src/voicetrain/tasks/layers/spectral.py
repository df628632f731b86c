"""Short-time Fourier transforms for the waveform layers: magnitude spectrograms (losses,
discriminators), an inverse STFT that exports to ONNX, and overlap-add.

`torch.istft` does not survive torch's dynamo ONNX exporter (the graph it writes is rejected by
ONNX Runtime), so `istft` is rebuilt from operations that do: `torch.fft.irfft` per frame, the
synthesis window, overlap-add by `fold`, and division by the summed squared window. It equals
`torch.istft(center=True, length=frames * hop)` (tested).

Frame convention (a centred STFT, like `voicetrain.audio.MelSpectrogram`): frame i is centred on
sample i * hop, so `frames` frames cover the samples [0, frames * hop).
"""

from __future__ import annotations

import torch
from torch.nn import functional

# Added to the power before the square root: its gradient stays finite at a silent bin, and a
# quiet bin still passes a gradient (clamping would cut it off).
POWER_FLOOR = 1e-9


def overlap_add(frames: torch.Tensor, hop_length: int) -> torch.Tensor:
    """Sum frames [B, F, n] placed every `hop_length` samples: -> [B, (F - 1) * hop + n]."""
    batch, count, size = frames.shape
    length = (count - 1) * hop_length + size
    folded = functional.fold(frames.transpose(1, 2), output_size=(1, length), kernel_size=(1, size),
                             stride=(1, hop_length))
    return folded.reshape(batch, length)


def stft_magnitude(wave: torch.Tensor, n_fft: int, hop_length: int, win_length: int) -> torch.Tensor:
    """Magnitude of a centred, Hann-windowed STFT: [B, samples] -> [B, n_fft // 2 + 1, samples // hop + 1]."""
    window = torch.hann_window(win_length, device=wave.device, dtype=wave.dtype)
    spectrum = torch.stft(wave, n_fft=n_fft, hop_length=hop_length, win_length=win_length, window=window,
                          center=True, pad_mode="reflect", return_complex=True)
    return torch.sqrt(spectrum.real.square() + spectrum.imag.square() + POWER_FLOOR)


def istft(magnitude: torch.Tensor, phase: torch.Tensor, hop_length: int, window: torch.Tensor) -> torch.Tensor:
    """Inverse of a centred STFT from magnitude and phase [B, n_fft // 2 + 1, F] -> wave [B, F * hop].

    n_fft is 2 * (bins - 1) and the window has n_fft samples; with n_fft >= 2 * hop every output
    sample is covered by at least two frames, so the squared-window sum never vanishes.
    """
    n_fft = 2 * (magnitude.shape[1] - 1)
    if window.shape[0] != n_fft or n_fft < 2 * hop_length:
        raise ValueError(f"istft needs a window of n_fft={n_fft} samples (bins={magnitude.shape[1]}) and "
                         f"n_fft >= 2 * hop_length={hop_length}; got a window of {window.shape[0]} samples")
    count = magnitude.shape[2]
    real = (magnitude * torch.cos(phase)).transpose(1, 2)
    imaginary = (magnitude * torch.sin(phase)).transpose(1, 2)
    frames = torch.fft.irfft(torch.complex(real, imaginary), n=n_fft, dim=-1) * window
    summed = overlap_add(frames, hop_length)
    squared = (window * window).expand(1, count, n_fft)
    envelope = overlap_add(squared, hop_length)
    start = n_fft // 2
    end = start + count * hop_length
    return summed[:, start:end] / envelope[:, start:end]
