"""The incremental svc step (voicetrain.tasks.svc_incremental) computes each frame once, from caches:
that it is exact where it can be (the causal layers in pieces against the whole; the whole step
against the offline model once the two things only an offline pass has, the whole input's
normalisation statistics and a tracker's right context, are taken out of the comparison) and that
it waits for no more than its stated lookahead."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from voicetrain.audio_files import load_audio
from voicetrain.chunking import Moments
from voicetrain.data import BUNDLED_CORPUS
from voicetrain.export.artifact import load_inference_modules
from voicetrain.stream.engine import StreamEngine, stream_array
from voicetrain.stream.latency import stream_timing
from voicetrain.tasks.base import InferenceRequest
from voicetrain.tasks.layers.cached import BackboneStep
from voicetrain.tasks.layers.generators import ConvNeXtBackbone
from voicetrain.tasks.layers.synthesis import time_varying_filter
from voicetrain.tasks.streaming import SourceState
from voicetrain.tasks.svc_incremental import IncrementalSourceFilterStep
from voicetrain.tasks.svc_streaming import SourceFilterStreamingStep

RATE, HOP = 16000, 256


def test_a_causal_backbone_in_pieces_is_the_backbone_on_the_whole() -> None:
    torch.manual_seed(0)
    backbone = ConvNeXtBackbone(5, dim=12, intermediate_dim=24, layers=3, condition_dim=4, causal=True).eval()
    step = BackboneStep(backbone)
    frames, condition = torch.randn(1, 5, 23), torch.randn(1, 4)
    with torch.no_grad():
        whole = backbone(frames, condition)
        caches, pieces, start = step.initial_caches(), [], 0
        for size in (1, 4, 2, 9, 7):  # any split, single frames included
            piece, *caches = step(frames[..., start:start + size], condition, *caches)
            pieces.append(piece)
            start += size
    torch.testing.assert_close(torch.cat(pieces, dim=-1), whole, atol=1e-5, rtol=1e-5)


def test_a_centred_backbone_is_refused() -> None:
    with pytest.raises(ValueError, match="needs a causal ConvNeXtBackbone"):
        BackboneStep(ConvNeXtBackbone(5, dim=8, intermediate_dim=16, layers=1))


def test_the_filter_bases_cached_in_inference_mode_still_train() -> None:
    # The synthesiser's DFT bases are converted once and reused; one first converted inside inference
    # mode (a stream, a validation) must still be usable by a training step's backward.
    signal, magnitudes = torch.randn(1, 4 * HOP), torch.rand(1, 4, 33) + 0.5
    with torch.inference_mode():
        time_varying_filter(signal, magnitudes, HOP)
    trained = magnitudes.clone().requires_grad_(True)
    time_varying_filter(signal, trained, HOP).square().sum().backward()
    assert trained.grad is not None and bool(torch.isfinite(trained.grad).all())


def context_free_pitch(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """F0 and voicing from each frame's own 256 samples (voiced where loud): the same at a frame whatever
    the samples beyond them, so a stream and an offline pass agree on it exactly."""
    frames = wave.shape[0] // HOP + 1
    padded = np.pad(wave.astype(np.float64), HOP // 2, mode="reflect")
    level = np.array([np.sqrt(np.mean(padded[j * HOP:(j + 1) * HOP] ** 2)) for j in range(frames)])
    voiced = level > 0.01
    return np.stack([np.where(voiced, 90.0 + 1500.0 * level, 0.0), voiced]).astype(np.float32)


class Unnormalised(nn.Module):
    eps = 1e-5  # the replaced layer's, which the stream's normalisation reads

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden / np.sqrt(1.0)


@pytest.mark.parametrize("block_ms", [16.0, 48.0])
def test_the_incremental_step_is_the_offline_model_with_the_statistics_fixed(
        causal_svc_export: Path, monkeypatch: pytest.MonkeyPatch, block_ms: float) -> None:
    task, modules = load_inference_modules(causal_svc_export)
    model = modules["model"]
    monkeypatch.setattr(task.extractor("f0"), "extract", context_free_pitch)
    # Instance normalisation by statistics both sides share: none offline, mean 0 and variance 1 in the stream.
    for block in model.encoder:
        monkeypatch.setattr(block, "normalization", Unnormalised())
    monkeypatch.setattr(Moments, "statistics", lambda self: (torch.zeros_like(self.total),
                                                              torch.ones_like(self.total) - 1e-5))
    step = task.streaming(modules, InferenceRequest(speaker="slt", transpose=0.0))
    assert isinstance(step, IncrementalSourceFilterStep)
    assert step.needs.lookahead < HOP  # the filter's delay, not a frame
    timing = stream_timing(RATE, HOP, block_ms, None, 4.0, 0.0, step.needs.lookahead, step.needs.analysis_delay)
    engine = StreamEngine(step, timing)
    engine.warm_up()
    # Digital silence first: the offline analysis's mirrored edge and the stream's zeros agree.
    audio = np.concatenate([np.zeros(2048, np.float32), load_audio(BUNDLED_CORPUS / "awb" / "h01_09.flac", RATE)])
    streamed = stream_array(engine, audio)
    features = torch.from_numpy(task.extractor("mel").extract(audio, RATE))[None]
    loudness = torch.from_numpy(task.extractor("loudness").extract(audio, RATE)[0])[None]
    f0, voiced = torch.from_numpy(context_free_pitch(audio, RATE))
    noise = SourceState().noise_for(0, features.shape[-1], HOP, step.noise_seed)[None]
    with torch.no_grad():
        whole = model(features, (f0 * voiced)[None], voiced[None], loudness, step.speaker, noise)[0].numpy()
    aligned = streamed[engine.delay:engine.delay + audio.shape[0]]
    peak = float(np.abs(whole).max())
    assert peak > 1e-2
    np.testing.assert_allclose(aligned, whole[:audio.shape[0]], atol=1e-4 * peak)


def test_the_causal_export_streams_incrementally_and_the_centred_through_its_window(
        causal_svc_export: Path, svc_export: Path) -> None:
    for export, expected in ((causal_svc_export, IncrementalSourceFilterStep), (svc_export, SourceFilterStreamingStep)):
        task, modules = load_inference_modules(export)
        assert type(task.streaming(modules, InferenceRequest(speaker="slt"))) is expected


def test_a_frame_store_computes_each_frame_once_with_its_whole_window() -> None:
    from voicetrain.tasks.streaming import FrameStore

    rng = np.random.default_rng(0)
    wave = rng.standard_normal(40 * HOP).astype(np.float32)
    radius, block, window_length = 512, 2 * HOP, 12 * HOP
    calls: list[int] = []

    def extract(samples: np.ndarray) -> np.ndarray:  # a centred feature: each frame's windowed mean and energy
        calls.append(samples.shape[0])
        padded = np.pad(samples.astype(np.float64), radius, mode="reflect")
        frames = samples.shape[0] // HOP + 1
        parts = np.stack([padded[j * HOP:j * HOP + 2 * radius] for j in range(frames)])
        return np.stack([parts.mean(axis=1), np.square(parts).mean(axis=1)])

    offline = extract(wave)
    store, history = FrameStore(), np.zeros(window_length, np.float32)
    for received in range(block, wave.shape[0] + 1, block):
        history = np.concatenate([history[block:], wave[received - block:received]])
        start = received - window_length
        calls.clear()
        frames = store.frames(extract, history, start, HOP, radius)
        assert frames.shape == (2, window_length // HOP)
        if start >= 2 * block:  # past the stream's start: only the newest frames are analysed
            assert calls and calls[0] < window_length
        # Once the window is past the stream's first sample, every frame whose analysis window has
        # arrived whole is the offline value, those at the window's left edge too (kept from the block
        # that had their samples); the newest read the mirrored edge, as an offline pass's last frames do.
        if start < 0:
            continue
        for position in range(frames.shape[1]):
            frame = start // HOP + position
            if frame * HOP - radius >= 0 and frame * HOP + radius <= received:
                np.testing.assert_allclose(frames[:, position], offline[:, frame], rtol=1e-6, atol=1e-9)
