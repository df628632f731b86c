"""Transcripts for TTS, spelled as they are spoken: the rules live in the leaf `voicetrain.transcripts`, which
the evaluation's WER/CER normaliser (`voicetrain.metrics.intelligibility`) shares; preprocessing reads them here."""

from voicetrain.transcripts import normalise_transcript

__all__ = ["normalise_transcript"]
