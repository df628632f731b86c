"""The `features` section of the configuration: its schema (`FeatureSettings`, one `ExtractorSpec`
per feature), building and checking it, the keys that moved under `features.mel`, and the message
for a feature a task needs that the configuration lacks (with the packaged node to add).
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
from dataclasses import dataclass
from typing import Any

from voicetrain.schema import MISSING_VALUE, build_targeted, check_range, check_value, import_target


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
    return [missing_feature_message(name, task_target, list(required))
            for name in required if name not in features.extractors]


def packaged_feature_node(name: str) -> dict[str, Any] | None:
    """`features.<name>` as one of voicetrain's own task YAMLs declares it (conf/task/svc.yaml's
    f0, ...), or None: a whole, working node to quote in an error."""
    import yaml  # PyYAML comes with Hydra; imported here because only this error needs it

    folder = importlib.resources.files("voicetrain.conf").joinpath("task")
    for entry in sorted(folder.iterdir(), key=lambda item: item.name):
        if entry.name.endswith(".yaml"):
            node = (yaml.safe_load(entry.read_text(encoding="utf-8")) or {}).get("features") or {}
            if isinstance(node.get(name), dict) and "_target_" in node[name]:
                return node[name]
    return None


def missing_feature_message(name: str, task_target: str, required: list[str]) -> str:
    """The fix for a required feature the run lacks: the task YAML's `# @package _global_` form,
    which fills `task:` and `features:` from one file, printed whole with an extractor node."""
    node = packaged_feature_node(name)
    if node is None:
        node_lines = ["_target_: mypackage.MyExtractor   # your FeatureExtractor subclass (docs/fork_guide.md, "
                      "'Features')", "# its Settings fields, one per line: key: value"]
        command_line = f"+features.{name}._target_=mypackage.MyExtractor +features.{name}.KEY=VALUE ..."
    else:
        shown = {key: value if isinstance(value, str) else json.dumps(value) for key, value in node.items()}
        node_lines = [f"{key}: {value}" for key, value in shown.items()]
        command_line = " ".join(f"+features.{name}.{key}={value}" for key, value in shown.items())
    example = "\n".join(["      # @package _global_", "      task:", f"        _target_: {task_target}",
                         "        # ...the task's settings...", "      features:", f"        {name}:",
                         *(f"          {line}" for line in node_lines)])
    return (f"features.{name}: task {task_target.rsplit('.', 1)[-1]} needs this feature (its required_features are "
            f"{required}) and the run configures none. Declare it in the task's YAML (conf/task/<task>.yaml), "
            "whose first line '# @package _global_' lets one file fill both the task: and the features: "
            "sections (without it every key of the file lands under task:, where features is an unknown key):\n"
            f"{example}\n    or give it on the command line: {command_line}")


def features_to_dict(features: FeatureSettings) -> dict[str, Any]:
    return {"sample_rate": features.sample_rate, "hop_length": features.hop_length,
            **{name: {"_target_": spec.target, **dataclasses.asdict(spec.settings)}
               for name, spec in features.extractors.items()}}
