"""`trainer.validation_metrics`: the evaluation's scorers on the validation previews, logged as `val/<name>`.

Each name adds figures averaged over the previews a validation makes (`trainer.audio_previews` of them):
`secs` -> `val/secs` (against the target speaker's reference embedding, as `python -m voicetrain.evaluate`
defines it), `wer` and `cer` -> `val/wer`, `val/cer` (pocketsphinx against the sentence's text), `dnsmos` ->
`val/dnsmos_sig`, `val/dnsmos_bak`, `val/dnsmos_ovrl`, `pesq` -> `val/pesq` (a vocoder's copy synthesis against
its recording: the only preview that shares its recording's time line). Off by default: on a CPU the recogniser
and DNSMOS cost seconds per preview (`make bench ARGS="--only evaluate_rtf"`). The step-0 validation (`trainer.validate_at_start`) gives the untrained point.

A preview is matched to its utterances by the name the recipes give it: `<utterance id>` (TTS, vocoder) or
`<source utterance id>_to_<target speaker>` (VC, SVC); its wave is the one audio entry that is not a recording.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np

from voicetrain.audio_files import load_audio
from voicetrain.config import ConfigError, TrainerSettings
from voicetrain.data.prepare import PreparedData
from voicetrain.data.readers import Utterance
from voicetrain.evaluate.plan import task_kind
from voicetrain.evaluate.scoring import REFERENCE_RECORDINGS, mean_embedding, speaker_similarity_to
from voicetrain.metrics.asr import transcribe
from voicetrain.metrics.extras import import_scorer
from voicetrain.metrics.intelligibility import character_error_rate, word_error_rate
from voicetrain.metrics.quality import dnsmos, pesq_wideband
from voicetrain.metrics.speaker import NoSpeechError, speaker_embedding
from voicetrain.tasks.base import Task, ValidationResult

# The extra's module each scorer imports (a missing one stops the run at its first validation).
SCORER_MODULES = {"secs": "resemblyzer", "wer": "pocketsphinx", "cer": "pocketsphinx", "dnsmos": "speechmos.dnsmos",
                  "pesq": "pesq"}


def preview_targets(utterances: list[Utterance]) -> dict[str, tuple[Utterance, str]]:
    """Preview name -> (the utterance it speaks, the speaker it should sound like)."""
    speakers = sorted({utterance.speaker for utterance in utterances})
    targets = {}
    for utterance in utterances:
        key = utterance.utterance_id.replace("/", "_")
        targets[key] = (utterance, utterance.speaker)
        for speaker in speakers:
            targets[f"{key}_to_{speaker}"] = (utterance, speaker)
    return targets


def check_metrics(task: Task, names: list[str], previews: int) -> None:
    """Stops the run at its first validation when the chosen scorers cannot run here."""
    problems = []
    if names and previews == 0:
        problems.append(f"trainer.validation_metrics={names} scores the validation previews, but "
                        "trainer.audio_previews=0 makes none: set trainer.audio_previews to 1 or more")
    is_vocoder = task_kind(tuple(task.inference_inputs), hasattr(task, "vocode")) == "vocoder"
    if "pesq" in names and not is_vocoder:
        problems.append("trainer.validation_metrics: pesq compares a copy synthesis with its recording sample for "
                        f"sample, and {type(task).__name__}'s previews are not one (task=vocoder's are); drop pesq")
    if problems:
        raise ConfigError(problems)
    for name in names:
        import_scorer(SCORER_MODULES[name], f"trainer.validation_metrics={name}")


def reference_embedding(speaker: str, training: list[Utterance], sample_rate: int) -> np.ndarray | None:
    """The speaker's reference embedding from its first training recordings (as the evaluation defines it)."""
    embeddings = []
    for utterance in [utterance for utterance in training if utterance.speaker == speaker]:
        try:
            embeddings.append(speaker_embedding(load_audio(utterance.path, sample_rate), sample_rate))
        except NoSpeechError:
            continue
        if len(embeddings) == REFERENCE_RECORDINGS:
            break
    return mean_embedding(embeddings) if embeddings else None


class PreviewScorer:
    """Scores a validation's previews; keeps the speakers' reference embeddings between validations."""

    def __init__(self, names: list[str]):
        self.names = list(dict.fromkeys(names))
        self.references: dict[tuple[str, int, tuple[Path, ...]], np.ndarray | None] = {}

    def reference(self, speaker: str, training: list[Utterance], sample_rate: int) -> np.ndarray | None:
        # Keyed by the recordings it may read, so another run's corpus never reuses this one's.
        paths = tuple(utterance.path for utterance in training if utterance.speaker == speaker)
        key = (speaker, sample_rate, paths)
        if key not in self.references:
            self.references[key] = reference_embedding(speaker, training, sample_rate)
        return self.references[key]

    def __call__(self, task: Task, result: ValidationResult, data: PreparedData, previews: int) -> dict[str, float]:
        """`val/<figure>` means over the previews of `result`."""
        if not self.names:
            return {}
        check_metrics(task, self.names, previews)
        rate = task.context.sample_rate
        targets = preview_targets(data.val_utterances)
        figures: dict[str, list[float]] = {}
        for name, wave in result.audio.items():
            preview = name.rsplit("/", 1)[0]
            if preview not in targets:
                continue
            utterance, speaker = targets[preview]
            samples = wave.detach().float().reshape(-1).cpu().numpy()
            for key, value in self.score(samples, rate, utterance, speaker, data).items():
                figures.setdefault(f"val/{key}", []).append(value)
        return {key: float(np.mean(finite)) for key, values in figures.items()
                if (finite := [value for value in values if math.isfinite(value)])}

    def score(self, wave: np.ndarray, rate: int, utterance: Utterance, speaker: str, data: PreparedData
              ) -> dict[str, float]:
        scores: dict[str, float] = {}
        if "secs" in self.names and (reference := self.reference(speaker, data.train_utterances, rate)) is not None:
            scores["secs"] = speaker_similarity_to(wave, rate, reference)
        if {"wer", "cer"} & set(self.names) and utterance.text:
            hypothesis = transcribe(wave, rate)
            if "wer" in self.names:
                scores["wer"] = word_error_rate(utterance.text, hypothesis)
            if "cer" in self.names:
                scores["cer"] = character_error_rate(utterance.text, hypothesis)
        if "dnsmos" in self.names:
            quality = dnsmos(wave, rate)
            scores.update(dnsmos_sig=quality.signal, dnsmos_bak=quality.background, dnsmos_ovrl=quality.overall)
        if "pesq" in self.names:
            try:
                scores["pesq"] = pesq_wideband(load_audio(utterance.path, rate), wave, rate)
            except ValueError:
                scores["pesq"] = math.nan
        return scores


@functools.lru_cache(maxsize=4)
def preview_scorer(names: tuple[str, ...]) -> PreviewScorer:
    return PreviewScorer(list(names))


def score_previews(task: Task, result: ValidationResult, data: PreparedData, trainer: TrainerSettings
                   ) -> dict[str, float]:
    """The figures `trainer.validation_metrics` asks for, over this validation's previews (none when empty)."""
    return preview_scorer(tuple(trainer.validation_metrics))(task, result, data, trainer.audio_previews)
