"""`python -m voicetrain.stream EXPORT --speaker NAME --input mic|FILE --output speakers|FILE`:
real-time conversion from an export, block by block, with its latency printed at start and a
report of compute time, underruns and overruns at exit.

A file input is read block by block as if it were live (`--realtime` paces it at real time), so
everything but the sound card is testable without one.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import soundfile
import torch

from voicetrain.audio_files import WRITABLE_SUFFIXES, write_audio_file
from voicetrain.durable import atomic_write
from voicetrain.export.artifact import ExportError, load_inference_modules
from voicetrain.export.infer import check_inputs, default_vocoder, load_vocoder, transpose_value
from voicetrain.stream.audio_io import DeviceCounts, file_blocks, list_devices, resolve_device
from voicetrain.stream.devices import run_devices
from voicetrain.stream.engine import StreamEngine, steady_collection
from voicetrain.stream.fallback import streaming_step
from voicetrain.stream.latency import StreamSettingError, StreamTiming, stream_timing
from voicetrain.stream.onnx_backend import use_onnx_runtime
from voicetrain.stream.report import compute_summary, late_blocks, report_lines
from voicetrain.tasks.base import InferenceError, InferenceRequest
from voicetrain.trust import add_trust_argument

PROG = "python -m voicetrain.stream"
DEFAULT_BLOCK_MS = 40.0
DEFAULT_CROSSFADE_MS = 8.0
DEFAULT_SEARCH_MS = 4.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Convert a live input (a microphone, or a file read block by block as if it were live) with an "
                    "export, block by block: svc and vc (+ --vocoder or Griffin-Lim) and vocoder exports through "
                    "their streaming hooks, any other task through a slower sliding-window fallback.",
        epilog=f"examples:\n  {PROG} --list-devices\n  {PROG} runs/bob/export --speaker bob --input mic --output "
               f"speakers\n  {PROG} runs/bob/export --speaker bob --transpose 12 --input in.wav --output out.wav "
               "--block-ms 32",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export_dir", metavar="EXPORT_DIR", type=Path, nargs="?", help="an export, e.g. runs/bob/export")
    parser.add_argument("--speaker", metavar="NAME", help="the target speaker")
    parser.add_argument("--transpose", metavar="SEMITONES|auto", type=transpose_value,
                        help="F0-conditioned conversion: shift the pitch by this many semitones, or auto")
    parser.add_argument("--vocoder", metavar="VOCODER_EXPORT", type=Path, help="a vocoder export for mel exports")
    parser.add_argument("--input", metavar="mic|FILE", default="mic", help="mic (a sound device) or an audio file")
    parser.add_argument("--output", metavar="speakers|FILE", default="speakers",
                        help="speakers (a sound device) or a file to write (at the export's rate)")
    parser.add_argument("--input-device", metavar="NAME|INDEX", help="the input device (default: PortAudio's)")
    parser.add_argument("--output-device", metavar="NAME|INDEX", help="the output device (default: PortAudio's)")
    parser.add_argument("--list-devices", action="store_true", help="print PortAudio's devices and exit")
    parser.add_argument("--block-ms", type=float, default=DEFAULT_BLOCK_MS,
                        help="new input per step, rounded up to whole hops (default %(default)s)")
    parser.add_argument("--lookahead-ms", type=float, default=None,
                        help="input after a block the step waits for (default: what the model needs)")
    parser.add_argument("--crossfade-ms", type=float, default=DEFAULT_CROSSFADE_MS,
                        help="SOLA crossfade at each join (default %(default)s)")
    parser.add_argument("--search-ms", type=float, default=DEFAULT_SEARCH_MS,
                        help="SOLA searches this far either way for the best join (default %(default)s)")
    parser.add_argument("--backend", choices=("torch", "onnx"), default="torch",
                        help="run the model's step in PyTorch or ONNX Runtime (default %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for the model (default %(default)s)")
    parser.add_argument("--realtime", action="store_true", help="pace a file input at real time")
    parser.add_argument("--seconds", type=float, default=None, help="stop after this many seconds of input")
    add_trust_argument(parser, "the export (or its vocoder)")
    return parser


def prepare(arguments: argparse.Namespace) -> tuple[StreamEngine, bool]:
    """The engine for the export and the flags, or the error that names the fix."""
    if arguments.export_dir is None:
        raise StreamSettingError("give an export folder (e.g. runs/bob/export), or --list-devices")
    task, modules = load_inference_modules(arguments.export_dir, arguments.trust_code)
    given = [name for name, value in (("speaker", arguments.speaker), ("transpose", arguments.transpose),
                                      ("vocoder", arguments.vocoder)) if value is not None]
    check_inputs(task, ["audio", *given])
    vocoder_path = arguments.vocoder or (default_vocoder(arguments.export_dir)
                                         if "vocoder" in task.inference_inputs else None)
    vocoder = load_vocoder(vocoder_path, task, arguments.trust_code) if vocoder_path is not None else None
    request = InferenceRequest(speaker=arguments.speaker, transpose=arguments.transpose, vocoder=vocoder)
    if "speaker" in task.inference_inputs:
        task.speaker_id(arguments.speaker)
    step, own = streaming_step(task, modules, request)
    if arguments.backend == "onnx":
        use_onnx_runtime(step, arguments.export_dir, arguments.threads)
    context = task.context
    timing = stream_timing(context.sample_rate, context.hop_length, arguments.block_ms, arguments.lookahead_ms,
                           arguments.crossfade_ms, arguments.search_ms, step.needs.lookahead, step.needs.analysis_delay)
    engine = StreamEngine(step, timing)
    engine.warm_up()
    return engine, own


def run_files(engine: StreamEngine, source: Path, realtime: bool, seconds: float | None) -> np.ndarray:
    """A file through the engine as if it were live; the output as a live stream plays it, up to the
    input's last sample (`engine.delay` samples after the input's length)."""
    timing = engine.timing
    info = soundfile.info(str(source))
    input_samples = round(info.frames * timing.sample_rate / info.samplerate)
    block_seconds = timing.block / timing.sample_rate
    limit = None if seconds is None else int(seconds * timing.sample_rate / timing.block) + 1
    pieces, started = [], time.monotonic()
    for index, block in enumerate(file_blocks(source, timing.sample_rate, timing.block)):
        if limit is not None and index >= limit:
            break
        if realtime:
            time.sleep(max(0.0, started + (index + 1) * block_seconds - time.monotonic()))
        pieces.append(engine.process(block))
    silence = np.zeros(timing.block, dtype=np.float32)
    pieces.extend(engine.process(silence) for _ in range(engine.flush_blocks()))
    wave = np.concatenate(pieces)
    return wave if limit is not None else wave[:input_samples + engine.delay]


def writable_output(path: Path) -> Path:
    if path.suffix.lower() not in WRITABLE_SUFFIXES:
        raise StreamSettingError(f"--output {path}: give speakers or a file ending in one of "
                                 f"{sorted(WRITABLE_SUFFIXES)}")
    if not path.parent.is_dir():
        raise StreamSettingError(f"--output {path}: the folder {path.parent} does not exist; create it first")
    return path


def run(arguments: argparse.Namespace) -> list[str]:
    if arguments.list_devices:
        return [list_devices()]
    torch.set_num_threads(max(1, arguments.threads))
    to_file = None if arguments.output == "speakers" else writable_output(Path(arguments.output))
    from_file = None if arguments.input == "mic" else Path(arguments.input)
    if from_file is not None and not from_file.is_file():
        raise StreamSettingError(f"--input {from_file}: no such file; give an audio file or mic")
    if from_file is None and to_file is not None and arguments.seconds is None:
        raise StreamSettingError("--input mic --output FILE needs --seconds N (how long to record)")
    engine, own = prepare(arguments)
    timing: StreamTiming = engine.timing
    print(timing.describe(), flush=True)
    devices: DeviceCounts | None = None
    if from_file is not None and to_file is not None:
        with steady_collection():
            wave = run_files(engine, from_file, arguments.realtime, arguments.seconds)
    else:
        input_device = resolve_device(arguments.input_device, "input") if from_file is None else None
        output_device = resolve_device(arguments.output_device, "output") if to_file is None else None
        with steady_collection():
            wave, devices = run_devices(engine, from_file, input_device, output_device, to_file is None,
                                        arguments.seconds, lambda line: print(line, flush=True))
    lines = report_lines(compute_summary(engine.compute.seconds, timing), timing, devices, own,
                         late_blocks(engine.compute.seconds, timing))
    if to_file is not None:
        atomic_write(to_file, lambda temporary: write_audio_file(temporary, wave, timing.sample_rate, to_file))
        lines.append(f"wrote {to_file}: {wave.shape[0] / timing.sample_rate:.2f} s at {timing.sample_rate} Hz, "
                     f"{1000.0 * engine.delay / timing.sample_rate:.1f} ms behind the input")
    return lines


def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    try:
        lines = run(arguments)
    except (StreamSettingError, ExportError, InferenceError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
