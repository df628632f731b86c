"""Which corpus an evaluation reads, and its held-out recordings.

Data is chosen like training chooses it, with Hydra overrides of the `data` group (`data=vctk data.root=...`),
composed from the packaged config and checked by the same schema. Without overrides it is the corpus the first
export's run was trained on (its `.hydra/config.yaml`, when the export sits in its run folder), else the bundled
corpus. A training corpus that cannot be reached is an error naming the overrides to pass, never a silent switch
to another corpus.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from voicetrain.config import DataSettings, build_section
from voicetrain.data.prepare import read_utterances
from voicetrain.data.readers import Utterance


class EvaluationError(RuntimeError):
    """An evaluation that cannot run as asked; the message names the argument and the fix."""


def check_overrides(overrides: list[str]) -> None:
    for override in overrides:
        if not override.lstrip("+~").startswith("data"):
            raise EvaluationError(f"{override!r}: only the data can be overridden here (data=NAME, data.KEY=VALUE); "
                                  "the exports fix everything else")


def composed_data(overrides: list[str]) -> dict[str, Any]:
    """The `data` node of the packaged config with `overrides`, resolved."""
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException

    check_overrides(overrides)
    try:
        with initialize_config_module("voicetrain.conf", version_base="1.3"):
            config = compose(config_name="config", overrides=overrides)
        return OmegaConf.to_container(config.data, resolve=True)
    except (HydraException, OmegaConfBaseException) as error:
        raise EvaluationError(f"the data overrides {' '.join(overrides)} cannot be composed: "
                              f"{str(error).splitlines()[0]}; e.g. data=vctk data.root=/data/VCTK-Corpus-0.92"
                              ) from error


def training_data(export: Path) -> dict[str, Any] | None:
    """The `data` node a run's own config recorded, when the export sits in its run folder."""
    recorded = export.resolve().parent / ".hydra" / "config.yaml"
    if not recorded.is_file():
        return None
    try:
        return OmegaConf.to_container(OmegaConf.load(recorded), resolve=True)["data"]
    except (OmegaConfBaseException, KeyError, TypeError) as error:
        raise EvaluationError(f"{recorded} cannot be read for the run's data settings ({error}); pass the data "
                              "explicitly, e.g. data=bundled") from error


def data_settings(overrides: list[str], first_export: Path) -> tuple[DataSettings, str]:
    """The data settings and a line saying where they came from."""
    if overrides:
        node, origin = composed_data(overrides), f"the overrides {' '.join(overrides)}"
    elif (recorded := training_data(first_export)) is not None:
        node, origin = recorded, f"the corpus {export_run(first_export)} was trained on"
        if node.get("root") and not Path(node["root"]).exists():
            raise EvaluationError(f"the corpus {first_export} was trained on (data.root={node['root']}) cannot be "
                                  f"reached from here; pass it with data={node.get('kind')} data.root=PATH, or "
                                  "evaluate on the bundled corpus with data=bundled")
    else:
        node, origin = composed_data(["data=bundled"]), "the bundled corpus (the export holds no run config)"
    settings, problems = build_section("data", DataSettings, node)
    if problems:
        raise EvaluationError("; ".join(problems))
    return settings, origin


def export_run(export: Path) -> str:
    return str(export.resolve().parent)


def held_out_and_training(settings: DataSettings) -> tuple[list[Utterance], list[Utterance]]:
    """The corpus's held-out recordings (its validation split) and its training recordings."""
    utterances = read_utterances(settings)
    held_out = [utterance for utterance in utterances if utterance.split == "val"]
    if not held_out:
        raise EvaluationError(f"data.root={settings.root!r} ({settings.kind}) holds no held-out recordings; raise "
                              "data.val_fraction")
    return held_out, [utterance for utterance in utterances if utterance.split != "val"]
