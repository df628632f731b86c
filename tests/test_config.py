"""The configuration: every shipped YAML composes and validates, and every kind of mistake is
reported at once, each naming the key, the value and the fix, before any training step."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hydra import compose
from omegaconf import OmegaConf, open_dict

from voicetrain.run.launch import settings_from
from voicetrain.config import SECTIONS, ConfigError, Settings
from voicetrain.schema import import_target

from helpers import CONFIG_ROOT, QUICK, compose_config, composing, config_groups, output_of, run_cli


def required_groups() -> set[str]:
    """Groups chosen in the primary config's defaults list (switched with group=preset); every
    other group under conf/ is an add-on applied with +group=preset."""
    defaults = OmegaConf.to_container(OmegaConf.load(CONFIG_ROOT / "config.yaml"))["defaults"]
    return {key for entry in defaults if isinstance(entry, dict) for key in entry if " " not in key and "/" not in key}


PRESETS = [(group, preset) for group, presets in config_groups().items() for preset in presets]


def preset_override(group: str, preset: str) -> str:
    return f"{group}={preset}" if group in required_groups() else f"+{group}={preset}"


def user_supplied_paths(override: str, existing: Path) -> list[str]:
    """The paths a user must add to a preset (its own corpus, a checkpoint to start from)."""
    plain = OmegaConf.to_container(compose_config(override), resolve=True, throw_on_missing=False)
    extra = []
    if plain["data"]["kind"] != "bundled" and plain["data"]["root"] in (None, "???"):
        extra.append(f"data.root={existing}")
    if plain["resume"]["mode"] in ("path", "finetune") and plain["resume"]["path"] in (None, "???"):
        extra.append(f"resume.path={existing}")
    return extra


def validate_overrides(*overrides: str) -> Settings:
    return settings_from(compose_config(*overrides))


def problems_of(*overrides: str) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        validate_overrides(*overrides)
    return raised.value.problems


def test_presets_are_discovered() -> None:
    groups = config_groups()
    assert {"task", "data", "optim"} <= required_groups()
    assert {"vc"} <= set(groups["task"])
    assert {"bundled", "ljspeech", "speakers"} <= set(groups["data"])
    assert {"adam", "adamw"} <= set(groups["optim"])


def test_primary_config_validates(tmp_path: Path) -> None:
    settings = validate_overrides(f"run.root={tmp_path}")
    assert settings.task_target == "voicetrain.tasks.vc.VoiceConversionTask"
    assert settings.data.kind == "bundled"
    assert settings.run_dir == tmp_path / "default"
    # The feature cache follows run.root, so a run pointed at a folder writes nothing elsewhere.
    assert Path(settings.data.cache_dir).is_relative_to(tmp_path)


@pytest.mark.parametrize(("group", "preset"), PRESETS, ids=[f"{group}={preset}" for group, preset in PRESETS])
def test_every_preset_composes_and_validates(group: str, preset: str, tmp_path: Path) -> None:
    override = preset_override(group, preset)
    extra = user_supplied_paths(override, tmp_path)
    settings = validate_overrides(override, f"run.root={tmp_path}", *extra)
    # The preset's own values reach the validated settings (a preset that silently does nothing
    # would be worse than one that fails).
    written = OmegaConf.to_container(OmegaConf.load(CONFIG_ROOT / group / f"{preset}.yaml"), resolve=False)
    written.pop("defaults", None)
    if not hasattr(settings, group) and group != "task":
        # A `# @package _global_` preset of a group without a section of its own (hparams_search): the
        # sections it sets reach the settings; its `hydra:` node is Hydra's own (the sweeper).
        for name, values in written.items():
            for key, value in values.items() if name != "hydra" else ():
                assert getattr(getattr(settings, name), key) == value, f"{group}/{preset}.yaml sets {name}.{key}"
        return
    if isinstance(written.get(group), dict):
        # A `# @package _global_` preset (as task=svc): its task node, and the trainer values it sets win
        # over the primary config's.
        for key, value in written.get("trainer", {}).items():
            assert getattr(settings.trainer, key) == value, f"{group}/{preset}.yaml sets trainer.{key}={value!r}"
        written = written[group]
    section = settings.task if group == "task" else getattr(settings, group)
    supplied = {override.split("=", 1)[0].split(".", 1)[1] for override in extra if override.startswith(f"{group}.")}
    for key, value in written.items():
        if key == "_target_":
            assert settings.task_target == value
        elif isinstance(value, dict) and dataclasses.is_dataclass(getattr(section, key)):
            # A node of settings (logger/csv.yaml sets logger.csv): compared key by key, interpolations aside.
            built = dataclasses.asdict(getattr(section, key))
            for name, item in value.items():
                assert isinstance(item, str) and "${" in item or built[name] == item, \
                    f"{group}/{preset}.yaml sets {key}.{name}={item!r}"
        elif key not in supplied and not (isinstance(value, str) and "${" in value):
            assert getattr(section, key) == value, f"{group}/{preset}.yaml sets {key}={value!r}"


REQUIRED_PRESETS = [(group, preset) for group, preset in PRESETS if group in required_groups()]


@pytest.mark.parametrize(("group", "preset"), REQUIRED_PRESETS,
                         ids=[f"{group}={preset}" for group, preset in REQUIRED_PRESETS])
def test_the_yaml_is_the_one_source_of_defaults(group: str, preset: str) -> None:
    """The composed config holds exactly the schema's keys, section by section and for the task's
    own Settings, and no schema field carries a default of its own that could disagree with it."""
    config = OmegaConf.to_container(compose_config(preset_override(group, preset)), resolve=False)
    task_schema = import_target(config["task"]["_target_"]).Settings
    for name, schema in {**SECTIONS, "task": task_schema}.items():
        fields = dataclasses.fields(schema)
        written = set(config[name]) - {"_target_"}
        assert written == {field.name for field in fields}, f"{name}: YAML keys {sorted(written)}"
        defaulted = [field.name for field in fields
                     if field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING]
        assert not defaulted, f"{schema.__name__} has defaults of its own for {defaulted}; keep them in the YAML"


def test_a_key_missing_from_the_yaml_is_reported_not_filled_in() -> None:
    config = compose_config()
    with open_dict(config):
        del config.trainer["val_every"]
        del config.task["segment_frames"]
    with pytest.raises(ConfigError) as raised:
        settings_from(config)
    problems = raised.value.problems
    assert any(problem.startswith("trainer.val_every: missing") for problem in problems), problems
    assert any(problem.startswith("task.segment_frames: missing") for problem in problems), problems


HYDRA_PRESETS = sorted((folder.name, path.stem) for folder in (CONFIG_ROOT / "hydra").iterdir() if folder.is_dir()
                       for path in folder.glob("*.yaml"))


@pytest.mark.parametrize(("group", "preset"), HYDRA_PRESETS,
                         ids=[f"hydra/{group}={preset}" for group, preset in HYDRA_PRESETS])
def test_every_hydra_preset_composes(group: str, preset: str) -> None:
    # Launcher presets extend a plugin's config (joblib, submitit_slurm), an optional extra.
    written = OmegaConf.to_container(OmegaConf.load(CONFIG_ROOT / "hydra" / group / f"{preset}.yaml"))
    for base in written.get("defaults", []):
        if isinstance(base, str) and not (CONFIG_ROOT / "hydra" / group / f"{base}.yaml").exists():
            plugin = {"joblib": "hydra_plugins.hydra_joblib_launcher",
                      "submitit_slurm": "hydra_plugins.hydra_submitit_launcher",
                      "ray": "hydra_plugins.hydra_ray_launcher"}.get(base)
            if plugin is not None:
                pytest.importorskip(plugin, reason=f"hydra/{group}={preset} needs an optional Hydra plugin")
    with composing():
        config = compose(config_name="config", overrides=[f"hydra/{group}={preset}"], return_hydra_config=True)
    node = OmegaConf.to_container(config.hydra[group], resolve=False)
    for key, value in written.items():
        if key != "defaults":
            assert node[key] == value, f"hydra/{group}/{preset}.yaml sets {key}={value!r}"


def test_several_problems_are_reported_at_once() -> None:
    problems = problems_of(
        "trainer.max_steps=-5",
        "trainer.precision=fp64",
        "+trainer.max_step=5",
        "data=speakers",
        "+trainr.seed=1",
    )
    expected = {  # key -> the bad value the message must show (None: an unknown key)
        "trainer.max_steps": "-5",
        "trainer.precision": "fp64",
        "trainer.max_step": None,
        "data.root": "???",
        "trainr": None,
    }
    assert len(problems) == len(expected), "\n".join(problems)
    for key, value in expected.items():
        matching = [problem for problem in problems if problem.startswith(f"{key}:") or problem.startswith(f"{key}=")]
        assert len(matching) == 1, f"{key}: expected one problem, got {matching} in {problems}"
        if value is not None:
            assert value in matching[0], matching[0]
    unknown = next(problem for problem in problems if problem.startswith("trainer.max_step:"))
    assert "max_steps" in unknown, "the message should list the known keys"


def test_a_bool_given_as_a_string_is_rejected() -> None:
    (problem,) = problems_of("trainer.progress=yes")
    assert problem.startswith("trainer.progress=") and "'yes'" in problem and "true or false" in problem


def test_a_number_given_as_a_word_is_rejected() -> None:
    (problem,) = problems_of("task.hidden_channels=wide")
    assert problem.startswith("task.hidden_channels=") and "'wide'" in problem


def test_a_task_that_does_not_import_is_named() -> None:
    (problem,) = problems_of("task._target_=voicetrain.tasks.no_such_module.Task")
    assert problem.startswith("task._target_=") and "voicetrain.tasks.no_such_module.Task" in problem
    (problem,) = problems_of("task._target_=voicetrain.tasks.vc.NoSuchTask")
    assert "NoSuchTask" in problem


def test_an_unknown_key_of_the_task_node_is_named() -> None:
    (problem,) = problems_of("+task.hidden_channelz=3")
    assert problem.startswith("task.hidden_channelz:") and "hidden_channels" in problem


def test_a_feature_setting_that_checks_itself_becomes_a_config_problem() -> None:
    # An extractor's settings raise ValueError from __post_init__ (and the extractor itself checks
    # them against the shared rate); each must become a problem in the list, with the others.
    problems = problems_of("features.mel.win_length=2048", "trainer.max_steps=0")
    assert len(problems) == 2, problems
    assert any(problem.startswith("features.mel.win_length=2048") for problem in problems), problems
    problems = problems_of("features.mel.fmax=9000", "features.sample_rate=0")
    assert any(problem.startswith("features.sample_rate=0: must be at least 1") for problem in problems), problems


def test_a_missing_corpus_folder_is_reported_with_other_problems(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_corpus"
    problems = problems_of("data=speakers", f"data.root={missing}", "trainer.max_steps=0")
    assert len(problems) == 2, problems
    assert any(problem.startswith("data.root=") and str(missing) in problem for problem in problems), problems


def test_the_cli_reports_every_problem_and_trains_nothing(tmp_path: Path) -> None:
    result = run_cli(
        f"run.root={tmp_path}",
        "trainer.max_steps=-5",
        "trainer.precision=fp64",
        "+trainer.max_step=5",
        "+task.hidden_channelz=3",
        "trainer.progress=yes",
        "+trainr.seed=1",
        cwd=tmp_path,
    )
    assert result.returncode == 2, output_of(result)
    text = result.stdout + result.stderr
    for fragment in ("trainer.max_steps=-5", "'fp64'", "trainer.max_step:", "task.hidden_channelz",
                     "trainer.progress='yes'", "trainr"):
        assert fragment in text, f"{fragment!r} not reported:\n{output_of(result)}"
    assert "Traceback" not in text, output_of(result)
    assert "6 configuration problem(s)" in text, output_of(result)
    assert not list(tmp_path.rglob("checkpoints")), "a checkpoints folder was created"
    assert not list(tmp_path.rglob("tb")), "a TensorBoard folder was created"


def test_the_cli_names_a_missing_corpus_folder(tmp_path: Path) -> None:
    result = run_cli(f"run.root={tmp_path}", "data=speakers", "data.root=/no/such/dir", *QUICK, cwd=tmp_path)
    assert result.returncode == 2, output_of(result)
    text = result.stdout + result.stderr
    assert "data.root='/no/such/dir'" in text, output_of(result)
    assert "Traceback" not in text, output_of(result)
    assert not list(tmp_path.rglob("checkpoints"))
