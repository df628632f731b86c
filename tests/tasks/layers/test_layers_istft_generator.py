"""The fixed-basis Fourier transforms (`fourier`) and the F0-driven iSTFT generator
(`istft_generator`): the convolution STFT and inverse STFT equal torch's, the matrix-product
filtering of `time_varying_filter` equals the FFT route it replaced, the generator makes F * hop
samples that follow the F0 it is given, and both waveform generators export to ONNX graphs without
a DFT op that ONNX Runtime runs to PyTorch's numbers at several lengths."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from voicetrain.tasks.layers.fourier import ConvISTFT, ConvSTFT, inverse_real_dft_matrix, real_dft_matrix
from voicetrain.tasks.layers.generators import SourceFilterGenerator
from voicetrain.tasks.layers.istft_generator import HarmonicISTFTGenerator
from voicetrain.tasks.layers.synthesis import filter_spectrum_matrix, frequency_sampling_filters

SAMPLE_RATE = 16000
HOP = 128
N_FFT = 512
N_MELS = 20
# Differences over max(1, peak): the pulse train's phase is a cumulative sum that ONNX Runtime rounds
# differently (see test_layers_onnx), and float32 basis products round differently from an FFT.
ONNX_TOLERANCE = 1e-3
TRANSFORM_TOLERANCE = 1e-4


def tiny_generator() -> HarmonicISTFTGenerator:
    torch.manual_seed(0)
    return HarmonicISTFTGenerator(N_MELS, SAMPLE_RATE, HOP, n_fft=N_FFT, dim=16, intermediate_dim=32, layers=1).eval()


def generator_inputs(frames: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A log-mel, an F0 with an unvoiced stretch, and noise [1, frames * hop]."""
    generator = torch.Generator().manual_seed(seed)
    f0 = 90 + 200 * torch.rand(1, frames, generator=generator)
    f0[:, frames // 3:frames // 2] = 0.0
    return (torch.randn(1, N_MELS, frames, generator=generator), f0,
            torch.randn(1, frames * HOP, generator=generator))


@pytest.mark.parametrize("samples", [HOP, 7 * HOP, 40 * HOP + 17])
def test_the_convolution_stft_equals_torch_stft(samples: int) -> None:
    wave = torch.randn(2, samples, generator=torch.Generator().manual_seed(samples))
    real, imaginary = ConvSTFT(N_FFT, HOP)(wave)
    expected = torch.stft(wave, N_FFT, HOP, window=torch.hann_window(N_FFT), center=True, pad_mode="constant",
                          return_complex=True)
    assert real.shape == imaginary.shape == expected.shape
    scale = expected.abs().max().item()
    assert (real - expected.real).abs().max().item() <= TRANSFORM_TOLERANCE * scale
    assert (imaginary - expected.imag).abs().max().item() <= TRANSFORM_TOLERANCE * scale


@pytest.mark.parametrize("frames", [1, 5, 63])
def test_the_convolution_istft_equals_torch_istft_and_inverts_the_stft(frames: int) -> None:
    generator = torch.Generator().manual_seed(frames)
    spectrum = torch.complex(torch.randn(2, N_FFT // 2 + 1, frames, generator=generator),
                             torch.randn(2, N_FFT // 2 + 1, frames, generator=generator))
    wave = ConvISTFT(N_FFT, HOP)(spectrum.real, spectrum.imag)
    expected = torch.istft(spectrum, N_FFT, HOP, window=torch.hann_window(N_FFT), center=True,
                           length=frames * HOP)
    assert wave.shape == expected.shape == (2, frames * HOP)
    assert torch.allclose(wave, expected, atol=1e-5)
    signal = torch.randn(2, frames * HOP, generator=generator)
    real, imaginary = ConvSTFT(N_FFT, HOP)(signal)
    assert torch.allclose(ConvISTFT(N_FFT, HOP)(real[..., :frames], imaginary[..., :frames]), signal, atol=1e-5)


def test_the_dft_matrices_equal_numpy_fft() -> None:
    signal = np.random.default_rng(0).standard_normal((3, 50))
    spectrum = signal @ real_dft_matrix(50, 64)
    expected = np.fft.rfft(signal, n=64)
    assert np.allclose(spectrum[:, :33], expected.real) and np.allclose(spectrum[:, 33:], expected.imag)
    assert np.allclose(spectrum @ inverse_real_dft_matrix(64, 60), np.fft.irfft(expected, n=64)[:, :60])


def test_the_filter_basis_equals_the_dft_of_frequency_sampling_filters() -> None:
    magnitudes = torch.rand(2, 4, 17, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    filters = frequency_sampling_filters(magnitudes)
    size = 2 * HOP + filters.shape[-1] - 1
    spectrum = magnitudes.numpy() @ filter_spectrum_matrix(17, size)
    expected = torch.fft.rfft(filters, n=size).numpy()
    bins = size // 2 + 1
    assert np.allclose(spectrum[..., :bins], expected.real) and np.allclose(spectrum[..., bins:], expected.imag)


@pytest.mark.parametrize("frames", [1, 2, 33])
def test_the_generator_makes_frames_times_hop_samples(frames: int) -> None:
    log_mel, f0, noise = generator_inputs(frames, 0)
    with torch.no_grad():
        wave = tiny_generator()(log_mel.repeat(2, 1, 1), f0.repeat(2, 1), noise.repeat(2, 1))
    assert wave.shape == (2, frames * HOP) and bool(torch.isfinite(wave).all())


def test_the_generator_follows_the_f0_it_is_given_and_is_silent_without_a_source() -> None:
    model = tiny_generator()
    frames = 60
    log_mel = torch.randn(1, N_MELS, frames, generator=torch.Generator().manual_seed(1))
    silence = torch.zeros(1, frames * HOP)
    with torch.no_grad():
        assert not model(log_mel, torch.zeros(1, frames), silence).any()  # unvoiced and no noise
        for f0_hz in (100.0, 200.0):
            wave = model(log_mel, torch.full((1, frames), f0_hz), silence)[0, 10 * HOP:-10 * HOP].numpy()
            period = round(SAMPLE_RATE / f0_hz)
            # Normalised autocorrelation: near 1 one period apart, lower half a period apart.
            correlation = [float(np.dot(wave[:-lag], wave[lag:]) / np.dot(wave, wave)) for lag in (period, period // 2)]
            assert correlation[0] > 0.8 and correlation[0] > correlation[1] + 0.3, (f0_hz, correlation)


def test_the_prior_sets_the_starting_magnitude_and_leaves_the_phase_alone() -> None:
    """At initialisation the magnitude residual is zero: the output's spectrum is exp(prior) times the
    source mix's phase, so a prior raised by log 2 doubles the wave."""
    model = tiny_generator()
    log_mel, f0, noise = generator_inputs(30, 2)
    prior = 0.5 * torch.randn(1, N_FFT // 2 + 1, 30, generator=torch.Generator().manual_seed(3))  # under the clamp
    with torch.no_grad():
        wave = model(log_mel, f0, noise, prior_log_magnitude=prior)
        doubled = model(log_mel, f0, noise, prior_log_magnitude=prior + np.log(2.0))
    assert wave.abs().max() > 0 and torch.allclose(doubled, 2 * wave, atol=1e-5)


def export(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], dynamic: tuple[dict[int, object], ...],
           path: Path):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript", reason="torch's dynamo ONNX exporter needs onnxscript (the dev and onnx extras)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on its own progress and deprecations
        torch.onnx.export(module.eval(), inputs, str(path), dynamo=True, dynamic_shapes=dynamic)
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def operator_types(path: Path) -> set[str]:
    import onnx

    model = onnx.load(str(path))
    types = {node.op_type for node in model.graph.node}
    for function in model.functions:
        types |= {node.op_type for node in function.node}
    return types


def assert_parity(session, module: torch.nn.Module, cases: list[tuple[torch.Tensor, ...]]) -> None:
    for inputs in cases:
        with torch.no_grad():
            expected = module(*inputs)
        feeds = {entry.name: tensor.numpy() for entry, tensor in zip(session.get_inputs(), inputs)}
        produced = torch.from_numpy(session.run(None, feeds)[0])
        assert produced.shape == expected.shape
        scale = max(1.0, expected.abs().max().item())
        assert (produced - expected).abs().max().item() <= ONNX_TOLERANCE * scale, inputs[0].shape


def test_the_istft_generator_exports_without_a_dft_and_matches_onnx_runtime_at_several_lengths(
        tmp_path: Path) -> None:
    model = tiny_generator()
    frames = torch.export.Dim("frames", min=2, max=100_000)
    path = tmp_path / "istft.onnx"
    session = export(model, generator_inputs(40, 0), ({2: frames}, {1: frames}, {1: HOP * frames}), path)
    assert not operator_types(path) & {"DFT", "STFT"}, sorted(operator_types(path))
    assert_parity(session, model, [generator_inputs(frames, seed) for seed, frames in enumerate((40, 2, 17, 157))])


def test_the_source_filter_generator_exports_without_a_dft_and_matches_onnx_runtime_at_several_lengths(
        tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = SourceFilterGenerator(N_MELS, SAMPLE_RATE, HOP, dim=16, intermediate_dim=32, layers=1, filter_bins=17)
    frames = torch.export.Dim("frames", min=2, max=100_000)
    path = tmp_path / "source_filter.onnx"
    session = export(model, generator_inputs(40, 0), ({2: frames}, {1: frames}, {1: HOP * frames}), path)
    assert not operator_types(path) & {"DFT", "STFT"}, sorted(operator_types(path))
    assert_parity(session, model, [generator_inputs(frames, seed) for seed, frames in enumerate((40, 2, 17, 157))])
