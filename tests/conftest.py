"""Session fixtures. Helper functions live in tests/helpers.py (`from helpers import ...`)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def bundled_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A feature cache shared by the runs of this session that read the bundled corpus."""
    return tmp_path_factory.mktemp("feature-cache")
