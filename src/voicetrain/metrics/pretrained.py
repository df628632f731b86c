"""Stronger scorers from models the user already has on disk, in a transformers `save_pretrained` folder:
a CTC recogniser (HuBERT-CTC, wav2vec 2.0-CTC: `python -m voicetrain.evaluate --asr-model DIR`) in place of
pocketsphinx, and a speaker-verification x-vector model (WavLM, wav2vec 2.0 `...ForXVector`: `--speaker-model
DIR`) in place of Resemblyzer.

Loading is local only (`local_files_only=True`: nothing is downloaded) and reads weights from safetensors only
(`use_safetensors=True`: a folder holding only a pickled `pytorch_model.bin` is refused, nothing is unpickled).
The folder must also hold the processor (`save_pretrained` of its feature extractor, and tokenizer for a
recogniser). Models run on the CPU at 16 kHz, the rate these models are trained at.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import soxr

MODEL_SAMPLE_RATE = 16000


class PretrainedModelError(ValueError):
    """A model folder that cannot be used; the message names the folder and the fix."""


def _transformers() -> Any:
    try:
        import transformers
    except ModuleNotFoundError as error:
        raise PretrainedModelError("a local model folder needs transformers: pip install 'voicetrain[content]'"
                                   ) from error
    return transformers


def _check_folder(folder: Path, role: str) -> None:
    if not (folder / "config.json").is_file():
        raise PretrainedModelError(f"{folder}: no config.json; give the folder `save_pretrained` wrote for the "
                                   f"{role}")
    if not any(folder.glob("*.safetensors")):
        raise PretrainedModelError(f"{folder}: no .safetensors weights (a pickled pytorch_model.bin is never "
                                   "loaded); save the model again with "
                                   "save_pretrained(folder, safe_serialization=True)")


def _at_model_rate(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    samples = np.asarray(wave, dtype=np.float32)
    if samples.ndim != 1 or samples.size == 0:
        raise ValueError(f"expected a non-empty mono wave shaped [samples], got shape {samples.shape}.")
    return samples if sample_rate == MODEL_SAMPLE_RATE else soxr.resample(samples, sample_rate, MODEL_SAMPLE_RATE)


class CtcRecogniser:
    """Greedy CTC transcripts from a local `...ForCTC` model and its processor."""

    def __init__(self, folder: Path):
        _check_folder(folder, "recogniser")
        transformers = _transformers()
        try:
            self.processor = transformers.AutoProcessor.from_pretrained(folder, local_files_only=True)
            self.model = transformers.AutoModelForCTC.from_pretrained(folder, local_files_only=True,
                                                                      use_safetensors=True).eval()
        except (OSError, ValueError, KeyError) as error:
            raise PretrainedModelError(f"{folder} cannot be loaded as a CTC recogniser with its processor ({error}); "
                                       "give a HuBERT-CTC or wav2vec 2.0-CTC folder saved with save_pretrained"
                                       ) from error
        self.folder = folder

    def __call__(self, wave: np.ndarray, sample_rate: int) -> str:
        import torch

        inputs = self.processor(_at_model_rate(wave, sample_rate), sampling_rate=MODEL_SAMPLE_RATE,
                                return_tensors="pt")
        with torch.no_grad():
            logits = self.model(inputs.input_values).logits
        return self.processor.batch_decode(logits.argmax(dim=-1))[0].lower()


class XVectorSpeakerModel:
    """L2-normalised speaker embeddings from a local `...ForXVector` model (WavLM-SV) and its feature extractor."""

    def __init__(self, folder: Path):
        _check_folder(folder, "speaker-verification model")
        transformers = _transformers()
        try:
            self.extractor = transformers.AutoFeatureExtractor.from_pretrained(folder, local_files_only=True)
            self.model = transformers.AutoModelForAudioXVector.from_pretrained(folder, local_files_only=True,
                                                                               use_safetensors=True).eval()
        except (OSError, ValueError, KeyError) as error:
            raise PretrainedModelError(f"{folder} cannot be loaded as an x-vector speaker model with its feature "
                                       f"extractor ({error}); give e.g. a WavLMForXVector folder saved with "
                                       "save_pretrained") from error
        self.folder = folder

    def __call__(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        import torch

        inputs = self.extractor(_at_model_rate(wave, sample_rate), sampling_rate=MODEL_SAMPLE_RATE,
                                return_tensors="pt")
        with torch.no_grad():
            embedding = self.model(**inputs).embeddings[0].numpy().astype(np.float64)
        return embedding / np.linalg.norm(embedding)


@functools.lru_cache(maxsize=2)
def ctc_recogniser(folder: Path) -> CtcRecogniser:
    return CtcRecogniser(folder)


@functools.lru_cache(maxsize=2)
def xvector_speaker_model(folder: Path) -> XVectorSpeakerModel:
    return XVectorSpeakerModel(folder)
