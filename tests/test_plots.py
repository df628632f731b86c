"""The validation figures: frequency ticks placed by the features' own mel filterbank, one colour
scale over every spectrogram of a figure, and the size and type TensorBoard receives."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from matplotlib import colormaps

from voicetrain.audio import MelSettings, mel_filterbank
from voicetrain.plots import (DOTS_PER_INCH, FIGURE_WIDTH_INCHES, PANEL_HEIGHT_INCHES, TICK_SPACING_FRACTION,
                              AlignmentPanel, MelPanel, comparison_image, mel_frequency_ticks)

from helpers import standard_mel

SETTINGS = standard_mel()  # 16 kHz, 80 bins up to 8 kHz: the recipes' default


def filter_peaks_hz(settings: MelSettings) -> np.ndarray:
    """The frequency at which each mel filter of the features peaks, read from the filterbank itself."""
    bins_hz = np.arange(settings.n_fft // 2 + 1) * settings.sample_rate / settings.n_fft
    return bins_hz[mel_filterbank(settings).numpy().argmax(axis=1)]


@pytest.mark.parametrize("settings", [SETTINGS, dataclasses.replace(SETTINGS, sample_rate=22050, fmax=None, n_mels=100)])
def test_frequency_ticks_sit_on_the_filters_that_peak_there(settings: MelSettings) -> None:
    positions, labels = mel_frequency_ticks(settings)
    assert len(labels) >= 3 and positions == sorted(positions)
    assert all(-0.5 <= position <= settings.n_mels - 0.5 for position in positions)
    assert min(np.diff(positions)) >= TICK_SPACING_FRACTION * settings.n_mels, "labels would overlap"
    peaks = filter_peaks_hz(settings)
    for position, label in zip(positions, labels):
        hertz = float(label[:-1]) * 1000 if label.endswith("k") else float(label)
        assert peaks[0] <= hertz <= peaks[-1], label
        # Between the two filters whose peaks bracket the tick's frequency (the FFT grid: within a bin).
        assert abs(position - np.interp(hertz, peaks, np.arange(settings.n_mels))) <= 1.0, (label, position)


def test_the_top_tick_follows_the_highest_frequency_of_the_features() -> None:
    assert mel_frequency_ticks(SETTINGS)[1][-1] == "4k"  # 8k is the top edge, above the last filter's peak
    assert mel_frequency_ticks(dataclasses.replace(SETTINGS, sample_rate=22050, fmax=None))[1][-1] == "8k"


def panel_centre(image: np.ndarray, panel: int, panels: int) -> np.ndarray:
    """A pixel inside the plotting area of panel `panel` (0 at the top), left of the colour bar."""
    height, width = image.shape[:2]
    return image[int(height * (panel + 0.5) / panels), int(width * 0.4)].astype(int)


def test_spectrograms_share_one_colour_scale() -> None:
    # Two constant log-mels: scaled each on its own they would look alike; on one scale the quieter
    # is drawn in the colour map's lowest colour and the louder in its highest.
    quiet, loud = np.full((SETTINGS.n_mels, 40), -6.0), np.full((SETTINGS.n_mels, 40), 1.0)
    image = comparison_image([MelPanel("quiet", quiet), MelPanel("loud", loud)], SETTINGS)
    lowest, highest = (np.array(colormaps["magma"](value, bytes=True)[:3], dtype=int) for value in (0.0, 1.0))
    assert np.abs(panel_centre(image, 0, 2) - lowest).max() <= 2
    assert np.abs(panel_centre(image, 1, 2) - highest).max() <= 2


def test_a_figure_is_an_rgb_array_sized_by_its_panels() -> None:
    frames = 50
    log_mel = np.random.default_rng(0).normal(-4.0, 2.0, (SETTINGS.n_mels, frames))
    posterior = np.full((7, frames), 1 / 7)
    path = np.zeros((7, frames))
    path[np.minimum(np.arange(frames) * 7 // frames, 6), np.arange(frames)] = 1.0
    image = comparison_image([MelPanel("recording", log_mel), MelPanel("synthesis", log_mel[:, :30]),
                              AlignmentPanel("alignment", posterior, path)], SETTINGS)
    assert image.dtype == np.uint8
    height, width = round(3 * PANEL_HEIGHT_INCHES * DOTS_PER_INCH), round(FIGURE_WIDTH_INCHES * DOTS_PER_INCH)
    assert image.shape == (height, width, 3)


def test_a_log_mel_of_other_features_is_refused_with_its_panel_named() -> None:
    with pytest.raises(ValueError, match=r"panel 'converted'.*n_mels=80"):
        comparison_image([MelPanel("converted", np.zeros((64, 10)))], SETTINGS)
