"""`python -m voicetrain.infer EXPORT_DIR ...`: inference from an export folder alone.

Loads only the export (model.safetensors and JSON, after checking their SHA-256; never the
optimizer, the training config or a pickle), resamples the input to the export's sample rate,
hands the request to the task's `Task.infer` and writes the wave at the export's sample rate.
Each task names the inputs it reads (`Task.inference_inputs`): a voice converter reads --input and
--speaker, text-to-speech --text and --speaker, F0-conditioned conversion also --transpose, a
vocoder --input alone (copy synthesis); any other input is refused with that list. Mel-producing
exports take --vocoder VOCODER_EXPORT (or the one they were exported with) instead of Griffin-Lim.
"""

from __future__ import annotations

import argparse
import errno
import functools
import inspect
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import soundfile
import torch
from safetensors.torch import save

from voicetrain.audio_files import (MINIMUM_INPUT_SAMPLE_RATE, WRITABLE_SUFFIXES, AudioReadError, load_audio,
                                    mono_samples, write_audio_file)
from voicetrain.durable import atomic_write
from voicetrain.export.artifact import CONFIG, ExportError, load_inference_modules, read_export_config
from voicetrain.tasks.base import InferenceError, InferenceOutput, InferenceRequest, Task
from voicetrain.chunking import DEFAULT_CHUNK_SECONDS
from voicetrain.trust import add_trust_argument

PROG = "python -m voicetrain.infer"
# Command-line flag of each InferenceRequest field.
FLAGS = {"audio": "--input", "speaker": "--speaker", "text": "--text", "transpose": "--transpose",
         "vocoder": "--vocoder"}
OUTPUTS_FILE = "outputs.safetensors"
MINIMUM_CHUNK_SECONDS = 1.0  # a chunk holds its crossfades (OVERLAP_SECONDS each side) and more
# A failed write is the machine's fault (exit 1) for these; any other is the path's (exit 2).
MACHINE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run an exported voicetrain model (runs/<name>/export) on one input. Voice conversion: "
                    "speak --input with --speaker's voice; text-to-speech: speak --text with --speaker's voice; "
                    "F0-conditioned conversion (task=svc): also --transpose; a vocoder (task=vocoder): resynthesise "
                    "--input. Mel-producing exports use Griffin-Lim (intelligible but buzzy) unless a neural "
                    "vocoder is given with --vocoder (or was named at export time).",
        epilog=f"examples:\n  {PROG} runs/alice/export --list-speakers\n  {PROG} runs/alice/export --input in.wav "
               "--speaker slt --output out.wav\n  "
               f"{PROG} runs/tts/export --text \"Hello there.\" --speaker slt --vocoder runs/voc/export --output out.wav\n  "
               f"{PROG} runs/bob/export --input song.wav --speaker bob --transpose 12 --output out.wav\n  "
               f"{PROG} runs/voc/export --input in.wav --output copy.wav",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("export_dir", metavar="EXPORT_DIR", type=Path, help="an export folder, e.g. runs/alice/export")
    parser.add_argument("--input", metavar="IN.wav", type=Path,
                        help="the recording to convert or resynthesise (wav, flac, ... at any sample rate; resampled)")
    parser.add_argument("--text", metavar="TEXT", help="the sentence to speak (text-to-speech exports)")
    parser.add_argument("--speaker", metavar="NAME", help="the target speaker (see --list-speakers)")
    parser.add_argument("--transpose", metavar="SEMITONES|auto", type=transpose_value,
                        help="F0-conditioned conversion: shift the source's pitch contour by this many semitones "
                             "(0 keeps it: the singing convention), or `auto` to map the source speaker's pitch "
                             "range onto the target speaker's (the speech convention)")
    parser.add_argument("--vocoder", metavar="VOCODER_EXPORT", type=Path,
                        help="a vocoder export (task=vocoder) to turn the log-mel into a wave instead of Griffin-Lim")
    parser.add_argument("--output", metavar="OUT.wav", type=Path,
                        help=f"where to write the result ({', '.join(sorted(WRITABLE_SUFFIXES))}), at the export's "
                             "sample rate")
    parser.add_argument("--save-outputs", metavar="DIR", type=Path,
                        help="also write the model's other named outputs (e.g. the F0 it used) as outputs.safetensors")
    parser.add_argument("--list-speakers", action="store_true", help="print the export's speakers and exit")
    parser.add_argument("--chunk-seconds", metavar="SECONDS", type=chunk_seconds_value, default=DEFAULT_CHUNK_SECONDS,
                        help="a longer input is converted in overlapping chunks of this length, crossfaded at the "
                             "joins, so memory does not grow with the input (default %(default)s)")
    add_trust_argument(parser, "the export (or its vocoder)")
    return parser


def chunk_seconds_value(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value < MINIMUM_CHUNK_SECONDS:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of seconds >= {MINIMUM_CHUNK_SECONDS}, e.g. "
                                         f"{DEFAULT_CHUNK_SECONDS}")
    return value


def transpose_value(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of semitones (e.g. 12, -5, 0) or auto") from None


def read_input(path: Path, sample_rate: int) -> torch.Tensor:
    if not path.is_file():
        raise InferenceError(f"--input {path}: no such file")
    try:
        file_rate = soundfile.info(str(path)).samplerate
    except (soundfile.SoundFileError, RuntimeError, OSError) as error:
        raise InferenceError(f"--input {path} cannot be read as audio ({error}); pass a wav or flac recording") from error
    if file_rate < MINIMUM_INPUT_SAMPLE_RATE:
        raise InferenceError(f"--input {path} is sampled at {file_rate} Hz, below {MINIMUM_INPUT_SAMPLE_RATE} Hz, where "
                             f"a file holds no speech (resampled to {sample_rate} Hz it would only be stretched); pass "
                             "the recording at its real sample rate")
    try:
        return torch.from_numpy(load_audio(path, sample_rate))
    except AudioReadError as error:
        # load_audio's own advice is about datasets (data.skip_bad_files); say what matters here.
        reason = error.problem or error.__cause__ or "it holds no usable samples"
        raise InferenceError(f"--input {path} cannot be read as audio ({reason}); pass a wav or flac "
                             "recording") from error


def given_inputs(arguments: argparse.Namespace) -> list[str]:
    values = {"audio": arguments.input, "speaker": arguments.speaker, "text": arguments.text,
              "transpose": arguments.transpose, "vocoder": arguments.vocoder}
    return [field for field, value in values.items() if value is not None]


def check_inputs(task: Task, given: list[str]) -> None:
    """An input the export's task does not read is refused, not silently ignored."""
    refused = [field for field in given if field not in task.inference_inputs]
    if refused:
        takes = ", ".join(FLAGS[field] for field in task.inference_inputs)
        flags = " ".join(FLAGS[field] for field in refused)
        raise InferenceError(f"this export ({type(task).__name__}) does not take {flags}; drop {flags} "
                             f"(it takes {takes})")


def load_vocoder(path: Path, task: Task, trusted_modules: Sequence[str] = (),
                 named_by: str = "--vocoder") -> Callable[[torch.Tensor], torch.Tensor]:
    """A vocoder export as a function log-mel -> wave, after checking that it expects the log-mel
    this export makes (sample rate, hop, filterbank): a mismatch would sound wrong, not fail."""
    try:
        vocoder_task, modules = load_inference_modules(path, trusted_modules)
    except ExportError as error:
        raise InferenceError(f"{named_by} {path}: {error}") from error
    if not hasattr(vocoder_task, "vocode"):
        raise InferenceError(f"--vocoder {path} is a {type(vocoder_task).__name__} export, not a vocoder; give the "
                             "export of a task=vocoder run")
    if vocoder_task.context.features != task.context.features:
        raise InferenceError(f"--vocoder {path} was trained on other log-mels ({vocoder_task.context.features}) than "
                             f"this export makes ({task.context.features}); train the vocoder with the same "
                             "features.sample_rate, features.hop_length and features.mel settings")
    if "chunk_seconds" not in inspect.signature(vocoder_task.vocode).parameters:
        # A fork's vocoder that predates chunking vocodes in one pass.
        return lambda log_mel, chunk_seconds=None: vocoder_task.vocode(modules, log_mel)
    return lambda log_mel, chunk_seconds=None: vocoder_task.vocode(modules, log_mel, chunk_seconds=chunk_seconds)


def default_vocoder(export_dir: Path) -> Path | None:
    """The vocoder export this export was made with (export.vocoder), if any."""
    name = read_export_config(export_dir).get("default_vocoder")
    if not name:
        return None
    path = Path(name)
    return path if path.is_absolute() else (export_dir / path)


def run(arguments: argparse.Namespace) -> str:
    """Serves one request; returns the line to print. Raises the errors `main` reports."""
    task, modules = load_inference_modules(arguments.export_dir, arguments.trust_code)
    if arguments.list_speakers:
        return "\n".join(task.context.speakers)
    check_inputs(task, given_inputs(arguments))
    if arguments.output is None:
        raise InferenceError("--output OUT.wav is required")
    if arguments.output.suffix.lower() not in WRITABLE_SUFFIXES:
        raise InferenceError(f"--output {arguments.output}: the suffix must be one of {sorted(WRITABLE_SUFFIXES)}")
    writable_file(arguments.output, "--output")  # before the work, not after it
    if arguments.save_outputs is not None and not arguments.save_outputs.is_dir():
        writable_file(arguments.save_outputs, "--save-outputs")
    if arguments.speaker is not None:
        task.speaker_id(arguments.speaker)  # an unknown name fails here, before any audio is read
    vocoder_path = arguments.vocoder or (default_vocoder(arguments.export_dir)
                                         if "vocoder" in task.inference_inputs else None)
    named_by = "--vocoder" if arguments.vocoder else f"the default vocoder named by {arguments.export_dir / CONFIG}"
    vocoder = load_vocoder(vocoder_path, task, arguments.trust_code, named_by) if vocoder_path is not None else None
    sample_rate = task.context.sample_rate
    audio = read_input(arguments.input, sample_rate) if arguments.input is not None else None
    chunked_vocoder = (functools.partial(vocoder, chunk_seconds=arguments.chunk_seconds)
                       if vocoder is not None else None)
    request = InferenceRequest(audio=audio, speaker=arguments.speaker, text=arguments.text,
                               transpose=arguments.transpose, vocoder=chunked_vocoder,
                               chunk_seconds=arguments.chunk_seconds)
    try:
        result = task.infer(modules, request)
    except NotImplementedError as error:
        raise InferenceError(f"{error}: this export's task cannot serve inference requests") from error
    output = result if isinstance(result, InferenceOutput) else InferenceOutput(result)
    del audio, request, result  # the input need not outlive the inference while the output is written
    write_results(arguments.output, arguments.save_outputs, output, sample_rate)
    seconds = output.wave.shape[-1] / sample_rate
    vocoded = f", vocoded by {vocoder_path}" if vocoder_path is not None else ""
    return f"wrote {arguments.output}: {seconds:.2f} s at {sample_rate} Hz{vocoded}"


class OutputError(Exception):
    """An output file could not be written; `status` 1 when the machine failed (a full disk, an I/O
    error), 2 when the path the user gave cannot be written."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def write_results(output: Path, save_outputs: Path | None, result: InferenceOutput, sample_rate: int) -> None:
    """The wave at `output` and the other outputs in `save_outputs`, each file whole or not at all
    (a temporary name in its folder, renamed when complete): a failed write leaves no partial file,
    and a file that was there before stays as it was."""
    samples = mono_samples(result.wave, output)
    if save_outputs is not None and result.outputs:
        if not save_outputs.is_dir():
            writable_file(save_outputs, "--save-outputs")  # its parent must exist; DIR itself is made
            try:
                save_outputs.mkdir()
            except OSError as error:
                raise write_failure("--save-outputs", save_outputs, error) from error
        tensors = save({name: tensor.detach().cpu().contiguous() for name, tensor in result.outputs.items()})
        write_file(save_outputs / OUTPUTS_FILE, lambda temporary: temporary.write_bytes(tensors), "--save-outputs")
    write_file(output, lambda temporary: write_audio_file(temporary, samples, sample_rate, output), "--output")


def writable_file(path: Path, flag: str) -> None:
    """Refuses, before anything is written, a path that names a folder or lies in a missing one."""
    if path.is_dir():
        raise OutputError(f"{flag} {path} is a folder; give a file name inside it, e.g. {path / 'out.wav'}", 2)
    if not path.parent.is_dir():
        raise OutputError(f"{flag} {path}: the folder {path.parent} does not exist; create it first or write "
                          "elsewhere", 2)


def write_file(path: Path, write: Callable[[Path], None], flag: str) -> None:
    writable_file(path, flag)
    try:
        atomic_write(path, write)
    except OSError as error:
        raise write_failure(flag, path, error) from error


def write_failure(flag: str, path: Path, error: OSError) -> OutputError:
    cause = error.strerror or str(error)
    if error.errno in MACHINE_ERRNOS:
        return OutputError(f"{flag} {path} could not be written: {cause} (errno {errno.errorcode.get(error.errno)}); "
                           "nothing was written, free space or fix the disk and run again", 1)
    return OutputError(f"{flag} {path} cannot be written: {cause}; nothing was written, choose a folder you can "
                       "write to", 2)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    arguments = parser.parse_args(argv)
    try:
        print(run(arguments))
    except (ExportError, InferenceError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    except OutputError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return error.status
    return 0


if __name__ == "__main__":
    sys.exit(main())
