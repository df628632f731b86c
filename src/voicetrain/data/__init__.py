"""Data loading for voicetrain: corpus layout readers and the log-mel feature cache.

Re-exports the public names of ``voicetrain.data.readers`` and ``voicetrain.data.features``.
"""

from voicetrain.data.features import FeatureTable, load_features
from voicetrain.data.readers import (
    BUNDLED_CORPUS,
    DataError,
    Utterance,
    read_bundled_corpus,
    read_ljspeech,
    read_speaker_folders,
)

__all__ = [
    "BUNDLED_CORPUS",
    "DataError",
    "FeatureTable",
    "Utterance",
    "load_features",
    "read_bundled_corpus",
    "read_ljspeech",
    "read_speaker_folders",
]
