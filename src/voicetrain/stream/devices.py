"""A stream through sound devices (PortAudio's blocking streams): microphone to speakers, microphone
to a file, or a file to speakers. Each device runs at the model's rate when it takes it, else at its
own default rate with soxr's streaming resampler either side; PortAudio's input-overflow and
output-underflow flags are counted (the report's overruns and underruns)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from voicetrain.stream.audio_io import (BlockBuffer, DeviceCounts, Resampler, device_rate, file_blocks,
                                        sounddevice_module)
from voicetrain.stream.engine import StreamEngine

PREFILL_BLOCKS = 2


def microphone_blocks(stream: Any, device_block: int, resample: Resampler, block: int,
                      counts: DeviceCounts) -> Iterator[np.ndarray]:
    buffer = BlockBuffer(block)
    while True:
        data, overflowed = stream.read(device_block)
        counts.overruns += int(bool(overflowed))
        yield from buffer.push(resample(np.ascontiguousarray(data[:, 0])))


def run_devices(engine: StreamEngine, source: Path | None, input_device: int | None, output_device: int | None,
                play: bool, seconds: float | None, on_ready: Callable[[str], None] = print
                ) -> tuple[np.ndarray, DeviceCounts]:
    """Streams until the file ends, `seconds` of input have passed, or Ctrl-C; returns what was not
    played (the output when it goes to a file) and the device counts. `on_ready` gets one line once
    the devices are open (what a caller waits for before making a sound)."""
    sounddevice = sounddevice_module()
    timing, counts = engine.timing, DeviceCounts()
    rate, block = timing.sample_rate, timing.block
    limit = None if seconds is None else int(seconds * rate)
    collected: list[np.ndarray] = []
    microphone = None
    with contextlib.ExitStack() as stack:
        if source is None:
            in_rate = device_rate(sounddevice, input_device, "input", rate)
            device_block = max(1, round(block * in_rate / rate))
            microphone = stack.enter_context(sounddevice.InputStream(
                device=input_device, samplerate=in_rate, channels=1, dtype="float32", blocksize=device_block))
            counts.input_latency = float(microphone.latency)
            blocks = microphone_blocks(microphone, device_block, Resampler(in_rate, rate), block, counts)
        else:
            blocks = file_blocks(source, rate, block)
        speakers = to_speakers = None
        if play:
            out_rate = device_rate(sounddevice, output_device, "output", rate)
            speakers = stack.enter_context(sounddevice.OutputStream(
                device=output_device, samplerate=out_rate, channels=1, dtype="float32",
                blocksize=max(1, round(block * out_rate / rate))))
            counts.output_latency = float(speakers.latency)
            to_speakers = Resampler(rate, out_rate)

        opened = [f"{kind} {sounddevice.query_devices(stream.device)['name']} at {int(stream.samplerate)} Hz"
                  for kind, stream in (("input", microphone), ("output", speakers))
                  if stream is not None]
        on_ready("devices open: " + ", ".join(opened))

        def emit(output: np.ndarray) -> None:
            if speakers is None or to_speakers is None:
                collected.append(output)
                return
            underflowed = speakers.write(np.ascontiguousarray(to_speakers(output)[:, None]))
            counts.underruns += int(bool(underflowed))

        if speakers is not None and source is None:
            # Reading the microphone blocks until a block is in; two blocks of silence queued first keep
            # the speakers fed while the first one is converted (part of the device latency reported).
            for _ in range(PREFILL_BLOCKS):
                emit(np.zeros(block, dtype=np.float32))
        taken = 0
        try:
            for piece in blocks:
                if limit is not None and taken >= limit:
                    break
                emit(engine.process(piece))
                taken += block
        except KeyboardInterrupt:
            pass
        silence = np.zeros(block, dtype=np.float32)
        for _ in range(engine.flush_blocks()):
            emit(engine.process(silence))
    return (np.concatenate(collected) if collected else np.zeros(0, dtype=np.float32)), counts
