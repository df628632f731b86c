"""An extractor's store key carries the version of the code that computes its numbers: the
distribution providing its module, or the one its `package` override names (as a distribution or
as the module it installs); a `package` nothing installed answers to stops the config check."""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass

import numpy as np
import pytest

from voicetrain.config import ConfigError, validate
from voicetrain.features.base import FeatureExtractor, frame_count, version_key

from omegaconf import OmegaConf

from helpers import compose_config


@dataclass(frozen=True)
class NoSettings:
    pass


class Silence(FeatureExtractor):
    Settings = NoSettings

    def extract(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        return np.zeros((1, frame_count(len(wave), self.hop_length)), dtype=np.float32)

    def channels(self) -> int:
        return 1


class ByImportName(Silence):
    package = "pyworld"  # the module; the installed distribution is pyworld-prebuilt


class ByDistribution(Silence):
    package = "pyworld-prebuilt"


class Unknown(Silence):
    package = "no-such-distribution-here"


def test_a_package_given_as_the_module_it_installs_keys_the_store_by_that_distribution() -> None:
    expected = {"package": "pyworld-prebuilt", "package_version": importlib.metadata.version("pyworld-prebuilt")}
    assert version_key(ByImportName, ByImportName.package) == expected
    assert ByImportName(NoSettings(), 16000, 256).identity()["package_version"] == expected["package_version"]
    # Both spellings name the same code, so they share the store's entries.
    assert ByDistribution(NoSettings(), 16000, 256).identity() | {"class": ""} == \
        ByImportName(NoSettings(), 16000, 256).identity() | {"class": ""}


def test_an_uninstalled_package_is_an_error_naming_the_attribute_and_the_fix() -> None:
    with pytest.raises(ValueError, match=r"Unknown\.package='no-such-distribution-here': no installed distribution"):
        Unknown(NoSettings(), 16000, 256)


def test_without_package_the_distribution_of_the_module_keys_it_and_a_loose_file_its_source() -> None:
    # This test module is a file on sys.path that no distribution installs: its source keys it.
    loose = version_key(Silence, None)
    assert loose["package"] is None and len(loose["module_source"]) == 64
    # A class from an installed distribution's module (numpy's here, to stand for a fork's package).
    installed = version_key(type("Borrowed", (Silence,), {"__module__": "numpy.random"}), None)
    assert installed == {"package": "numpy", "package_version": importlib.metadata.version("numpy")}


def test_the_config_check_reports_a_bad_package_as_the_feature_key() -> None:
    config = compose_config(f"+features.silence._target_={__name__}.Unknown")
    with pytest.raises(ConfigError) as error:
        validate(OmegaConf.to_container(config, resolve=True))
    assert "features.silence: Unknown.package='no-such-distribution-here'" in str(error.value), error.value
