"""Dataset layout readers: turn a corpus on disk into a list of `Utterance` records.

One module per layout: the bundled tiny corpus (`bundled`), LJSpeech-1.1 (`ljspeech`), one folder per speaker
(`speaker_folders`), VCTK 0.92 (`vctk`) and LibriTTS/LibriTTS-R (`libritts`); `common` holds the record, the error
and the deterministic train/val split rule they share. Readers only read metadata and check that the audio files
exist; decoding audio is the job of `voicetrain.audio` and `voicetrain.features.store`.
"""

from voicetrain.data.readers.bundled import BUNDLED_CORPUS, BUNDLED_HEADER, read_bundled_corpus
from voicetrain.data.readers.common import SPLITS, DataError, Utterance, validation_count
from voicetrain.data.readers.libritts import read_libritts
from voicetrain.data.readers.ljspeech import LJSPEECH_FIELDS, read_ljspeech
from voicetrain.data.readers.speaker_folders import TRANSCRIPT_SUFFIXES, read_speaker_folders
from voicetrain.data.readers.vctk import read_vctk

__all__ = [
    "BUNDLED_CORPUS",
    "BUNDLED_HEADER",
    "LJSPEECH_FIELDS",
    "SPLITS",
    "TRANSCRIPT_SUFFIXES",
    "DataError",
    "Utterance",
    "read_bundled_corpus",
    "read_libritts",
    "read_ljspeech",
    "read_speaker_folders",
    "read_vctk",
    "validation_count",
]
