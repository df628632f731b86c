"""Tests for voicetrain.features.content with a tiny randomly initialised HuBERT written by
save_pretrained into a temporary folder: the real loading code, nothing downloaded."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from extractor_helpers import TINY_HUBERT, glide, save_tiny_hubert
from voicetrain.features.base import frame_count
from voicetrain.features.content import ContentEncoder, ContentSettings, load_encoder

MODEL_RATE = 16000
STRIDE = 320  # HuBERT's: 20 ms at 16 kHz


@pytest.fixture(scope="module")
def hubert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_hubert(tmp_path_factory.mktemp("hubert"))


def settings(model: Path, layer: int = 2) -> ContentSettings:
    return ContentSettings(model=str(model), layer=layer, sample_rate=MODEL_RATE, normalize=False)


def speech_like(sample_rate: int) -> np.ndarray:
    wave, _ = glide(sample_rate, seconds=0.7, silence=0.15)
    return wave


def test_frames_line_up_with_the_models_own_frames(hubert: Path) -> None:
    # With the shared hop equal to the model's stride the two grids coincide, so the extractor
    # must return the model's own frames of the wave padded by half the receptive field (400 / 2).
    wave = speech_like(MODEL_RATE)[:11_111]
    array = ContentEncoder(settings(hubert), MODEL_RATE, STRIDE).extract(wave, MODEL_RATE)
    assert array.shape == (TINY_HUBERT["hidden_size"], frame_count(wave.shape[0], STRIDE))
    model = load_encoder(str(hubert))
    with torch.inference_mode():
        direct = model(torch.from_numpy(np.pad(wave, 200))[None], output_hidden_states=True).hidden_states[2][0]
    assert direct.shape[0] == array.shape[1]
    assert np.allclose(array, direct.numpy().T, atol=1e-5)


def test_other_rates_and_hops_are_resampled_onto_the_shared_grid(hubert: Path) -> None:
    wave = speech_like(22050)
    array = ContentEncoder(settings(hubert), 22050, 256).extract(wave, 22050)
    assert array.shape == (TINY_HUBERT["hidden_size"], frame_count(wave.shape[0], 256))
    # 86 frames a second read from 50: neighbouring frames are close, not copies of one another.
    steps = np.abs(np.diff(array, axis=1)).mean(axis=0)
    assert np.all(np.isfinite(array)) and np.count_nonzero(steps) > 0.9 * steps.size


def test_layer_selects_a_hidden_state_and_the_result_is_deterministic(hubert: Path) -> None:
    wave = speech_like(MODEL_RATE)
    first = ContentEncoder(settings(hubert, layer=1), MODEL_RATE, 256)
    again = first.extract(wave, MODEL_RATE)
    assert np.array_equal(first.extract(wave, MODEL_RATE), again)
    outputs = {layer: ContentEncoder(settings(hubert, layer), MODEL_RATE, 256).extract(wave, MODEL_RATE)
               for layer in (0, 1, 2)}
    assert not np.allclose(outputs[0], outputs[1]) and not np.allclose(outputs[1], outputs[2])
    normalised = ContentEncoder(dataclasses.replace(settings(hubert), normalize=True), MODEL_RATE, 256)
    assert not np.allclose(normalised.extract(wave, MODEL_RATE), outputs[2])


def test_the_model_loads_once_per_process(hubert: Path) -> None:
    assert load_encoder(str(hubert)) is load_encoder(str(hubert))
    assert not load_encoder(str(hubert)).training


def test_a_missing_model_names_what_to_pass(tmp_path: Path, hubert: Path) -> None:
    with pytest.raises(ValueError, match=r"ContentSettings\.model='.*nowhere': no such folder; pass a folder written "
                                         r"by save_pretrained"):
        ContentEncoder(settings(tmp_path / "nowhere"), MODEL_RATE, 256)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="the folder has no config.json"):
        ContentEncoder(settings(tmp_path / "empty"), MODEL_RATE, 256)
    with pytest.raises(ValueError, match=r"ContentSettings\.layer=3: the model .* has 2 layers; choose 0 to 2"):
        ContentEncoder(settings(hubert, layer=3), MODEL_RATE, 256)
    with pytest.raises(ValueError, match=r"ContentSettings\.layer=-1 must be a whole number >= 0"):
        settings(hubert, layer=-1)


def test_new_weights_in_the_same_folder_change_the_cache_key(tmp_path: Path) -> None:
    folder = save_tiny_hubert(tmp_path / "model")
    before = ContentEncoder(settings(folder), MODEL_RATE, 256).identity()
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes() + b" ")
    after = ContentEncoder(settings(folder), MODEL_RATE, 256).identity()
    assert before["package"] == "transformers" and before["package_version"]
    assert before != after
