"""Speech recognition for WER/CER: pocketsphinx's packaged US-English model (optional extra `eval`).

The wheel carries the acoustic model, the CMU dictionary and a general English trigram language model, so the
recogniser runs offline. It is a weak recogniser (the bundled corpus's own recordings come out at a WER of tens
of percent), which is why `python -m voicetrain.evaluate` always prints its WER on the ground-truth recordings
beside a model's: that is the floor a model's WER is read against.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import soxr

from voicetrain.metrics.extras import import_scorer

ASR_SAMPLE_RATE = 16000  # the packaged acoustic model's
PCM_FULL_SCALE = 32767


@functools.lru_cache(maxsize=1)
def _decoder() -> Any:
    pocketsphinx = import_scorer("pocketsphinx", "WER/CER (the pocketsphinx recogniser)")
    # The default configuration is the packaged en-us model; FATAL keeps its per-utterance log off stderr.
    return pocketsphinx.Decoder(loglevel="FATAL")


def transcribe(wave: np.ndarray, sample_rate: int) -> str:
    """The words pocketsphinx hears in a mono wave at `sample_rate` (lower case; "" when it hears none)."""
    samples = np.asarray(wave, dtype=np.float32)
    if samples.ndim != 1 or samples.size == 0:
        raise ValueError(f"transcribe expects a non-empty mono wave shaped [samples], got shape {samples.shape}.")
    if sample_rate != ASR_SAMPLE_RATE:
        samples = soxr.resample(samples, sample_rate, ASR_SAMPLE_RATE, quality="HQ")
    pcm = (np.clip(np.nan_to_num(samples), -1.0, 1.0) * PCM_FULL_SCALE).astype(np.int16).tobytes()
    decoder = _decoder()
    decoder.start_utt()
    decoder.process_raw(pcm, full_utt=True)
    decoder.end_utt()
    hypothesis = decoder.hyp()
    return hypothesis.hypstr if hypothesis is not None else ""
