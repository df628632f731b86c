"""What an evaluation scores, decided without touching audio or models: items and rows (pure).

An item is one thing every row of a table produces once: a VC/SVC conversion of a held-out source recording to
another speaker, a TTS sentence spoken by its speaker, or a vocoder's copy synthesis of a held-out recording.
`reference` is the recording a row's output is compared with (the target speaker's reading of the same sentence
for VC/SVC, where the corpus has one; the recording itself for TTS and the vocoder).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from voicetrain.data.readers import Utterance

TASK_KINDS = ("vc", "svc", "tts", "vocoder")
TASK_TITLES = {"vc": "Voice conversion", "svc": "F0-conditioned conversion (SVC)", "tts": "Text-to-speech",
               "vocoder": "Vocoder (copy synthesis)"}
SVC_TRANSPOSES: tuple[float | str, ...] = ("auto", 0.0)


@dataclass(frozen=True)
class Item:
    item_id: str
    speaker: str  # the speaker the output should sound like
    text: str | None  # the sentence (WER/CER), when the corpus has it
    source: Utterance | None  # the recording a VC/SVC converts or a vocoder resynthesises
    reference: Utterance | None  # the recording the output is compared with, where one exists


@dataclass(frozen=True)
class Row:
    """One line of a table: who produces the items' waves."""

    name: str
    system: str  # "ground_truth", "export", "griffin_lim" (copy synthesis of the references' log-mels), "source"
    export: Path | None = None
    vocoder: Path | None = None  # a vocoder export (None: the export's own way, Griffin-Lim for a log-mel)
    transpose: float | str | None = None  # SVC


def task_kind(inference_inputs: tuple[str, ...], has_vocode: bool) -> str:
    """Which table an export goes to, from the inputs its task reads (the task contract)."""
    if "text" in inference_inputs:
        return "tts"
    if "transpose" in inference_inputs:
        return "svc"
    if has_vocode or tuple(inference_inputs) == ("audio",):
        return "vocoder"
    if "audio" in inference_inputs and "speaker" in inference_inputs:
        return "vc"
    raise ValueError(f"an export whose task reads {list(inference_inputs)} fits none of the evaluation's tasks "
                     f"({', '.join(TASK_KINDS)})")


def conversion_items(held_out: list[Utterance], speakers: list[str]) -> list[Item]:
    """Every held-out recording converted to every other speaker the model knows, in corpus order."""
    by_sentence = {(utterance.speaker, utterance.sentence_id): utterance for utterance in held_out
                   if utterance.sentence_id is not None}
    items = []
    for source in held_out:
        for speaker in speakers:
            if speaker == source.speaker:
                continue
            reference = by_sentence.get((speaker, source.sentence_id)) if source.sentence_id is not None else None
            items.append(Item(f"{source.utterance_id}->{speaker}", speaker, source.text, source, reference))
    return items


def speech_items(held_out: list[Utterance], speakers: list[str]) -> list[Item]:
    """Every held-out sentence with a transcript, spoken by its own speaker (one the model knows)."""
    return [Item(utterance.utterance_id, utterance.speaker, utterance.text, None, utterance)
            for utterance in held_out if utterance.text and utterance.speaker in speakers]


def recording_items(held_out: list[Utterance]) -> list[Item]:
    """Every held-out recording, to be resynthesised."""
    return [Item(utterance.utterance_id, utterance.speaker, utterance.text, utterance, utterance)
            for utterance in held_out]


def spread_subset(items: list[Item], limit: int | None) -> list[Item]:
    """At most `limit` items, taken in turn from each speaker so that a small subset still covers them all;
    the order within a speaker is kept. None keeps every item."""
    if limit is None or limit >= len(items):
        return list(items)
    if limit < 1:
        raise ValueError(f"--limit {limit}: give at least 1 (or leave it out to score every held-out item)")
    queues: dict[str, list[Item]] = {}
    for item in items:
        queues.setdefault(item.speaker, []).append(item)
    chosen: list[Item] = []
    while len(chosen) < limit:
        for queue in queues.values():
            if queue and len(chosen) < limit:
                chosen.append(queue.pop(0))
    return chosen


def export_rows(kind: str, export: Path, label: str, default_vocoder: Path | None,
                vocoders: list[Path]) -> list[Row]:
    """The rows of one export: SVC once per transposition; a log-mel export with Griffin-Lim, with the vocoder
    it was exported with and with each `--vocoder`."""
    if kind == "svc":
        return [Row(f"{label} (transpose {transpose if transpose == 'auto' else 0})", "export", export,
                    transpose=transpose) for transpose in SVC_TRANSPOSES]
    if kind == "vocoder":
        return [Row(label, "export", export)]
    rows = [Row(f"{label} + Griffin-Lim", "export", export)]
    for vocoder in dict.fromkeys([*([default_vocoder] if default_vocoder is not None else []), *vocoders]):
        rows.append(Row(f"{label} + {vocoder.parent.name if vocoder.name == 'export' else vocoder.name}", "export",
                        export, vocoder=vocoder))
    return rows


def table_rows(kind: str, export_rows_of_kind: list[Row]) -> list[Row]:
    """Ground truth first, the exports, then the task's baselines: the unconverted source for VC and SVC, and,
    for the tasks that make log-mels (VC, TTS) or vocode them, Griffin-Lim on the recordings' own log-mels (what
    the models' output would sound like through Griffin-Lim if it were perfect)."""
    baselines = [Row("Source (unconverted)", "source")] if kind in ("vc", "svc") else []
    if kind in ("vc", "tts", "vocoder"):
        baselines.append(Row("Griffin-Lim (recordings' log-mels)", "griffin_lim"))
    return [Row("Ground truth", "ground_truth"), *export_rows_of_kind, *baselines]
