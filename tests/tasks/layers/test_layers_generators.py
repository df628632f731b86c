"""Waveform generators and their parts: the ONNX-friendly inverse STFT against torch.istft, the
output length rule (frames * hop, crops aligned with the full utterance), F0 control of the
source-filter generator, conditioning, and gradient flow."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from voicetrain.tasks.layers.generators import (
    ConditionalLayerNorm,
    ConvNeXtBackbone,
    SourceFilterGenerator,
    VocosGenerator,
)
from voicetrain.tasks.layers.spectral import istft, overlap_add

SAMPLE_RATE = 16000
HOP = 256
N_MELS = 20


def tiny_vocos(layers: int = 2) -> VocosGenerator:
    torch.manual_seed(0)
    return VocosGenerator(N_MELS, HOP, n_fft=1024, dim=32, intermediate_dim=64, layers=layers).eval()


def tiny_source_filter(condition_dim: int = 0) -> SourceFilterGenerator:
    torch.manual_seed(0)
    return SourceFilterGenerator(N_MELS, SAMPLE_RATE, HOP, dim=32, intermediate_dim=64, layers=2, filter_bins=33,
                                 condition_dim=condition_dim).eval()


def noise_for(frames: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, frames * HOP, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("n_fft", "hop", "frames"), [(1024, 256, 7), (256, 64, 40), (512, 256, 3)])
def test_istft_equals_torch_istft(n_fft: int, hop: int, frames: int) -> None:
    generator = torch.Generator().manual_seed(0)
    magnitude = torch.rand(2, n_fft // 2 + 1, frames, generator=generator)
    phase = (torch.rand(2, n_fft // 2 + 1, frames, generator=generator) - 0.5) * 2 * np.pi
    window = torch.hann_window(n_fft)
    ours = istft(magnitude, phase, hop, window)
    reference = torch.istft(torch.polar(magnitude, phase), n_fft, hop, window=window, center=True,
                            length=frames * hop)
    assert ours.shape == (2, frames * hop)
    assert torch.allclose(ours, reference, atol=1e-6)


def test_istft_refuses_a_hop_its_window_cannot_cover() -> None:
    with pytest.raises(ValueError, match="n_fft >= 2 \\* hop_length"):
        istft(torch.rand(1, 129, 5), torch.zeros(1, 129, 5), 200, torch.hann_window(256))


def test_overlap_add_sums_frames_at_the_hop() -> None:
    frames = torch.arange(1.0, 4.0)[None, :, None].expand(1, 3, 4)  # frames of 1s, 2s, 3s
    assert overlap_add(frames, 2).tolist() == [[1.0, 1.0, 3.0, 3.0, 5.0, 5.0, 3.0, 3.0]]


@pytest.mark.parametrize("frames", [1, 5, 33])
def test_vocos_generator_makes_frames_times_hop_samples(frames: int) -> None:
    with torch.no_grad():
        wave = tiny_vocos()(torch.randn(2, N_MELS, frames))
    assert wave.shape == (2, frames * HOP) and torch.isfinite(wave).all()


def test_a_crop_of_frames_makes_the_matching_samples_of_the_full_output() -> None:
    generator = tiny_vocos(layers=1)
    log_mel = torch.randn(1, N_MELS, 60, generator=torch.Generator().manual_seed(3))
    start, end = 10, 50
    with torch.no_grad():
        full = generator(log_mel)
        crop = generator(log_mel[..., start:end])
    # Away from the crop's edges (receptive field: 6 frames of convolution, 2 of window overlap)
    # the crop's samples are the full output's samples [start * hop, end * hop).
    margin = 10 * HOP
    inner_crop = crop[:, margin:-margin]
    inner_full = full[:, start * HOP + margin:end * HOP - margin]
    assert torch.allclose(inner_crop, inner_full, atol=1e-5)
    assert not torch.allclose(crop[:, :margin], full[:, start * HOP:start * HOP + margin], atol=1e-5)


def autocorrelation_lag(wave: torch.Tensor, shortest: int, longest: int) -> int:
    samples = wave.detach().double().numpy()
    samples = samples - samples.mean()
    correlation = np.correlate(samples, samples, mode="full")[len(samples) - 1:]
    return shortest + int(np.argmax(correlation[shortest:longest]))


@pytest.mark.parametrize("frames", [1, 8, 31])
def test_source_filter_generator_makes_frames_times_hop_samples(frames: int) -> None:
    with torch.no_grad():
        wave = tiny_source_filter()(torch.randn(1, N_MELS, frames), torch.full((1, frames), 120.0), noise_for(frames))
    assert wave.shape == (1, frames * HOP)


def test_source_filter_generator_is_periodic_at_f0_and_transposes_with_it() -> None:
    generator = tiny_source_filter()
    features = torch.randn(1, N_MELS, 40, generator=torch.Generator().manual_seed(1))
    silence = torch.zeros(1, 40 * HOP)
    with torch.no_grad():
        low = generator(features, torch.full((1, 40), 100.0), silence)[0, 4 * HOP:36 * HOP]
        high = generator(features, torch.full((1, 40), 200.0), silence)[0, 4 * HOP:36 * HOP]
    assert autocorrelation_lag(low, 40, 400) == SAMPLE_RATE // 100
    assert autocorrelation_lag(high, 40, 120) == SAMPLE_RATE // 200


def test_source_filter_generator_with_f0_zero_is_shaped_noise_only() -> None:
    generator = tiny_source_filter()
    features = torch.randn(1, N_MELS, 20)
    with torch.no_grad():
        quiet = generator(features, torch.zeros(1, 20), torch.zeros(1, 20 * HOP))
        noisy = generator(features, torch.zeros(1, 20), noise_for(20))
    assert quiet.abs().max() == 0 and noisy.abs().max() > 0


def test_condition_is_required_when_declared_and_changes_the_output() -> None:
    generator = tiny_source_filter(condition_dim=4)
    features, f0, noise = torch.randn(1, N_MELS, 12), torch.full((1, 12), 150.0), noise_for(12)
    with pytest.raises(ValueError, match="condition_dim"):
        generator(features, f0, noise)
    for module in generator.modules():  # modulations start at zero (adaLN-Zero); give them weight
        if isinstance(module, ConditionalLayerNorm) and module.modulation is not None:
            torch.nn.init.normal_(module.modulation.weight, std=0.1)
    with torch.no_grad():
        first = generator(features, f0, noise, torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
        second = generator(features, f0, noise, torch.tensor([[0.0, 1.0, 0.0, 0.0]]))
    assert not torch.allclose(first, second)


@pytest.mark.parametrize("build", ["vocos", "source_filter"])
def test_gradients_reach_every_parameter(build: str) -> None:
    if build == "vocos":
        generator = tiny_vocos().train()
        wave = generator(torch.randn(2, N_MELS, 9))
    else:
        generator = tiny_source_filter().train()
        wave = generator(torch.randn(1, N_MELS, 9), torch.full((1, 9), 150.0), noise_for(9))
    wave.square().mean().backward()
    missing = [name for name, parameter in generator.named_parameters()
               if parameter.grad is None or parameter.grad.abs().sum() == 0]
    assert not missing


def test_backbone_is_bit_identical_across_calls() -> None:
    backbone = ConvNeXtBackbone(N_MELS, dim=16, intermediate_dim=32, layers=2)
    features = torch.randn(2, N_MELS, 17)
    assert torch.equal(backbone(features), backbone(features))
