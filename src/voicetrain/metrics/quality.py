"""Speech quality: DNSMOS SIG/BAK/OVRL (non-intrusive) and wide-band PESQ (intrusive); optional extra `eval`.

DNSMOS (Reddy et al., ICASSP 2022, P.835 model) predicts the mean opinion scores a listening panel would give for
the speech signal (SIG), the background (BAK) and overall (OVRL), 1 to 5, from the wave alone. The ONNX models
ship in the `speechmos` wheel; its published procedure is applied (16 kHz, a clip shorter than 9.01 s is repeated
to that length, 9.01 s windows every second averaged, the P.835 polynomial fit), with onnxruntime on one thread
so that scoring does not compete with itself for cores.

PESQ (ITU-T P.862.2, wide band) compares a degraded wave with its reference sample for sample after its own time
alignment: from about 1.0 to 4.64 (a signal against itself). Both are run at 16 kHz, resampled with soxr.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soxr

from voicetrain.metrics.extras import import_scorer

SCORING_SAMPLE_RATE = 16000  # DNSMOS's and wide-band PESQ's


@dataclass(frozen=True)
class DnsmosScores:
    signal: float  # SIG: the speech itself
    background: float  # BAK: the noise around it
    overall: float  # OVRL


def at_scoring_rate(wave: np.ndarray, sample_rate: int, name: str = "wave") -> np.ndarray:
    samples = np.asarray(wave, dtype=np.float64)
    if samples.ndim != 1 or samples.size == 0:
        raise ValueError(f"{name} must be a non-empty mono wave shaped [samples], got shape {samples.shape}.")
    if sample_rate != SCORING_SAMPLE_RATE:
        samples = soxr.resample(samples, sample_rate, SCORING_SAMPLE_RATE, quality="HQ")
    # The resampler's ringing can exceed full scale slightly; DNSMOS refuses values outside [-1, 1].
    return np.clip(np.nan_to_num(samples), -1.0, 1.0)


@functools.lru_cache(maxsize=1)
def _dnsmos() -> Any:
    dnsmos = import_scorer("speechmos.dnsmos", "DNSMOS (the speechmos models)")
    onnxruntime = import_scorer("onnxruntime", "DNSMOS (onnxruntime)")
    models = Path(dnsmos.__file__).resolve().parent / "dnsmos_models"
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1

    class SingleThreadedDnsmos(dnsmos.DNSMOS):
        """speechmos's scorer with sessions built from `options` (its own take every core)."""

        def __init__(self) -> None:
            self.primary_model_path = str(models / "sig_bak_ovr.onnx")
            self.onnx_sess = onnxruntime.InferenceSession(self.primary_model_path, options,
                                                          providers=["CPUExecutionProvider"])
            self.p808_onnx_sess = onnxruntime.InferenceSession(str(models / "model_v8.onnx"), options,
                                                               providers=["CPUExecutionProvider"])

    return SingleThreadedDnsmos()


def dnsmos(wave: np.ndarray, sample_rate: int) -> DnsmosScores:
    """DNSMOS P.835 SIG, BAK and OVRL of a mono wave at `sample_rate` (1 to 5, higher is better)."""
    scores = _dnsmos()(at_scoring_rate(wave, sample_rate), SCORING_SAMPLE_RATE, False)
    return DnsmosScores(float(scores["sig_mos"]), float(scores["bak_mos"]), float(scores["ovrl_mos"]))


def pesq_wideband(reference: np.ndarray, degraded: np.ndarray, sample_rate: int) -> float:
    """Wide-band PESQ (P.862.2) of `degraded` against `reference`, both mono at `sample_rate`, scored at 16 kHz.

    The longer wave is cut to the shorter one (a vocoder's output is often a few samples longer). 4.64 for a
    signal against itself.
    """
    pesq = import_scorer("pesq", "PESQ (the pesq package)")
    reference_16k = at_scoring_rate(reference, sample_rate, "reference")
    degraded_16k = at_scoring_rate(degraded, sample_rate, "degraded")
    length = min(reference_16k.size, degraded_16k.size)
    try:
        return float(pesq.pesq(SCORING_SAMPLE_RATE, reference_16k[:length], degraded_16k[:length], "wb"))
    except pesq.PesqError as error:
        # Raised for a reference without speech (PESQ finds no utterance to align).
        raise ValueError(f"pesq_wideband: PESQ cannot score this pair ({type(error).__name__}: {error}); the "
                         "reference must hold speech.") from error
