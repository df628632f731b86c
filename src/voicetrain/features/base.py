"""The extractor contract: a settings dataclass and one method from a mono wave to an array.

A task's YAML declares the features it needs as `features.<name>` nodes with a `_target_` class;
`features.sample_rate` and `features.hop_length` are shared by all of them and handed to every
extractor, so that every frame-level feature of an utterance has exactly `frame_count(samples,
hop_length)` frames (the log-mel's count) and the waveform is the resampled audio itself. A crop
of frames [a, b) therefore comes with the samples [a * hop, b * hop), and one random choice cuts
every feature of an example at the same place.

The store keys every array by the extractor's `identity()`, which holds the version of the code
that computes the numbers: the installed distribution that provides the extractor's module
(`importlib.metadata.packages_distributions`), or the one its `package` names. A `package` that no
installed distribution answers to stops the run at start-up: a silent `None` would let an upgrade
of that package leave stale features in the store.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata
import inspect
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

# Bump when the store's way of keeping a feature changes (not an extractor's settings): it is part
# of every cache key, so entries written the old way are never read.
STORE_FORMAT_VERSION = 1


def frame_count(samples: int, hop_length: int) -> int:
    """Frames of every frame-level feature of a wave of `samples` samples: one per hop, plus the
    frame centred on the last sample (a centred STFT's count)."""
    return samples // hop_length + 1


def package_version(name: str) -> str:
    """The installed version of distribution `name`, which an extractor's numbers depend on; a
    ValueError naming it when it is not installed (a silent None would key stale features)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        raise ValueError(f"the distribution {name!r} that this feature extractor computes with is not installed; "
                         f"install it (pip install {name}) or reinstall voicetrain") from None


@functools.cache
def module_distributions() -> dict[str, tuple[str, ...]]:
    """Top-level import name -> the installed distributions providing it (pyworld -> pyworld-prebuilt).
    Cached: it reads every installed distribution's file list once per process."""
    return {module: tuple(sorted(set(names))) for module, names in importlib.metadata.packages_distributions().items()}


def installed_distribution(package: str, owner: str) -> str:
    """The installed distribution that `package` names, as a distribution name (pyworld-prebuilt) or
    as the import name of a module it provides (pyworld); a ValueError naming `owner.package`, the
    value and the fix when neither is installed."""
    try:
        return importlib.metadata.distribution(package).metadata["Name"]
    except importlib.metadata.PackageNotFoundError:
        pass
    providers = module_distributions().get(package, ())
    if len(providers) == 1:
        return providers[0]
    if providers:
        raise ValueError(f"{owner}.package={package!r}: the module {package} is installed by several distributions "
                         f"({', '.join(providers)}); set package to the one whose version changes the numbers")
    raise ValueError(f"{owner}.package={package!r}: no installed distribution and no installed module has that name, "
                     "so its version cannot key the feature store; set package to the distribution that computes "
                     "the numbers as `pip show` names it (e.g. 'pyworld-prebuilt'), install it, or remove the "
                     "attribute to key the store by the distribution providing the extractor's module")


@functools.cache
def source_digest(extractor_class: type) -> str:
    """SHA-256 of the file defining `extractor_class` (for a module no distribution provides)."""
    source = inspect.getsourcefile(extractor_class)
    return hashlib.sha256(Path(source).read_bytes()).hexdigest() if source else "unknown"


def version_key(extractor_class: type, package: str | None) -> dict[str, Any]:
    """What versions an extractor's numbers in the store key: `package` (an override) resolved to an
    installed distribution and its version; otherwise the distribution providing the class's module;
    a module no distribution provides (a file on PYTHONPATH) is keyed by its source file's digest,
    so that editing the extractor recomputes its features."""
    owner = extractor_class.__qualname__
    if package is not None:
        distribution = installed_distribution(package, owner)
        return {"package": distribution, "package_version": importlib.metadata.version(distribution)}
    top_level = extractor_class.__module__.split(".")[0]
    if top_level == "voicetrain":
        # voicetrain's extractors version their own computation (a format_version in identity()),
        # so that upgrading voicetrain does not recompute every store.
        return {"package": None, "package_version": None}
    providers = module_distributions().get(top_level, ())
    if providers:
        return {"package": ",".join(providers),
                "package_version": ",".join(importlib.metadata.version(name) for name in providers)}
    return {"package": None, "package_version": None, "module_source": source_digest(extractor_class)}


class FeatureExtractor:
    """Subclass this. `Settings` is a dataclass whose fields are the keys of the YAML node (next to
    `_target_`); the framework validates the node against it like a task's settings."""

    Settings: ClassVar[type]
    # False for a per-sample feature (the waveform): [samples] instead of [channels, frames].
    frame_level: ClassVar[bool] = True
    # How the store keeps the array on disk: "float32", "float16" or "int16" (PCM for waves in [-1, 1]).
    storage_dtype: ClassVar[str] = "float32"
    # An override of the distribution whose version keys the store: by default the one providing
    # this class's module (see version_key). Set it when another package computes the numbers:
    # its distribution name ("pyworld-prebuilt") or the module it installs ("pyworld"). A name no
    # installed distribution answers to stops the run at start-up.
    package: ClassVar[str | None] = None

    def __init__(self, settings: Any, sample_rate: int, hop_length: int):
        self.settings = settings
        self.sample_rate = sample_rate
        self.hop_length = hop_length
        # Resolved here, so that a bad `package` is reported when the config is checked (which
        # builds every extractor once), before any feature is extracted.
        version_key(type(self), self.package)

    def extract(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        """`wave`: mono float32 [samples] at `sample_rate` (always self.sample_rate). Returns
        [channels, frame_count(samples, hop_length)] for a frame-level feature, [samples] otherwise.
        Must give the same numbers whatever the thread count (the store may extract in parallel)."""
        raise NotImplementedError

    def channels(self) -> int:
        """Rows of the array `extract` returns (1 for the waveform)."""
        raise NotImplementedError

    def statistics(self, array: np.ndarray) -> dict[str, np.ndarray]:
        """Additive sufficient statistics of one utterance's array, summed by the store over the
        training set and per speaker: by default per-channel count, sum and sum of squares over
        frames, from which a mean and a standard deviation follow. Override to restrict them (F0
        counts voiced frames of log-F0 only) or return {} for none."""
        values = np.asarray(array, dtype=np.float64).reshape(self.channels(), -1)
        return {"count": np.array([values.shape[1]], dtype=np.float64), "sum": values.sum(axis=1),
                "sum_squares": np.square(values).sum(axis=1)}

    def identity(self) -> dict[str, Any]:
        """Everything that changes the numbers: the class, its settings, the shared sample rate and
        hop, the computing code's version (version_key) and the store format. The store keys entries by it."""
        return {
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "settings": dataclasses.asdict(self.settings),
            "sample_rate": int(self.sample_rate),
            "hop_length": int(self.hop_length),
            **version_key(type(self), self.package),
            "store_format": STORE_FORMAT_VERSION,
        }


def mean_and_std(statistics: dict[str, np.ndarray], floor: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and (unbiased) standard deviation from summed `statistics` (count, sum,
    sum_squares), the standard deviation floored so a constant channel cannot divide by zero."""
    count = float(statistics["count"][0])
    mean = statistics["sum"] / max(count, 1.0)
    variance = np.maximum(statistics["sum_squares"] - count * np.square(mean), 0.0) / max(count - 1.0, 1.0)
    return mean, np.maximum(np.sqrt(variance), floor)
