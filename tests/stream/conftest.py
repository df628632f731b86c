"""Fixtures of the stream tests: a tiny svc export trained through the real CLI, shared by the module's tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from voicetrain.config import validate
from voicetrain.data.prepare import prepare_data

from helpers import assert_ok, compose_config, environment, recipe_run_schedule, run_cli

STEPS = 10
TINY_SVC = [
    "task=svc", "task.hidden_channels=16", "task.bottleneck_channels=4", "task.encoder_layers=1",
    "task.speaker_channels=8", "task.generator_channels=16", "task.generator_intermediate_channels=32",
    "task.generator_layers=1", "task.filter_bins=17", "task.segment_frames=16", "task.validation_pairs=1",
    "task.validation_utterances=1", "optim.lr=1e-2", "optim.warmup_steps=0", "optim.schedule=constant",
    *recipe_run_schedule(STEPS), f"trainer.max_steps={STEPS}", "export.enabled=true",
]


@pytest.fixture(scope="session")
def svc_export(tmp_path_factory: pytest.TempPathFactory, bundled_cache: Path) -> Path:
    settings = validate(OmegaConf.to_container(compose_config("task=svc", f"data.cache_dir={bundled_cache}"),
                                               resolve=True))
    prepare_data(settings.data, settings.features, bundled_cache, progress=False, workers=1)
    root = tmp_path_factory.mktemp("stream-svc")
    assert_ok(run_cli(f"run.root={root}", "run.name=svc", f"data.cache_dir={bundled_cache}", *TINY_SVC, cwd=root,
                      env=environment(OMP_NUM_THREADS="1")))
    return root / "svc" / "export"


@pytest.fixture(scope="session")
def causal_svc_export(tmp_path_factory: pytest.TempPathFactory, bundled_cache: Path, svc_export: Path) -> Path:
    """The tiny svc with `task.causal=true`: it streams through the incremental step (svc_incremental).
    After svc_export, which prepares the shared feature cache."""
    root = tmp_path_factory.mktemp("stream-svc-causal")
    assert_ok(run_cli(f"run.root={root}", "run.name=svc", f"data.cache_dir={bundled_cache}", *TINY_SVC,
                      "task.causal=true", cwd=root, env=environment(OMP_NUM_THREADS="1")))
    return root / "svc" / "export"


@pytest.fixture(params=["centred", "causal"])
def any_svc_export(request: pytest.FixtureRequest) -> Path:
    """Each svc export in turn: the centred one streams through the windowed step, the causal one
    through the incremental step."""
    return request.getfixturevalue("svc_export" if request.param == "centred" else "causal_svc_export")




# The VC recipe at its smallest (helpers.TINY_MODEL's sizes) with its export: vc + Griffin-Lim streams.
TINY_VC = ["task=vc", "task.hidden_channels=16", "task.speaker_channels=16", "task.encoder_layers=1",
           "task.decoder_layers=1", "task.validation_pairs=1", "trainer.audio_previews=0", "trainer.batch_size=8",
           "trainer.progress=false", "trainer.max_steps=20", "trainer.val_every=20", "export.enabled=true"]


@pytest.fixture(scope="session")
def vc_export(tmp_path_factory: pytest.TempPathFactory, bundled_cache: Path) -> Path:
    root = tmp_path_factory.mktemp("stream-vc")
    assert_ok(run_cli(f"run.root={root}", "run.name=vc", f"data.cache_dir={bundled_cache}", *TINY_VC, cwd=root,
                      env=environment(OMP_NUM_THREADS="1")))
    return root / "vc" / "export"


@pytest.fixture(scope="session")
def vocoder_export(tmp_path_factory: pytest.TempPathFactory, bundled_cache: Path) -> Path:
    """A vocoder export after a few steps at its smallest batch (copy synthesis streams through its hook)."""
    root = tmp_path_factory.mktemp("stream-vocoder")
    assert_ok(run_cli(f"run.root={root}", "run.name=voc", f"data.cache_dir={bundled_cache}", "task=vocoder",
                      "trainer.max_steps=4", "trainer.val_every=4", "trainer.batch_size=2", "trainer.progress=false",
                      "trainer.audio_previews=0", "export.enabled=true", cwd=root,
                      env=environment(OMP_NUM_THREADS="1")))
    return root / "voc" / "export"
