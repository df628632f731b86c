"""SOLA (synchronised overlap-add) joining of a stream's output blocks, as RVC's and Seed-VC's
real-time modes do it: each step's output starts `search` samples before where the previous
step's held-back tail begins and ends `search` samples after the next tail; the join searches that
range for the offset where the new output best matches the tail (normalised cross-correlation),
crossfades the tail into it there over `crossfade` samples (raised-cosine, the two weights sum to
one), emits `block` samples and holds back the next tail. A wave that two steps compute alike
(a periodic voice whose phase the model carries over) joins at the nominal offset, unchanged.
"""

from __future__ import annotations

import numpy as np


def fade_in(length: int) -> np.ndarray:
    """Raised-cosine weights rising from ~0 to ~1 over `length` samples (evaluated at sample
    centres, so fade_in + its reverse is exactly one)."""
    return np.sin((np.arange(length) + 0.5) * (np.pi / 2 / length)) ** 2 if length else np.zeros(0)


def best_offset(piece: np.ndarray, tail: np.ndarray, search: int) -> int:
    """The offset in [0, 2 * search] at which piece[offset:offset + len(tail)] best matches `tail`
    by normalised cross-correlation; `search` (no shift) when nothing is to be gained (silence)."""
    length = tail.shape[0]
    if search == 0 or length == 0:
        return search
    windows = np.lib.stride_tricks.sliding_window_view(piece[:2 * search + length], length)
    correlation = windows @ tail
    energy = np.sqrt(np.einsum("ij,ij->i", windows, windows) + 1e-8)
    score = correlation / energy
    if not np.any(np.abs(score) > 1e-6):
        return search
    return int(np.argmax(score))


class SolaJoiner:
    """Joins pieces of `block + crossfade + 2 * search` samples into a stream of `block` samples each."""

    def __init__(self, block: int, crossfade: int, search: int):
        self.block = block
        self.crossfade = crossfade
        self.search = search
        self.tail = np.zeros(crossfade, dtype=np.float32)
        self.rising = fade_in(crossfade).astype(np.float32)
        self.offsets: list[int] = []  # each join's shift from the nominal offset, for the report

    @property
    def piece_samples(self) -> int:
        return self.block + self.crossfade + 2 * self.search

    def join(self, piece: np.ndarray) -> np.ndarray:
        """`piece` [piece_samples] -> the next `block` samples of the stream."""
        if piece.shape[0] != self.piece_samples:
            raise ValueError(f"SolaJoiner.join: a piece of {piece.shape[0]} samples; expected {self.piece_samples} "
                             "(block + crossfade + 2 x search)")
        offset = best_offset(piece, self.tail, self.search)
        self.offsets.append(offset - self.search)
        out = piece[offset:offset + self.block].astype(np.float32, copy=True)
        head = out[:self.crossfade]
        out[:self.crossfade] = head * self.rising + self.tail * (1.0 - self.rising)
        self.tail = piece[offset + self.block:offset + self.block + self.crossfade].astype(np.float32, copy=True)
        return out
