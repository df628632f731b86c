"""Session fixtures. Helper functions live in tests/helpers.py (`from helpers import ...`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from voicetrain.config import validate
from voicetrain.data.prepare import prepare_data

from helpers import compose_config


@pytest.fixture(scope="session")
def bundled_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A feature store shared by the runs of this session that read the bundled corpus, filled
    here once with the default log-mel, so runs launched side by side read it instead of waiting
    for one another to extract it."""
    cache = tmp_path_factory.mktemp("feature-cache")
    settings = validate(OmegaConf.to_container(compose_config(f"data.cache_dir={cache}"), resolve=True))
    prepare_data(settings.data, settings.features, cache, progress=False, workers=1)
    return cache
