"""Shared by test_tts.py, test_custom_task.py and test_fork_guide.py: the bundled corpus's
feature cache filled once, in-process, so that CLI launches running side by side read it
instead of each computing the same 120 log-mels."""

from __future__ import annotations

from pathlib import Path

from voicetrain.run.launch import settings_from
from voicetrain.data.readers import read_bundled_corpus
from voicetrain.features.store import load_features

from helpers import compose_config

_warm: set[Path] = set()


def warm_bundled_cache(cache_dir: Path) -> Path:
    """Computes (or checks) the bundled corpus's log-mels under `cache_dir` for the feature
    settings the CLI composes by default; cheap once warm."""
    key = cache_dir.resolve()
    if key not in _warm:
        features = settings_from(compose_config(f"data.cache_dir={cache_dir}")).features
        load_features(read_bundled_corpus(), features, cache_dir, progress=False)
        _warm.add(key)
    return cache_dir
