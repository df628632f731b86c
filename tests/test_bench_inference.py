"""The decisions of `make bench`'s inference benchmarks (scripts/benchmarks/inference.py): how
much audio a graph's output stands for, the TTS durations it is given, which voiced frames count
as kept, and how the copy-synthesis table pools them."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from benchmarks.inference import CopyScores, even_durations, kept_voiced, samples_of, summary_rows, voiced_frames  # noqa: E402

SAMPLE_RATE, HOP = 16000, 256


@pytest.mark.parametrize(("frames", "characters"), [(100, 7), (7, 7), (3, 5), (301, 40)])
def test_even_durations_cover_the_frames_with_at_least_one_each_and_differ_by_at_most_one(frames: int,
                                                                                         characters: int) -> None:
    durations = even_durations(frames, characters)
    assert len(durations) == characters
    assert min(durations) >= 1 and max(durations) - min(durations) <= 1
    # Fewer frames than characters: one frame each, as the graph's own clamp would give.
    assert sum(durations) == max(frames, characters)


def test_even_durations_refuse_an_empty_sentence() -> None:
    with pytest.raises(ValueError, match="characters=0"):
        even_durations(10, 0)


def test_a_log_mel_stands_for_a_hop_per_frame_and_a_wave_for_itself() -> None:
    assert samples_of(torch.zeros(1, 80, 37), HOP) == 37 * HOP
    assert samples_of(torch.zeros(1, 37 * HOP + 5), HOP) == 37 * HOP + 5
    with pytest.raises(ValueError, match="neither a log-mel"):
        samples_of(torch.zeros(37), HOP)


def test_kept_voiced_counts_on_the_reference_time_line() -> None:
    reference = np.array([True, True, False, True, True])
    # The candidate voices frame 2, which the reference does not (not counted), and ends one frame early.
    candidate = np.array([True, False, True, True])
    assert kept_voiced(reference, candidate) == (4, 2)
    assert kept_voiced(reference, np.ones(9, dtype=bool)) == (4, 4)
    assert kept_voiced(np.zeros(3, dtype=bool), candidate) == (0, 0)


def test_pyin_finds_a_low_tone_voiced_and_silence_unvoiced() -> None:
    time = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    tone = 0.5 * np.sin(2 * np.pi * 95.0 * time)  # kal16's median F0
    wave = np.concatenate([tone, np.zeros(SAMPLE_RATE), tone])
    voiced = voiced_frames(wave, SAMPLE_RATE, HOP)
    second = SAMPLE_RATE // HOP
    assert len(voiced) == 1 + len(wave) // HOP
    # Away from the edges, where pYIN's frame straddles two parts. (White noise would not do as
    # the unvoiced part: pYIN calls a third of its frames voiced in this range.)
    assert voiced[5:second - 5].mean() > 0.9 and voiced[2 * second + 5:-5].mean() > 0.9
    assert not voiced[second + 5:2 * second - 5].any()


def scores(speaker: str, frames: int, voiced: int, kept: tuple[int, int], mrstft: tuple[float, float]) -> CopyScores:
    return CopyScores(speaker, frames, voiced, dict(zip(("a", "b"), kept)), dict(zip(("a", "b"), mrstft)))


def test_the_table_pools_frames_per_speaker_and_overall() -> None:
    rows = summary_rows([scores("low", 100, 40, (40, 0), (1.0, 2.0)), scores("high", 100, 60, (30, 60), (3.0, 5.0)),
                         scores("low", 300, 0, (0, 0), (2.0, 4.0))], ["a", "b"])
    by_speaker = {row[0]: row for row in rows}
    assert [row[0] for row in rows] == ["high", "low", "all"]
    # speaker, utterances, voiced share, MR-STFT a and b (means), voiced kept a and b (pooled over frames)
    assert by_speaker["low"] == ["low", "2", "10%", "1.500", "3.000", "100%", "0%"]
    assert by_speaker["high"] == ["high", "1", "60%", "3.000", "5.000", "50%", "100%"]
    assert by_speaker["all"] == ["all", "3", "20%", "2.000", "3.667", "70%", "60%"]
    # A speaker with no voiced frame has no share to report, rather than a division by zero.
    assert summary_rows([scores("whisper", 50, 0, (0, 0), (1.0, 1.0))], ["a", "b"])[0][5:] == ["n/a", "n/a"]
