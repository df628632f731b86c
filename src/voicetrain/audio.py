"""The log-mel front end (audio files are read and written by voicetrain.audio_files).

This module owns everything that turns a wave into the model's log-mel and back:

* `MelSettings` - the frozen feature settings and the digest that keys the feature cache;
* `MelSpectrogram` - the natural-log magnitude mel used as the model input and target;
* `griffin_lim` - a dependency-free vocoder for audio previews (not for quality evaluation);

Convention used everywhere in voicetrain: a "log-mel" is `log(clamp(mel_filterbank @ |STFT|, min=1e-5))`
with the natural logarithm of the *magnitude* (not power) spectrogram, shaped `[n_mels, frames]`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import numbers
from dataclasses import asdict, dataclass

import numpy as np
import torch


# Bump when the way features are computed changes (not the settings): it is part of the cache key,
# so caches written by an older computation are never reused.
FEATURE_FORMAT_VERSION = 1

LOG_FLOOR = 1e-5


@dataclass(frozen=True)
class MelSettings:
    """Settings of the log-mel front end (values: the `features` section of conf/config.yaml); every field
    takes part in `cache_key`."""

    sample_rate: int
    n_fft: int
    hop_length: int
    win_length: int
    n_mels: int
    fmin: float
    fmax: float | None  # None = the Nyquist frequency

    def __post_init__(self) -> None:
        for name in ("sample_rate", "n_fft", "hop_length", "win_length", "n_mels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
                raise ValueError(f"MelSettings.{name}={value!r} must be a positive integer; fix the audio config.")
        if self.win_length > self.n_fft:
            raise ValueError(
                f"MelSettings.win_length={self.win_length} is larger than n_fft={self.n_fft}; "
                f"set win_length <= n_fft (usually equal)."
            )
        nyquist = self.sample_rate / 2
        upper = nyquist if self.fmax is None else float(self.fmax)
        if not 0.0 <= float(self.fmin) < upper:
            raise ValueError(
                f"MelSettings.fmin={self.fmin!r} must satisfy 0 <= fmin < fmax ({upper}); fix fmin or fmax."
            )
        if upper > nyquist:
            raise ValueError(
                f"MelSettings.fmax={self.fmax!r} is above the Nyquist frequency {nyquist} of sample_rate="
                f"{self.sample_rate}; set fmax <= {nyquist} or fmax=null (which means Nyquist)."
            )

    def cache_key(self) -> str:
        """A short hex digest that is stable across runs and machines and changes with any field."""
        fields = asdict(self)
        # Normalise numeric types so that fmin=0 (an int from a YAML file) and fmin=0.0 share a cache,
        # and numpy integers serialise like builtin ones.
        for name in ("sample_rate", "n_fft", "hop_length", "win_length", "n_mels"):
            fields[name] = int(fields[name])
        fields["fmin"] = float(self.fmin)
        fields["fmax"] = None if self.fmax is None else float(self.fmax)
        fields["format_version"] = FEATURE_FORMAT_VERSION
        encoded = json.dumps(fields, sort_keys=True).encode("utf-8")
        return hashlib.sha256(encoded).hexdigest()[:16]


@functools.lru_cache(maxsize=16)
def _mel_filterbank(settings: MelSettings) -> np.ndarray:
    # Imported here: librosa is slow to import and only this function needs it in this module.
    import librosa

    return librosa.filters.mel(
        sr=settings.sample_rate,
        n_fft=settings.n_fft,
        n_mels=settings.n_mels,
        fmin=float(settings.fmin),
        fmax=None if settings.fmax is None else float(settings.fmax),
        htk=False,
        norm="slaney",
        dtype=np.float32,
    )


@functools.lru_cache(maxsize=16)
def _inverse_filterbank(settings: MelSettings) -> np.ndarray:
    # The pseudo-inverse costs a second or two on a CPU; every preview and inference reuses it.
    inverse = torch.linalg.pinv(torch.tensor(_mel_filterbank(settings), dtype=torch.float64))
    inverse = inverse.to(torch.float32).numpy()
    inverse.setflags(write=False)
    return inverse


def mel_filterbank(settings: MelSettings) -> torch.Tensor:
    """The librosa Slaney mel filterbank for `settings` as a float32 tensor `[n_mels, n_fft // 2 + 1]`."""
    # A copy, so that a caller modifying the tensor in place cannot corrupt the lru_cache entry.
    return torch.tensor(_mel_filterbank(settings))


def minimum_samples(settings: MelSettings) -> int:
    """The shortest wave `MelSpectrogram` accepts: reflect padding needs more than n_fft // 2 samples."""
    return settings.n_fft // 2 + 1


class MelSpectrogram(torch.nn.Module):
    """Natural-log magnitude mel spectrogram: `[..., samples] -> [..., n_mels, samples // hop_length + 1]`."""

    window: torch.Tensor
    mel_basis: torch.Tensor

    def __init__(self, settings: MelSettings) -> None:
        super().__init__()
        self.settings = settings
        # Not persistent: they are derived from the settings, so checkpoints need not carry them.
        self.register_buffer("window", torch.hann_window(settings.win_length), persistent=False)
        self.register_buffer("mel_basis", mel_filterbank(settings), persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        settings = self.settings
        samples = wave.shape[-1]
        if samples < minimum_samples(settings):
            raise ValueError(
                f"MelSpectrogram needs at least {minimum_samples(settings)} samples (n_fft // 2 + 1 for reflect "
                f"padding), got a wave shaped {tuple(wave.shape)}; pad the wave or drop clips this short."
            )
        leading = wave.shape[:-1]
        flat = wave.reshape(-1, samples)
        spectrum = torch.stft(
            flat,
            n_fft=settings.n_fft,
            hop_length=settings.hop_length,
            win_length=settings.win_length,
            window=self.window.to(flat.dtype),
            center=True,
            pad_mode="reflect",
            normalized=False,
            onesided=True,
            return_complex=True,
        )
        magnitude = spectrum.abs()
        mel = torch.matmul(self.mel_basis.to(magnitude.dtype), magnitude)
        log_mel = torch.log(torch.clamp(mel, min=LOG_FLOOR))
        return log_mel.reshape(*leading, settings.n_mels, log_mel.shape[-1])


def griffin_lim(log_mel: torch.Tensor, settings: MelSettings, iterations: int = 32,
                chunk_seconds: float | None = None) -> torch.Tensor:
    """Invert a log-mel `[n_mels, frames]` to a wave `[samples]` for audio previews.

    The mel filterbank is inverted with its pseudo-inverse, then the phase is estimated with fast Griffin-Lim
    (momentum 0.99, as torchaudio). The initial phase comes from a local, fixed-seed generator, so the output is
    deterministic and the global RNG is left untouched (training resume stays bit-exact).
    Output length is `(frames - 1) * hop_length`; the peak is limited to 1.

    A log-mel longer than `chunk_seconds` (default `voicetrain.chunking.DEFAULT_CHUNK_SECONDS`) is inverted
    in overlapping chunks (each with a second of context, crossfaded at the joins), so memory does not grow
    with its length beyond the output itself. Each chunk estimates its own phase, starting where it overlaps
    the previous chunk from the phase that chunk converged to, so the two agree where they are crossfaded; the
    waves differ from one pass's (another phase), their log-mels do not (tests/tasks/test_chunked_inference.py).
    A shorter one is one chunk, inverted exactly as one pass.
    """
    # Imported here: importing voicetrain.tasks imports this module (through tasks.base).
    from voicetrain.chunking import Stitcher, plan_for

    if log_mel.dim() != 2 or log_mel.shape[0] != settings.n_mels:
        raise ValueError(
            f"griffin_lim expects a log-mel shaped [n_mels={settings.n_mels}, frames], got {tuple(log_mel.shape)}; "
            f"pass one utterance (index the batch) with the same MelSettings that produced it."
        )
    if iterations < 0:
        raise ValueError(f"griffin_lim iterations={iterations} must be >= 0.")
    frames = log_mel.shape[-1]
    hop = settings.hop_length
    length = max(frames - 1, 1) * hop
    plan = plan_for(frames, settings.sample_rate, hop, chunk_seconds,
                    context_frames=-(-settings.n_fft // hop))
    spans = plan.spans
    with torch.no_grad():
        if len(spans) == 1:
            wave, _ = _griffin_lim_pass(log_mel, settings, iterations, length)
        else:
            stitcher = Stitcher(plan, scale=hop)
            previous_span, previous_angles = None, None
            for span in spans:
                known = None
                if previous_span is not None and previous_angles is not None:
                    # Frames the previous chunk also computed start from the phase it converged to,
                    # so both chunks settle on one phase where they are crossfaded.
                    known = previous_angles[:, span.context_start - previous_span.context_start:]
                computed, angles = _griffin_lim_pass(log_mel[:, span.context_start:span.context_end], settings,
                                                     iterations, (span.context_end - span.context_start - 1) * hop,
                                                     known)
                previous_span, previous_angles = span, angles
                # Local sample j is global sample context_start * hop + j; the last frame owns no samples.
                owned = computed[(span.start - span.context_start) * hop:(span.end - span.context_start) * hop]
                stitcher.add(span, torch.nn.functional.pad(owned, (0, (span.end - span.start) * hop - owned.shape[-1])))
            wave = stitcher.output[:length]
        lowest, highest = torch.aminmax(wave)  # no full-length temporary, as wave.abs() would make
        peak = torch.maximum(-lowest, highest)
        if peak > 1.0:
            wave.div_(peak)  # in place: a long output is not copied
    return wave


def _griffin_lim_pass(log_mel: torch.Tensor, settings: MelSettings, iterations: int, length: int,
                      known_angles: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Griffin-Lim over all of `log_mel` at once: a wave of `length` samples, not yet peak-limited,
    and the unit phasors it ended with. `known_angles` [bins, k] start the first k frames."""
    momentum = 0.99
    device = log_mel.device
    mel = torch.exp(log_mel.detach().to(torch.float32))
    inverse_basis = torch.tensor(_inverse_filterbank(settings), device=device)
    magnitude = torch.clamp(inverse_basis @ mel, min=0.0)
    window = torch.hann_window(settings.win_length, device=device)
    stft_arguments = dict(
        n_fft=settings.n_fft,
        hop_length=settings.hop_length,
        win_length=settings.win_length,
        window=window,
        center=True,
    )
    generator = torch.Generator(device="cpu").manual_seed(0)
    phase = torch.rand(magnitude.shape, generator=generator, dtype=torch.float32) * (2 * math.pi)
    angles = torch.polar(torch.ones_like(phase), phase).to(device)
    if known_angles is not None:
        shared = min(known_angles.shape[-1], angles.shape[-1])
        angles[:, :shared] = known_angles[:, :shared]
    previous = torch.zeros_like(angles)
    for _ in range(iterations):
        wave = torch.istft(magnitude * angles, length=length, **stft_arguments)
        rebuilt = torch.stft(wave, pad_mode="reflect", return_complex=True, **stft_arguments)
        accelerated = rebuilt - previous * (momentum / (1 + momentum))
        angles = accelerated / (accelerated.abs() + 1e-16)
        previous = rebuilt
    wave = torch.istft(magnitude * angles, length=length, **stft_arguments)
    return torch.nan_to_num(wave), angles
