"""The chunk planner and the streaming helpers of long-input inference (voicetrain.chunking):
pure properties of the plan and the crossfade, and each helper against the one-pass computation."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from voicetrain.audio import MelSettings, MelSpectrogram
from voicetrain.chunking import (NOISE_BLOCK_FRAMES, ChunkPlan, Stitcher, framed_slice, phase_advance, plan_for,
                                       positional_noise, whole_input_instance_norm)
from voicetrain.tasks.layers.synthesis import combtooth


@settings(max_examples=200, deadline=None)
@given(frames=st.integers(1, 400), chunk=st.integers(2, 60), overlap=st.integers(0, 30), context=st.integers(0, 20))
def test_spans_cover_the_input_and_the_crossfade_weights_sum_to_one(frames: int, chunk: int, overlap: int,
                                                                     context: int) -> None:
    overlap = min(overlap, chunk // 2)
    plan = ChunkPlan(frames, chunk, overlap, context)
    spans = plan.spans
    assert spans[0].start == 0 and spans[-1].end == frames
    total = torch.zeros(frames, dtype=torch.float64)
    for index, span in enumerate(spans):
        assert span.context_start == max(span.start - context, 0) and span.context_end == min(span.end + context, frames)
        assert span.end - span.start <= chunk + overlap  # the last one may absorb a tail shorter than the overlap
        if index + 1 < len(spans):
            assert spans[index + 1].start == span.end - overlap  # neighbours overlap by exactly the crossfade
        total[span.start:span.end] += plan.fade(span)
    assert torch.allclose(total, torch.ones(frames, dtype=torch.float64), atol=1e-12)


def test_an_input_no_longer_than_a_chunk_is_one_chunk_without_context_or_fades() -> None:
    plan = ChunkPlan(100, 100, 10, 30)
    assert [(span.start, span.end, span.context_start, span.context_end) for span in plan.spans] == [(0, 100, 0, 100)]
    assert torch.equal(plan.fade(plan.spans[0], scale=4), torch.ones(400, dtype=torch.float64))
    stitcher = Stitcher(plan, scale=4)
    piece = torch.randn(400)
    stitcher.add(plan.spans[0], piece)
    assert torch.equal(stitcher.output, piece)


def test_impossible_plans_are_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match="at most half the chunk"):
        ChunkPlan(100, 10, 6, 0)
    with pytest.raises(ValueError, match="positive number of seconds"):
        plan_for(100, 16000, 256, chunk_seconds=0.0)


def test_a_stitched_signal_is_the_signal_where_chunks_agree() -> None:
    plan = ChunkPlan(50, 12, 4, 3)
    signal = torch.randn(2, 50 * 8)
    stitcher = Stitcher(plan, leading=(2,), scale=8)
    for span in plan.spans:
        stitcher.add(span, signal[:, span.start * 8:span.end * 8])
    assert torch.allclose(stitcher.output, signal, atol=1e-6)


def test_a_framed_slice_is_the_whole_waves_frames() -> None:
    mel = MelSettings(sample_rate=16000, n_fft=1024, hop_length=256, win_length=1024, n_mels=80, fmin=0.0, fmax=8000.0)
    wave = torch.randn(mel.sample_rate * 3, generator=torch.Generator().manual_seed(0)) * 0.1
    spectrogram = MelSpectrogram(mel)
    whole = spectrogram(wave)
    for start, end in ((0, 20), (40, 90), (150, whole.shape[-1])):
        piece = framed_slice(spectrogram, wave, start, end, mel.hop_length, mel.n_fft // 2)
        assert torch.allclose(piece, whole[:, start:end], atol=1e-4), (start, end)


def test_a_pulse_train_started_at_the_advanced_phase_continues_the_whole_one() -> None:
    sample_rate, hop, frames = 16000, 256, 120
    generator = torch.Generator().manual_seed(1)
    f0 = 100.0 + 200.0 * torch.rand(frames, generator=generator)
    f0[30:45] = 0.0  # an unvoiced stretch
    whole = combtooth(f0.unsqueeze(0), sample_rate, hop)[0]
    for start in (1, 37, 80):
        phase = torch.tensor([phase_advance(f0[:start + 1], sample_rate, hop)])
        resumed = combtooth(f0[start:].unsqueeze(0), sample_rate, hop, initial_phase=phase)[0]
        # The last frame of a piece is held rather than interpolated: compare all but it.
        assert torch.allclose(resumed[:-hop], whole[start * hop:-hop], atol=1e-3), start
        restarted = combtooth(f0[start:].unsqueeze(0), sample_rate, hop)[0]
        assert not torch.allclose(restarted[:-hop], whole[start * hop:-hop], atol=1e-3)  # the phase matters


def test_noise_at_a_frame_does_not_depend_on_the_cut() -> None:
    hop = 4
    short = positional_noise(0, 10, 10, hop, seed=3)
    assert torch.equal(short, torch.randn(1, 10, hop, generator=torch.Generator().manual_seed(3)))
    total = 2 * NOISE_BLOCK_FRAMES + 100
    whole = positional_noise(0, total, total, hop, seed=3)
    for start, end in ((5, 17), (NOISE_BLOCK_FRAMES - 3, NOISE_BLOCK_FRAMES + 9), (total - 50, total)):
        assert torch.equal(positional_noise(start, end, total, hop, seed=3), whole[:, start:end])


class Normalised(nn.Module):
    """Convolutions with instance normalisation between them, as the VC and SVC encoders have."""

    def __init__(self) -> None:
        super().__init__()
        # The second normalisation has learned scale and shift, as a fork's model may.
        self.layers = nn.Sequential(nn.Conv1d(3, 8, 5, padding=2), nn.InstanceNorm1d(8), nn.Conv1d(8, 8, 3, padding=1),
                                    nn.InstanceNorm1d(8, affine=True), nn.Conv1d(8, 2, 1))
        with torch.no_grad():
            self.layers[3].weight.uniform_(0.5, 2.0)
            self.layers[3].bias.uniform_(-1.0, 1.0)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.layers(hidden)


def test_chunks_normalised_with_the_whole_inputs_statistics_match_one_pass() -> None:
    torch.manual_seed(0)
    model = Normalised().eval()
    # Statistics that drift along the input: a chunk's own would differ from the whole's.
    signal = torch.randn(1, 3, 300) * torch.linspace(0.2, 3.0, 300) + torch.linspace(-2.0, 2.0, 300)
    with torch.no_grad():
        whole = model(signal)[0]
        plan = ChunkPlan(300, 60, 10, 8)

        def computed(span):
            return model(signal[..., span.context_start:span.context_end])[0]

        def chunked() -> torch.Tensor:
            stitcher = Stitcher(plan, leading=(2,))
            for span in plan.spans:
                stitcher.add(span, computed(span)[:, span.owned])
            return stitcher.output

        with whole_input_instance_norm(model, computed, plan.spans):
            streamed = chunked()
        local = chunked()  # hooks released: each chunk normalised by its own statistics
    assert torch.allclose(streamed, whole, atol=1e-5)
    assert (local - whole).abs().max() > 0.1  # so the statistics are what makes them equal
