"""How each row of a table makes its wave for an item.

An export is loaded only through `voicetrain.export.artifact.load_inference_modules` (manifest checked, classes
through the trust boundary) and run only through its task's `infer` with an `InferenceRequest`: the code
`python -m voicetrain.infer` runs, so a figure here is what a user hears there. A vocoder export is attached with
`voicetrain.export.infer.load_vocoder`, as `--vocoder` does. The other rows read the corpus: the recordings
themselves (ground truth), the unconverted source, and Griffin-Lim on the recordings' own log-mels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr
import torch
from torch import nn

from voicetrain.audio import MelSettings, MelSpectrogram, griffin_lim
from voicetrain.audio_files import load_audio
from voicetrain.evaluate.plan import Item, Row, task_kind
from voicetrain.evaluate.scoring import Scored
from voicetrain.export.artifact import load_inference_modules
from voicetrain.export.infer import default_vocoder, load_vocoder
from voicetrain.tasks.base import InferenceOutput, InferenceRequest, Task


@dataclass(frozen=True)
class LoadedExport:
    path: Path
    label: str  # the run's name (the folder above `export/`), or the folder's own
    kind: str
    task: Task
    modules: dict[str, nn.Module]
    default_vocoder: Path | None


def export_label(path: Path) -> str:
    resolved = path.resolve()
    return resolved.parent.name if resolved.name == "export" else resolved.name


def load_export(path: Path, trusted_modules: Sequence[str]) -> LoadedExport:
    task, modules = load_inference_modules(path, tuple(trusted_modules))
    kind = task_kind(tuple(task.inference_inputs), hasattr(task, "vocode"))
    vocoder = default_vocoder(path) if "vocoder" in task.inference_inputs else None
    return LoadedExport(path, export_label(path), kind, task, modules, vocoder)


class Systems:
    """Makes the wave of any row for any item, at one sample rate (the first export's of the table)."""

    def __init__(self, exports: dict[Path, LoadedExport], sample_rate: int, mel: MelSettings | None,
                 trusted_modules: Sequence[str]):
        self.exports = exports
        self.sample_rate = sample_rate
        self.mel = mel  # the log-mel Griffin-Lim inverts (the table's first export's)
        self.trusted_modules = tuple(trusted_modules)
        self._vocoders: dict[tuple[Path, Path], Callable[[torch.Tensor], torch.Tensor]] = {}
        self._recordings: dict[Path, np.ndarray] = {}

    def recording(self, path: Path) -> np.ndarray:
        if path not in self._recordings:
            self._recordings[path] = load_audio(path, self.sample_rate)
        return self._recordings[path]

    def vocoder(self, export: LoadedExport, vocoder: Path) -> Callable[[torch.Tensor], torch.Tensor]:
        key = (export.path, vocoder)
        if key not in self._vocoders:
            self._vocoders[key] = load_vocoder(vocoder, export.task, self.trusted_modules)
        return self._vocoders[key]

    def produce(self, row: Row, item: Item) -> Scored | None:
        """The row's wave for the item with its references, or None when the row has nothing for this item
        (the ground truth of a sentence the target speaker never read)."""
        reference = self.recording(item.reference.path) if item.reference is not None else None
        source = self.recording(item.source.path) if item.source is not None else None
        if row.system == "ground_truth":
            if item.reference is None:
                return None
            return Scored(reference, reference, recording_key=str(item.reference.path))
        if row.system == "source":
            # The same recording is the baseline of every target speaker: transcribed and rated once.
            return Scored(source, reference, source, recording_key=str(item.source.path))
        if row.system == "griffin_lim":
            if reference is None or self.mel is None:
                return None
            log_mel = MelSpectrogram(self.mel)(torch.from_numpy(reference).reshape(1, -1))[0]
            return Scored(griffin_lim(log_mel, self.mel).numpy(), reference, source)
        return self.run_export(row, item, reference, source)

    def run_export(self, row: Row, item: Item, reference: np.ndarray | None, source: np.ndarray | None) -> Scored:
        export = self.exports[row.export]
        rate = export.task.context.sample_rate
        inputs = export.task.inference_inputs
        audio = source if export.kind != "vocoder" else reference
        request = InferenceRequest(
            audio=torch.from_numpy(self.at_rate(audio, self.sample_rate, rate)) if "audio" in inputs else None,
            speaker=item.speaker if "speaker" in inputs else None,
            text=item.text if "text" in inputs else None,
            transpose=row.transpose if "transpose" in inputs else None,
            vocoder=self.vocoder(export, row.vocoder) if row.vocoder is not None else None,
        )
        with torch.no_grad():
            result = export.task.infer(export.modules, request)
        output = result if isinstance(result, InferenceOutput) else InferenceOutput(result)
        wave = self.at_rate(output.wave.detach().float().reshape(-1).numpy(), rate, self.sample_rate)
        asked_f0 = output.outputs.get("f0")
        return Scored(wave, reference, source,
                      asked_f0=asked_f0.detach().float().reshape(-1).numpy() if asked_f0 is not None else None)

    @staticmethod
    def at_rate(wave: np.ndarray, rate: int, wanted: int) -> np.ndarray:
        samples = np.asarray(wave, dtype=np.float32)
        return samples if rate == wanted else soxr.resample(samples, rate, wanted, quality="HQ").astype(np.float32)
