"""Every waveform layer exports through torch's current ONNX exporter (dynamo=True) with a dynamic
length axis, and ONNX Runtime matches PyTorch on the same inputs, noise included, at the length it
was exported with and at a longer one.

Tolerance: the largest difference over max(1, the output's peak), 1e-5 for networks and filters
without phase accumulation; 1e-3 for the oscillators, whose phase is a cumulative sum that ONNX
Runtime rounds differently (~2e-6 cycle), and the sine of harmonic k moves by 2 pi k times that."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from torch import nn

from voicetrain.tasks.layers.discriminators import MultiPeriodDiscriminator, MultiResolutionDiscriminator
from voicetrain.tasks.layers.generators import SourceFilterGenerator, VocosGenerator
from voicetrain.tasks.layers.losses import MultiResolutionSTFTLoss
from voicetrain.tasks.layers.pitch import PitchPredictor, f0_from_prediction
from voicetrain.tasks.layers.synthesis import harmonic_oscillator, sine_source, time_varying_filter

onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript", reason="torch's dynamo ONNX exporter needs onnxscript (the dev and onnx extras)")

SAMPLE_RATE = 16000
HOP = 128
FRAMES = torch.export.Dim("frames", min=2, max=100_000)
SAMPLES = torch.export.Dim("samples", min=1024, max=10_000_000)
OSCILLATOR_TOLERANCE = 1e-3
NETWORK_TOLERANCE = 1e-5


def flatten(outputs: object) -> list[torch.Tensor]:
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    return [tensor for item in outputs for tensor in flatten(item)]


def export_and_compare(module: nn.Module, inputs: Sequence[torch.Tensor], longer: Sequence[torch.Tensor],
                       dynamic_shapes: Sequence[dict[int, object] | None], tolerance: float, path: Path) -> None:
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on its own progress and deprecations
        torch.onnx.export(module, tuple(inputs), str(path), dynamo=True, dynamic_shapes=tuple(dynamic_shapes))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for case in (inputs, longer):
        with torch.no_grad():
            expected = flatten(module(*case))
        feeds = {entry.name: tensor.numpy() for entry, tensor in zip(session.get_inputs(), case)}
        produced = session.run(None, feeds)
        assert len(produced) == len(expected)
        for ours, theirs in zip(expected, produced):
            assert ours.shape == theirs.shape
            scale = max(1.0, ours.abs().max().item())
            assert (ours - torch.from_numpy(theirs)).abs().max().item() <= tolerance * scale


class Oscillator(nn.Module):
    def forward(self, f0: torch.Tensor, amplitudes: torch.Tensor) -> torch.Tensor:
        return harmonic_oscillator(f0, amplitudes, SAMPLE_RATE, HOP, initial_phase=f0[:, 0] / 1000)


class SineSource(nn.Module):
    def forward(self, f0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return sine_source(f0, noise, SAMPLE_RATE, HOP)


class Filter(nn.Module):
    def forward(self, noise: torch.Tensor, response: torch.Tensor) -> torch.Tensor:
        return time_varying_filter(noise, response, HOP)


def oscillator_inputs(frames: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """F0 with an unvoiced stretch, 40 harmonic amplitudes, and noise for 3 NSF harmonics."""
    generator = torch.Generator().manual_seed(seed)
    f0 = 90 + 300 * torch.rand(1, frames, generator=generator)
    f0[:, frames // 3:frames // 2] = 0.0
    return (f0, torch.rand(1, frames, 40, generator=generator), torch.randn(1, frames * HOP, 3, generator=generator))


def test_harmonic_oscillator_matches_onnx_runtime(tmp_path: Path) -> None:
    (f0, amplitudes, _), (longer_f0, longer_amplitudes, _) = oscillator_inputs(60, 0), oscillator_inputs(157, 1)
    export_and_compare(Oscillator(), [f0, amplitudes], [longer_f0, longer_amplitudes], [{1: FRAMES}, {1: FRAMES}],
                       OSCILLATOR_TOLERANCE, tmp_path / "oscillator.onnx")


def test_sine_source_matches_onnx_runtime(tmp_path: Path) -> None:
    (f0, _, noise), (longer_f0, _, longer_noise) = oscillator_inputs(60, 0), oscillator_inputs(157, 1)
    export_and_compare(SineSource(), [f0, noise], [longer_f0, longer_noise], [{1: FRAMES}, {1: HOP * FRAMES}],
                       OSCILLATOR_TOLERANCE, tmp_path / "sine_source.onnx")


def test_time_varying_filter_matches_onnx_runtime(tmp_path: Path) -> None:
    def inputs(frames: int, seed: int) -> list[torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        return [torch.randn(2, frames * HOP, generator=generator), torch.rand(2, frames, 33, generator=generator)]

    export_and_compare(Filter(), inputs(20, 0), inputs(53, 1), [{1: HOP * FRAMES}, {1: FRAMES}],
                       NETWORK_TOLERANCE, tmp_path / "filter.onnx")


def test_vocos_generator_matches_onnx_runtime(tmp_path: Path) -> None:
    torch.manual_seed(0)
    generator = VocosGenerator(20, HOP, n_fft=512, dim=32, intermediate_dim=64, layers=2)
    export_and_compare(generator, [torch.randn(1, 20, 30)], [torch.randn(1, 20, 71)], [{2: FRAMES}],
                       NETWORK_TOLERANCE, tmp_path / "vocos.onnx")


def test_source_filter_generator_matches_onnx_runtime(tmp_path: Path) -> None:
    """Covers `combtooth` and `time_varying_filter` inside a generator with a condition input."""
    torch.manual_seed(0)
    generator = SourceFilterGenerator(20, SAMPLE_RATE, HOP, dim=32, intermediate_dim=64, layers=2, filter_bins=33,
                                      condition_dim=8)

    def inputs(frames: int) -> list[torch.Tensor]:
        return [torch.randn(1, 20, frames), 100 + 200 * torch.rand(1, frames), torch.randn(1, frames * HOP),
                torch.randn(1, 8)]

    export_and_compare(generator, inputs(30), inputs(71), [{2: FRAMES}, {1: FRAMES}, {1: HOP * FRAMES}, None],
                       OSCILLATOR_TOLERANCE, tmp_path / "source_filter.onnx")


class PitchInHertz(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.predictor = PitchPredictor(20, dim=16, intermediate_dim=32, layers=2)

    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        return f0_from_prediction(*self.predictor(log_mel))


def test_pitch_predictor_matches_onnx_runtime(tmp_path: Path) -> None:
    torch.manual_seed(0)
    export_and_compare(PitchInHertz(), [torch.randn(2, 20, 30)], [torch.randn(2, 20, 71)], [{2: FRAMES}],
                       NETWORK_TOLERANCE, tmp_path / "pitch.onnx")


@pytest.mark.parametrize("name", ["multi_period", "multi_resolution"])
def test_discriminators_match_onnx_runtime(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    discriminator = (MultiPeriodDiscriminator((2, 3, 5), channels=(4, 8, 8)) if name == "multi_period"
                     else MultiResolutionDiscriminator(((256, 64, 256), (128, 32, 128)), channels=4, layers=2))
    export_and_compare(discriminator, [torch.randn(1, 3000)], [torch.randn(1, 4999)], [{1: SAMPLES}],
                       NETWORK_TOLERANCE, tmp_path / f"{name}.onnx")


def test_mr_stft_loss_matches_onnx_runtime(tmp_path: Path) -> None:
    loss = MultiResolutionSTFTLoss(((256, 64, 256), (128, 32, 128)))
    export_and_compare(loss, [torch.randn(1, 3000), torch.randn(1, 3000)], [torch.randn(1, 4999), torch.randn(1, 4999)],
                       [{1: SAMPLES}, {1: SAMPLES}], NETWORK_TOLERANCE, tmp_path / "loss.onnx")
