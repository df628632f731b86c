"""`python -m voicetrain.demo EXPORT [EXPORT ...]`: a local web page (Gradio) to try exports side by side.

One input for every export (a recording, uploaded or recorded in the browser, or a sentence for
text-to-speech), then per export: the speaker, the transposition (F0-conditioned conversion), the
vocoder, and the result to play and download, under the export's metadata (task, step, metrics).
Every conversion is `python -m voicetrain.infer`'s own request (`voicetrain.export.infer.run`, built
by its argument parser): the same checks, the same trust boundary (`--trust-code`), no second path.
Served on 127.0.0.1 unless --host says otherwise; a public Gradio link only with --share.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import soundfile

from voicetrain.export.artifact import ExportError, load_inference_modules
from voicetrain.export.infer import build_parser as infer_parser
from voicetrain.export.infer import run as infer_run
from voicetrain.tasks.base import InferenceError
from voicetrain.trust import add_trust_argument

PROG = "python -m voicetrain.demo"
DEFAULT_VOCODER = "the export's own (or Griffin-Lim)"
MAX_TEXT_CHARACTERS = 1000


@dataclass(frozen=True)
class DemoExport:
    """What the page shows of one export; the model itself is loaded by infer.run per request."""

    path: Path
    task: str
    inputs: tuple[str, ...]  # Task.inference_inputs: audio, text, speaker, transpose, vocoder
    speakers: list[str]
    step: int | None
    metrics: dict[str, float]

    def metadata(self) -> str:
        metrics = ", ".join(f"{name} {value:.3f}" for name, value in sorted(self.metrics.items())) or "none recorded"
        return f"**{self.path}**  \n{self.task}, step {self.step}  \nmetrics: {metrics}"


def describe(path: Path, trusted_modules: list[str]) -> DemoExport:
    """Verifies the export (checksums, trust boundary) and reads what the page shows."""
    task, _ = load_inference_modules(path, trusted_modules)
    manifest = json.loads((path / "manifest.json").read_text())  # verified by the load above
    return DemoExport(path, type(task).__name__, tuple(task.inference_inputs), list(task.context.speakers),
                      manifest.get("step"), dict(manifest.get("metrics") or {}))


def input_problem(audio: str | None, text: str | None, export: DemoExport, max_seconds: float) -> str | None:
    """The input limits of the page: a recording at most max_seconds long, a sentence at most
    MAX_TEXT_CHARACTERS, and the input the export reads present."""
    if "audio" in export.inputs:
        if not audio:
            return "upload or record a recording first"
        seconds = soundfile.info(audio).duration
        if seconds > max_seconds:
            return f"the recording lasts {seconds:.1f} s; this page takes at most {max_seconds:g} s (--max-seconds)"
    if "text" in export.inputs:
        if not text or not text.strip():
            return "type a sentence first"
        if len(text) > MAX_TEXT_CHARACTERS:
            return f"the sentence has {len(text)} characters; this page takes at most {MAX_TEXT_CHARACTERS}"
    return None


def infer_arguments(export: DemoExport, audio: str | None, text: str | None, speaker: str | None,
                    transpose: str | None, vocoder: str | None, output: Path,
                    trusted_modules: list[str]) -> list[str]:
    """The `python -m voicetrain.infer` command line of one request (only the inputs the export reads)."""
    argv = [str(export.path), "--output", str(output)]
    if "audio" in export.inputs:
        argv += ["--input", str(audio)]
    if "text" in export.inputs:
        argv += ["--text", str(text)]
    if "speaker" in export.inputs and speaker:
        argv += ["--speaker", speaker]
    if "transpose" in export.inputs and transpose not in (None, ""):
        argv += ["--transpose", str(transpose)]
    if "vocoder" in export.inputs and vocoder and vocoder != DEFAULT_VOCODER:
        argv += ["--vocoder", vocoder]
    for module in trusted_modules:
        argv += ["--trust-code", module]
    return argv


def convert(export: DemoExport, audio: str | None, text: str | None, speaker: str | None, transpose: str | None,
            vocoder: str | None, outputs: Path, trusted_modules: list[str], max_seconds: float) -> tuple[str | None, str]:
    """One export's result: (the wav written, or None, and the line to show under it)."""
    problem = input_problem(audio, text, export, max_seconds)
    if problem is not None:
        return None, problem
    handle, name = tempfile.mkstemp(suffix=".wav", prefix=f"{export.path.parent.name}-", dir=outputs)
    os.close(handle)
    argv = infer_arguments(export, audio, text, speaker, transpose, vocoder, Path(name), trusted_modules)
    try:
        return name, infer_run(infer_parser().parse_args(argv))
    except (ExportError, InferenceError) as error:
        return None, str(error)


def build_page(exports: list[DemoExport], vocoders: list[str], trusted_modules: list[str], outputs: Path,
               max_seconds: float) -> Any:
    import gradio

    takes = {field for export in exports for field in export.inputs}
    with gradio.Blocks(title="voicetrain demo") as page:
        gradio.Markdown("# voicetrain demo")
        audio = gradio.Audio(sources=["upload", "microphone"], type="filepath", elem_id="input-audio",
                             label=f"recording (at most {max_seconds:g} s)", visible="audio" in takes)
        text = gradio.Textbox(label="text (text-to-speech)", max_length=MAX_TEXT_CHARACTERS, elem_id="input-text",
                              visible="text" in takes)
        button = gradio.Button("Convert", variant="primary", elem_id="convert")
        controls, results = [], []
        with gradio.Row():
            for index, export in enumerate(exports):
                with gradio.Column():
                    gradio.Markdown(export.metadata(), elem_id=f"metadata-{index}")
                    speaker = gradio.Dropdown(export.speakers, value=export.speakers[0] if export.speakers else None,
                                              label="speaker", visible="speaker" in export.inputs)
                    transpose = gradio.Textbox("0", label="transpose (semitones, or auto)",
                                               visible="transpose" in export.inputs)
                    vocoder = gradio.Dropdown([DEFAULT_VOCODER, *vocoders], value=DEFAULT_VOCODER, label="vocoder",
                                              visible="vocoder" in export.inputs)
                    # The browser's own player (an <audio> element), not Gradio's waveform view.
                    result = gradio.Audio(type="filepath", label="result", interactive=False,
                                          elem_id=f"output-{index}",
                                          waveform_options=gradio.WaveformOptions(show_recording_waveform=False))
                    status = gradio.Markdown(elem_id=f"status-{index}")
                controls += [speaker, transpose, vocoder]
                results += [result, status]

        def convert_all(audio_path: str | None, sentence: str | None, *chosen: str | None) -> list[Any]:
            values: list[Any] = []
            for index, export in enumerate(exports):
                speaker_name, semitones, vocoder_path = chosen[3 * index: 3 * index + 3]
                values += list(convert(export, audio_path, sentence, speaker_name, semitones, vocoder_path, outputs,
                                       trusted_modules, max_seconds))
            return values

        button.click(convert_all, inputs=[audio, text, *controls], outputs=results)
    return page


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="A local web page to try voicetrain exports side by side: upload or record a recording (or "
                    "type a sentence for text-to-speech), pick the speaker, transposition and vocoder, and play or "
                    "download each export's result. Inference is python -m voicetrain.infer's own.",
        epilog=f"examples:\n  {PROG} runs/alice/export\n  {PROG} runs/alice/export runs/bob/export --vocoder "
               "runs/voc/export",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("exports", metavar="EXPORT", type=Path, nargs="+", help="export folders, e.g. runs/alice/export")
    parser.add_argument("--vocoder", metavar="VOCODER_EXPORT", action="append", default=[],
                        help="a vocoder export offered for mel-producing exports (repeatable)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="the address to serve on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to "
                             "the network)")
    parser.add_argument("--port", type=int, default=7860, help="the port (default 7860)")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link (off by default)")
    parser.add_argument("--max-seconds", type=float, default=30.0,
                        help="the longest recording the page converts (default 30)")
    parser.add_argument("--outputs", type=Path, help="where results are written (default: a temporary folder)")
    add_trust_argument(parser, "an export (or a vocoder)")
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    try:
        exports = [describe(path, arguments.trust_code) for path in arguments.exports]
    except (ExportError, InferenceError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    # No usage report leaves this machine; the page's own files are served by the local server.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    outputs = arguments.outputs or Path(tempfile.mkdtemp(prefix="voicetrain-demo-"))
    outputs.mkdir(parents=True, exist_ok=True)
    page = build_page(exports, arguments.vocoder, arguments.trust_code, outputs, arguments.max_seconds)
    page.queue().launch(server_name=arguments.host, server_port=arguments.port, share=arguments.share,
                        allowed_paths=[str(outputs)], inbrowser=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
