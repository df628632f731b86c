"""Audio files: reading any soundfile-readable file as mono float32 at a given rate (soxr high quality
when the rate differs; long files block by block), and writing mono waves as 16-bit wav or flac that
appear whole or not at all. Every bad file is refused with an error that names it and the fix.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import soundfile
import soxr
import torch

from voicetrain.durable import atomic_write

WRITABLE_SUFFIXES = {".wav": "WAV", ".flac": "FLAC"}
ENCODE_BLOCK_SAMPLES = 1 << 20
# Longer files are read block by block (about 2 minutes at 16 kHz; shorter ones in one read, as always).
STREAMED_READ_FRAMES = 1 << 21
# Below this a file holds no speech (a 2 kHz band loses the second formant and every consonant): a 1 Hz
# "recording" resampled to the model's rate would only be stretched into seconds of noise.
MINIMUM_INPUT_SAMPLE_RATE = 4000


class AudioReadError(ValueError):
    """An audio file is missing, empty or cannot be decoded; the message names the path and the fix,
    `problem` what is wrong with the file alone (for commands that give their own advice)."""

    def __init__(self, message: str, problem: str | None = None):
        super().__init__(message)
        self.problem = problem


def _unreadable(path: Path, problem: str) -> AudioReadError:
    return AudioReadError(
        f"Cannot use audio file {path}: {problem}. Re-encode it as wav/flac (or remove it from the dataset), "
        f"or set data.skip_bad_files=true to skip it.", problem
    )


def load_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """Read `path` as mono float32 in [-1, 1] at `sample_rate` (soxr high quality when it differs)."""
    path = Path(path)
    if not path.is_file():
        raise AudioReadError(
            f"Audio file {path} does not exist (or is not a file). Check the dataset root/metadata, "
            f"or set data.skip_bad_files=true to skip it."
        )
    try:
        if soundfile.info(str(path)).frames > STREAMED_READ_FRAMES:
            return _load_long_audio(path, sample_rate)
        wave, file_rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.SoundFileError, RuntimeError, OSError) as error:
        # soundfile reports unknown formats and truncated headers as LibsndfileError (a RuntimeError).
        raise _unreadable(path, f"it could not be decoded ({error})") from error
    if wave.shape[0] == 0:
        raise _unreadable(path, "it contains 0 samples")
    # Averaging the channels keeps the level of a dual-mono recording unchanged.
    mono = wave.mean(axis=1, dtype=np.float32)
    if not np.all(np.isfinite(mono)):
        raise _unreadable(path, "it contains NaN or infinite sample values")
    if file_rate != sample_rate:
        mono = soxr.resample(mono, file_rate, sample_rate, quality="HQ")
    # Float files and the resampler's ringing can both exceed full scale slightly.
    return np.clip(mono, -1.0, 1.0).astype(np.float32, copy=False)


def _load_long_audio(path: Path, sample_rate: int) -> np.ndarray:
    """`load_audio` of a long file, read and resampled block by block (soxr's stream, high quality)
    into one preallocated result, so that reading holds no full-length copy but the result."""
    with soundfile.SoundFile(str(path)) as source:
        file_rate, frames = source.samplerate, source.frames
        expected = math.ceil(frames * sample_rate / file_rate) + 1
        result = np.empty(expected, dtype=np.float32)
        stream = soxr.ResampleStream(file_rate, sample_rate, 1, dtype="float32", quality="HQ") \
            if file_rate != sample_rate else None
        written = 0
        while True:
            block = source.read(STREAMED_READ_FRAMES, dtype="float32", always_2d=True)
            last = block.shape[0] < STREAMED_READ_FRAMES
            mono = block.mean(axis=1, dtype=np.float32)
            if not np.all(np.isfinite(mono)):
                raise _unreadable(path, "it contains NaN or infinite sample values")
            if stream is not None:
                mono = stream.resample_chunk(mono, last=last)
            # The resampler's length can differ from the estimate by a sample: grow rather than fail.
            if written + mono.shape[0] > result.shape[0]:
                result = np.concatenate([result[:written], np.empty(mono.shape[0], dtype=np.float32)])
            np.clip(mono, -1.0, 1.0, out=result[written:written + mono.shape[0]])
            written += mono.shape[0]
            if last:
                return result[:written]


def save_audio(path: str | Path, wave: np.ndarray | torch.Tensor, sample_rate: int) -> None:
    """Write a mono wave as 16-bit PCM wav or flac (chosen by the suffix), creating the parent directory.
    The file appears whole or not at all (written under a temporary name, then renamed)."""
    path = Path(path)
    samples = mono_samples(wave, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda temporary: write_audio_file(temporary, samples, sample_rate, path))


def mono_samples(wave: np.ndarray | torch.Tensor, path: Path) -> np.ndarray:
    """The float32 samples of a mono wave to be saved at `path`, after checking the suffix and shape."""
    if path.suffix.lower() not in WRITABLE_SUFFIXES:
        raise ValueError(
            f"Cannot save audio to {path}: suffix {path.suffix!r} is not supported; use one of "
            f"{sorted(WRITABLE_SUFFIXES)}."
        )
    if isinstance(wave, torch.Tensor):
        wave = wave.detach().to("cpu", torch.float32).numpy()
    samples = np.asarray(wave, dtype=np.float32)
    if samples.ndim > 1:
        # A [1, samples] or [1, 1, samples] tensor is still mono; anything wider is a caller mistake.
        samples = samples.squeeze()
    if samples.ndim != 1:
        raise ValueError(
            f"Cannot save audio to {path}: expected a mono wave shaped [samples], got shape {np.shape(wave)}; "
            f"select one channel or one batch item first."
        )
    return samples


class _FileErrors:
    """A binary file for soundfile's virtual I/O that keeps the OSError of a failed write (a full
    disk, say) instead of losing it in libsndfile, which reports only that a write fell short."""

    def __init__(self, handle: io.BufferedRandom):
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.handle.write(data)
        except OSError as error:
            self.error = self.error or error
            return 0

    def read(self, size: int = -1) -> bytes:
        return self.handle.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.handle.seek(offset, whence)

    def tell(self) -> int:
        return self.handle.tell()


def write_audio_file(destination: Path, samples: np.ndarray, sample_rate: int, named: Path) -> None:
    """Writes mono float samples to `destination` as 16-bit PCM in the format `named`'s suffix chooses,
    block by block (no full-length clipped copy). A failed write raises the file system's OSError."""
    file_format = WRITABLE_SUFFIXES[named.suffix.lower()]
    with open(destination, "wb+") as handle:
        target = _FileErrors(handle)
        try:
            with soundfile.SoundFile(target, "w", sample_rate, 1, subtype="PCM_16", format=file_format) as encoder:
                for start in range(0, samples.shape[0], ENCODE_BLOCK_SAMPLES):
                    encoder.write(np.clip(np.nan_to_num(samples[start:start + ENCODE_BLOCK_SAMPLES]), -1.0, 1.0))
        # soundfile reports a short write with an assert (AssertionError), libsndfile's errors as RuntimeError.
        except (soundfile.SoundFileError, RuntimeError, AssertionError) as error:
            if target.error is not None:
                raise target.error from error
            raise
        if target.error is not None:
            raise target.error
