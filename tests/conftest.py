"""Session fixtures. Helper functions live in tests/helpers.py (`from helpers import ...`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import fill_feature_cache


@pytest.fixture(scope="session")
def bundled_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A feature store shared by the runs of this session that read the bundled corpus, filled
    here once with the default log-mel, so runs launched side by side read it instead of waiting
    for one another to extract it."""
    return fill_feature_cache(tmp_path_factory.mktemp("feature-cache"))
