"""The configuration schema and its validation.

Hydra composes YAML into a DictConfig; this module turns it into typed `Settings` and reports
*every* problem at once (an unknown key, a value of the wrong type, a value out of range, a
missing path), each naming the key, the value and the fix, before any training step.
The task's own node is checked against the `Settings` dataclass that the task class declares,
so a forked model gets the same checks without editing this file.
"""

from __future__ import annotations

import dataclasses
import importlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from voicetrain.audio import MelSettings


# What OmegaConf.to_container(..., throw_on_missing=False) leaves for a YAML `???`.
MISSING_VALUE = "???"


class ConfigError(ValueError):
    """One or more configuration problems, each on its own line."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        listing = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(f"{len(problems)} configuration problem(s):\n{listing}")


@dataclass
class RunSettings:
    name: str = "default"
    root: str = "runs"


@dataclass
class TrainerSettings:
    max_steps: int = field(default=1000, metadata={"minimum": 1})
    seed: int = 1234
    batch_size: int = field(default=16, metadata={"minimum": 1})
    grad_accum_steps: int = field(default=1, metadata={"minimum": 1})
    grad_clip: float | None = field(default=1.0, metadata={"minimum_exclusive": 0})
    precision: Literal["no", "fp16", "bf16"] = "no"
    cpu: bool = False
    val_every: int = field(default=250, metadata={"minimum": 1})
    validate_at_start: bool = True  # on a fresh start, validate the untrained model before the first step
    log_every: int = field(default=10, metadata={"minimum": 1})
    audio_previews: int = field(default=2, metadata={"minimum": 0})
    num_workers: int = field(default=0, metadata={"minimum": 0})
    progress: bool = True


@dataclass
class CheckpointSettings:
    every_n_steps: int = field(default=250, metadata={"minimum": 1})
    every_n_minutes: float | None = field(default=None, metadata={"minimum_exclusive": 0})
    keep_last: int | None = field(default=3, metadata={"minimum": 1})
    keep_every: int | None = field(default=None, metadata={"minimum": 1})
    keep_best: int = field(default=0, metadata={"minimum": 0})
    monitor: str = "val/mcd"
    mode: Literal["min", "max"] = "min"
    async_save: bool = False
    # Keep the checkpoint this launch resumed from until the policy would keep it anyway.
    # save_last_only turns this off to hold exactly one checkpoint on disk.
    protect_resumed: bool = True

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
    dir: str | None = None  # null = off; checkpoints are committed here first, then mirrored
    persist_every: int = field(default=10, metadata={"minimum": 1})  # mirror every N-th save (+ milestones, final)
    keep_last: int = field(default=2, metadata={"minimum": 1})  # checkpoints kept on scratch
    include: list[Literal["checkpoints", "features", "tensorboard"]] = field(default_factory=lambda: ["checkpoints"])
    on_insufficient: Literal["error", "fallback"] = "error"  # too little room: stop, or train without scratch
    remove_on_success: bool = True  # delete the run's scratch folder after a successful end


@dataclass
class ResumeSettings:
    mode: Literal["auto", "never", "path", "finetune"] = "auto"
    path: str | None = None
    allow_config_change: bool = False
    overwrite: bool = False  # with mode=never: delete this run's checkpoints and start over


@dataclass
class ExportSettings:
    enabled: bool = True
    dtype: Literal["fp32", "fp16", "bf16"] = "fp16"
    formats: list[Literal["safetensors", "onnx"]] = field(default_factory=lambda: ["safetensors"])
    every_n_steps: int | None = field(default=None, metadata={"minimum": 1})


@dataclass
class DataSettings:
    kind: Literal["bundled", "ljspeech", "speakers"] = "bundled"
    root: str | None = None
    cache_dir: str = "runs/.cache/features"
    val_fraction: float = field(default=0.05, metadata={"minimum": 0, "maximum": 0.5})
    skip_bad_files: bool = False


@dataclass
class OptimSettings:
    name: Literal["adamw", "adam"] = "adamw"
    lr: float = field(default=1e-3, metadata={"minimum_exclusive": 0})
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    weight_decay: float = field(default=0.0, metadata={"minimum": 0})
    warmup_steps: int = field(default=0, metadata={"minimum": 0})
    schedule: Literal["constant", "cosine"] = "constant"
    min_lr_ratio: float = field(default=0.1, metadata={"minimum": 0, "maximum": 1})


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
    features: MelSettings
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
    "features": MelSettings,
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
    module_name, _, attribute = target.rpartition(".")
    if not module_name:
        raise ImportError(f"{target!r} is not a dotted path like 'package.module.ClassName'")
    return getattr(importlib.import_module(module_name), attribute)


def build_task_settings(node: Any) -> tuple[str, Any, list[str]]:
    if not isinstance(node, dict) or "_target_" not in node:
        return "", None, [
            "task: missing task._target_ (the task class, e.g. voicetrain.tasks.vc.VoiceConversionTask); "
            "pick a recipe with task=vc or task=tts"
        ]
    target = node["_target_"]
    try:
        task_class = import_target(target)
    except (ImportError, AttributeError) as error:
        return target, None, [f"task._target_={target!r}: cannot import it ({error}); check the dotted path"]
    schema = getattr(task_class, "Settings", None)
    if schema is None or not dataclasses.is_dataclass(schema):
        return target, None, [f"task._target_={target!r}: the class has no `Settings` dataclass (see voicetrain.tasks.base.Task)"]
    body = {key: value for key, value in node.items() if key != "_target_"}
    settings, problems = build_section("task", schema, body)
    return target, settings, problems


def check_paths(data: DataSettings | None, resume: ResumeSettings | None) -> list[str]:
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
    if resume is not None and resume.mode in ("path", "finetune"):
        if resume.path is None:
            problems.append(
                f"resume.path=null: resume.mode={resume.mode!r} needs resume.path=/path/to/checkpoint"
            )
        elif not Path(resume.path).exists():
            problems.append(f"resume.path={resume.path!r}: no such file or directory")
    return problems


def check_consistency(optim: OptimSettings | None, export: ExportSettings | None) -> list[str]:
    """Cross-field problems of the sections that built. (features checks itself: MelSettings.__post_init__.)"""
    problems = []
    if optim is not None and len(optim.betas) != 2:
        problems.append(f"optim.betas={optim.betas}: expected two numbers, e.g. [0.9, 0.99]")
    if export is not None and not export.formats and export.enabled:
        problems.append("export.formats=[]: name at least one format, or disable export with +export=none")
    return problems


def validate(config: dict[str, Any]) -> Settings:
    """Turns the composed config (a plain dict) into Settings, or raises ConfigError listing every problem."""
    problems: list[str] = []
    known_sections = set(SECTIONS) | {"task", "hydra"}
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
    # Every section that built is checked further even when another one failed, so one run of
    # the CLI reports every problem.
    problems += check_consistency(sections["optim"], sections["export"])
    # A key already reported as required ('???') is not reported again as null.
    missing = {problem.split("=", 1)[0] for problem in problems if "=???" in problem}
    problems += [problem for problem in check_paths(sections["data"], sections["resume"])
                 if problem.split("=", 1)[0] not in missing]
    if problems:
        raise ConfigError(problems)
    return Settings(**sections, task_target=task_target, task=task_settings)


def settings_to_dict(settings: Settings) -> dict[str, Any]:
    """The validated settings as plain data (for manifests, exports and config-drift checks)."""
    data = {name: dataclasses.asdict(getattr(settings, name)) for name in SECTIONS}
    data["task"] = {"_target_": settings.task_target, **dataclasses.asdict(settings.task)}
    return data
