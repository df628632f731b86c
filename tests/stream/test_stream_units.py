"""The stream's pure parts and the fallback: the latency arithmetic (against the delay an identity
step actually has), the refusals, SOLA's joins, the running statistics and a fork's task without a
streaming hook through the sliding-window fallback."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from scipy import signal
from torch import nn

from voicetrain.chunking import positional_noise
from voicetrain.stream.engine import StreamEngine, stream_array
from voicetrain.stream.fallback import SlidingWindowStep, streaming_step
from voicetrain.stream.latency import StreamSettingError, stream_timing
from voicetrain.stream.sola import SolaJoiner, best_offset, fade_in
from voicetrain.tasks.base import InferenceRequest, StreamingNeeds, StreamingStep, Task, TaskContext
from voicetrain.tasks.streaming import RunningInstanceNorm, SourceState, convolution_reach

RATE, HOP = 16000, 256


def test_latency_is_the_sum_of_its_parts_blocks_in_whole_hops() -> None:
    timing = stream_timing(RATE, HOP, block_ms=40, lookahead_ms=None, crossfade_ms=8, search_ms=4,
                           needed_lookahead=512, analysis_delay=512)
    assert timing.block == 3 * HOP  # 40 ms is 2.5 hops: rounded up
    assert timing.lookahead == 2 * HOP
    assert timing.latency == 768 + 512 + 512 + 128 + 64
    assert timing.describe().startswith("algorithmic latency 124.0 ms = block 48.0 + lookahead 32.0")
    # A step that needs less than a hop (the incremental svc step: its filter's 63 samples) waits no more.
    short = stream_timing(RATE, HOP, block_ms=16, lookahead_ms=None, crossfade_ms=4, search_ms=0,
                          needed_lookahead=63, analysis_delay=512)
    assert short.latency == 256 + 63 + 512 + 64
    assert short.describe() == ("algorithmic latency 55.9 ms = block 16.0 + lookahead 3.9 + analysis window 32.0 + "
                                "crossfade 4.0 + SOLA search 0.0 ms")
    longer = stream_timing(RATE, HOP, 40, 100, 8, 4, needed_lookahead=300, analysis_delay=512)
    assert longer.lookahead == 7 * HOP  # asked for 100 ms = 6.25 hops: rounded up to whole hops


@pytest.mark.parametrize(("arguments", "fix"), [
    ({"block_ms": 10}, "--block-ms 10 is shorter than one hop of the model (256 samples = 16 ms at 16000 Hz); "
                       "give --block-ms 16 or more"),
    ({"lookahead_ms": 10}, "give --lookahead-ms 32 or more"),
    ({"crossfade_ms": 60}, "--crossfade-ms 60 is longer than the block (48 ms)"),
])
def test_settings_the_model_cannot_honour_are_refused_with_the_fix(arguments: dict[str, float], fix: str) -> None:
    settings = {"block_ms": 40, "lookahead_ms": None, "crossfade_ms": 8, "search_ms": 4, **arguments}
    with pytest.raises(StreamSettingError, match=fix.replace("(", r"\(").replace(")", r"\)")):
        stream_timing(RATE, HOP, needed_lookahead=512, analysis_delay=512, **settings)


class IdentityStep(StreamingStep):
    """Returns its input: the stream's output is then the input, delayed by exactly the latency."""

    def __init__(self, needs: StreamingNeeds):
        self.needs = needs

    def step(self, window: torch.Tensor, window_start: int, output: slice, state: Any) -> tuple[torch.Tensor, Any]:
        return window[output], state


@pytest.mark.parametrize(("block_ms", "crossfade_ms", "search_ms", "needs"), [
    (40, 8, 4, StreamingNeeds(1000, 512, 512)),
    (16, 0, 0, StreamingNeeds(0, 0, 0)),
    (64, 16, 2, StreamingNeeds(3000, 256, 0)),
    (16, 4, 0, StreamingNeeds(1280, 63, 512)),  # a lookahead of less than a hop (incremental svc)
])
def test_the_output_is_the_input_delayed_by_the_stated_latency(block_ms: float, crossfade_ms: float,
                                                               search_ms: float, needs: StreamingNeeds) -> None:
    timing = stream_timing(RATE, HOP, block_ms, None, crossfade_ms, search_ms, needs.lookahead, needs.analysis_delay)
    engine = StreamEngine(IdentityStep(needs), timing)
    wave = np.sin(np.arange(12345) * 0.031).astype(np.float32) * np.linspace(0, 1, 12345, dtype=np.float32)
    output = stream_array(engine, wave)
    # A block's first sample waits one block before it reaches the engine: the rest is the engine's delay.
    assert engine.delay == timing.latency - timing.block
    assert output.shape[0] == wave.shape[0] + engine.delay
    np.testing.assert_allclose(output[engine.delay:engine.delay + wave.shape[0]], wave, atol=1e-6)
    assert set(engine.joiner.offsets) <= {0}


def test_sola_finds_the_shift_and_fades_to_one() -> None:
    rising = fade_in(64)
    np.testing.assert_allclose(rising + rising[::-1], 1.0, atol=1e-12)
    tone = np.sin(np.arange(2000) * 2 * np.pi * 200 / RATE).astype(np.float32)
    tail = tone[500:564]
    for shift in (-7, 0, 9):
        piece = tone[500 - 16 + shift:]
        assert best_offset(piece, tail, 16) == 16 - shift
    joiner = SolaJoiner(block=256, crossfade=64, search=16)
    assert joiner.join(np.zeros(joiner.piece_samples, dtype=np.float32)).shape == (256,)
    with pytest.raises(ValueError, match="expected 352"):
        joiner.join(np.zeros(100, dtype=np.float32))


def test_running_statistics_are_the_history_with_the_window_on_top() -> None:
    norm = nn.InstanceNorm1d(3)
    hidden = torch.randn(1, 3, 50, generator=torch.Generator().manual_seed(0)) * 4 + 2
    moments: list = []
    running = RunningInstanceNorm(norm).run(moments, slice(0, 50), lambda: norm(hidden))
    torch.testing.assert_close(running, norm(hidden), atol=1e-5, rtol=1e-5)
    # Counted once: frames seen again join the history's statistics for this window only (the
    # window's own frames on top of the history), and do not stay in them.
    window = hidden[..., :10]
    again = RunningInstanceNorm(norm).run(moments, slice(0, 0), lambda: norm(window))
    expected = norm(torch.cat([hidden, window], dim=-1))[..., 50:]
    torch.testing.assert_close(again, expected, atol=1e-5, rtol=1e-5)
    assert moments[0].count == 50


def test_convolution_reach_counts_kernels_and_padding() -> None:
    chain = nn.Sequential(nn.Conv1d(2, 2, 5, padding=2), nn.Conv1d(2, 2, 7, padding=3), nn.Conv1d(2, 2, 1))
    assert convolution_reach(chain) == (5, 5)


def test_stream_noise_is_offline_inferences_noise_frame_for_frame() -> None:
    state = SourceState()
    for first in (-3, 10, 4090):
        expected = positional_noise(max(first, 0), first + 12, 5000, HOP, 0)[0]
        got = state.noise_for(first, 12, HOP, 0)
        torch.testing.assert_close(got[max(-first, 0):], expected, rtol=0, atol=0)
        assert not got[:max(-first, 0)].any()


@dataclass
class FilterSettings:
    gain: float = 0.5


class FilterFork(Task):
    """A fork's task with `infer` alone, no streaming hook: a short recursive filter and a gain."""

    Settings = FilterSettings
    inference_inputs = ("audio",)

    def infer(self, modules: dict[str, nn.Module], request: InferenceRequest) -> torch.Tensor:
        filtered = signal.lfilter([0.4, 0.3, 0.2], [1.0, -0.5], request.audio.numpy().astype(np.float64))
        return torch.from_numpy((self.settings.gain * filtered).astype(np.float32))


def test_a_fork_without_a_hook_streams_through_the_sliding_window_fallback() -> None:
    context = TaskContext(None, [], [], [], sample_rate=RATE, hop_length=HOP)
    task = FilterFork(FilterSettings(), context)
    step, own = streaming_step(task, {}, InferenceRequest())
    assert not own and isinstance(step, SlidingWindowStep)
    timing = stream_timing(RATE, HOP, 32, None, 8, 2, step.needs.lookahead, step.needs.analysis_delay)
    engine = StreamEngine(step, timing)
    wave = np.random.default_rng(0).standard_normal(RATE).astype(np.float32) * 0.1
    streamed = stream_array(engine, wave)
    offline = task.infer({}, InferenceRequest(audio=torch.from_numpy(wave))).numpy()
    # The window's second of history covers the filter's memory (0.5 ** 100 is nothing): equal to offline.
    np.testing.assert_allclose(streamed[engine.delay:engine.delay + wave.shape[0]], offline, atol=1e-5)


@pytest.mark.parametrize("causal", [True, False])
def test_causal_layers_read_no_future_frame(causal: bool) -> None:
    from voicetrain.tasks.layers.generators import SourceFilterGenerator
    from voicetrain.tasks.vc_network import ContentBlock

    torch.manual_seed(0)
    generator = SourceFilterGenerator(5, RATE, HOP, dim=16, intermediate_dim=32, layers=2, filter_bins=9,
                                      causal=causal).eval()
    block = ContentBlock(5, 5, causal=causal)
    features = torch.randn(1, 5, 30)
    changed = features.clone()
    changed[..., 20:] += 1.0
    f0 = torch.full((1, 30), 120.0)
    noise = torch.zeros(1, 30 * HOP)
    with torch.no_grad():
        hidden, hidden_changed = (generator.backbone(value) for value in (features, changed))
        wave, wave_changed = (generator(value, f0, noise) for value in (features, changed))
        # Instance norm reads every frame; the convolution alone is what the setting changes.
        content, content_changed = (block.convolution(value) for value in (features, changed))
    same = torch.equal(hidden[..., :20], hidden_changed[..., :20]) and torch.equal(content[..., :20],
                                                                                   content_changed[..., :20])
    assert same is causal
    # The synthesis reaches one frame ahead (frame 19's samples fade towards frame 20's filter, whose
    # taps reach a few samples further back): the lookahead of one frame that streaming adds.
    assert torch.equal(wave[:, :18 * HOP], wave_changed[:, :18 * HOP]) is causal
    assert convolution_reach(generator)[1] == (0 if causal else 3 * 3)
