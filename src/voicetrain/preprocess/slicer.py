"""Energy-based slicing: where a recording is silent, where to cut it, and what to trim.

The wave is measured in blocks of 10 ms. A block is silent when its RMS is more than
`slice.threshold_db` below the recording's reference level: its loudest 50 ms (the maximum of the
block levels after a 5-block median, so a click does not set it, and a recording that is mostly
silence still measures its speech). A silent stretch of at least `slice.min_silence_seconds`
inside the recording is a place to cut; silence at either end is trimmed. Each piece keeps up to
`slice.padding_seconds` of silence on either side, at most half of a silence between two pieces,
so neighbours never overlap and every cut lies inside a silence. Pieces are joined, in order,
until a segment reaches `slice.min_seconds`, and never beyond `slice.max_seconds`; a stretch of
sound longer than that with no silence long enough is cut at its quietest 50 ms.
Everything here is a pure function of the samples.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import median_filter, uniform_filter1d

from voicetrain.preprocess.settings import SliceSettings

BLOCK_SECONDS = 0.01
REFERENCE_BLOCKS = 5  # the median over 50 ms that the reference level is the maximum of
QUIET_WINDOW_BLOCKS = 5  # the quietest point of an over-long stretch, averaged over 50 ms
FLOOR_DB = -200.0  # the level of digital silence (log of zero)

Span = tuple[int, int]  # [start, end) in blocks or in samples, as each function says


def block_size(sample_rate: int) -> int:
    return max(1, round(sample_rate * BLOCK_SECONDS))


def to_blocks(seconds: float) -> int:
    return max(1, round(seconds / BLOCK_SECONDS))


def block_levels_db(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """RMS level in dBFS of each 10 ms block (the last one may be shorter)."""
    size = block_size(sample_rate)
    count = -(-len(wave) // size)
    padded = np.zeros(count * size, dtype=np.float64)
    padded[: len(wave)] = wave
    power = np.square(padded).reshape(count, size).sum(axis=1)
    lengths = np.full(count, size, dtype=np.float64)
    lengths[-1] = len(wave) - (count - 1) * size
    rms = np.sqrt(power / lengths)
    return np.maximum(20 * np.log10(np.maximum(rms, 1e-10)), FLOOR_DB)


def reference_level_db(levels: np.ndarray) -> float:
    """The level that `slice.threshold_db` is measured from: the recording's loudest 50 ms."""
    return float(median_filter(levels, size=REFERENCE_BLOCKS, mode="nearest").max())


def sound_mask(levels: np.ndarray, threshold_db: float) -> np.ndarray:
    return levels >= reference_level_db(levels) + threshold_db


def runs(mask: np.ndarray) -> list[Span]:
    """[start, end) of every run of True values."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def sound_spans(mask: np.ndarray, min_silence_blocks: int) -> list[Span]:
    """Stretches of sound (in blocks) separated by silences of at least `min_silence_blocks`;
    shorter silences (between words) stay inside a stretch."""
    spans: list[Span] = []
    for start, end in runs(mask):
        if spans and start - spans[-1][1] < min_silence_blocks:
            spans[-1] = (spans[-1][0], end)
        else:
            spans.append((start, end))
    return spans


def split_at_quietest(span: Span, levels: np.ndarray, longest: int, shortest: int) -> list[Span]:
    """Cuts a stretch longer than `longest` blocks at its quietest point, again and again, keeping
    both parts at least `shortest` blocks long where the stretch allows it."""
    start, end = span
    if end - start <= longest:
        return [span]
    smoothed = uniform_filter1d(levels[start:end], QUIET_WINDOW_BLOCKS, mode="nearest")
    low, high = (shortest, end - start - shortest) if end - start >= 2 * shortest else (1, end - start - 1)
    cut = start + low + int(np.argmin(smoothed[low:high]))
    return split_at_quietest((start, cut), levels, longest, shortest) + \
        split_at_quietest((cut, end), levels, longest, shortest)


def padded_bounds(spans: list[Span], total: int, padding: int) -> list[Span]:
    """Each stretch widened by `padding` blocks into the silence around it, by at most half of a
    silence it shares with a neighbour, and never past either end of the recording."""
    bounds = []
    for index, (start, end) in enumerate(spans):
        before = start if index == 0 else (start - spans[index - 1][1]) // 2
        after = total - end if index == len(spans) - 1 else (spans[index + 1][0] - end) // 2
        bounds.append((start - min(padding, before), end + min(padding, after)))
    return bounds


def join(bounds: list[Span], shortest: int, longest: int) -> list[Span]:
    """Consecutive pieces joined until a segment is at least `shortest` long, never past `longest`;
    a short last segment joins the one before when both fit."""
    segments: list[Span] = []
    for start, end in bounds:
        if segments:
            first, last = segments[-1]
            if last - first < shortest and end - first <= longest:
                segments[-1] = (first, end)
                continue
        segments.append((start, end))
    if len(segments) > 1 and segments[-1][1] - segments[-1][0] < shortest \
            and segments[-1][1] - segments[-2][0] <= longest:
        segments[-2:] = [(segments[-2][0], segments[-1][1])]
    return segments


def plan_segments(wave: np.ndarray, sample_rate: int, settings: SliceSettings) -> list[Span]:
    """Where to cut a long recording: [start, end) in samples of each segment, in order. Segments
    shorter than `settings.min_seconds` can remain (where long silences isolate a short sound);
    the caller lists and drops them."""
    size = block_size(sample_rate)
    levels = block_levels_db(wave, sample_rate)
    padding = round(settings.padding_seconds / BLOCK_SECONDS)
    longest, shortest = to_blocks(settings.max_seconds), to_blocks(settings.min_seconds)
    spans = []
    for span in sound_spans(sound_mask(levels, settings.threshold_db), to_blocks(settings.min_silence_seconds)):
        spans += split_at_quietest(span, levels, max(longest - 2 * padding, 1), shortest)
    segments = join(padded_bounds(spans, len(levels), padding), shortest, longest)
    return [(start * size, min(end * size, len(wave))) for start, end in segments]


def trim_bounds(wave: np.ndarray, sample_rate: int, settings: SliceSettings) -> Span:
    """[start, end) in samples of a recording without its leading and trailing silence (keeping up
    to `settings.padding_seconds` of each): for recordings that are never cut."""
    size = block_size(sample_rate)
    levels = block_levels_db(wave, sample_rate)
    sound = np.flatnonzero(sound_mask(levels, settings.threshold_db))
    padding = round(settings.padding_seconds / BLOCK_SECONDS)
    start, end = max(0, int(sound[0]) - padding), min(len(levels), int(sound[-1]) + 1 + padding)
    return start * size, min(end * size, len(wave))
