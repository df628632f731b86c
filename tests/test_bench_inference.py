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

from benchmarks.inference import (COPY_COLUMNS, CopyScores, even_durations, kept_voiced, losing_cells,  # noqa: E402
                                  samples_of, summary_rows, voiced_frames)

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


def scores(speaker: str, frames: int, voiced: int, kept: tuple[int, int], mstft: tuple[float, float],
           pesq: tuple[float, float] = (2.0, 1.0)) -> CopyScores:
    columns = {name: {key: 1.0 for key, _, _ in COPY_COLUMNS} for name in ("a", "b")}
    for name, distance, quality in zip(("a", "b"), mstft, pesq):
        columns[name].update(mstft=distance, pesq=quality)
    return CopyScores(speaker, frames, voiced, dict(zip(("a", "b"), kept)), columns)


def test_the_table_pools_frames_per_speaker_and_overall() -> None:
    rows = summary_rows([scores("low", 100, 40, (40, 0), (1.0, 2.0)), scores("high", 100, 60, (30, 60), (3.0, 5.0)),
                         scores("low", 300, 0, (0, 0), (2.0, 4.0), (float("nan"), 1.0))], ["a", "b"])
    by_row = {(row[0], row[1]): row for row in rows}
    assert [row[:2] for row in rows] == [["high", "a"], ["high", "b"], ["low", "a"], ["low", "b"], ["all", "a"],
                                         ["all", "b"]]
    # speaker, vocoder, utterances, voiced share, the column means (MR-STFT, PESQ first), voiced kept (pooled)
    assert by_row["low", "a"][:6] == ["low", "a", "2", "10%", "1.500", "2.000"]  # a NaN is left out of the mean
    assert by_row["low", "b"][:6] == ["low", "b", "2", "10%", "3.000", "1.000"]
    assert by_row["all", "a"][4] == "2.000" and by_row["all", "b"][4] == "3.667"
    assert [by_row[key][-1] for key in (("low", "a"), ("low", "b"), ("high", "a"), ("all", "a"), ("all", "b"))] == [
        "100%", "0%", "50%", "70%", "60%"]
    # A speaker with no voiced frame has no share to report, rather than a division by zero.
    assert summary_rows([scores("whisper", 50, 0, (0, 0), (1.0, 1.0))], ["a", "b"])[0][-1] == "n/a"


def test_losing_cells_name_every_speaker_and_column_where_the_vocoder_is_not_strictly_better() -> None:
    table = [scores("low", 100, 40, (40, 0), (1.0, 2.0)), scores("high", 100, 60, (30, 60), (3.0, 3.0))]
    losing = losing_cells(table, "a", "b")
    # Equal scores are not a win: every column but the two set apart ties, and high's MR-STFT too.
    assert "high: MR-STFT (3.000 vs 3.000)" in losing and not any("PESQ" in cell for cell in losing)
    assert not any(cell.startswith("low: MR-STFT") or cell.startswith("all: MR-STFT") for cell in losing)
    assert len(losing) == 3 * (len(COPY_COLUMNS) - 2) + 1
