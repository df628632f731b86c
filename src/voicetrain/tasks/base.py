"""The contract a model implements to be trained by voicetrain.

A task owns its modules, how a training example is cut from an utterance, the training step,
validation, the inference wrapper and what inference from an export does (`infer`). The
framework owns everything else: devices, the loop, checkpoints, resume, logging and export. A
forked model is one subclass of `Task` plus one YAML in `conf/task/` whose keys are the fields of
the subclass's `Settings` dataclass.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from voicetrain.audio import MelSettings
from voicetrain.config_features import FeatureSettings, features_to_dict
from voicetrain.data.prepare import PreparedData
from voicetrain.data.readers import Utterance
from voicetrain.features.base import FeatureExtractor
from voicetrain.features.building import mel_settings
from voicetrain.features.reading import CorpusFeatures
from voicetrain.trust import resolve_class

Batch = dict[str, torch.Tensor]
log = logging.getLogger("voicetrain")


@dataclass(frozen=True)
class TaskContext:
    """What a task may know about the data, and nothing else: enough to rebuild it from an export."""

    features: MelSettings | None  # the log-mel's settings (features.mel with the shared rate and hop)
    speakers: list[str]
    mel_mean: list[float]  # per mel bin, over the training set: tasks normalise their inputs with it
    mel_std: list[float]
    sample_rate: int = 0  # every feature's (features.sample_rate)
    hop_length: int = 0  # samples per frame of every frame-level feature (features.hop_length)
    extractors: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {"_target_", settings...}
    # name -> {"mean", "std", "speakers": {speaker: {"mean", "std"}}} over the training set, per
    # channel (for F0: of log-F0 over voiced frames), so inference can map a pitch range
    statistics: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # A context made from the log-mel's settings alone (older exports, tests, forks) shares its
        # rate and hop, as every feature of a run does.
        if self.features is not None:
            for name in ("sample_rate", "hop_length"):
                if not getattr(self, name):
                    object.__setattr__(self, name, getattr(self.features, name))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def extractor(self, name: str) -> FeatureExtractor:
        """The run's `features.<name>` extractor, rebuilt from the settings this context keeps (so an
        export needs no config): the class and settings that computed the training features, at the
        shared rate and hop. Inference computes its inputs with it, e.g.
        `self.context.extractor("f0").extract(wave.numpy(), self.context.sample_rate)`. Built once
        per context (a content encoder loads a model)."""
        built: dict[str, FeatureExtractor] = self.__dict__.setdefault("_built_extractors", {})
        if name not in built:
            if name not in self.extractors:
                raise KeyError(f"features.{name}: this run has no such feature (it has {sorted(self.extractors)}); "
                               f"add it to the task's YAML under features: and list it in required_features")
            spec = dict(self.extractors[name])
            # Through the trust boundary: an export's loader has already let these names through (or
            # training's own config chose them); anything else is refused, never imported.
            extractor_class = resolve_class(spec.pop("_target_"), f"the task context's extractors.{name}._target_")
            built[name] = extractor_class(extractor_class.Settings(**spec), self.sample_rate, self.hop_length)
        return built[name]

    @classmethod
    def of_run(cls, features: FeatureSettings, data: PreparedData) -> "TaskContext":
        """The context of a run's features and prepared corpus (what training and re-export build)."""
        described = features_to_dict(features)
        return cls(mel_settings(features), data.speakers, data.mel_mean, data.mel_std, features.sample_rate,
                   features.hop_length, {name: described[name] for name in features.extractors},
                   {name: statistics.to_dict() for name, statistics in data.statistics.items()})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TaskContext":
        """The inverse of to_dict, as saved in checkpoints and exports (older ones lack the later keys)."""
        mel = MelSettings(**data["features"]) if data.get("features") else None
        return cls(**{**data, "features": mel})


@dataclass(frozen=True)
class InferenceRequest:
    """What a user asks of an exported model (`python -m voicetrain.infer`); a task reads the fields
    it needs and raises InferenceError when one it needs is missing.

    Each field comes from one command-line option, and `python -m voicetrain.infer` refuses an
    option whose field the task does not list in `Task.inference_inputs` (so `--transpose` reaches
    a task only when its inference_inputs name "transpose"):

    - audio (--input in.wav): mono float wave [samples], already resampled to context.sample_rate
    - speaker (--speaker NAME): one of context.speakers (`Task.speaker_id` checks it)
    - text (--text "..."): what a text-to-speech task reads
    - transpose (--transpose K): K semitones as a float, or "auto"; `voicetrain.tasks.transpose.
      transposed_f0` turns it into the F0 to follow
    - vocoder (--vocoder EXPORT, or the export's export.vocoder): log-mel -> wave, None for Griffin-Lim
    """

    audio: torch.Tensor | None = None  # mono wave [samples] at context.sample_rate (VC, SVC, vocoder input)
    speaker: str | None = None  # one of context.speakers
    text: str | None = None  # TTS input
    transpose: float | str | None = None  # semitones, or "auto" (map the source's pitch range to the speaker's)
    # A neural vocoder from another export, log-mel [n_mels, frames] -> wave [samples]; None: Griffin-Lim.
    vocoder: Callable[[torch.Tensor], torch.Tensor] | None = None
    # Long inputs run in overlapping chunks of this many seconds (None: voicetrain.chunking's default).
    chunk_seconds: float | None = None


@dataclass
class InferenceOutput:
    """What `Task.infer` may return instead of a bare wave: the wave and other named outputs (an F0
    track, a mel, ...) that `python -m voicetrain.infer --save-outputs DIR` writes beside it."""

    wave: torch.Tensor
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class StreamingNeeds:
    """What a task's streaming step needs around the samples it makes, in samples at context.sample_rate.
    `analysis_delay` is whole hops, and so is `lookahead` for a step that computes whole frames of its
    window (an incremental step may need fewer samples); the stream rounds `left_context` up to whole hops."""

    left_context: int  # samples before the output it reads: receptive fields, trackers, analysis windows
    lookahead: int  # samples after the output its layers reach (convolutions, synthesis), beyond the analysis
    analysis_delay: int  # half the widest analysis window (log-mel, loudness): the samples a frame reads ahead


class StreamingStep:
    """A task's live conversion (`Task.streaming`), shaped like soxr's ResampleStream: one call per
    block with state kept between calls instead of recomputing history. `step` gets a window of input
    [left context | output samples | lookahead + analysis delay], where the window starts in the
    stream (sample 0 is the stream's first; a window before it is zero-padded), and returns the wave
    for `output` (a slice of the window) and the new state. Override `needs`, `start` and `step`."""

    needs: StreamingNeeds

    def start(self) -> Any:
        """The state before the first block."""
        return None

    def step(self, window: torch.Tensor, window_start: int, output: slice, state: Any) -> tuple[torch.Tensor, Any]:
        raise NotImplementedError


class InferenceError(ValueError):
    """A request the model cannot serve (unknown speaker, missing input); the message names the fix."""


@dataclass(frozen=True)
class ValidationData:
    """The held-out utterances and their features by name ([channels, frames] tensors, [samples]
    for the wave), in the same order. During training each feature is a sequence read from the
    feature store on access (`features["mel"][i]`, slices, iteration): index the utterances you
    score rather than copying the whole held-out set into a list."""

    utterances: list[Utterance]
    features: Mapping[str, Sequence[torch.Tensor]]

    @property
    def mels(self) -> list[torch.Tensor]:
        """The log-mels ([n_mels, frames]), as older tasks read them."""
        return self.features["mel"]


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
    # Names of the `features.<name>` nodes the task reads; a run without one stops before training.
    required_features: ClassVar[tuple[str, ...]] = ("mel",)
    # The InferenceRequest fields `infer` reads: `python -m voicetrain.infer` refuses any other input
    # with a message listing these.
    inference_inputs: ClassVar[tuple[str, ...]] = ("audio", "speaker")
    # Settings added after exports and checkpoints were first written, each with the value that
    # rebuilds a file written before the key existed (the model it holds). Only files read back get
    # them; a training config still takes every value from the YAML, the one source of defaults.
    settings_before_keys_existed: ClassVar[dict[str, Any]] = {}

    @classmethod
    def with_settings_before_keys_existed(cls, written: Any) -> Any:
        """`written` (a file's task settings) with the keys it predates filled in; anything else as it is."""
        return {**cls.settings_before_keys_existed, **written} if isinstance(written, dict) else written

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

    def check_data(self, utterances: list[Utterance], features: CorpusFeatures) -> None:
        """Called once before the first step with every training and validation utterance and their
        features (read when indexed; `features.frames(i)` gives a frame count without reading): raise
        voicetrain.data.DataError naming the files a task cannot use (e.g. TTS without transcripts),
        so a bad file stops the run before training rather than when its batch comes up."""

    def make_example(self, utterance: Utterance, features: dict[str, torch.Tensor],
                     generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Cuts one training example from an utterance's features by name (see `crop`); all
        randomness must come from `generator` (bit-exact resume)."""
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

    def verification_inputs(self, modules: dict[str, nn.Module]) -> tuple[torch.Tensor, ...]:
        """Inputs on which the export is checked against the trained `modules` (fp32, eval mode);
        by default example_inputs(). A task whose output depends on a rounded prediction (TTS
        durations) returns inputs that pin it to the trained model's value."""
        return self.example_inputs()

    def onnx_dynamic_axes(self) -> dict[str, dict[int, str]]:
        """Axes of the ONNX graph's inputs and "output" whose size may vary, e.g.
        {"log_mel": {0: "batch", 2: "frames"}}; by default every shape is fixed to example_inputs()."""
        return {}

    def infer(self, modules: dict[str, nn.Module], request: InferenceRequest) -> torch.Tensor | InferenceOutput:
        """Serves one request from an export's modules (fp32, eval mode, CPU): returns a mono wave
        [samples] at context.sample_rate (or an InferenceOutput with named extras). Read only the
        request fields named in `inference_inputs`; raise InferenceError for a bad request."""
        raise NotImplementedError(f"{type(self).__name__} does not implement Task.infer")

    def streaming(self, modules: dict[str, nn.Module], request: InferenceRequest) -> StreamingStep | None:
        """The optional streaming hook (`python -m voicetrain.stream`): a StreamingStep serving
        `request` (its audio is None; the stream brings it block by block). None (the default): the
        stream falls back to rerunning `infer` on a sliding window of context, which works for any
        task that converts audio but costs a window's compute per block."""
        return None

    def speaker_id(self, name: str | None) -> int:
        """The index of a speaker name, or an InferenceError that lists the valid names."""
        if name not in self.context.speakers:
            valid = ", ".join(self.context.speakers)
            given = "no speaker given" if name is None else f"unknown speaker {name!r}"
            raise InferenceError(f"{given}; this model knows {len(self.context.speakers)} speaker(s): {valid}")
        return self.context.speakers.index(name)


def crop(features: dict[str, torch.Tensor], start: int, frames: int, hop_length: int) -> dict[str, torch.Tensor]:
    """Frames [start, start + frames) of every feature, zero-padded at the end: frame-level
    features ([channels, frames]) by frame, the wave ([samples]) by the samples those frames cover,
    [start * hop, (start + frames) * hop). One random `start` thus cuts all of them alike."""
    cut = {}
    for name, value in features.items():
        if value.dim() == 1:
            low, length = start * hop_length, frames * hop_length
        else:
            low, length = start, frames
        piece = value[..., low:low + length]
        cut[name] = torch.nn.functional.pad(piece, (0, length - piece.shape[-1]))
    return cut


def first_feature_parameter(method: Callable[..., Any]) -> str | None:
    parameters = list(inspect.signature(method).parameters)
    return parameters[1] if len(parameters) > 1 else None


def example_maker(task: Task) -> Callable[[Utterance, dict[str, torch.Tensor], torch.Generator], dict[str, torch.Tensor]]:
    """`task.make_example`; for a fork still written as make_example(utterance, mel, generator) (the
    signature before features had names), a wrapper that hands it the log-mel, with one notice."""
    if first_feature_parameter(task.make_example) != "mel":
        return task.make_example
    log.warning("%s.make_example(utterance, mel, generator) is the older signature: it still works and gets "
                "features['mel']; write make_example(self, utterance, features, generator) to read every feature "
                "by name", type(task).__name__)
    return lambda utterance, features, generator: task.make_example(utterance, features["mel"], generator)


def check_data(task: Task, utterances: list[Utterance], features: CorpusFeatures) -> None:
    """`task.check_data`, given the log-mels as a sequence when a fork has the older (utterances, mels) signature."""
    if first_feature_parameter(task.check_data) == "mels":
        task.check_data(utterances, features["mel"])
    else:
        task.check_data(utterances, features)
