"""The columns of each task's table and how one wave is scored for them.

Every figure is per utterance; a table shows each row's mean over the utterances that have the figure (NaN,
e.g. no speech for the speaker encoder, is counted apart). Which references a figure uses:
- SECS: cosine of Resemblyzer embeddings (or a local x-vector model's, `--speaker-model`), the output against
  the target speaker's *reference embedding*: the normalised mean embedding of that speaker's first
  `REFERENCE_RECORDINGS` training recordings (never a held-out sentence, so the ground-truth row is not compared
  with itself).
- WER/CER: pocketsphinx's transcript (or a local CTC model's, `--asr-model`) against the sentence's text, both
  through `scoring_text`.
- DNSMOS SIG/BAK/OVRL: the output alone.
- MCD: WORLD mel-cepstra, DTW-aligned, against the reference recording (VC/SVC: the target speaker reading the
  same sentence, where the corpus has it; TTS and vocoder: the recording itself).
- F0 RMSE (cents) and V/UV error: WORLD DIO on the output against the F0 the conversion was asked to follow
  (SVC: the F0 its `infer` returns); VC is asked for no F0, so its V/UV error is against the source's voicing.
- Length ratio (TTS): output samples / recording samples.
- M-STFT, PESQ (wb), periodicity RMSE, V/UV F1 (vocoder): against the recording, on the same time line.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from voicetrain.metrics.asr import transcribe
from voicetrain.metrics.intelligibility import character_error_rate, word_error_rate
from voicetrain.metrics.periodicity import periodicity_errors
from voicetrain.metrics.pitch import F0_CEILING_HZ, F0_FLOOR_HZ, f0_rmse_cents, voicing_decision_error
from voicetrain.metrics.quality import dnsmos, pesq_wideband
from voicetrain.metrics.spectral import multi_resolution_stft_distance
from voicetrain.metrics.speaker import NoSpeechError, speaker_embedding
from voicetrain.metrics.world import world_f0, world_mcd

REFERENCE_RECORDINGS = 5
# WORLD DIO + StoneMask: Harvest is steadier on low voices but ten times slower, and every conversion is tracked.
TRACKER = "dio"
TRACKER_PERIOD_MS = 10.0


@dataclass(frozen=True)
class Column:
    key: str
    title: str
    better: str  # "higher", "lower", or "one" (closest to 1.0)

    @property
    def heading(self) -> str:
        return f"{self.title} {ARROWS[self.better]}"


ARROWS = {"higher": "↑", "lower": "↓", "one": "→1"}


SECS = Column("secs", "SECS", "higher")
WER = Column("wer", "WER", "lower")
CER = Column("cer", "CER", "lower")
SIG = Column("dnsmos_sig", "SIG", "higher")
BAK = Column("dnsmos_bak", "BAK", "higher")
OVRL = Column("dnsmos_ovrl", "OVRL", "higher")
MCD = Column("mcd", "MCD (dB)", "lower")
F0_RMSE = Column("f0_rmse_cents", "F0 RMSE (cents)", "lower")
VUV_ERROR = Column("vuv_error", "V/UV error", "lower")
LENGTH_RATIO = Column("length_ratio", "Length ratio", "one")
MSTFT = Column("mstft", "M-STFT", "lower")
PESQ = Column("pesq", "PESQ (wb)", "higher")
PERIODICITY = Column("periodicity_rmse", "Periodicity RMSE", "lower")
VUV_F1 = Column("vuv_f1", "V/UV F1", "higher")

COLUMNS: dict[str, tuple[Column, ...]] = {
    "vc": (SECS, WER, CER, SIG, BAK, OVRL, MCD, VUV_ERROR),
    "svc": (SECS, WER, CER, SIG, BAK, OVRL, MCD, F0_RMSE, VUV_ERROR),
    "tts": (WER, CER, SECS, SIG, BAK, OVRL, MCD, LENGTH_RATIO),
    "vocoder": (MSTFT, PESQ, MCD, PERIODICITY, VUV_F1, SIG, BAK, OVRL),
}
# The scorers `trainer.validation_metrics` and `make bench`'s evaluate_rtf name.
SCORERS = ("secs", "wer", "cer", "dnsmos", "pesq")


def length_ratio(output_samples: int, reference_samples: int) -> float:
    """Output length over the recording's (1.0: as long as the speaker read it)."""
    if output_samples < 0 or reference_samples <= 0:
        raise ValueError(f"length_ratio needs a positive reference length, got {output_samples} / {reference_samples}")
    return output_samples / reference_samples


def cosine_similarity(first: np.ndarray, second: np.ndarray) -> float:
    return float(np.dot(first, second) / (np.linalg.norm(first) * np.linalg.norm(second)))


def mean_embedding(embeddings: list[np.ndarray]) -> np.ndarray:
    """The speaker's reference embedding: the L2-normalised mean of utterance embeddings (Resemblyzer's
    `embed_speaker` rule)."""
    if not embeddings:
        raise ValueError("mean_embedding needs at least one utterance embedding")
    mean = np.mean(np.stack(embeddings), axis=0)
    return mean / np.linalg.norm(mean)


Transcriber = Callable[[np.ndarray, int], str]  # (mono wave, sample rate) -> words
Embedder = Callable[[np.ndarray, int], np.ndarray]  # (mono wave, sample rate) -> speaker embedding


def speaker_similarity_to(wave: np.ndarray, sample_rate: int, reference: np.ndarray,
                          embedder: Embedder = speaker_embedding) -> float:
    """SECS of a wave against a reference embedding; NaN where the wave holds no speech for the encoder."""
    if not np.any(wave):
        return math.nan  # digital silence: the encoder's loudness normalisation would divide by zero
    try:
        return cosine_similarity(embedder(wave, sample_rate), reference)
    except NoSpeechError:
        return math.nan


def asked_f0_errors(wave: np.ndarray, sample_rate: int, asked_f0: np.ndarray, hop_length: int) -> tuple[float, float]:
    """F0 RMSE (cents) and V/UV error of a wave against the F0 track [frames] it was asked to follow (0 where
    unvoiced), frame j at sample j * hop_length: the wave is tracked on that grid by `TRACKER`."""
    tracked, _ = world_f0(wave, sample_rate, 1000.0 * hop_length / sample_rate, TRACKER, F0_FLOOR_HZ, F0_CEILING_HZ)
    frames = min(len(tracked), len(asked_f0))
    asked, tracked = np.asarray(asked_f0, dtype=np.float64)[:frames], tracked[:frames]
    return (f0_rmse_cents(asked, tracked, asked > 0.0, tracked > 0.0),
            voicing_decision_error(asked > 0.0, tracked > 0.0))


def intelligibility(wave: np.ndarray, sample_rate: int, text: str,
                    transcriber: Transcriber = transcribe) -> dict[str, float | str]:
    hypothesis = transcriber(wave, sample_rate)
    return {"wer": word_error_rate(text, hypothesis), "cer": character_error_rate(text, hypothesis),
            "hypothesis": hypothesis}


def quality(wave: np.ndarray, sample_rate: int) -> dict[str, float]:
    scores = dnsmos(wave, sample_rate)
    return {"dnsmos_sig": scores.signal, "dnsmos_bak": scores.background, "dnsmos_ovrl": scores.overall}


def guarded_mcd(reference: np.ndarray, candidate: np.ndarray, sample_rate: int) -> float:
    """`world_mcd`, NaN where one side has no speech frames (an untrained model's silence)."""
    try:
        return world_mcd(reference, candidate, sample_rate)
    except ValueError:
        return math.nan


def copy_synthesis(reference: np.ndarray, wave: np.ndarray, sample_rate: int) -> dict[str, float]:
    """The vocoder's intrusive columns against the recording it resynthesised."""
    errors = periodicity_errors(reference, wave, sample_rate)
    try:
        pesq_score = pesq_wideband(reference, wave, sample_rate)
    except ValueError:
        pesq_score = math.nan
    return {"mstft": multi_resolution_stft_distance(reference, wave), "pesq": pesq_score,
            "periodicity_rmse": errors.periodicity_rmse, "vuv_f1": errors.voicing_f1}


def source_voicing_error(source: np.ndarray, wave: np.ndarray, sample_rate: int) -> float:
    """The fraction of frames whose voicing differs between a conversion and its source (`TRACKER` on both)."""
    tracks = [world_f0(side, sample_rate, TRACKER_PERIOD_MS, TRACKER, F0_FLOOR_HZ, F0_CEILING_HZ)[0]
              for side in (source, wave)]
    frames = min(len(track) for track in tracks)
    return voicing_decision_error(tracks[0][:frames] > 0.0, tracks[1][:frames] > 0.0)


@dataclass(frozen=True)
class Scored:
    """One row's output for one item, with what it is compared with (all mono at one sample rate)."""

    wave: np.ndarray
    reference: np.ndarray | None  # the recording to compare with, where one exists
    source: np.ndarray | None = None  # VC/SVC: the recording that was converted
    asked_f0: np.ndarray | None = None  # SVC: the F0 track [frames] the conversion was asked to follow
    recording_key: str | None = None  # set when `wave` is a corpus recording: its scores are computed once


class Scorer:
    """Scores waves for the columns of a task; recordings scored by several rows (ground truth, the unconverted
    source) are transcribed and rated once."""

    def __init__(self, sample_rate: int, hop_length: int, speaker_reference: dict[str, np.ndarray],
                 transcriber: Transcriber = transcribe, embedder: Embedder = speaker_embedding):
        self.transcriber = transcriber  # pocketsphinx, or a local CTC model (voicetrain.metrics.pretrained)
        self.embedder = embedder  # Resemblyzer, or a local x-vector model
        self.sample_rate = sample_rate
        self.hop_length = hop_length
        self.speaker_reference = speaker_reference  # speaker -> reference embedding (see the module)
        self._recording_scores: dict[tuple[str, str], dict[str, float | str]] = {}

    def _once(self, key: str | None, name: str, compute: Callable[[], dict[str, float | str]]
              ) -> dict[str, float | str]:
        if key is None:
            return compute()
        if (key, name) not in self._recording_scores:
            self._recording_scores[(key, name)] = compute()
        return self._recording_scores[(key, name)]

    def score(self, kind: str, system: str, speaker: str, text: str | None, scored: Scored) -> dict[str, float | str]:
        """Every figure of `kind`'s columns that applies to this row and item (others are left out)."""
        wave, rate = scored.wave, self.sample_rate
        keys = {column.key for column in COLUMNS[kind]}
        figures: dict[str, float | str] = {}
        if "secs" in keys and speaker in self.speaker_reference:
            figures["secs"] = speaker_similarity_to(wave, rate, self.speaker_reference[speaker], self.embedder)
        if "wer" in keys and text:
            figures.update(self._once(scored.recording_key, "asr",
                                      lambda: intelligibility(wave, rate, text, self.transcriber)))
        figures.update(self._once(scored.recording_key, "dnsmos", lambda: quality(wave, rate)))
        # The ground truth is its own reference: its intrusive figures would be trivially perfect.
        compared = system != "ground_truth" and scored.reference is not None
        if compared:
            figures["mcd"] = guarded_mcd(scored.reference, wave, rate)
        if kind == "svc" and scored.asked_f0 is not None:
            figures["f0_rmse_cents"], figures["vuv_error"] = asked_f0_errors(wave, rate, scored.asked_f0,
                                                                             self.hop_length)
        if kind == "vc" and system == "export" and scored.source is not None:
            figures["vuv_error"] = source_voicing_error(scored.source, wave, rate)
        if kind == "tts" and compared:
            figures["length_ratio"] = length_ratio(wave.size, scored.reference.size)
        if kind == "vocoder" and compared:
            figures.update(copy_synthesis(scored.reference, wave, rate))
        return figures
