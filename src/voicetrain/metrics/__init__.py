"""Objective metrics for voice conversion, TTS and vocoders, computed on numpy waves and features.

- `cepstral`: DTW-aligned mel-cepstral distortion, and its log-mel variant (reported as `val/logmel_mcd`).
- `world`: MCD as papers compute it, on WORLD mel-cepstra (reported as `val/mcd`).
- `pitch`: F0 RMSE in cents and the voicing decision error.
- `spectral`: the multi-resolution STFT distance.
- `speaker`: speaker similarity from Resemblyzer embeddings (optional extra `similarity`; imported on use).
- `intelligibility`: the WER/CER text normaliser, WER and CER; `asr`: pocketsphinx transcripts (extra `eval`).
- `quality`: DNSMOS SIG/BAK/OVRL and wide-band PESQ (extra `eval`); `periodicity`: periodicity RMSE, V/UV F1.
- `extras`: importing an `eval` scorer, or one error line with the install command.

A leaf: imports no other voicetrain package, only the leaf modules `text` and `transcripts`.
"""

from voicetrain.metrics.cepstral import DECIBEL_FACTOR, aligned_cepstral_distance, mel_cepstral_distortion, mel_cepstrum
from voicetrain.metrics.pitch import F0Errors, f0_errors, f0_rmse_cents, voicing_decision_error
from voicetrain.metrics.spectral import multi_resolution_stft_distance
from voicetrain.metrics.speaker import NoSpeechError, similarity_available, speaker_embedding, speaker_similarity
from voicetrain.metrics.world import all_pass_constant, world_cepstra, world_f0, world_mcd, world_mel_cepstrum

__all__ = [
    "DECIBEL_FACTOR",
    "F0Errors",
    "NoSpeechError",
    "aligned_cepstral_distance",
    "all_pass_constant",
    "f0_errors",
    "f0_rmse_cents",
    "mel_cepstral_distortion",
    "mel_cepstrum",
    "multi_resolution_stft_distance",
    "similarity_available",
    "speaker_embedding",
    "speaker_similarity",
    "voicing_decision_error",
    "world_f0",
    "world_cepstra",
    "world_mcd",
    "world_mel_cepstrum",
]
