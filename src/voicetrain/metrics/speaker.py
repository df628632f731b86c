"""Speaker similarity: cosine similarity of Resemblyzer speaker embeddings (optional extra `similarity`).

Resemblyzer's d-vector encoder (a 3-layer LSTM on 40-band mels at 16 kHz, trained on VoxCeleb and LibriSpeech)
ships its weights inside its pip package, so nothing is downloaded. Its own preprocessing is applied: resampling to
16 kHz, loudness normalisation and trimming of long silences by WebRTC VAD. Embeddings are L2-normalised and
non-negative, so the similarity lies in [0, 1]; the same voice typically scores above 0.8.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import numpy as np

SIMILARITY_EXTRA_HINT = (
    "speaker similarity needs the optional extra 'similarity' (Resemblyzer and its WebRTC VAD): "
    "pip install 'voicetrain[similarity]'"
)


@functools.lru_cache(maxsize=1)
def _resemblyzer() -> tuple[Any, Any]:
    """Resemblyzer's `preprocess_wav` and a CPU `VoiceEncoder` loaded from the weights in its package."""
    try:
        with warnings.catch_warnings():
            # webrtcvad 2.0.10 imports pkg_resources, which warns that it is deprecated; nothing to act on here.
            warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
            # Resemblyzer imports binary_dilation from a SciPy namespace deprecated since SciPy 1.8.
            warnings.filterwarnings("ignore", message=".*scipy.ndimage.morphology", category=DeprecationWarning)
            import resemblyzer
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(f"{SIMILARITY_EXTRA_HINT} ({error})") from error
    # weights_fpath=None: the pretrained.pt inside the package. Its torch.load uses torch's default, which is
    # weights_only=True from torch 2.6 on (the extra requires it), so loading unpickles no code.
    return resemblyzer.preprocess_wav, resemblyzer.VoiceEncoder(device="cpu", verbose=False)


class NoSpeechError(ValueError):
    """The wave holds nothing Resemblyzer's voice activity detector calls speech (an untrained
    model's output often does not): it has no speaker embedding."""


def speaker_embedding(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """The L2-normalised Resemblyzer embedding (256 values) of one mono wave at `sample_rate`;
    `NoSpeechError` where the wave holds no speech."""
    samples = np.asarray(wave, dtype=np.float32)
    if samples.ndim != 1 or samples.size == 0:
        raise ValueError(f"speaker_embedding expects a non-empty mono wave shaped [samples], got {samples.shape}.")
    preprocess, encoder = _resemblyzer()
    prepared = preprocess(samples, source_sr=sample_rate)
    if prepared.size == 0:
        raise NoSpeechError("speaker_embedding: the wave holds no speech after Resemblyzer's silence trimming.")
    return encoder.embed_utterance(prepared)


def speaker_similarity(wave_a: np.ndarray, wave_b: np.ndarray, sample_rate: int) -> float:
    """Cosine similarity of the `speaker_embedding` of two mono waves at `sample_rate` (higher: more alike)."""
    embedding_a = speaker_embedding(wave_a, sample_rate)
    embedding_b = speaker_embedding(wave_b, sample_rate)
    return float(np.dot(embedding_a, embedding_b) / (np.linalg.norm(embedding_a) * np.linalg.norm(embedding_b)))


def similarity_available() -> bool:
    """Whether the optional extra is installed (validation reports speaker similarity only then)."""
    try:
        _resemblyzer()
    except ModuleNotFoundError:
        return False
    return True
