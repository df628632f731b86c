"""Fine-tuning: model weights only, from a checkpoint, an export or a weights file.

Nothing is unpickled: voicetrain folders hold safetensors (checked against their manifest's
SHA-256 first), and a foreign .pt/.pth/.ckpt/.bin is read with `torch.load(weights_only=True)`.
Rows of speaker tables are mapped by speaker name when both sides know their speakers: a speaker
the source knew keeps its row, a new one starts from the fresh initialisation, and the report
lists both. The report also lists missing, unexpected and shape-mismatched keys instead of
failing on the first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from voicetrain.checkpoint.store import TASK_CONTEXT_FILE, legacy_weight_files
from voicetrain.checkpoint.training_state import MODULES
from voicetrain.durable import MANIFEST, read_manifest, verify_folder

TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
EXPORT_CONFIG = "config.json"  # an export folder's description (voicetrain.export.artifact.CONFIG)
EXPORT_WEIGHTS = "model.safetensors"  # an export's weights, keys "<module>.<parameter>"


class FinetuneError(RuntimeError):
    pass


@dataclass
class SourceWeights:
    """Per-module state dicts, and the speakers their speaker tables are indexed by (when known)."""

    modules: dict[str, dict[str, torch.Tensor]]
    speakers: list[str] | None = None


@dataclass
class WeightReport:
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    kept_speakers: list[str] = field(default_factory=list)
    new_speakers: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        lines = [f"loaded {self.loaded} tensors"]
        for title, keys in (("speakers kept from the source", self.kept_speakers),
                            ("new speakers (fresh rows)", self.new_speakers),
                            ("missing (left at their initial values)", self.missing),
                            ("unexpected (ignored)", self.unexpected),
                            ("shape mismatch (left at their initial values)", self.mismatched)):
            if keys:
                shown = ", ".join(keys[:10]) + (f", ... ({len(keys)} in all)" if len(keys) > 10 else "")
                lines.append(f"{title}: {shown}")
        return lines


def read_tensor_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as error:
            raise FinetuneError(f"resume.path={str(path)!r} cannot be read as safetensors ({error}); point it at a "
                                "weights file, a checkpoint folder or an export folder") from error
    if path.suffix in TORCH_SUFFIXES:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises several types for unsafe or corrupt files
            raise FinetuneError(f"resume.path={str(path)!r} cannot be read safely ({error}); convert it to "
                                "safetensors") from error
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise FinetuneError(f"resume.path={str(path)!r} does not hold a state dict of tensors")
        return {key: value for key, value in state.items() if isinstance(value, torch.Tensor)}
    raise FinetuneError(f"resume.path={str(path)!r}: unsupported weights file; use .safetensors (or .pt/.pth, read "
                        "with weights_only)")


def json_mapping(path: Path) -> dict:
    """A JSON file that must hold a mapping (a verified folder can still hold an edited one)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise FinetuneError(f"{path} cannot be read as JSON ({error})") from error
    if not isinstance(data, dict):
        raise FinetuneError(f"{path} holds a {type(data).__name__}, not a mapping")
    return data


def verified(folder: Path) -> dict:
    manifest = read_manifest(folder)
    if manifest is None:
        raise FinetuneError(f"resume.path={str(folder)!r} has no readable {MANIFEST}: not a complete voicetrain "
                            "checkpoint or export")
    problems = verify_folder(folder, manifest)
    if problems:
        raise FinetuneError(f"resume.path={str(folder)!r} is damaged: {'; '.join(problems)}")
    return manifest


def read_weights(path: Path, module_names: list[str]) -> SourceWeights:
    """The weights at `path`: a voicetrain checkpoint or export folder (verified against its
    manifest first), or a weights file."""
    if path.is_file():
        return SourceWeights(split_by_module(read_tensor_file(path), module_names))
    if not path.is_dir():
        raise FinetuneError(f"resume.path={str(path)!r}: no such file or directory")
    verified(path)
    if (path / EXPORT_CONFIG).is_file() and (path / EXPORT_WEIGHTS).is_file():
        context = json_mapping(path / EXPORT_CONFIG).get("context", {})
        return SourceWeights(split_by_module(read_tensor_file(path / EXPORT_WEIGHTS), module_names),
                             context.get("speakers") if isinstance(context, dict) else None)
    speakers = json_mapping(path / TASK_CONTEXT_FILE).get("speakers") \
        if (path / TASK_CONTEXT_FILE).is_file() else None
    if (path / MODULES).is_dir():
        return SourceWeights({file.stem: read_tensor_file(file) for file in sorted((path / MODULES).glob("*.safetensors"))},
                             speakers)
    legacy = legacy_weight_files(path)
    if legacy:
        # Written before checkpoints named their weight files: one file per module, in build order.
        return SourceWeights({name: read_tensor_file(file) for name, file in zip(module_names, legacy)}, speakers)
    raise FinetuneError(f"resume.path={str(path)!r} holds no model weights (expected a voicetrain checkpoint or "
                        "export folder, or a .safetensors file)")


def split_by_module(state: dict[str, torch.Tensor], module_names: list[str]) -> dict[str, dict[str, torch.Tensor]]:
    prefixed = {name: {key[len(name) + 1:]: value for key, value in state.items() if key.startswith(f"{name}.")}
                for name in module_names}
    if any(prefixed.values()):
        return {name: tensors for name, tensors in prefixed.items() if tensors}
    # Unprefixed keys: a single module's state dict.
    return {module_names[0]: state}


def speaker_tables(modules: dict[str, nn.Module], speaker_count: int) -> set[str]:
    """"module.parameter" names of the embedding tables indexed by speaker (one row per speaker)."""
    tables = set()
    for name, module in modules.items():
        for path, child in module.named_modules():
            if isinstance(child, nn.Embedding) and child.num_embeddings == speaker_count:
                tables.add(f"{name}.{path}.weight" if path else f"{name}.weight")
    return tables


def map_speaker_rows(source: torch.Tensor, own: torch.Tensor, source_speakers: list[str],
                     speakers: list[str]) -> torch.Tensor:
    """`own` with each row of a speaker that `source_speakers` also has replaced by the source's."""
    mapped = own.clone()
    for row, speaker in enumerate(speakers):
        if speaker in source_speakers:
            mapped[row] = source[source_speakers.index(speaker)].to(own.dtype)
    return mapped


def apply_weights(modules: dict[str, nn.Module], weights: SourceWeights,
                  speakers: list[str] | None = None) -> WeightReport:
    report = WeightReport()
    by_name = weights.speakers is not None and speakers is not None
    tables = speaker_tables(modules, len(speakers)) if by_name else set()
    for name, module in modules.items():
        own = module.state_dict()
        given = weights.modules.get(name, {})
        compatible = {}
        for key, value in given.items():
            full = f"{name}.{key}"
            if key not in own:
                report.unexpected.append(full)
            elif full in tables and value.shape[0] == len(weights.speakers) and value.shape[1:] == own[key].shape[1:]:
                compatible[key] = map_speaker_rows(value, own[key], weights.speakers, speakers)
            elif own[key].shape != value.shape:
                report.mismatched.append(f"{full} {tuple(value.shape)} vs {tuple(own[key].shape)}")
            else:
                compatible[key] = value.to(own[key].dtype)
        report.missing += [f"{name}.{key}" for key in own if key not in given]
        module.load_state_dict(compatible, strict=False)
        report.loaded += len(compatible)
    for name in weights.modules:
        if name not in modules:
            report.unexpected.append(f"{name}.*")
    if by_name and tables:
        report.kept_speakers = [speaker for speaker in speakers if speaker in weights.speakers]
        report.new_speakers = [speaker for speaker in speakers if speaker not in weights.speakers]
    if report.loaded == 0:
        raise FinetuneError("none of the weights match the model: " + "; ".join(report.lines()[1:]))
    return report
