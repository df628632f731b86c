"""The cost of `python -m voicetrain.evaluate` (issue 20): seconds of scoring per second of scored audio, by
scorer (evaluate_rtf), on one thread, over the bundled corpus's held-out recordings.

Intrusive scorers compare each recording with a copy under fixed-seed noise (what a model's output would be);
the others read the recording alone. Each scorer is warmed up on one recording (model loading is a one-off
cost a whole evaluation shares), then timed over every recording for EVALUATION_ROUNDS rounds; the line gives
the median ratio and the per-round spread."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from benchmarks.common import spread_text
from voicetrain.audio_files import load_audio
from voicetrain.data import BUNDLED_CORPUS
from voicetrain.data.readers import read_bundled_corpus
from voicetrain.evaluate.scoring import asked_f0_errors, copy_synthesis, guarded_mcd, intelligibility, quality
from voicetrain.metrics.speaker import speaker_embedding

EVALUATION_ROUNDS = 3
SAMPLE_RATE = 16000
HOP_LENGTH = 256
NOISE_LEVEL = 0.02


def scorers() -> dict[str, Callable[[np.ndarray, np.ndarray, str], object]]:
    """Scorer name -> score(recording, degraded copy, text), one per column family of the tables."""
    return {
        "secs (Resemblyzer)": lambda clean, degraded, text: speaker_embedding(degraded, SAMPLE_RATE),
        "wer+cer (pocketsphinx)": lambda clean, degraded, text: intelligibility(degraded, SAMPLE_RATE, text),
        "dnsmos": lambda clean, degraded, text: quality(degraded, SAMPLE_RATE),
        "mcd (WORLD, DTW)": lambda clean, degraded, text: guarded_mcd(clean, degraded, SAMPLE_RATE),
        "f0 + v/uv (DIO)": lambda clean, degraded, text: asked_f0_errors(
            degraded, SAMPLE_RATE, np.full(clean.size // HOP_LENGTH + 1, 150.0), HOP_LENGTH),
        "m-stft+pesq+periodicity": lambda clean, degraded, text: copy_synthesis(clean, degraded, SAMPLE_RATE),
    }


def evaluate_rtf(options: argparse.Namespace) -> None:
    held_out = [utterance for utterance in read_bundled_corpus(BUNDLED_CORPUS) if utterance.split == "val"]
    generator = np.random.default_rng(0)
    recordings = []
    for utterance in held_out:
        clean = load_audio(utterance.path, SAMPLE_RATE)
        degraded = np.clip(clean + NOISE_LEVEL * generator.standard_normal(clean.size), -1.0, 1.0)
        recordings.append((clean, degraded.astype(np.float32), utterance.text or ""))
    audio_seconds = sum(clean.size for clean, _, _ in recordings) / SAMPLE_RATE
    print(f"evaluate_rtf: seconds of scoring per second of scored audio, one thread, {len(recordings)} held-out "
          f"recordings ({audio_seconds:.1f} s), {EVALUATION_ROUNDS} rounds (lower is faster)")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        total = []
        for name, score in scorers().items():
            score(*recordings[0])
            ratios = []
            for _ in range(EVALUATION_ROUNDS):
                started = time.perf_counter()
                for recording in recordings:
                    score(*recording)
                ratios.append((time.perf_counter() - started) / audio_seconds)
            total.append(statistics.median(ratios))
            print(f"  {name:<26} {statistics.median(ratios):.3f}   {spread_text(ratios)}")
        print(f"  {'every scorer, one row':<26} {sum(total):.3f}")
    finally:
        torch.set_num_threads(threads)
