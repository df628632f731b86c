"""Corpora and what the loop reads from them: layout readers (`readers`), the resumable sampler
(`sampler`), the training dataset (`dataset`) and the train/validation split with its features
(`prepare`). Re-exports the public names of `voicetrain.data.readers`."""

from voicetrain.data.readers import (BUNDLED_CORPUS, DataError, Utterance, read_bundled_corpus, read_libritts,
                                     read_ljspeech, read_speaker_folders, read_vctk)

__all__ = ["BUNDLED_CORPUS", "DataError", "Utterance", "read_bundled_corpus", "read_libritts", "read_ljspeech",
           "read_speaker_folders", "read_vctk"]
