"""The README's extractor table says what each extractor returns; this builds every extractor in it,
with the settings voicetrain's own YAMLs give it, and compares the table's shape with `channels()`
and with the array `extract` really returns, so the table cannot drift from the code."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from omegaconf import OmegaConf

from extractor_helpers import save_tiny_hubert
from voicetrain.config import validate
from voicetrain.schema import import_target
from voicetrain.features.base import FeatureExtractor, frame_count
from voicetrain.features.content import ContentSettings

from helpers import compose_config

README = Path(__file__).resolve().parents[2] / "README.md"
ROW = re.compile(r"^\| `(?P<target>voicetrain\.features\.[\w.]+)` \| `\[(?P<shape>[^\]]+)\]`", re.MULTILINE)
SAMPLE_RATE, HOP = 16000, 256


def readme_shapes() -> dict[str, list[str]]:
    """extractor class -> the table's shape, e.g. ["n_mels", "frames"] or ["samples"]."""
    table = README.read_text(encoding="utf-8").split("## Features and the feature store", 1)[1]
    return {match["target"]: [part.strip() for part in match["shape"].split(",")] for match in ROW.finditer(table)}


@pytest.fixture(scope="module")
def shipped_extractors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, FeatureExtractor]:
    """Every extractor voicetrain's task YAMLs configure (task=svc has mel, f0, loudness, wave), and
    the content encoder on a tiny HuBERT."""
    tmp_path = tmp_path_factory.mktemp("readme-extractors")
    settings = validate(OmegaConf.to_container(compose_config("task=svc"), resolve=True))
    built = {spec.target: import_target(spec.target)(spec.settings, SAMPLE_RATE, HOP)
             for spec in settings.features.extractors.values()}
    content = ContentSettings(model=str(save_tiny_hubert(tmp_path / "hubert")), layer=1, sample_rate=SAMPLE_RATE,
                              normalize=False)
    built["voicetrain.features.content.ContentEncoder"] = import_target(
        "voicetrain.features.content.ContentEncoder")(content, SAMPLE_RATE, HOP)
    return built


def expected_size(symbol: str, extractor: FeatureExtractor, samples: int) -> int:
    sizes: dict[str, Any] = {"frames": frame_count(samples, HOP), "samples": samples,
                             "n_mels": getattr(extractor.settings, "n_mels", None),
                             "hidden_size": getattr(extractor, "hidden_size", None)}
    size = int(symbol) if symbol.isdigit() else sizes[symbol]
    assert size is not None, f"the README's {symbol!r} means nothing for {type(extractor).__name__}"
    return size


def test_every_extractor_returns_what_the_readme_table_says(shipped_extractors: dict[str, FeatureExtractor]) -> None:
    shapes = readme_shapes()
    extractors = shipped_extractors
    assert set(shapes) == set(extractors), "the table lists exactly voicetrain's extractors"
    samples = SAMPLE_RATE // 2
    time = np.arange(samples) / SAMPLE_RATE
    wave = (0.3 * np.sin(2 * np.pi * 180.0 * time) + 0.01 * np.random.default_rng(0).standard_normal(samples))
    for target, extractor in extractors.items():
        shape = [expected_size(symbol, extractor, samples) for symbol in shapes[target]]
        output = extractor.extract(wave.astype(np.float32), SAMPLE_RATE)
        assert list(output.shape) == shape, f"{target}: README says {shapes[target]} = {shape}, extract gives {output.shape}"
        if extractor.frame_level:
            assert extractor.channels() == shape[0], f"{target}: channels() is {extractor.channels()}, README {shape[0]}"
        else:
            assert extractor.channels() == 1 and len(shape) == 1, target


def test_the_pitch_rows_are_f0_in_hz_and_the_voiced_flag(shipped_extractors: dict[str, FeatureExtractor]) -> None:
    extractor = shipped_extractors["voicetrain.features.pitch.Pitch"]
    samples = SAMPLE_RATE
    wave = (0.3 * np.sin(2 * np.pi * 220.0 * np.arange(samples) / SAMPLE_RATE)).astype(np.float32)
    f0, voiced = extractor.extract(wave, SAMPLE_RATE)
    assert set(np.unique(voiced)) <= {0.0, 1.0} and voiced.mean() > 0.5
    assert abs(float(np.median(f0[voiced > 0])) - 220.0) < 5.0, "row 0 is F0 in Hz, not its log"
