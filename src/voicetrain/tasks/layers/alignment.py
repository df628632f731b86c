"""Alignment for text-to-speech: monotonic alignment search (as in Glow-TTS and VITS), duration
expansion, and the alignment image shown in TensorBoard. Pure tensor/array functions."""

from __future__ import annotations

import numpy as np
import torch



def sequence_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    """[B] lengths -> [B, 1, size] float mask."""
    return (torch.arange(size, device=lengths.device)[None, :] < lengths[:, None]).unsqueeze(1).float()


def gaussian_log_likelihood(target: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """log N(frame | mu_char, I) up to a constant: target [B, n_mels, F], mu [B, n_mels, T] -> [B, T, F]."""
    target, mu = target.float(), mu.float()
    cross = mu.transpose(1, 2) @ target
    return -0.5 * (target.pow(2).sum(1).unsqueeze(1) - 2 * cross + mu.pow(2).sum(1).unsqueeze(2))


def monotonic_alignment_search(log_likelihood: np.ndarray, text_lengths: np.ndarray,
                               frame_lengths: np.ndarray) -> np.ndarray:
    """The most likely monotonic alignment of each item: [B, T, F] log-likelihoods -> [B, T, F] 0/1 path.

    Every frame goes to one character, characters advance by at most one per frame, and the path
    runs from (0, 0) to (text_length - 1, frame_length - 1), so each character gets >= 1 frame
    (text_length <= frame_length is the caller's to ensure). Dynamic programming over frames,
    vectorised over the batch and the characters; padding never enters a path, because a path
    only moves to lower characters when traced back from its own last frame.
    """
    batch, characters, frames = log_likelihood.shape
    scores = np.ascontiguousarray(log_likelihood.transpose(2, 0, 1), dtype=np.float64)  # [F, B, T]
    value = np.full((frames, batch, characters), -np.inf)
    value[0, :, 0] = scores[0, :, 0]
    blocked = np.full((batch, 1), -np.inf)
    for frame in range(1, frames):
        previous = value[frame - 1]
        advance = np.concatenate([blocked, previous[:, :-1]], axis=1)
        value[frame] = np.maximum(previous, advance) + scores[frame]
    path = np.zeros((batch, characters, frames), dtype=np.float32)
    items = np.arange(batch)
    index = np.asarray(text_lengths, dtype=np.int64) - 1
    frame_lengths = np.asarray(frame_lengths, dtype=np.int64)
    for frame in range(frames - 1, -1, -1):
        active = frame < frame_lengths
        path[items[active], index[active], frame] = 1.0
        if frame == 0:
            break
        stay = value[frame - 1, items, index]
        advance = value[frame - 1, items, np.maximum(index - 1, 0)]
        move = active & (index > 0) & ((index == frame) | (stay < advance))
        index = index - move
    return path


def durations_to_path(durations: torch.Tensor) -> torch.Tensor:
    """Integer durations [B, T] -> 0/1 path [B, T, sum of the longest item's durations].

    Built from comparisons with a dynamic `arange`, so a traced ONNX graph keeps the output length
    as a function of the durations input."""
    ends = torch.cumsum(durations, dim=1)
    starts = ends - durations
    frames = torch.arange(ends[:, -1].max(), device=durations.device)
    inside = (frames[None, None, :] >= starts.unsqueeze(-1)) & (frames[None, None, :] < ends.unsqueeze(-1))
    return inside.float()
