"""The configuration schema and its validation.

Hydra composes YAML into a DictConfig; this module turns it into typed `Settings` and reports
*every* problem at once (an unknown key, a value of the wrong type, a value out of range, a
missing path), each naming the key, the value and the fix, before any training step.
The task's own node is checked against the `Settings` dataclass that the task class declares,
so a forked model gets the same checks without editing this file.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from voicetrain.trust import import_chosen


# What OmegaConf.to_container(..., throw_on_missing=False) leaves for a YAML `???`.
MISSING_VALUE = "???"


class ConfigError(ValueError):
    """One or more configuration problems, each on its own line."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        listing = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(f"{len(problems)} configuration problem(s):\n{listing}")


def limits(default: Any = dataclasses.MISSING, **bounds: float) -> Any:
    """A schema field checked against bounds: minimum, minimum_exclusive, maximum."""
    return field(default=default, metadata=bounds)


# The schema of each section. Defaults live in one place only, the YAML under conf/ (the primary
# config and its presets); these dataclasses give the types and limits, so a key the YAML lacks is
# reported as missing rather than silently filled with a second, competing default.


@dataclass
class RunSettings:
    name: str
    root: str


@dataclass
class TrainerSettings:
    max_steps: int = limits(minimum=1)
    seed: int
    batch_size: int = limits(minimum=1)
    grad_accum_steps: int = limits(minimum=1)
    grad_clip: float | None = limits(minimum_exclusive=0)
    precision: Literal["no", "fp16", "bf16"]
    cpu: bool
    val_every: int = limits(minimum=1)
    validate_at_start: bool
    log_every: int = limits(minimum=1)
    audio_previews: int = limits(minimum=0)
    num_workers: int = limits(minimum=0)
    progress: bool


@dataclass
class CheckpointSettings:
    every_n_steps: int = limits(minimum=1)
    every_n_minutes: float | None = limits(minimum_exclusive=0)
    keep_last: int | None = limits(minimum=1)
    keep_every: int | None = limits(minimum=1)
    keep_best: int = limits(minimum=0)
    monitor: str
    mode: Literal["min", "max"]
    async_save: bool
    protect_resumed: bool

    def monitor_problem(self, reported: list[str]) -> str | None:
        """Why best-K retention cannot rank checkpoints by `monitor` when validation reports
        `reported`, or None when it can (or keeps no best checkpoints)."""
        if self.keep_best == 0 or self.monitor in reported:
            return None
        return (f"ckpt.monitor={self.monitor} is not a metric this task's validation reports "
                f"({', '.join(sorted(reported)) or 'none'}), and ckpt.keep_best={self.keep_best} ranks checkpoints "
                "by it: set ckpt.monitor to one of those, or ckpt.keep_best=0")


@dataclass
class ScratchSettings:
    dir: str | None
    persist_every: int = limits(minimum=1)
    keep_last: int = limits(minimum=1)
    include: list[Literal["checkpoints", "features", "tensorboard"]]
    on_insufficient: Literal["error", "fallback"]
    remove_on_success: bool


@dataclass
class ResumeSettings:
    mode: Literal["auto", "never", "path", "finetune"]
    path: str | None
    allow_config_change: bool
    overwrite: bool


@dataclass
class ExportSettings:
    enabled: bool
    dtype: Literal["fp32", "fp16", "bf16"]
    formats: list[Literal["safetensors", "onnx"]]
    every_n_steps: int | None = limits(minimum=1)
    vocoder: str | None  # a vocoder export that `python -m voicetrain.infer` uses by default


@dataclass
class DataSettings:
    kind: Literal["bundled", "ljspeech", "speakers", "vctk", "libritts"]
    root: str | None
    cache_dir: str
    val_fraction: float = limits(minimum=0, maximum=0.5)
    skip_bad_files: bool
    feature_workers: int | None = limits(minimum=1)


@dataclass
class OptimizerOverride:
    """`optim.overrides.<optimizer name>`: values for one optimizer of a task that builds several
    (e.g. a GAN's discriminator); a key left out (null) keeps the `optim` value."""

    lr: float | None = limits(None, minimum_exclusive=0)
    betas: list[float] | None = None
    weight_decay: float | None = limits(None, minimum=0)


@dataclass
class OptimSettings:
    name: Literal["adamw", "adam"]
    lr: float = limits(minimum_exclusive=0)
    betas: list[float]
    weight_decay: float = limits(minimum=0)
    warmup_steps: int = limits(minimum=0)
    schedule: Literal["constant", "cosine"]
    min_lr_ratio: float = limits(minimum=0, maximum=1)
    overrides: dict[str, OptimizerOverride]


@dataclass(frozen=True)
class ExtractorSpec:
    """One `features.<name>` node: the extractor class and its validated settings."""

    target: str
    settings: Any


@dataclass(frozen=True)
class FeatureSettings:
    """The `features` section: the sample rate and hop every feature shares, and the extractors."""

    sample_rate: int
    hop_length: int
    extractors: dict[str, ExtractorSpec]


@dataclass
class Settings:
    """Everything a run needs, validated. `task` holds the task class's own settings."""

    run: RunSettings
    trainer: TrainerSettings
    ckpt: CheckpointSettings
    scratch: ScratchSettings
    resume: ResumeSettings
    export: ExportSettings
    data: DataSettings
    features: FeatureSettings
    optim: OptimSettings
    task_target: str
    task: Any

    @property
    def run_dir(self) -> Path:
        return Path(self.run.root) / self.run.name


SECTIONS: dict[str, type] = {
    "run": RunSettings,
    "trainer": TrainerSettings,
    "ckpt": CheckpointSettings,
    "scratch": ScratchSettings,
    "resume": ResumeSettings,
    "export": ExportSettings,
    "data": DataSettings,
    "optim": OptimSettings,
}


def describe_type(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return "one of " + ", ".join(repr(choice) for choice in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe_type(arg) for arg in typing.get_args(annotation))
    if origin is list:
        (item,) = typing.get_args(annotation)
        return f"a list of ({describe_type(item)})"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def check_value(key: str, value: Any, annotation: Any) -> tuple[Any, list[str]]:
    """Returns the value converted to `annotation` (ints accepted as floats) and any problems."""
    if isinstance(value, str) and value == MISSING_VALUE:
        # OmegaConf leaves a YAML `???` as this string when it converts with throw_on_missing=False.
        return None, [f"{key}=???: a required value that was not given; pass {key}=... on the command line"]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None, []
        for option in options:
            if option is type(None):
                continue
            converted, problems = check_value(key, value, option)
            if not problems:
                return converted, []
        return value, [f"{key}={value!r}: expected {describe_type(annotation)}"]
    if origin is Literal:
        choices = typing.get_args(annotation)
        if value in choices:
            return value, []
        return value, [f"{key}={value!r}: expected {describe_type(annotation)}"]
    if origin is list:
        if not isinstance(value, (list, tuple)):
            return value, [f"{key}={value!r}: expected {describe_type(annotation)}"]
        (item_type,) = typing.get_args(annotation)
        converted_items, problems = [], []
        for index, item in enumerate(value):
            converted, item_problems = check_value(f"{key}[{index}]", item, item_type)
            converted_items.append(converted)
            problems += item_problems
        return converted_items, problems
    if origin is dict:
        if not isinstance(value, dict):
            return value, [f"{key}={value!r}: expected a mapping"]
        _, item_type = typing.get_args(annotation)
        converted_items, problems = {}, []
        for name, item in value.items():
            if dataclasses.is_dataclass(item_type):
                converted, item_problems = build_section(f"{key}.{name}", item_type, item)
            else:
                converted, item_problems = check_value(f"{key}.{name}", item, item_type)
            converted_items[name] = converted
            problems += item_problems
        return converted_items, problems
    if annotation is bool:
        if isinstance(value, bool):
            return value, []
        return value, [f"{key}={value!r}: expected true or false"]
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value, []
        return value, [f"{key}={value!r}: expected a whole number"]
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value), []
        return value, [f"{key}={value!r}: expected a number"]
    if annotation is str:
        if isinstance(value, str):
            return value, []
        return value, [f"{key}={value!r}: expected a string (quote it on the command line)"]
    if annotation is Any:
        return value, []
    return value, [f"{key}: unsupported schema type {annotation!r} (a bug in the schema)"]


def check_range(key: str, value: Any, metadata: typing.Mapping[str, Any]) -> list[str]:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return []
    if "minimum" in metadata and value < metadata["minimum"]:
        return [f"{key}={value!r}: must be at least {metadata['minimum']}"]
    if "minimum_exclusive" in metadata and value <= metadata["minimum_exclusive"]:
        return [f"{key}={value!r}: must be greater than {metadata['minimum_exclusive']}"]
    if "maximum" in metadata and value > metadata["maximum"]:
        return [f"{key}={value!r}: must be at most {metadata['maximum']}"]
    return []


def build_section(prefix: str, schema: type, node: Any) -> tuple[Any, list[str]]:
    """Builds one dataclass from a plain mapping, collecting every unknown key and bad value."""
    if not isinstance(node, dict):
        return None, [f"{prefix}={node!r}: expected a mapping of settings"]
    hints = typing.get_type_hints(schema)
    fields = {item.name: item for item in dataclasses.fields(schema) if item.init}
    problems = []
    for key in node:
        if key not in fields:
            known = ", ".join(sorted(fields))
            problems.append(
                f"{prefix}.{key}: unknown key (a typo?). Known keys of {prefix}: {known}"
            )
    values = {}
    for name, item in fields.items():
        if name not in node:
            if item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING:
                problems.append(f"{prefix}.{name}: missing. Its value comes from the YAML under conf/ (the primary "
                                f"config or the preset that fills {prefix}); restore it there or pass "
                                f"+{prefix}.{name}=VALUE")
            continue
        converted, value_problems = check_value(f"{prefix}.{name}", node[name], hints[name])
        value_problems += [] if value_problems else check_range(f"{prefix}.{name}", converted, item.metadata)
        problems += value_problems
        values[name] = converted
    if problems:
        return None, problems
    try:
        return schema(**values), []
    except (TypeError, ValueError) as error:
        # A schema that checks itself (MelSettings, a task's Settings) names its own class in the
        # message; name the config key the user wrote instead.
        message = str(error).replace(f"{schema.__name__}.", f"{prefix}.")
        return None, [message if message.startswith(f"{prefix}.") else f"{prefix}: {message}"]


def import_target(target: str) -> Any:
    """A class the user's own configuration names. A name read from a file (an export, a checkpoint)
    goes through voicetrain.trust.resolve_class first, never straight here."""
    return import_chosen(target)


def build_targeted(prefix: str, node: Any, example: str) -> tuple[str, Any, list[str]]:
    """A node that names a class with `_target_` and holds the keys of that class's `Settings`
    dataclass (a task, a feature extractor): the target and the validated settings."""
    if not isinstance(node, dict) or "_target_" not in node:
        return "", None, [f"{prefix}: missing {prefix}._target_ (the class, e.g. {example})"]
    target = node["_target_"]
    try:
        target_class = import_target(target)
    except (ImportError, AttributeError) as error:
        return target, None, [f"{prefix}._target_={target!r}: cannot import it ({error}); check the dotted path"]
    schema = getattr(target_class, "Settings", None)
    if schema is None or not dataclasses.is_dataclass(schema):
        return target, None, [f"{prefix}._target_={target!r}: the class has no `Settings` dataclass"]
    body = {key: value for key, value in node.items() if key != "_target_"}
    settings, problems = build_section(prefix, schema, body)
    return target, settings, problems


def build_task_settings(node: Any) -> tuple[str, Any, list[str]]:
    target, settings, problems = build_targeted(
        "task", node, "voicetrain.tasks.vc.VoiceConversionTask; pick a recipe with task=vc or task=tts")
    return target, settings, problems


# The log-mel keys that lived directly under `features` before each feature had its own node.
MOVED_MEL_KEYS = ("n_fft", "win_length", "n_mels", "fmin", "fmax")
MOVED_KEYS = {f"features.{key}": f"features.mel.{key}" for key in MOVED_MEL_KEYS}


def moved_key_hints(arguments: list[str]) -> list[str]:
    """For command-line overrides of keys that moved (Hydra refuses them as unknown): the new key."""
    hints = []
    for argument in arguments:
        key, _, value = argument.lstrip("+~").partition("=")
        if key in MOVED_KEYS:
            hints.append(f"{key} moved to {MOVED_KEYS[key]}: write {MOVED_KEYS[key]}={value}")
    return hints


def build_features(node: Any) -> tuple[FeatureSettings | None, list[str]]:
    """The `features` section: shared sample_rate and hop_length, then one `_target_` node per feature."""
    if not isinstance(node, dict):
        return None, [f"features={node!r}: expected a mapping with sample_rate, hop_length and one node per feature"]
    problems = []
    shared = {}
    for key in ("sample_rate", "hop_length"):
        value, key_problems = check_value(f"features.{key}", node.get(key, MISSING_VALUE), int)
        key_problems += [] if key_problems else check_range(f"features.{key}", value, {"minimum": 1})
        problems += key_problems
        shared[key] = value
    extractors = {}
    for name, entry in node.items():
        if name in ("sample_rate", "hop_length"):
            continue
        if name in MOVED_MEL_KEYS:
            problems.append(f"features.{name}={entry!r}: the log-mel's settings moved to features.mel.{name}; "
                            f"write features.mel.{name}={entry}")
            continue
        target, settings, entry_problems = build_targeted(f"features.{name}", entry,
                                                          "voicetrain.features.mel.LogMel")
        if not entry_problems and not problems:
            entry_problems = check_extractor(name, target, settings, shared["sample_rate"], shared["hop_length"])
        problems += entry_problems
        extractors[name] = ExtractorSpec(target, settings)
    if problems:
        return None, problems
    return FeatureSettings(shared["sample_rate"], shared["hop_length"], extractors), []


def check_extractor(name: str, target: str, settings: Any, sample_rate: int, hop_length: int) -> list[str]:
    """What only the extractor itself can check, with the shared rate and hop (e.g. fmax below
    Nyquist): it is built once here, and its complaint names the config key."""
    try:
        import_target(target)(settings, sample_rate, hop_length)
    except ValueError as error:
        message = str(error)
        owner = f"{type(settings).__name__}."
        message = message.replace(owner, f"features.{name}.")
        return [message if message.startswith("features.") else f"features.{name}: {message}"]
    return []


def modern_features(node: dict[str, Any]) -> dict[str, Any]:
    """A `features` node as written before each feature had its own node (the log-mel's keys at the
    top, as in older checkpoints' config.yaml), in today's layout; today's nodes pass unchanged."""
    if not any(key in node for key in MOVED_MEL_KEYS):
        return node
    mel = {key: node[key] for key in MOVED_MEL_KEYS if key in node}
    return {"sample_rate": node.get("sample_rate"), "hop_length": node.get("hop_length"),
            "mel": {"_target_": "voicetrain.features.mel.LogMel", **mel}}


def check_required_features(task_target: str, features: FeatureSettings | None) -> list[str]:
    """Every feature the task declares it needs (Task.required_features) is configured."""
    if not task_target or features is None:
        return []
    required = getattr(import_target(task_target), "required_features", ())
    return [f"features.{name}: task {task_target.rsplit('.', 1)[-1]} needs this feature (its required_features "
            f"are {list(required)}); its YAML under conf/task/ brings it: add it back, e.g. "
            f"+features.{name}._target_=voicetrain.features..." for name in required if name not in features.extractors]


def check_paths(data: DataSettings | None, resume: ResumeSettings | None,
                export: ExportSettings | None = None) -> list[str]:
    """Path problems of the sections that built (None = that section already has problems)."""
    problems = []
    if data is not None and data.kind != "bundled":
        if data.root is None:
            problems.append(
                f"data.root=null: data.kind={data.kind!r} reads your own corpus; pass data.root=/path/to/corpus"
            )
        elif not Path(data.root).is_dir():
            problems.append(
                f"data.root={data.root!r}: no such directory; check the path (relative paths are "
                f"taken from {Path.cwd()})"
            )
    if export is not None and export.vocoder is not None and not (Path(export.vocoder) / "manifest.json").is_file():
        problems.append(f"export.vocoder={export.vocoder!r}: not an export folder (no manifest.json there); point it "
                        "at a vocoder run's export, e.g. runs/voc/export")
    if resume is not None and resume.mode in ("path", "finetune"):
        if resume.path is None:
            problems.append(
                f"resume.path=null: resume.mode={resume.mode!r} needs resume.path=/path/to/checkpoint"
            )
        elif not Path(resume.path).exists():
            problems.append(f"resume.path={resume.path!r}: no such file or directory")
    return problems


def check_run_name(run: RunSettings | None) -> list[str]:
    """run.name names one folder inside run.root: never a path that leaves it or is empty."""
    if run is None:
        return []
    name = run.name
    if not name.strip() or name in (".", "..") or "/" in name or "\\" in name or Path(name).is_absolute():
        return [f"run.name={name!r}: must name one folder inside run.root (no '/', not '..' or empty), e.g. "
                "run.name=alice; to put runs elsewhere set run.root=/path/to/runs"]
    return []


def check_consistency(optim: OptimSettings | None, export: ExportSettings | None) -> list[str]:
    """Cross-field problems of the sections that built. (features checks itself: MelSettings.__post_init__.)"""
    problems = []
    if optim is not None and len(optim.betas) != 2:
        problems.append(f"optim.betas={optim.betas}: expected two numbers, e.g. [0.9, 0.99]")
    for name, override in (optim.overrides.items() if optim is not None else ()):
        if override.betas is not None and len(override.betas) != 2:
            problems.append(f"optim.overrides.{name}.betas={override.betas}: expected two numbers, e.g. [0.5, 0.9]")
    if export is not None and not export.formats and export.enabled:
        problems.append("export.formats=[]: name at least one format, or disable export with +export=none")
    return problems


def validate(config: dict[str, Any]) -> Settings:
    """Turns the composed config (a plain dict) into Settings, or raises ConfigError listing every problem."""
    problems: list[str] = []
    known_sections = set(SECTIONS) | {"task", "features", "hydra"}
    for key in config:
        if key not in known_sections:
            problems.append(
                f"{key}: unknown top-level key (a typo?). Known sections: {', '.join(sorted(known_sections - {'hydra'}))}"
            )
    sections = {}
    for name, schema in SECTIONS.items():
        section, section_problems = build_section(name, schema, config.get(name, {}))
        sections[name] = section
        problems += section_problems
    task_target, task_settings, task_problems = build_task_settings(config.get("task"))
    problems += task_problems
    features, feature_problems = build_features(config.get("features", {}))
    problems += feature_problems
    problems += check_required_features(task_target, features) if not task_problems else []
    # Every section that built is checked further even when another one failed, so one run of
    # the CLI reports every problem.
    problems += check_consistency(sections["optim"], sections["export"])
    problems += check_run_name(sections["run"])
    # A key already reported as required ('???') is not reported again as null.
    missing = {problem.split("=", 1)[0] for problem in problems if "=???" in problem}
    problems += [problem for problem in check_paths(sections["data"], sections["resume"], sections["export"])
                 if problem.split("=", 1)[0] not in missing]
    if problems:
        raise ConfigError(problems)
    return Settings(**sections, features=features, task_target=task_target, task=task_settings)


def settings_to_dict(settings: Settings) -> dict[str, Any]:
    """The validated settings as plain data (for manifests, exports and config-drift checks)."""
    data = {name: dataclasses.asdict(getattr(settings, name)) for name in SECTIONS}
    data["task"] = {"_target_": settings.task_target, **dataclasses.asdict(settings.task)}
    data["features"] = features_to_dict(settings.features)
    return data


def features_to_dict(features: FeatureSettings) -> dict[str, Any]:
    return {"sample_rate": features.sample_rate, "hop_length": features.hop_length,
            **{name: {"_target_": spec.target, **dataclasses.asdict(spec.settings)}
               for name, spec in features.extractors.items()}}
