"""The contract a model implements to be trained by voicetrain.

A task owns its modules, how a training example is cut from an utterance, the training step,
validation, the inference wrapper and what inference from an export does (`infer`). The
framework owns everything else: devices, the loop, checkpoints, resume, logging and export. A
forked model is one subclass of `Task` plus one YAML in `conf/task/` whose keys are the fields of
the subclass's `Settings` dataclass.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from voicetrain.audio import MelSettings
from voicetrain.data.readers import Utterance

Batch = dict[str, torch.Tensor]


@dataclass(frozen=True)
class TaskContext:
    """What a task may know about the data, and nothing else: enough to rebuild it from an export."""

    features: MelSettings
    speakers: list[str]
    mel_mean: list[float]  # per mel bin, over the training set: tasks normalise their inputs with it
    mel_std: list[float]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TaskContext":
        """The inverse of to_dict, as saved in checkpoints and exports."""
        return cls(**{**data, "features": MelSettings(**data["features"])})


@dataclass(frozen=True)
class InferenceRequest:
    """What a user asks of an exported model (`python -m voicetrain.infer`); a task reads the fields
    it needs and raises InferenceError when one it needs is missing."""

    audio: torch.Tensor | None = None  # mono wave [samples] at context.features.sample_rate (VC input)
    speaker: str | None = None  # one of context.speakers
    text: str | None = None  # TTS input


class InferenceError(ValueError):
    """A request the model cannot serve (unknown speaker, missing input); the message names the fix."""


@dataclass(frozen=True)
class ValidationData:
    utterances: list[Utterance]
    mels: list[torch.Tensor]  # [n_mels, frames] log-mel per utterance, same order


@dataclass
class ValidationResult:
    """What one validation reports. TensorBoard gets each kind under its own tag group: metrics as
    they are named (`val/...`), audio as `audio/<name>`, images as `mel/<name>`; name previews
    `<preview>/<role>` (audio) and `<preview>` (images), e.g. `p1/converted` and `p1`.
    `reference_audio` holds what training does not change (the recordings a preview is compared
    with, e.g. `p1/source`): it is written once, at the run's first validation."""

    metrics: dict[str, float]
    audio: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> mono wave at features.sample_rate
    images: dict[str, np.ndarray] = field(default_factory=dict)  # name -> HxWx3 uint8
    reference_audio: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> mono wave, as `audio`


class StepContext:
    """Handed to `Task.training_step`: the step number and `optimize`, which runs backward,
    clipping, the optimizer and its schedule with gradient accumulation handled by the framework."""

    def __init__(self, step: int, optimize: Callable[[str, torch.Tensor], None]):
        self.step = step
        self.optimize = optimize


class Task:
    """Subclass this. Class attributes: `Settings` (a dataclass) and `inference_modules`."""

    Settings: ClassVar[type]
    # Names of the modules (keys of build_modules) that inference needs; the rest
    # (discriminators, posterior encoders, ...) are training-only and left out of exports.
    inference_modules: ClassVar[tuple[str, ...]] = ("model",)
    # Names of example_inputs() in order: the ONNX graph's input names and the keys of
    # onnx_dynamic_axes(). Empty means input_0, input_1, ...; the output is always "output".
    inference_input_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, settings: Any, context: TaskContext):
        self.settings = settings
        self.context = context

    def build_modules(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def build_optimizers(
        self, modules: dict[str, nn.Module], make_optimizer: Callable[[Sequence[nn.Parameter]], torch.optim.Optimizer]
    ) -> dict[str, torch.optim.Optimizer]:
        """One optimizer named "model" over every module by default; a GAN returns two."""
        parameters = [parameter for module in modules.values() for parameter in module.parameters()]
        return {"model": make_optimizer(parameters)}

    def check_data(self, utterances: list[Utterance], mels: list[torch.Tensor]) -> None:
        """Called once before the first step with every training and validation utterance: raise
        voicetrain.data.DataError naming the files a task cannot use (e.g. TTS without transcripts),
        so a bad file stops the run before training rather than when its batch comes up."""

    def make_example(self, utterance: Utterance, mel: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Cuts one training example; all randomness must come from `generator` (bit-exact resume)."""
        raise NotImplementedError

    def collate(self, examples: list[dict[str, torch.Tensor]]) -> Batch:
        return {key: torch.stack([example[key] for example in examples]) for key in examples[0]}

    def training_step(self, batch: Batch, modules: dict[str, nn.Module], step: StepContext) -> dict[str, torch.Tensor]:
        """Computes losses, calls `step.optimize(name, loss)` per optimizer, returns named losses
        (namespaced keys such as "mel/l1" become TensorBoard groups)."""
        raise NotImplementedError

    @torch.no_grad()
    def validate(self, modules: dict[str, nn.Module], data: ValidationData, previews: int) -> ValidationResult:
        raise NotImplementedError

    def inference_model(self, modules: dict[str, nn.Module]) -> nn.Module:
        """A module whose forward(*example_inputs()) is what inference runs (and what is exported)."""
        raise NotImplementedError

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def onnx_dynamic_axes(self) -> dict[str, dict[int, str]]:
        """Axes of the ONNX graph's inputs and "output" whose size may vary, e.g.
        {"log_mel": {0: "batch", 2: "frames"}}; by default every shape is fixed to example_inputs()."""
        return {}

    def infer(self, modules: dict[str, nn.Module], request: InferenceRequest) -> torch.Tensor:
        """Serves one request from an export's modules (fp32, eval mode, CPU): returns a mono wave
        [samples] at context.features.sample_rate. Raise InferenceError for a bad request."""
        raise NotImplementedError(f"{type(self).__name__} does not implement Task.infer")

    def speaker_id(self, name: str | None) -> int:
        """The index of a speaker name, or an InferenceError that lists the valid names."""
        if name not in self.context.speakers:
            valid = ", ".join(self.context.speakers)
            given = "no speaker given" if name is None else f"unknown speaker {name!r}"
            raise InferenceError(f"{given}; this model knows {len(self.context.speakers)} speaker(s): {valid}")
        return self.context.speakers.index(name)
