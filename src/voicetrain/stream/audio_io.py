"""Audio in and out of a stream: a file read block by block as if it were live (optionally paced
in real time), a file written at the end, and sound devices through PortAudio (`sounddevice`,
the `stream` extra; it needs the system's libportaudio2). Rates are converted to the model's and
back with soxr's streaming resampler, one call per block.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import soxr

from voicetrain.stream.latency import StreamSettingError

FILE_READ_SAMPLES = 4096  # samples read from a file at a time, at its own rate


class BlockBuffer:
    """Samples pushed in any lengths, popped in blocks of exactly `block`."""

    def __init__(self, block: int):
        self.block = block
        self.pending = np.zeros(0, dtype=np.float32)

    def push(self, samples: np.ndarray) -> list[np.ndarray]:
        self.pending = np.concatenate([self.pending, samples.astype(np.float32, copy=False)])
        count = self.pending.shape[0] // self.block
        blocks = [self.pending[index * self.block:(index + 1) * self.block] for index in range(count)]
        self.pending = self.pending[count * self.block:]
        return blocks

    def finish(self) -> list[np.ndarray]:
        """The remainder zero-padded to one block (none if nothing is left)."""
        if self.pending.shape[0] == 0:
            return []
        last = np.zeros(self.block, dtype=np.float32)
        last[:self.pending.shape[0]] = self.pending
        self.pending = np.zeros(0, dtype=np.float32)
        return [last]


class Resampler:
    """soxr.ResampleStream from one rate to another, or nothing when they agree."""

    def __init__(self, from_rate: int, to_rate: int):
        self.stream = soxr.ResampleStream(from_rate, to_rate, 1, dtype="float32") if from_rate != to_rate else None

    def __call__(self, samples: np.ndarray, last: bool = False) -> np.ndarray:
        if self.stream is None:
            return samples.astype(np.float32, copy=False)
        return self.stream.resample_chunk(samples.astype(np.float32, copy=False), last=last)


def mono(frames: np.ndarray) -> np.ndarray:
    return frames.mean(axis=1) if frames.ndim == 2 else frames


def file_blocks(path: Path, sample_rate: int, block: int) -> Iterator[np.ndarray]:
    """Blocks of `block` samples at `sample_rate` from an audio file, read and resampled a piece at a
    time (never the whole file); the last block zero-padded."""
    try:
        info = soundfile.info(str(path))
    except (soundfile.SoundFileError, RuntimeError, OSError) as error:
        raise StreamSettingError(f"--input {path} cannot be read as audio ({error}); pass a wav or flac recording, "
                                 "or mic") from error
    resample, buffer = Resampler(info.samplerate, sample_rate), BlockBuffer(block)
    for piece in soundfile.blocks(str(path), blocksize=FILE_READ_SAMPLES, dtype="float32", always_2d=True):
        yield from buffer.push(resample(mono(piece)))
    yield from buffer.push(resample(np.zeros(0, dtype=np.float32), last=True))
    yield from buffer.finish()


@dataclass
class DeviceCounts:
    """What PortAudio reported during a device stream."""

    overruns: int = 0  # input blocks PortAudio had to drop (input overflow): the converter fell behind
    underruns: int = 0  # output blocks that ran dry (output underflow)
    input_latency: float | None = None  # seconds, PortAudio's estimate for the input device
    output_latency: float | None = None


def sounddevice_module() -> Any:
    """The `sounddevice` module, or an error that says how to get it and PortAudio."""
    try:
        import sounddevice
    except ImportError as error:
        raise StreamSettingError("live audio needs the sounddevice package: pip install 'voicetrain[stream]'") from error
    except OSError as error:  # sounddevice raises OSError when libportaudio is missing
        raise StreamSettingError(f"live audio needs PortAudio ({error}); install it (Debian/Ubuntu: apt-get install "
                                 "libportaudio2) or use --input FILE --output FILE") from error
    return sounddevice


def list_devices() -> str:
    """PortAudio's devices, one a line: index, name, input and output channels, default rate."""
    sounddevice = sounddevice_module()
    lines = []
    for index, device in enumerate(sounddevice.query_devices()):
        lines.append(f"{index}: {device['name']} (in {device['max_input_channels']}, out "
                     f"{device['max_output_channels']}, {device['default_samplerate']:g} Hz)")
    return "\n".join(lines) if lines else "no audio devices (PortAudio found none)"


def resolve_device(spec: str | None, kind: str) -> int | None:
    """A device given by index or by (part of) its name -> its index; None: PortAudio's default.
    `kind` is "input" or "output"; a device without such channels is refused."""
    if spec is None:
        return None
    sounddevice = sounddevice_module()
    devices = list(sounddevice.query_devices())
    channels = f"max_{kind}_channels"
    if spec.isdigit():
        index = int(spec)
        if index >= len(devices) or devices[index][channels] < 1:
            raise StreamSettingError(f"--{kind}-device {spec}: no {kind} device has that index; see --list-devices")
        return index
    matches = [index for index, device in enumerate(devices) if spec.lower() in device["name"].lower()
               and device[channels] > 0]
    if not matches:
        raise StreamSettingError(f"--{kind}-device {spec!r}: no {kind} device's name contains it; see --list-devices")
    return matches[0]


def device_rate(sounddevice: Any, device: int | None, kind: str, wanted: int) -> int:
    """The model's rate if the device takes it, else the device's own default (resampled)."""
    check = sounddevice.check_input_settings if kind == "input" else sounddevice.check_output_settings
    try:
        check(device=device, samplerate=wanted, channels=1, dtype="float32")
        return wanted
    except Exception:  # PortAudio's PortAudioError or ValueError: the device does not take that rate
        return int(sounddevice.query_devices(device, kind)["default_samplerate"])
