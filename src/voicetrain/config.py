"""The configuration schema and its validation.

Hydra composes YAML into a DictConfig; this module turns it into typed `Settings` and reports
*every* problem at once (an unknown key, a value of the wrong type, a value out of range, a
missing path), each naming the key, the value and the fix, before any training step.
The task's own node is checked against the `Settings` dataclass that the task class declares,
so a forked model gets the same checks without editing this file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from voicetrain.config_features import FeatureSettings, build_features, check_required_features, features_to_dict
from voicetrain.schema import ConfigError, build_section, build_targeted, limits


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
    validate_at_end: bool
    log_every: int = limits(minimum=1)
    audio_previews: int = limits(minimum=0)
    num_workers: int = limits(minimum=0)
    progress: bool
    validation_metrics: list[Literal["secs", "wer", "cer", "dnsmos", "pesq"]]  # voicetrain.run.validation_scorers


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
class TensorBoardLogger:
    """`logger.tensorboard`: event files in the run folder's tb/ (no settings of its own)."""


@dataclass
class MLflowLogger:
    tracking_uri: str  # sqlite:///..., http(s)://..., or a folder (MLflow's file store)
    experiment: str
    artifacts: str  # where a new experiment keeps its runs' files (audio); a folder or a URI


@dataclass
class WandbLogger:
    project: str
    entity: str | None
    mode: Literal["online", "offline", "disabled"] | None  # None: WANDB_MODE, else W&B's default


@dataclass
class CsvLogger:
    file: str  # inside the run folder


@dataclass
class LoggerSettings:
    """The `logger` group: each tracker chosen (logger=[tensorboard,mlflow]) has its node; the
    others are None. None at all is allowed (logger=[]): the run logs to its train.log only.
    Outside SECTIONS: where a run's curves go is no part of the model, its checkpoints or exports."""

    tensorboard: TensorBoardLogger | None = None
    mlflow: MLflowLogger | None = None
    wandb: WandbLogger | None = None
    csv: CsvLogger | None = None

    def chosen(self) -> list[str]:
        return [item.name for item in dataclasses.fields(self) if getattr(self, item.name) is not None]


@dataclass
class DataSettings:
    kind: Literal["bundled", "ljspeech", "speakers", "vctk", "libritts"]
    root: str | None
    cache_dir: str
    val_fraction: float = limits(minimum=0, maximum=0.5)
    skip_bad_files: bool
    feature_workers: int | None = limits(minimum=1)


@dataclass
class ExtractSettings:
    """The `extract` node of `python -m voicetrain.extract` (conf/extract.yaml): this process
    extracts shard `shard` of `shards`. Not a section of training's Settings: a training launch
    never sees it."""

    shards: int = limits(minimum=1)
    shard: int = limits(minimum=0)


def build_extract_settings(node: Any) -> tuple[ExtractSettings | None, list[str]]:
    settings, problems = build_section("extract", ExtractSettings, node)
    if settings is not None and settings.shard >= settings.shards:
        problems.append(f"extract.shard={settings.shard}: shards are numbered 0 to {settings.shards - 1} for "
                        f"extract.shards={settings.shards}; pass extract.shard=0..{settings.shards - 1} (a multirun: "
                        f"-m extract.shard=range(0,{settings.shards})) or raise extract.shards")
        settings = None
    return settings, problems


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
    logger: LoggerSettings
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


# A task YAML without '# @package _global_' puts its features: block under task:.
MISPLACED_FEATURES = ("task.features: the task's YAML put a features: block under task:, where it is not a setting "
                      "of the task; make '# @package _global_' the file's first line and nest the task's settings "
                      "under task: next to features: (as conf/task/svc.yaml and python -m voicetrain.new do), so "
                      "that the file fills both sections")


def build_task_settings(node: Any) -> tuple[str, Any, list[str]]:
    target, settings, problems = build_targeted(
        "task", node, "voicetrain.tasks.vc.VoiceConversionTask; pick a recipe with task=vc or task=tts")
    problems = [MISPLACED_FEATURES if problem.startswith("task.features: unknown key") else problem
                for problem in problems]
    return target, settings, problems


# The log-mel keys that lived directly under `features` before each feature had its own node.
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
    known_sections = set(SECTIONS) | {"task", "features", "logger", "hydra"}
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
    # The logger group chooses any subset of trackers, so its node lists only the chosen ones.
    logger, logger_problems = build_section("logger", LoggerSettings, config.get("logger") or {})
    problems += logger_problems
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
    return Settings(**sections, features=features, logger=logger, task_target=task_target, task=task_settings)


def settings_to_dict(settings: Settings) -> dict[str, Any]:
    """The validated settings as plain data (for manifests, exports and config-drift checks)."""
    data = {name: dataclasses.asdict(getattr(settings, name)) for name in SECTIONS}
    data["task"] = {"_target_": settings.task_target, **dataclasses.asdict(settings.task)}
    data["features"] = features_to_dict(settings.features)
    return data
