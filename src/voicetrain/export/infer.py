"""`python -m voicetrain.infer EXPORT_DIR ...`: inference from an export folder alone.

Loads only the export (model.safetensors and JSON, after checking their sha256; never the
optimizer, the training config or a pickle), resamples the input to the export's sample rate,
hands the request to the task's `Task.infer` and writes the wave at the export's sample rate.
What a request holds is task-specific: voice conversion reads --input and --speaker; text-to-speech
reads --text and --speaker.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from voicetrain.audio import WRITABLE_SUFFIXES, AudioReadError, load_audio, save_audio
from voicetrain.export.artifact import ExportError, load_inference_modules
from voicetrain.tasks.base import InferenceError, InferenceRequest

PROG = "python -m voicetrain.infer"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run an exported voicetrain model (runs/<name>/export) on one input. Voice conversion: "
                    "speak --input with --speaker's voice; text-to-speech: speak --text with --speaker's voice. "
                    "The wave is vocoded with Griffin-Lim, a preview vocoder (intelligible but buzzy); a neural "
                    "vocoder is a separate model.",
        epilog=f"examples:\n  {PROG} runs/alice/export --list-speakers\n  {PROG} runs/alice/export --input in.wav "
               "--speaker slt --output out.wav\n  "
               f"{PROG} runs/tts/export --text \"Hello there.\" --speaker slt --output out.wav",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("export_dir", metavar="EXPORT_DIR", type=Path, help="an export folder, e.g. runs/alice/export")
    parser.add_argument("--input", metavar="IN.wav", type=Path,
                        help="the recording to convert (wav, flac, ... at any sample rate; resampled)")
    parser.add_argument("--text", metavar="TEXT", help="the sentence to speak (text-to-speech exports)")
    parser.add_argument("--speaker", metavar="NAME", help="the target speaker (see --list-speakers)")
    parser.add_argument("--output", metavar="OUT.wav", type=Path,
                        help=f"where to write the result ({', '.join(sorted(WRITABLE_SUFFIXES))}), at the export's "
                             "sample rate")
    parser.add_argument("--list-speakers", action="store_true", help="print the export's speakers and exit")
    return parser


def read_input(path: Path, sample_rate: int) -> torch.Tensor:
    if not path.is_file():
        raise InferenceError(f"--input {path}: no such file")
    try:
        return torch.from_numpy(load_audio(path, sample_rate))
    except AudioReadError as error:
        # load_audio's own advice is about datasets (data.skip_bad_files); say what matters here.
        reason = error.__cause__ or "it holds no usable samples"
        raise InferenceError(f"--input {path} cannot be read as audio ({reason}); pass a wav or flac "
                             "recording") from error


def run(arguments: argparse.Namespace) -> str:
    """Serves one request; returns the line to print. Raises the errors `main` reports."""
    task, modules = load_inference_modules(arguments.export_dir)
    if arguments.list_speakers:
        return "\n".join(task.context.speakers)
    if arguments.output is None:
        raise InferenceError("--output OUT.wav is required")
    if arguments.output.suffix.lower() not in WRITABLE_SUFFIXES:
        raise InferenceError(f"--output {arguments.output}: the suffix must be one of {sorted(WRITABLE_SUFFIXES)}")
    if arguments.speaker is not None:
        task.speaker_id(arguments.speaker)  # an unknown name fails here, before any audio is read
    sample_rate = task.context.features.sample_rate
    audio = read_input(arguments.input, sample_rate) if arguments.input is not None else None
    try:
        wave = task.infer(modules, InferenceRequest(audio=audio, speaker=arguments.speaker, text=arguments.text))
    except NotImplementedError as error:
        raise InferenceError(f"{error}: this export's task cannot serve inference requests") from error
    save_audio(arguments.output, wave, sample_rate)
    seconds = wave.shape[-1] / sample_rate
    return f"wrote {arguments.output}: {seconds:.2f} s at {sample_rate} Hz"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    arguments = parser.parse_args(argv)
    try:
        print(run(arguments))
    except (ExportError, InferenceError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
