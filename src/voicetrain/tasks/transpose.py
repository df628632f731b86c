"""Which F0 a conversion follows: the source's own contour shifted by K semitones (the singing
convention), or with `auto` its log-F0 mean and spread mapped onto the target speaker's (the speech
convention). Pure functions of F0 tracks and pitch statistics; the public helpers a task needs to
honour `python -m voicetrain.infer --transpose` (task=svc and `python -m voicetrain.new NAME --with
f0` use them):

    f0, voiced = torch.from_numpy(self.context.extractor("f0").extract(audio, self.context.sample_rate))
    target = speaker_pitch_range(self.context.statistics["f0"], request.speaker)
    f0 = transposed_f0(f0, voiced, request.transpose, target)   # list "transpose" in inference_inputs

- `transposed_f0(f0, voiced, transpose, target)`: the F0 to follow for `request.transpose`
  (semitones, "auto" or None); unvoiced frames stay 0.
- `speaker_pitch_range(statistics, speaker)`: a speaker's `PitchRange` from the context's F0
  statistics (the corpus's, with a warning, for a speaker without training recordings).
- `pitch_range_of(statistics)`, `own_pitch_range(f0, voiced)`, `map_pitch(...)`: the pieces.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch

from voicetrain.tasks.base import InferenceError

log = logging.getLogger("voicetrain")

LOG_F0_FLOOR_HZ = 1.0  # log-F0 of unvoiced frames is never read; the floor keeps it finite
PITCH_STD_FLOOR = 1e-3  # a source with one voiced frame has no spread: map it to the target's mean


@dataclass(frozen=True)
class PitchRange:
    """Mean and standard deviation of log-F0 (natural log of Hz) over voiced frames."""

    mean: float
    std: float


def pitch_range_of(statistics: dict[str, Any]) -> PitchRange:
    """The range in one F0 statistics entry ({"mean": [...], "std": [...]}, as TaskContext keeps them)."""
    return PitchRange(float(statistics["mean"][0]), float(statistics["std"][0]))


def speaker_pitch_range(statistics: dict[str, Any], speaker: str) -> PitchRange:
    """`speaker`'s log-F0 range over the training set from `context.statistics["f0"]`; the whole
    corpus's, with a warning, for a speaker heard only in held-out recordings."""
    if speaker not in statistics["speakers"]:
        log.warning("speaker %s has no training recordings, so no pitch range of its own: using the whole "
                    "corpus's for --transpose auto", speaker)
        return pitch_range_of(statistics)
    return pitch_range_of(statistics["speakers"][speaker])


def own_pitch_range(f0: torch.Tensor, voiced: torch.Tensor) -> PitchRange:
    """The log-F0 range of one recording's voiced frames (what `--transpose auto` maps from)."""
    log_f0 = torch.log(f0[(voiced > 0.5) & (f0 > 0)].double())
    if log_f0.numel() == 0:
        return PitchRange(0.0, 1.0)
    std = float(log_f0.std()) if log_f0.numel() > 1 else 0.0
    return PitchRange(float(log_f0.mean()), max(std, PITCH_STD_FLOOR))


def map_pitch(f0: torch.Tensor, voiced: torch.Tensor, source: PitchRange, target: PitchRange) -> torch.Tensor:
    """F0 whose voiced log-F0 is moved from `source`'s mean and spread to `target`'s; unvoiced frames 0."""
    is_voiced = (voiced > 0.5) & (f0 > 0)
    log_f0 = torch.log(f0.double().clamp(min=LOG_F0_FLOOR_HZ))
    mapped = torch.exp((log_f0 - source.mean) / max(source.std, PITCH_STD_FLOOR) * target.std + target.mean)
    return torch.where(is_voiced, mapped, torch.zeros_like(mapped)).to(f0.dtype)


def transposed_f0(f0: torch.Tensor, voiced: torch.Tensor, transpose: float | str | None,
                  target: PitchRange) -> torch.Tensor:
    """The F0 a conversion follows: the source's shifted by `transpose` semitones (None or 0 keeps
    it: the singing convention), or with "auto" its own range mapped onto `target` (speech)."""
    is_voiced = (voiced > 0.5) & (f0 > 0)
    if transpose == "auto":
        return map_pitch(f0, voiced, own_pitch_range(f0, voiced), target)
    if isinstance(transpose, str) or (transpose is not None and not math.isfinite(float(transpose))):
        raise InferenceError(f"transpose={transpose!r}: give a number of semitones (e.g. 12, -5, 0) or auto")
    factor = 2.0 ** (float(transpose or 0.0) / 12.0)
    return torch.where(is_voiced, f0 * factor, torch.zeros_like(f0))
