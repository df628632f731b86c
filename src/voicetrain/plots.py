"""Validation figures for TensorBoard: spectrograms one above the other on one colour scale.

Each figure has time in seconds on x (shared, so durations compare at a glance), frequency in Hz
on y at mel-spaced ticks, a title per panel and a colour bar, and is drawn off-screen (matplotlib's
Agg canvas, no pyplot state) into an RGB array for `SummaryWriter.add_image(..., dataformats="HWC")`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from voicetrain.audio import MelSettings

# Round frequencies to label; those outside a figure's mel range, or crowding the one above, are left out.
TICK_FREQUENCIES_HZ = (250, 500, 1000, 2000, 4000, 8000, 16000)
TICK_SPACING_FRACTION = 0.1  # of the mel bins: labels closer than this overlap at the panel height used here
PANEL_HEIGHT_INCHES = 2.0
FIGURE_WIDTH_INCHES = 8.0
DOTS_PER_INCH = 100


@dataclass(frozen=True)
class MelPanel:
    """A log-mel [n_mels, frames] (natural log of magnitude, as `voicetrain.audio.MelSpectrogram`)."""

    title: str
    log_mel: np.ndarray


@dataclass(frozen=True)
class AlignmentPanel:
    """Which character each frame belongs to: the posterior over characters [characters, frames]
    (each column sums to 1) and the chosen path (1 where a frame is given to a character)."""

    title: str
    posterior: np.ndarray
    path: np.ndarray


def mel_frequency_ticks(settings: MelSettings) -> tuple[list[float], list[str]]:
    """Positions (in mel-bin units, bin i centred on i) and labels of round frequencies within the
    bins' range, placed by the Slaney mel scale of the filterbank that made the features; from the
    top down, a tick too close to the one above it is dropped (low frequencies crowd on a mel axis)."""
    import librosa

    upper = settings.sample_rate / 2 if settings.fmax is None else float(settings.fmax)
    # n_mels + 2 edges: bin i rises from edge i, peaks at edge i + 1 and falls to edge i + 2.
    edges = librosa.mel_frequencies(settings.n_mels + 2, fmin=float(settings.fmin), fmax=upper, htk=False)
    positions = np.interp(TICK_FREQUENCIES_HZ, edges, np.arange(settings.n_mels + 2) - 1.0)
    ticks: list[tuple[float, float]] = []
    for position, frequency in sorted(zip(positions, TICK_FREQUENCIES_HZ), reverse=True):
        inside = -0.5 <= position <= settings.n_mels - 0.5 and edges[0] <= frequency <= edges[-1]
        if inside and (not ticks or ticks[-1][0] - position >= TICK_SPACING_FRACTION * settings.n_mels):
            ticks.append((float(position), frequency))
    ticks.reverse()
    return [position for position, _ in ticks], [hertz_label(frequency) for _, frequency in ticks]


def hertz_label(frequency: float) -> str:
    return f"{frequency / 1000:g}k" if frequency >= 1000 else f"{frequency:g}"


def shared_colour_range(panels: Sequence[MelPanel]) -> tuple[float, float]:
    """The lowest and highest finite value over every panel, so equal colours mean equal levels."""
    finite = [values[np.isfinite(values)] for values in (np.asarray(panel.log_mel, dtype=np.float64)
                                                          for panel in panels)]
    finite = [values for values in finite if values.size]
    if not finite:
        return 0.0, 1.0
    low, high = min(float(values.min()) for values in finite), max(float(values.max()) for values in finite)
    return (low, high) if high > low else (low - 0.5, high + 0.5)


def comparison_image(panels: Sequence[MelPanel | AlignmentPanel], settings: MelSettings) -> np.ndarray:
    """Draws `panels` one above the other, mel panels on one colour scale with one colour bar, and
    returns the figure as [height, width, 3] uint8."""
    # Imported here: matplotlib is needed only when validation writes previews.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not panels:
        raise ValueError("comparison_image needs at least one panel")
    seconds_per_frame = settings.hop_length / settings.sample_rate
    figure = Figure(figsize=(FIGURE_WIDTH_INCHES, PANEL_HEIGHT_INCHES * len(panels)), dpi=DOTS_PER_INCH,
                    layout="constrained")
    canvas = FigureCanvasAgg(figure)
    axes = figure.subplots(len(panels), 1, squeeze=False)[:, 0]
    mel_panels = [panel for panel in panels if isinstance(panel, MelPanel)]
    low, high = shared_colour_range(mel_panels)
    longest = max(frame_count(panel) for panel in panels) * seconds_per_frame
    mel_images, mel_axes = [], []
    for panel, axis in zip(panels, axes):
        if isinstance(panel, MelPanel):
            mel_images.append(draw_mel(axis, panel, settings, seconds_per_frame, low, high))
            mel_axes.append(axis)
        else:
            image = draw_alignment(axis, panel, seconds_per_frame)
            figure.colorbar(image, ax=axis, label="posterior")
        axis.set_title(panel.title, fontsize=10)
        axis.set_xlim(0.0, longest)
    axes[-1].set_xlabel("time (s)")
    if mel_images:
        figure.colorbar(mel_images[0], ax=mel_axes, label="log magnitude (ln)")
    canvas.draw()
    return np.ascontiguousarray(np.asarray(canvas.buffer_rgba())[..., :3], dtype=np.uint8)


def frame_count(panel: MelPanel | AlignmentPanel) -> int:
    values = panel.log_mel if isinstance(panel, MelPanel) else panel.posterior
    return max(int(np.shape(values)[-1]), 1)


def draw_mel(axis, panel: MelPanel, settings: MelSettings, seconds_per_frame: float, low: float, high: float):
    values = np.nan_to_num(np.asarray(panel.log_mel, dtype=np.float32), nan=low, posinf=high, neginf=low)
    if values.ndim != 2 or values.shape[0] != settings.n_mels:
        raise ValueError(f"panel {panel.title!r}: expected a log-mel shaped [n_mels={settings.n_mels}, frames], "
                         f"got {values.shape}")
    extent = (0.0, values.shape[1] * seconds_per_frame, -0.5, settings.n_mels - 0.5)
    image = axis.imshow(values, origin="lower", aspect="auto", interpolation="nearest", extent=extent,
                        vmin=low, vmax=high, cmap="magma")
    positions, labels = mel_frequency_ticks(settings)
    axis.set_yticks(positions, labels)
    axis.set_ylabel("Hz")
    return image


def draw_alignment(axis, panel: AlignmentPanel, seconds_per_frame: float):
    posterior = np.asarray(panel.posterior, dtype=np.float32)
    characters, frames = posterior.shape
    extent = (0.0, frames * seconds_per_frame, characters - 0.5, -0.5)  # the first character at the top
    image = axis.imshow(posterior, aspect="auto", interpolation="nearest", extent=extent, vmin=0.0, vmax=1.0,
                        cmap="viridis")
    path = np.asarray(panel.path) > 0.5
    frames_on_path = np.flatnonzero(path.any(axis=0))
    # One character per frame on a monotonic path: the row of each frame's single 1.
    axis.step((frames_on_path + 0.5) * seconds_per_frame, path[:, frames_on_path].argmax(axis=0), where="mid",
              color="red", linewidth=1.0)
    axis.set_ylabel("character")
    return image
