"""The F0-conditioned voice-conversion recipe (`task=svc`), DDSP-SVC style, for speech and singing.

Per frame, a content encoder strips speaker identity from the normalised log-mel (instance
normalisation after every block and a narrow bottleneck, as `task=vc` does) or from
`features.content` (HuBERT/ContentVec hidden states, with `content: content`); next to it go the
normalised log-F0, the voiced flag and the normalised loudness. A `SourceFilterGenerator`
conditioned on a learned speaker embedding turns them into a wave: a band-limited pulse train at
the given F0 through one learned filter, plus noise through another. F0 sets the pitch outright,
so transposing is a multiplication, and unvoiced frames (F0 0) have no pulses at all.

Training reconstructs random crops of each recording with the multi-resolution STFT loss (plus an
optional log-mel L1); the noise comes from the global RNG, which checkpoints keep. Converting
means the source's content, loudness and (shifted) F0 with another speaker's embedding.

Exported graph: (mel or content [B, C, F], f0 [B, F] Hz, voiced [B, F], loudness [B, F] dB,
speaker [B], noise [B, F, hop]) -> wave [B, F * hop]. The noise is an input, so PyTorch and ONNX
Runtime can be compared on one draw.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from voicetrain.audio import MelSpectrogram
from voicetrain.config import ConfigError
from voicetrain.data.readers import Utterance
from voicetrain.features.base import FeatureExtractor
from voicetrain.features.reading import CorpusFeatures
from voicetrain.metrics import (aligned_cepstral_distance, f0_rmse_cents, multi_resolution_stft_distance,
                                voicing_decision_error, world_cepstra)
from voicetrain.plots import MelPanel, comparison_image
from voicetrain.tasks.base import Batch, InferenceError, InferenceOutput, InferenceRequest, StepContext, Task
from voicetrain.tasks.base import StreamingStep, TaskContext, ValidationData, ValidationResult, crop
from voicetrain.chunking import (Span, Stitcher, frames_of_extractor, framed_slice, phase_advance, plan_for,
                                      positional_noise, whole_input_instance_norm)
from voicetrain.tasks.layers.losses import MultiResolutionSTFTLoss, mel_l1_loss
from voicetrain.tasks.svc_incremental import IncrementalSourceFilterStep
from voicetrain.tasks.svc_network import SingingVoiceConversionSettings, SourceFilterConversionModel
from voicetrain.tasks.svc_streaming import SourceFilterStreamingStep
from voicetrain.tasks.transpose import PitchRange, map_pitch, pitch_range_of, transposed_f0
from voicetrain.tasks.vc import parallel_pairs, spread_evenly, voice_pairs
from voicetrain.trust import resolve_class

log = logging.getLogger("voicetrain")

# Validation and inference draw their noise from this seed: the same weights give the same metrics.
NOISE_SEED = 0
NO_PAIRS_WARNING = (
    "validation found no parallel pairs among its %d held-out utterances (the same sentence read by two or more "
    "speakers, matched by sentence id: data=bundled has them), so conversion is not scored: val/mcd, "
    "val/f0_rmse_cents and val/voicing_error are not reported; val/mrstft is")


def extractor_of(context: TaskContext, name: str) -> FeatureExtractor:
    """The `features.<name>` extractor exactly as the run configured it (from the context an export keeps)."""
    spec = dict(context.extractors[name])
    # The context may come from an export's config.json: its class names pass the trust boundary
    # (voicetrain.export.artifact resolved them when the export was loaded).
    extractor_class = resolve_class(spec.pop("_target_"), f"the task context's extractors.{name}._target_")
    return extractor_class(extractor_class.Settings(**spec), context.sample_rate, context.hop_length)


@dataclass(frozen=True)
class Conversion:
    """One rendered conversion: the F0 it was asked to follow, its voiced flag, and the wave."""

    f0: torch.Tensor  # [frames] Hz, 0 where unvoiced
    voiced: torch.Tensor  # [frames]
    wave: torch.Tensor  # [frames * hop]


class SingingVoiceConversionTask(Task):
    Settings = SingingVoiceConversionSettings
    inference_modules = ("model",)
    required_features = ("mel", "f0", "loudness", "wave")
    inference_inputs = ("audio", "speaker", "transpose")
    settings_before_keys_existed = {"causal": False}  # earlier exports: convolutions centred on the frame

    def __init__(self, settings: SingingVoiceConversionSettings, context: TaskContext):
        super().__init__(settings, context)
        if settings.content == "content" and "content" not in context.extractors:
            raise ConfigError(["task.content=content: the content encoder reads features.content, which this run "
                               "does not configure; add a features.content node (voicetrain.features.content."
                               "ContentEncoder) or set task.content=mel"])
        self.input_feature = "mel" if settings.content == "mel" else "content"
        self.inference_input_names = (self.input_feature, "f0", "voiced", "loudness", "speaker", "noise")
        self.speaker_index = {speaker: index for index, speaker in enumerate(context.speakers)}
        self.stft_loss = MultiResolutionSTFTLoss(settings.stft_resolutions)
        self.mel_spectrogram = MelSpectrogram(context.features) if settings.mel_weight > 0 else None
        self.reported_no_parallel_pairs = False
        self.recording_cache: dict[str, np.ndarray] = {}  # WORLD mel-cepstra of held-out recordings
        self.extractors: dict[str, FeatureExtractor] = {}

    def extractor(self, name: str) -> FeatureExtractor:
        """A feature's extractor, built once (inference computes features itself; validation tracks F0)."""
        if name not in self.extractors:
            self.extractors[name] = extractor_of(self.context, name)
        return self.extractors[name]

    def input_channels(self) -> int:
        return len(self.context.statistics[self.input_feature]["mean"])

    def build_modules(self) -> dict[str, nn.Module]:
        context = self.context
        model = SourceFilterConversionModel(self.settings, self.input_channels(), len(context.speakers),
                                            context.sample_rate, context.hop_length, context.statistics,
                                            self.input_feature)
        return {"model": model}

    def check_data(self, utterances: list[Utterance], features: CorpusFeatures) -> None:
        if len(self.context.speakers) < 2:
            log.warning("this corpus has one speaker (%s): the model learns to resynthesise that voice, with any "
                        "--transpose, but has no other voice to convert to", ", ".join(self.context.speakers))

    # --- training ---------------------------------------------------------------------------

    def make_example(self, utterance: Utterance, features: dict[str, torch.Tensor],
                     generator: torch.Generator) -> dict[str, torch.Tensor]:
        length, frames = self.settings.segment_frames, features["f0"].shape[-1]
        start = int(torch.randint(0, max(frames - length, 0) + 1, (1,), generator=generator))
        names = (self.input_feature, "f0", "loudness", "wave")
        cut = crop({name: features[name] for name in names}, start, length, self.context.hop_length)
        valid = frames - start
        if valid < length:
            # crop pads with zeros: silence for the wave and F0, but a loud level for the log-mel and
            # the loudness. Pad those with the utterance's quietest frame instead.
            for name in (self.input_feature, "loudness"):
                quietest = features[name].amin(dim=-1, keepdim=True)
                cut[name][..., valid:] = quietest
        return {**cut, "speaker": torch.tensor(self.speaker_index[utterance.speaker])}

    def training_step(self, batch: Batch, modules: dict[str, nn.Module], step: StepContext) -> dict[str, torch.Tensor]:
        f0 = batch["f0"]
        # Drawn on the CPU from the global generator, which checkpoints keep: bit-exact resume, and
        # the same noise on any device.
        noise = torch.randn(f0.shape[0], f0.shape[-1], self.context.hop_length).to(f0.device)
        wave = modules["model"](batch[self.input_feature], f0[:, 0], f0[:, 1], batch["loudness"][:, 0],
                                batch["speaker"], noise).float()
        target = batch["wave"].float()
        stft = self.stft_loss(wave, target)
        losses = {"stft/mrstft": stft}
        loss = stft
        if self.mel_spectrogram is not None:
            mel = mel_l1_loss(wave, target, self.mel_spectrogram.to(wave.device))
            losses["mel/l1"] = mel
            loss = loss + self.settings.mel_weight * mel
        step.optimize("model", loss)
        return {name: value.detach() for name, value in losses.items()}

    # --- conversion -------------------------------------------------------------------------

    def render(self, model: nn.Module, features: torch.Tensor, f0: torch.Tensor, voiced: torch.Tensor,
               loudness: torch.Tensor, speaker: str) -> torch.Tensor:
        """One utterance's wave [frames * hop] from its frame features, with seeded noise."""
        device = next(model.parameters()).device
        generator = torch.Generator().manual_seed(NOISE_SEED)
        noise = torch.randn(1, f0.shape[-1], self.context.hop_length, generator=generator)
        inputs = [tensor.unsqueeze(0).float().to(device) for tensor in (features, f0, voiced, loudness)]
        speaker_id = torch.tensor([self.speaker_index[speaker]], device=device)
        return model(*inputs, speaker_id, noise.to(device))[0].float().cpu()

    def speaker_pitch(self, speaker: str) -> PitchRange:
        """A speaker's log-F0 range over the training set (the whole corpus's, with a warning, for a
        speaker heard only in held-out recordings)."""
        statistics = self.context.statistics["f0"]
        if speaker not in statistics["speakers"]:
            log.warning("speaker %s has no training recordings, so no pitch range of its own: using the whole "
                        "corpus's for --transpose auto", speaker)
            return pitch_range_of(statistics)
        return pitch_range_of(statistics["speakers"][speaker])

    def convert(self, model: nn.Module, data: ValidationData, source: int, target: int) -> Conversion:
        """Held-out utterance `source` in `target`'s speaker's voice, its pitch range mapped onto
        that speaker's (the `--transpose auto` convention, with the source speaker's known range)."""
        source_speaker = data.utterances[source].speaker
        target_speaker = data.utterances[target].speaker
        f0, voiced = data.features["f0"][source]
        intended = map_pitch(f0, voiced, self.speaker_pitch(source_speaker), self.speaker_pitch(target_speaker))
        wave = self.render(model, data.features[self.input_feature][source], intended, voiced,
                           data.features["loudness"][source][0], target_speaker)
        return Conversion(intended, (voiced > 0.5) & (intended > 0), wave)

    # --- validation -------------------------------------------------------------------------

    @torch.no_grad()
    def validate(self, modules: dict[str, nn.Module], data: ValidationData, previews: int) -> ValidationResult:
        """`val/mrstft`: resynthesis of held-out recordings in their own voice against the recording.
        Where a sentence was read by several speakers, conversions to the other speaker: F0 RMSE
        (cents) and voicing error of the output against the F0 it was asked to follow, and WORLD
        MCD against the other speaker's reading (`val/mcd`, beside `val/mcd_baseline`: the source
        recording against it). Previews convert the first `previews` pairs, the same every time."""
        model = modules["model"]
        result = ValidationResult({"val/mrstft": self.reconstruction_distance(model, data)})
        pairs = parallel_pairs(data.utterances, self.settings.validation_pairs)
        conversions = {pair: self.convert(model, data, *pair) for pair in pairs}
        if pairs:
            result.metrics.update(self.conversion_metrics(data, conversions))
        elif not self.reported_no_parallel_pairs:  # said once per launch, not at every validation
            self.reported_no_parallel_pairs = True
            log.warning(NO_PAIRS_WARNING, len(data.utterances))
        for pair in (pairs or voice_pairs(data.utterances, self.settings.validation_pairs))[:previews]:
            conversion = conversions.get(pair) or self.convert(model, data, *pair)
            self.add_preview(result, data, pair, conversion, parallel=bool(pairs))
        return result

    def reconstruction_distance(self, model: nn.Module, data: ValidationData) -> float:
        chosen = spread_evenly(list(range(len(data.utterances))), self.settings.validation_utterances)
        distances = []
        for index in chosen:
            f0, voiced = data.features["f0"][index]
            wave = self.render(model, data.features[self.input_feature][index], f0, voiced,
                               data.features["loudness"][index][0], data.utterances[index].speaker)
            recording = data.features["wave"][index]
            distances.append(multi_resolution_stft_distance(recording.numpy(), wave[:recording.shape[-1]].numpy()))
        return float(np.mean(distances)) if distances else float("nan")

    def conversion_metrics(self, data: ValidationData, conversions: dict[tuple[int, int], Conversion]
                           ) -> dict[str, float]:
        scores: dict[str, list[float]] = {name: [] for name in ("val/f0_rmse_cents", "val/voicing_error",
                                                                "val/mcd", "val/mcd_baseline")}
        sample_rate = self.context.sample_rate
        for (source, target), conversion in conversions.items():
            tracked_f0, tracked_voiced = self.tracked_pitch(conversion.wave, conversion.f0.shape[-1])
            rmse = f0_rmse_cents(conversion.f0.numpy(), tracked_f0, conversion.voiced.numpy(), tracked_voiced)
            if math.isfinite(rmse):  # undefined when no frame is voiced in both
                scores["val/f0_rmse_cents"].append(rmse)
            scores["val/voicing_error"].append(voicing_decision_error(conversion.voiced.numpy(), tracked_voiced))
            target_cepstra = self.recording_cepstra(data, target)
            scores["val/mcd"].append(aligned_cepstral_distance(
                target_cepstra, world_cepstra(conversion.wave.numpy(), sample_rate)))
            scores["val/mcd_baseline"].append(aligned_cepstral_distance(
                target_cepstra, self.recording_cepstra(data, source)))
        return {name: float(np.mean(values)) for name, values in scores.items() if values}

    def tracked_pitch(self, wave: torch.Tensor, frames: int) -> tuple[np.ndarray, np.ndarray]:
        """F0 and voiced flag of a rendered wave by the recipe's own tracker, on the input's frames."""
        track = self.extractor("f0").extract(wave.numpy(), self.context.sample_rate)[:, :frames]
        return track[0], track[1] > 0.5

    def recording_cepstra(self, data: ValidationData, index: int) -> np.ndarray:
        """WORLD mel-cepstra of a held-out recording, computed once per run (it never changes)."""
        key = data.utterances[index].utterance_id
        if key not in self.recording_cache:
            self.recording_cache[key] = world_cepstra(data.features["wave"][index].numpy(), self.context.sample_rate)
        return self.recording_cache[key]

    def add_preview(self, result: ValidationResult, data: ValidationData, pair: tuple[int, int],
                    conversion: Conversion, parallel: bool) -> None:
        """Audio `<pair>/converted` (and the recordings `<pair>/source`, `<pair>/target`) and one
        image `<pair>`: the three log-mels on one colour scale."""
        source, target = (data.utterances[index] for index in pair)
        name = f"{source.utterance_id}_to_{target.speaker}".replace("/", "_")
        result.audio[f"{name}/converted"] = conversion.wave
        for role, index in (("source", pair[0]), ("target", pair[1])):
            result.reference_audio[f"{name}/{role}"] = data.features["wave"][index]
        converted_mel = MelSpectrogram(self.context.features)(conversion.wave)
        target_role = "target" if parallel else "target speaker's voice (another sentence)"
        panels = [MelPanel(f"{role}: {utterance.utterance_id} ({utterance.speaker})",
                           data.features["mel"][index].numpy())
                  for role, utterance, index in (("source", source, pair[0]), (target_role, target, pair[1]))]
        panels.append(MelPanel(f"converted to {target.speaker}, pitch range mapped", converted_mel.numpy()))
        result.images[name] = comparison_image(panels, self.context.features)

    # --- export and inference ---------------------------------------------------------------

    def inference_model(self, modules: dict[str, nn.Module]) -> nn.Module:
        return modules["model"]

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        generator = torch.Generator().manual_seed(0)
        frames, statistics = 100, self.context.statistics
        features = torch.tensor(statistics[self.input_feature]["mean"]).view(1, -1, 1) + torch.randn(
            1, self.input_channels(), frames, generator=generator)
        f0 = 100.0 + 150.0 * torch.rand(1, frames, generator=generator)
        voiced = torch.ones(1, frames)
        voiced[:, frames // 3:frames // 2] = 0.0  # an unvoiced stretch
        loudness = statistics["loudness"]["mean"][0] + 5.0 * torch.randn(1, frames, generator=generator)
        noise = torch.randn(1, frames, self.context.hop_length, generator=generator)
        return features, f0 * voiced, voiced, loudness, torch.tensor([len(self.context.speakers) - 1]), noise

    def onnx_dynamic_axes(self) -> dict[str, dict[int, str]]:
        frame_level = {0: "batch", 1: "frames"}
        return {self.input_feature: {0: "batch", 2: "frames"}, "f0": frame_level, "voiced": frame_level,
                "loudness": frame_level, "speaker": {0: "batch"}, "noise": frame_level,
                "output": {0: "batch", 1: "samples"}}

    @torch.no_grad()
    def infer(self, modules: dict[str, nn.Module], request: InferenceRequest) -> InferenceOutput:
        """Converts `request.audio` to `request.speaker`'s voice, following its F0 shifted by
        `request.transpose` (see `transposed_f0`). Features are computed from the input with the
        run's own extractors and settings. Returns the wave (as long as the input) and the F0 used."""
        self.speaker_id(request.speaker)
        audio = torch.from_numpy(self.input_audio(request))
        track = frames_of_extractor(self.extractor("f0"), audio, self.context.sample_rate, self.context.hop_length,
                                    request.chunk_seconds)
        f0, voiced = track
        target_f0 = transposed_f0(f0, voiced, request.transpose, self.speaker_pitch(request.speaker))
        wave = self.render_in_chunks(self.inference_model(modules), audio, target_f0, voiced, request.speaker,
                                     request.chunk_seconds)
        return InferenceOutput(wave[:audio.shape[-1]], {"f0": target_f0})

    def streaming(self, modules: dict[str, nn.Module], request: InferenceRequest) -> StreamingStep:
        """Live conversion block by block (voicetrain.tasks.svc_streaming; `python -m voicetrain.stream`)."""
        self.speaker_id(request.speaker)
        # A causal model reading the log-mel computes each frame once (svc_incremental); a centred one,
        # or one reading a pretrained encoder's content, reruns the window its layers reach.
        step_class = (IncrementalSourceFilterStep if self.settings.causal and self.input_feature == "mel"
                      else SourceFilterStreamingStep)
        return step_class(self, self.inference_model(modules), request.speaker, request.transpose, NOISE_SEED)

    def render_in_chunks(self, model: nn.Module, audio: torch.Tensor, f0: torch.Tensor, voiced: torch.Tensor,
                         speaker: str, chunk_seconds: float | None) -> torch.Tensor:
        """`render` of a whole input [samples] in overlapping chunks (voicetrain.chunking):
        each chunk's content features and loudness come from the samples it needs alone, the content
        encoder's instance normalisations use the whole input's statistics (a streaming pass per
        layer), the pulse train starts each chunk at the phase the frames before it reached, and the
        noise is keyed to frame positions. Returns [frames * hop]; one chunk is `render` exactly."""
        sample_rate, hop, frames = self.context.sample_rate, self.context.hop_length, f0.shape[-1]
        plan = plan_for(frames, sample_rate, hop, chunk_seconds)
        spans = plan.spans
        device = next(model.parameters()).device
        speaker_id = torch.tensor([self.speaker_index[speaker]], device=device)
        sounding_f0 = (f0 * (voiced > 0.5).to(f0.dtype)).double()

        def framed(name: str, span: Span) -> torch.Tensor:
            extractor = self.extractor(name)
            radius = max(int(getattr(extractor.settings, "n_fft", 0)) // 2, plan.context * hop)
            return framed_slice(lambda piece: torch.from_numpy(extractor.extract(piece.numpy(), sample_rate)), audio,
                                span.context_start, span.context_end, hop, radius)

        def content(span: Span) -> torch.Tensor:
            return model.content(framed(self.input_feature, span).unsqueeze(0).float().to(device))

        stitcher = Stitcher(plan, scale=hop)
        with whole_input_instance_norm(model, content, spans):
            for span in spans:
                start, end = span.context_start, span.context_end
                inputs = [tensor.unsqueeze(0).float().to(device) for tensor in (
                    framed(self.input_feature, span), f0[start:end], voiced[start:end], framed("loudness", span)[0])]
                noise = positional_noise(start, end, frames, hop, NOISE_SEED).to(device)
                phase = torch.tensor([phase_advance(sounding_f0[:start + 1], sample_rate, hop)], device=device)
                wave = model(*inputs, speaker_id, noise, phase if start > 0 else None)[0].float().cpu()
                stitcher.add(span, wave[(span.start - start) * hop:(span.end - start) * hop])
        return stitcher.output

    def input_audio(self, request: InferenceRequest) -> np.ndarray:
        if request.audio is None:
            raise InferenceError("F0-conditioned conversion needs an input recording (--input in.wav)")
        audio = request.audio.float().reshape(-1).numpy()
        # The framed extractors reflect-pad by half their window: shorter input has nothing to pad from.
        shortest = max(int(getattr(self.extractor(name).settings, "n_fft", 0)) // 2 + 1 for name in ("mel", "loudness"))
        if audio.shape[-1] < shortest:
            raise InferenceError(f"the input has {audio.shape[-1]} samples; F0-conditioned conversion needs at least "
                                 f"{shortest} at {self.context.sample_rate} Hz")
        return audio
