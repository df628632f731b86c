"""The content-encoder extractor: hidden states of a pretrained self-supervised speech model
(HuBERT, ContentVec, wav2vec 2.0, WavLM: any model `transformers.AutoModel` loads that takes raw
audio), an optional extra: `pip install 'voicetrain[content]'`.

The model is loaded once per process by transformers' own loading code, on the CPU, in eval mode,
with `weights_only=True` (nothing is unpickled), and runs single-threaded so that every process
computes the same numbers (its matrix products round differently with other thread counts).
The wave is resampled to the model's rate and zero-padded by half its receptive field on both
sides, so that model frame i is centred on model sample i * stride (HuBERT: 320 samples, 20 ms,
at 16 kHz), like a centred STFT's; the frames are then interpolated linearly onto the shared grid.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from voicetrain.features.base import FeatureExtractor, frame_count
from voicetrain.features.checks import check_wave, positive_integer
from voicetrain.features.frames import resample_track

EXAMPLES = "a folder written by save_pretrained (config.json + model.safetensors) or a hub id such as " \
           "facebook/hubert-base-ls960"


@dataclass(frozen=True)
class ContentSettings:
    """model: a local folder written by `save_pretrained`, or a hub id (downloaded once into the
    Hugging Face cache by transformers). layer: which hidden state, 0 (before the first transformer
    layer) to the model's layer count (after the last). sample_rate: the rate the model was trained
    at (16000 for HuBERT and ContentVec). normalize: zero mean and unit variance per utterance, for
    models trained that way (their preprocessor_config.json says do_normalize: true)."""

    model: str
    layer: int
    sample_rate: int
    normalize: bool

    def __post_init__(self) -> None:
        owner = type(self).__name__
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError(f"{owner}.model={self.model!r}: pass {EXAMPLES}.")
        if isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 0:
            raise ValueError(f"{owner}.layer={self.layer!r} must be a whole number >= 0 (0 is the input of the "
                             f"first transformer layer, N the output of layer N).")
        positive_integer(owner, "sample_rate", self.sample_rate)
        if not isinstance(self.normalize, bool):
            raise ValueError(f"{owner}.normalize={self.normalize!r} must be true or false.")


def model_source(model: str) -> str:
    """The folder or hub id to load. A value that names a path (absolute, ~, ./, ../, or an
    existing file) must be an existing folder; anything else is taken as a hub id."""
    path = Path(model).expanduser()
    looks_like_path = path.is_absolute() or model.startswith(("~", ".")) or path.exists()
    if not looks_like_path:
        return model
    if not path.is_dir():
        raise ValueError(f"ContentSettings.model={model!r}: no such folder; pass {EXAMPLES}.")
    if not (path / "config.json").is_file():
        raise ValueError(f"ContentSettings.model={model!r}: the folder has no config.json; pass {EXAMPLES}.")
    return str(path)


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as error:
        raise ImportError("features.content needs the transformers package: pip install 'voicetrain[content]'."
                          ) from error
    return transformers


@functools.lru_cache(maxsize=4)
def load_config(model: str) -> Any:
    """The model's configuration (hidden size, layer count, convolution geometry), once per process."""
    try:
        return _transformers().AutoConfig.from_pretrained(model_source(model))
    except OSError as error:
        raise ValueError(f"ContentSettings.model={model!r} could not be loaded ({error}); pass {EXAMPLES}."
                         ) from error


@functools.lru_cache(maxsize=2)
def load_encoder(model: str) -> torch.nn.Module:
    """The model in eval mode on the CPU in float32, loaded once per process."""
    try:
        encoder = _transformers().AutoModel.from_pretrained(model_source(model), weights_only=True)
    except OSError as error:
        raise ValueError(f"ContentSettings.model={model!r} could not be loaded ({error}); pass {EXAMPLES}."
                         ) from error
    # float(): transformers 5 keeps a checkpoint's own dtype, and half precision is slow on CPUs.
    return encoder.float().eval().requires_grad_(False)


def convolution_geometry(config: Any) -> tuple[int, int]:
    """(stride, receptive field) in samples of the model's convolutional front end."""
    stride, receptive = 1, 1
    for kernel, step in zip(config.conv_kernel, config.conv_stride):
        receptive += (kernel - 1) * stride
        stride *= step
    return stride, receptive


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Runs the block with `count` intra-op threads, then restores the process's setting."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def hidden_states(model: str, layer: int, audio: np.ndarray) -> np.ndarray:
    """[hidden_size, model frames] float32 of one utterance at the model's rate, frame i centred
    on sample i * stride."""
    encoder = load_encoder(model)
    _, receptive = convolution_geometry(encoder.config)
    padded = np.pad(audio, receptive // 2)
    with torch_threads(1), torch.inference_mode():
        outputs = encoder(torch.from_numpy(padded)[None], output_hidden_states=True)
    return outputs.hidden_states[layer][0].numpy().T


def model_fingerprint(model: str) -> list[list[Any]] | None:
    """[name, size, mtime_ns] of each file of a local model folder; None for a hub id."""
    source = Path(model_source(model))
    if not source.is_dir():
        return None
    return [[item.name, item.stat().st_size, item.stat().st_mtime_ns] for item in sorted(source.iterdir())
            if item.is_file()]


class ContentEncoder(FeatureExtractor):
    """[hidden_size, frames] float32 hidden states of `layer`, on the shared frame grid."""

    Settings = ContentSettings
    storage_dtype = "float16"
    package = "transformers"

    def __init__(self, settings: ContentSettings, sample_rate: int, hop_length: int):
        super().__init__(settings, sample_rate, hop_length)
        config = load_config(settings.model)
        layers = config.num_hidden_layers
        if settings.layer > layers:
            raise ValueError(f"ContentSettings.layer={settings.layer}: the model {settings.model!r} has {layers} "
                             f"layers; choose 0 to {layers}.")
        self.hidden_size = int(config.hidden_size)
        self.stride, _ = convolution_geometry(config)

    def extract(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        samples = check_wave("ContentEncoder", wave, sample_rate, self.sample_rate, minimum_samples=1)
        rate = self.settings.sample_rate
        audio = samples
        if rate != sample_rate:
            import soxr  # Imported here: only a rate mismatch needs it.

            audio = soxr.resample(samples, sample_rate, rate, quality="HQ").astype(np.float32, copy=False)
        if self.settings.normalize:
            audio = (audio - audio.mean()) / math.sqrt(float(audio.var()) + 1e-7)
        states = hidden_states(self.settings.model, self.settings.layer, audio)
        grid = resample_track(states, frame_count(samples.shape[0], self.hop_length),
                              source_period=self.stride / rate, target_period=self.hop_length / sample_rate)
        return grid.astype(np.float32)

    def channels(self) -> int:
        return self.hidden_size

    def identity(self) -> dict[str, Any]:
        # A local folder can be overwritten under the same name: its files' sizes and times are part
        # of the key, so new weights mean new features.
        return {**super().identity(), "model_files": model_fingerprint(self.settings.model)}

