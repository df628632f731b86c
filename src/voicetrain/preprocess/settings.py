"""The settings of `python -m voicetrain.preprocess` and their validation.

The composed config (a plain dict) becomes `PreprocessSettings`, or a `ConfigError` that lists
every problem at once, each naming the key, the value and the fix: the same checks and wording
as the training config (`voicetrain.config.build_section`), plus the paths: the input folder must
exist, and the output may be neither the input, nor inside it, nor hold it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

# voicetrain.schema, not voicetrain.config: the latter imports torch (through voicetrain.audio), and
# the worker processes, which import this module for the settings' classes, never need it.
from voicetrain.schema import ConfigError, build_section, check_range, check_value


@dataclass(frozen=True)
class SliceSettings:
    min_seconds: float = field(default=2.0, metadata={"minimum": 0.5})
    max_seconds: float = field(default=15.0, metadata={"minimum_exclusive": 0})
    min_silence_seconds: float = field(default=0.3, metadata={"minimum": 0.01})
    padding_seconds: float = field(default=0.1, metadata={"minimum": 0})
    threshold_db: float = field(default=-40.0, metadata={"minimum": -100, "maximum": -1})


@dataclass(frozen=True)
class LoudnessSettings:
    target_lufs: float = field(default=-23.0, metadata={"minimum": -60, "maximum": -5})
    peak_db: float = field(default=-1.0, metadata={"minimum": -20, "maximum": 0})


@dataclass(frozen=True)
class PreprocessSettings:
    """Everything one preprocessing launch needs, validated."""

    input: str
    output: str
    speaker: str | None = None  # the speaker of loose recordings (files directly inside `input`)
    sample_rate: int = field(default=16000, metadata={"minimum": 8000, "maximum": 192000})
    layout: Literal["speakers", "ljspeech"] = "speakers"
    workers: int | None = field(default=None, metadata={"minimum": 1})  # null = the usable cores
    progress: bool = True
    slice: SliceSettings = field(default_factory=SliceSettings)
    loudness: LoudnessSettings = field(default_factory=LoudnessSettings)

    @property
    def input_root(self) -> Path:
        return Path(self.input).resolve()

    @property
    def output_root(self) -> Path:
        return Path(self.output).resolve()

    def worker_count(self) -> int:
        if self.workers is not None:
            return self.workers
        # The cores this process may use (a container or taskset may allow fewer than the machine has).
        if hasattr(os, "sched_getaffinity"):
            return len(os.sched_getaffinity(0))
        return os.cpu_count() or 1

    def identity(self) -> str:
        """A digest of every setting that changes what is written (not `workers` or `progress`):
        part of the key that tells a finished recording from one to redo."""
        shaping = {name: value for name, value in dataclasses.asdict(self).items()
                   if name not in ("input", "output", "workers", "progress")}
        return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]


SECTIONS: dict[str, type] = {"slice": SliceSettings, "loudness": LoudnessSettings}
TOP_LEVEL = [item for item in dataclasses.fields(PreprocessSettings) if item.name not in SECTIONS]


def check_top_level(config: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The keys outside the sections: known, of the right type and in range."""
    hints = typing.get_type_hints(PreprocessSettings)
    known = sorted([item.name for item in TOP_LEVEL] + list(SECTIONS))
    problems = [f"{key}: unknown key (a typo?). Known keys: {', '.join(known)}"
                for key in config if key not in known and key != "hydra"]
    values = {}
    for item in TOP_LEVEL:
        if item.name not in config:
            continue
        value, value_problems = check_value(item.name, config[item.name], hints[item.name])
        problems += value_problems or check_range(item.name, value, item.metadata)
        values[item.name] = value
    for required in ("input", "output"):
        if required not in config:
            problems.append(f"{required}: missing; pass {required}=/path/to/folder")
    return values, problems


def check_speaker(speaker: str | None) -> list[str]:
    if speaker is not None and (not speaker or speaker.startswith(".") or "/" in speaker or "\\" in speaker):
        return [f"speaker={speaker!r}: becomes a folder of the output; use a plain name (no '/', not starting "
                "with '.'), e.g. speaker=alice"]
    return []


def check_slicing(slicing: SliceSettings) -> list[str]:
    if slicing.max_seconds < 2 * slicing.min_seconds:
        return [f"slice.max_seconds={slicing.max_seconds}: must be at least twice slice.min_seconds="
                f"{slicing.min_seconds}, so that a long stretch of speech can be cut in two; raise "
                "slice.max_seconds or lower slice.min_seconds"]
    return []


def check_folders(input_folder: str, output_folder: str) -> list[str]:
    """The input exists; the output is a new folder, or one this command wrote, apart from the input."""
    source, target = Path(input_folder).resolve(), Path(output_folder).resolve()
    if not source.is_dir():
        return [f"input={input_folder!r}: no such directory; pass the folder of raw recordings (relative paths "
                f"are taken from {Path.cwd()})"]
    if target == source:
        return [f"output={output_folder!r}: is the input folder; the input is never written to, so pass a new "
                "folder, e.g. output=/data/corpus"]
    if target.is_relative_to(source):
        return [f"output={output_folder!r}: is inside input={input_folder!r}; the input is never written to, "
                "so pass a folder outside it"]
    if source.is_relative_to(target):
        return [f"output={output_folder!r}: holds input={input_folder!r}; pass a folder beside the input, "
                "not above it"]
    if target.exists() and not target.is_dir():
        return [f"output={output_folder!r}: is a file; pass a folder"]
    if target.is_dir() and any(target.iterdir()) and not (target / STATE_FOLDER).is_dir():
        return [f"output={output_folder!r}: is not empty and was not written by voicetrain.preprocess (it has "
                f"no {STATE_FOLDER}/ folder); pass a new or empty folder so nothing of yours is overwritten"]
    return []


# Where the output keeps its own state (config record, per-recording records); a hidden folder, so
# the corpus readers never take it for a speaker.
STATE_FOLDER = ".preprocess"


def validate(config: dict[str, Any]) -> PreprocessSettings:
    """Turns the composed config into PreprocessSettings, or raises ConfigError listing every problem."""
    values, problems = check_top_level(config)
    for name, schema in SECTIONS.items():
        section, section_problems = build_section(name, schema, config.get(name, {}))
        values[name] = section
        problems += section_problems
    problems += check_speaker(values.get("speaker"))
    if values.get("slice") is not None:
        problems += check_slicing(values["slice"])
    if all(isinstance(values.get(key), str) for key in ("input", "output")):
        problems += check_folders(values["input"], values["output"])
    if problems:
        raise ConfigError(problems)
    return PreprocessSettings(**values)
