"""A plain (non-editable) install finds its configs and the bundled corpus inside the package.

The source is copied to a temporary folder first so that building leaves nothing (build/,
*.egg-info) in the working tree, then installed with pip's --target; the installed copy runs from a
folder outside the repository with PYTHONPATH pointing at it. No network: --no-index and
--no-build-isolation (the venv's own setuptools builds it).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from voicetrain.features.store import audio_key

from helpers import QUICK, assert_ok, environment, output_of, run_cli

REPOSITORY = Path(__file__).resolve().parents[1]
SOURCE_ENTRIES = ("pyproject.toml", "README.md", "LICENSE", "src", "conf")


def copy_source(destination: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    destination.mkdir(parents=True)
    for name in SOURCE_ENTRIES:
        source = REPOSITORY / name
        if source.is_dir():
            shutil.copytree(source, destination / name, ignore=ignore)
        elif source.is_file():
            shutil.copy2(source, destination / name)
    return destination


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # --no-build-isolation builds with this environment's own tools: setuptools>=68 (pyproject's
    # build requirement) and a bdist_wheel, which setuptools carries itself from 70.1 on.
    setuptools = pytest.importorskip("setuptools", minversion="68", reason="building needs setuptools>=68")
    if importlib.util.find_spec("wheel") is None:
        pytest.importorskip("setuptools", minversion="70.1", reason=f"setuptools {setuptools.__version__} "
                            "builds wheels only with the `wheel` package, which is not installed")
    work = tmp_path_factory.mktemp("install")
    source = copy_source(work / "source")
    site = work / "site"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--no-build-isolation",
         "--disable-pip-version-check", "--target", str(site), str(source)],
        cwd=work, capture_output=True, text=True, timeout=300,
    )
    assert_ok(result)
    return site


def installed_environment(site: Path) -> dict[str, str]:
    return environment(PYTHONPATH=str(site))


def python_in(site: Path, code: str, cwd: Path) -> str:
    result = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=installed_environment(site),
                            capture_output=True, text=True, timeout=120)
    assert_ok(result)
    return result.stdout.strip()


def test_the_installed_copy_is_the_one_imported(installed: Path, tmp_path: Path) -> None:
    code = ("import json, voicetrain, voicetrain.conf, voicetrain.data; print(json.dumps("
            "[voicetrain.__file__, voicetrain.conf.__file__, str(voicetrain.data.BUNDLED_CORPUS)]))")
    package, conf, corpus = (Path(path) for path in json.loads(python_in(installed, code, tmp_path)))
    for path in (package, conf, corpus):
        assert path.is_relative_to(installed), f"{path} is not from the installed copy {installed}"
    assert (conf.parent / "config.yaml").is_file()
    assert len(list(corpus.glob("*/*.flac"))) == 120
    assert (corpus / "metadata.csv").is_file()


def test_the_installed_copy_composes_its_config(installed: Path, tmp_path: Path) -> None:
    result = run_cli("--cfg", "job", cwd=tmp_path, env=installed_environment(installed))
    assert_ok(result)
    assert "_target_: voicetrain.tasks.vc.VoiceConversionTask" in result.stdout, output_of(result)
    assert "kind: bundled" in result.stdout, output_of(result)


@pytest.mark.slow  # long: runs in make test-slow (CI runs both)
def test_the_installed_copy_trains_on_the_bundled_corpus(installed: Path, tmp_path: Path) -> None:
    result = run_cli(f"run.root={tmp_path / 'runs'}", "trainer.max_steps=2", "trainer.val_every=100",
                     "ckpt.every_n_steps=100", "export.enabled=false", "task.validation_pairs=2",
                     "trainer.audio_previews=0", *QUICK,
                     cwd=tmp_path, env=installed_environment(installed))
    assert_ok(result)
    run_dir = tmp_path / "runs" / "default"
    assert json.loads((run_dir / "checkpoints" / "step_00000002" / "manifest.json").read_text())["step"] == 2
    # The features were computed from the audio inside the installed package: the store's keys are
    # those of its 120 bundled files (a key names the resolved path, size and mtime of one file).
    indexes = list((tmp_path / "runs" / ".cache" / "features").glob("mel-*/index.sqlite"))
    assert len(indexes) == 1, indexes
    with contextlib.closing(sqlite3.connect(indexes[0])) as connection:
        stored = {key for (key,) in connection.execute("SELECT key FROM entries WHERE status = 'ok'")}
    installed_audio = sorted((installed / "voicetrain" / "assets" / "tiny").rglob("*.flac"))
    assert len(installed_audio) == 120 and stored == {audio_key(path) for path in installed_audio}
