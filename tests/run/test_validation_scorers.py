"""`trainer.validation_metrics`: previews matched to their utterances, the refusals (no previews to score, PESQ
on previews that are not copy syntheses), the figures on real recordings standing in for previews, and (slow)
a tiny VC run that logs val/secs, val/wer, val/cer and val/dnsmos_* at step 0 and at its last step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from voicetrain.audio_files import load_audio
from voicetrain.config import ConfigError
from voicetrain.data.prepare import PreparedData
from voicetrain.data.readers import read_bundled_corpus
from voicetrain.run.validation_scorers import PreviewScorer, check_metrics, preview_targets
from voicetrain.tasks.base import Task, TaskContext, ValidationResult

from helpers import TINY_MODEL, assert_ok, run_cli

CORPUS = read_bundled_corpus()
HELD_OUT = [utterance for utterance in CORPUS if utterance.split == "val"]
TRAINING = [utterance for utterance in CORPUS if utterance.split == "train"]


class Converter(Task):
    """A task reading what a voice converter reads (the contract's default inputs)."""


class Vocoder(Task):
    inference_inputs = ("audio",)


def context(sample_rate: int = 16000) -> TaskContext:
    return TaskContext(None, sorted({utterance.speaker for utterance in CORPUS}), [], [], sample_rate, 256)


def corpus_data() -> PreparedData:
    # Only the two lists of utterances are read by the scorer; the features are not.
    return PreparedData(TRAINING, HELD_OUT, context().speakers, None, {}, None, {}, [])


def test_previews_are_matched_to_their_utterance_and_target_speaker() -> None:
    targets = preview_targets(HELD_OUT)
    source, speaker = targets["awb_h01_09_to_slt"]
    assert source.utterance_id == "awb_h01_09" and speaker == "slt"
    assert targets["kal16_h02_10"] == (HELD_OUT[[u.utterance_id for u in HELD_OUT].index("kal16_h02_10")], "kal16")


def test_scorers_that_cannot_run_stop_the_run_with_the_key() -> None:
    with pytest.raises(ConfigError, match="trainer.audio_previews=0 makes none"):
        check_metrics(Converter(None, context()), ["wer"], previews=0)
    with pytest.raises(ConfigError, match="pesq compares a copy synthesis"):
        check_metrics(Converter(None, context()), ["pesq"], previews=2)
    check_metrics(Vocoder(None, context()), ["pesq", "dnsmos"], previews=1)


def test_previews_are_scored_as_the_evaluation_scores_them() -> None:
    rate = 16000
    recording = torch.from_numpy(load_audio(next(u.path for u in HELD_OUT if u.utterance_id == "slt_h01_09"), rate))
    scorer = PreviewScorer(["secs", "wer", "cer", "dnsmos", "pesq"])
    perfect = ValidationResult({}, audio={"slt_h01_09/vocoded": recording},
                               reference_audio={"slt_h01_09/recording": recording})
    metrics = scorer(Vocoder(None, context()), perfect, corpus_data(), previews=1)
    assert set(metrics) == {"val/secs", "val/wer", "val/cer", "val/dnsmos_sig", "val/dnsmos_bak", "val/dnsmos_ovrl",
                            "val/pesq"}
    assert metrics["val/secs"] > 0.8  # the speaker's own recording against its reference embedding
    assert metrics["val/pesq"] == pytest.approx(4.64, abs=0.01)  # a copy synthesis equal to its recording
    assert 0.0 <= metrics["val/wer"] < 0.5
    # An untrained model's silence has no speaker embedding: no val/secs rather than a made-up figure.
    silent = ValidationResult({}, audio={"slt_h01_09/vocoded": torch.zeros(rate)})
    assert "val/secs" not in PreviewScorer(["secs"])(Vocoder(None, context()), silent, corpus_data(), previews=1)
    assert PreviewScorer([])(Vocoder(None, context()), perfect, corpus_data(), previews=1) == {}


@pytest.mark.slow
def test_a_run_logs_the_chosen_scorers_at_step_0_and_at_its_last_validation(tmp_path: Path,
                                                                            bundled_cache: Path) -> None:
    replaced = ("trainer.val_every", "trainer.validate_at_start", "trainer.audio_previews")
    overrides = [override for override in TINY_MODEL if not override.startswith(replaced)]
    result = run_cli(f"run.root={tmp_path}", "run.name=scored", f"data.cache_dir={bundled_cache}", *overrides,
                     "trainer.max_steps=1", "trainer.val_every=1", "trainer.audio_previews=1",
                     "trainer.validation_metrics=[secs,wer,cer,dnsmos]", cwd=tmp_path)
    assert_ok(result)
    events = EventAccumulator(str(tmp_path / "scored" / "tb"), size_guidance={"scalars": 0}).Reload()
    for tag in ("val/secs", "val/wer", "val/cer", "val/dnsmos_sig", "val/dnsmos_bak", "val/dnsmos_ovrl"):
        assert [event.step for event in events.Scalars(tag)] == [0, 1], tag
