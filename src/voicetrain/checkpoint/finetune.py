"""Fine-tuning: model weights only, from a checkpoint, an export or a weights file.

Files the run did not produce are read safely (invariant 8): safetensors, or
`torch.load(weights_only=True)` for .pt/.pth/.ckpt files, never arbitrary unpickling.
The report lists missing, unexpected and shape-mismatched keys instead of failing on the first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from voicetrain.checkpoint.store import MANIFEST, model_weight_files

TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")


class FinetuneError(RuntimeError):
    pass


@dataclass
class WeightReport:
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        lines = [f"loaded {self.loaded} tensors"]
        for title, keys in (("missing (left at their initial values)", self.missing),
                            ("unexpected (ignored)", self.unexpected),
                            ("shape mismatch (left at their initial values)", self.mismatched)):
            if keys:
                shown = ", ".join(keys[:10]) + (f", ... ({len(keys)} in all)" if len(keys) > 10 else "")
                lines.append(f"{title}: {shown}")
        return lines


def read_tensor_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return load_file(str(path))
    if path.suffix in TORCH_SUFFIXES:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises several types for unsafe or corrupt files
            raise FinetuneError(f"{path} cannot be read safely ({error}); convert it to safetensors") from error
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise FinetuneError(f"{path} does not hold a state dict of tensors")
        return {key: value for key, value in state.items() if isinstance(value, torch.Tensor)}
    raise FinetuneError(f"{path}: unsupported weights file; use .safetensors (or .pt/.pth loaded with weights_only)")


def read_weights(path: Path, module_names: list[str]) -> dict[str, dict[str, torch.Tensor]]:
    """Per-module state dicts found at `path`, a checkpoint folder, an export folder or a file."""
    if path.is_file():
        return split_by_module(read_tensor_file(path), module_names)
    if not path.is_dir():
        raise FinetuneError(f"resume.path={str(path)!r}: no such file or directory")
    weight_files = model_weight_files(path)
    if (path / MANIFEST).is_file() and (path / "config.json").is_file():
        # An export: one file, keys prefixed with the module name.
        return split_by_module(read_tensor_file(path / "model.safetensors"), module_names)
    if weight_files:
        # A checkpoint: Accelerate wrote one file per module, in the order they were prepared.
        return {name: load_file(str(file)) for name, file in zip(module_names, weight_files)}
    raise FinetuneError(f"resume.path={str(path)!r} holds no model weights (expected a voicetrain checkpoint or "
                        "export folder, or a .safetensors file)")


def split_by_module(state: dict[str, torch.Tensor], module_names: list[str]) -> dict[str, dict[str, torch.Tensor]]:
    prefixed = {name: {key[len(name) + 1:]: value for key, value in state.items() if key.startswith(f"{name}.")}
                for name in module_names}
    if any(prefixed.values()):
        return {name: tensors for name, tensors in prefixed.items() if tensors}
    # Unprefixed keys: a single module's state dict.
    return {module_names[0]: state}


def apply_weights(modules: dict[str, nn.Module], weights: dict[str, dict[str, torch.Tensor]]) -> WeightReport:
    report = WeightReport()
    for name, module in modules.items():
        own = module.state_dict()
        given = weights.get(name, {})
        compatible = {}
        for key, value in given.items():
            if key not in own:
                report.unexpected.append(f"{name}.{key}")
            elif own[key].shape != value.shape:
                report.mismatched.append(f"{name}.{key} {tuple(value.shape)} vs {tuple(own[key].shape)}")
            else:
                compatible[key] = value.to(own[key].dtype)
        report.missing += [f"{name}.{key}" for key in own if key not in given]
        module.load_state_dict(compatible, strict=False)
        report.loaded += len(compatible)
    for name in weights:
        if name not in modules:
            report.unexpected.append(f"{name}.*")
    if report.loaded == 0:
        raise FinetuneError("none of the weights match the model: " + "; ".join(report.lines()[1:]))
    return report
