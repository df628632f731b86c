"""The vocoder recipe (`task=vocoder`): log-mel -> waveform, a neural replacement for Griffin-Lim.

The generator (`task.generator`) turns the normalised log-mel and an F0 track into a wave. The
default, `istft` (`HarmonicISTFTGenerator`), predicts each STFT bin's magnitude as a residual over
the log-mel's pseudo-inverse and takes its phase from a pulse train at F0 mixed with noise, then
inverts the STFT; `source_filter` (`SourceFilterGenerator`) sends the pulse train through one
learned filter and noise through another. Either way voiced frames are voiced from the first step
(a low voice included, where Griffin-Lim loses the voicing). A small
`PitchPredictor` learns the F0 and the voicing from the log-mel alone, because a VC or TTS model
hands the vocoder nothing else.

Training: the recording's tracked F0 (`features.f0`) drives the generator and is the predictor's
target; the generator learns with log-mel L1 and multi-resolution STFT losses, and from
`adversarial_start_step` on also against multi-period and multi-resolution discriminators
(least-squares GAN with feature matching, HiFi-GAN's 45 : 1 : 2 balance of mel, adversarial and
feature-matching losses). Two optimizers, `generator` (the generator and the predictor) and
`discriminator` (set its own with `optim.overrides.discriminator.*`).

Inference always uses the predicted F0: `vocode` for the log-mels of VC and TTS exports
(`--vocoder`), and copy synthesis of a recording (`python -m voicetrain.infer VOC_EXPORT --input`),
which thus sounds as the vocoder will behind a VC or TTS model.

Exported graph: (log_mel [B, n_mels, F], f0 [B, F] Hz, noise [B, F, hop]) -> wave [B, F * hop].
F0 below 0 means "predict it from the log-mel" (what inference passes); 0 is unvoiced; a positive
value is used as given, which is how the export is verified on the trained model's own F0 (16-bit
weights move a predicted F0 a little, and a pulse train's phase then drifts far apart). The noise
is an input, so PyTorch and ONNX Runtime can be compared on one draw.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from voicetrain.audio import MelSpectrogram
from voicetrain.data.readers import Utterance
from voicetrain.features.base import FeatureExtractor
from voicetrain.metrics import aligned_cepstral_distance, f0_rmse_cents, multi_resolution_stft_distance
from voicetrain.metrics import voicing_decision_error, world_cepstra
from voicetrain.plots import MelPanel, comparison_image
from voicetrain.tasks.base import Batch, InferenceError, InferenceOutput, InferenceRequest, StepContext, Task
from voicetrain.tasks.base import StreamingStep, TaskContext, ValidationData, ValidationResult, crop
from voicetrain.chunking import Stitcher, frames_of_extractor, phase_advance, plan_for, positional_noise
from voicetrain.tasks.layers.losses import (MultiResolutionSTFTLoss, discriminator_loss, feature_matching_loss,
                                            generator_adversarial_loss, mel_l1_loss, pitch_losses)
from voicetrain.tasks.svc import extractor_of
from voicetrain.tasks.vc import spread_evenly
from voicetrain.tasks.vocoder_network import VocoderSettings, MelGenerator, MelPitch, VocoderGraph, WaveDiscriminator, frozen

# Validation and inference draw their noise from this seed: the same weights give the same output.
NOISE_SEED = 0
PREDICT_F0 = -1.0  # the graph's f0 input value that asks for the predicted F0


def tracked_f0(track: torch.Tensor) -> torch.Tensor:
    """F0 [..., F] in Hz, 0 where unvoiced, from an F0 feature [..., 2, F] (F0 row, voiced-flag row):
    the flag decides, whatever a tracker set to `unvoiced: interpolate` left in row 0."""
    return track[..., 0, :] * (track[..., 1, :] > 0.5).to(track.dtype)


class VocoderTask(Task):
    Settings = VocoderSettings
    inference_modules = ("pitch", "generator")  # the discriminator is training-only
    inference_input_names = ("log_mel", "f0", "noise")
    required_features = ("mel", "f0", "wave")
    inference_inputs = ("audio",)  # copy synthesis; speaker-independent
    # Exports written before the iSTFT head existed hold the source-filter generator.
    settings_before_keys_existed = {"generator": "source_filter", "istft_n_fft": 1024}

    def __init__(self, settings: VocoderSettings, context: TaskContext):
        super().__init__(settings, context)
        self.stft_loss = MultiResolutionSTFTLoss(settings.stft_resolutions)
        self.mel_spectrogram = MelSpectrogram(context.features)
        self.recording_cache: dict[str, np.ndarray] = {}  # WORLD mel-cepstra of held-out recordings
        self.f0_extractor: FeatureExtractor | None = None  # built on first use (validation tracks F0)

    def build_modules(self) -> dict[str, nn.Module]:
        return {"generator": MelGenerator(self.settings, self.context),
                "pitch": MelPitch(self.settings, self.context),
                "discriminator": WaveDiscriminator(self.settings)}

    def build_optimizers(self, modules: dict[str, nn.Module],
                         make_optimizer: Callable[[Sequence[nn.Parameter]], torch.optim.Optimizer]
                         ) -> dict[str, torch.optim.Optimizer]:
        """`generator` (the generator and the pitch predictor) and `discriminator`, both from step 0, so
        checkpoints and `optim.overrides.discriminator.*` see the same optimizers in every stage."""
        generator = [*modules["generator"].parameters(), *modules["pitch"].parameters()]
        return {"generator": make_optimizer(generator),
                "discriminator": make_optimizer(list(modules["discriminator"].parameters()))}

    # --- training ---------------------------------------------------------------------------

    def make_example(self, utterance: Utterance, features: dict[str, torch.Tensor],
                     generator: torch.Generator) -> dict[str, torch.Tensor]:
        length, frames = self.settings.segment_frames, features["f0"].shape[-1]
        start = int(torch.randint(0, max(frames - length, 0) + 1, (1,), generator=generator))
        cut = crop({name: features[name] for name in ("mel", "f0", "wave")}, start, length, self.context.hop_length)
        valid = frames - start
        if valid < length:
            # crop pads with zeros: silence for the wave and F0, but a loud level for the log-mel.
            cut["mel"][..., valid:] = features["mel"].amin(dim=-1, keepdim=True)
        return cut

    def training_step(self, batch: Batch, modules: dict[str, nn.Module], step: StepContext) -> dict[str, torch.Tensor]:
        settings = self.settings
        log_mel, f0, target = batch["mel"], tracked_f0(batch["f0"]), batch["wave"].float()
        # Drawn on the CPU from the global generator, which checkpoints keep: bit-exact resume, and
        # the same noise on any device.
        noise = torch.randn(f0.shape[0], f0.shape[-1], self.context.hop_length).to(f0.device)
        wave = modules["generator"](log_mel, f0, noise).float()
        log_f0, voiced_logit = modules["pitch"](log_mel)
        f0_loss, voicing_loss = pitch_losses(log_f0.float(), voiced_logit.float(), f0.float())
        losses = {"mel/l1": mel_l1_loss(wave, target, self.mel_spectrogram.to(wave.device)),
                  "stft/mrstft": self.stft_loss(wave, target), "pitch/log_f0_l1": f0_loss,
                  "pitch/voicing_bce": voicing_loss}
        loss = (settings.mel_weight * losses["mel/l1"] + settings.stft_weight * losses["stft/mrstft"]
                + settings.pitch_weight * (f0_loss + voicing_loss))
        if step.step >= settings.adversarial_start_step:
            adversarial = self.adversarial_losses(modules["discriminator"], wave, target, step)
            losses.update(adversarial)
            loss = (loss + settings.adversarial_weight * adversarial["adv/generator"]
                    + settings.feature_matching_weight * adversarial["adv/feature_matching"])
        step.optimize("generator", loss)
        return {name: value.detach() for name, value in losses.items()}

    def adversarial_losses(self, discriminator: nn.Module, wave: torch.Tensor, target: torch.Tensor,
                           step: StepContext) -> dict[str, torch.Tensor]:
        """Steps the discriminator on this batch, then returns the generator's adversarial and
        feature-matching losses against the updated discriminator (HiFi-GAN's order)."""
        real_logits, _ = discriminator(target)
        fake_logits, _ = discriminator(wave.detach())
        loss = discriminator_loss(real_logits, fake_logits)
        step.optimize("discriminator", loss)
        with frozen(discriminator) as fixed:
            with torch.no_grad():
                _, real_features = fixed(target)
            fake_logits, fake_features = fixed(wave)
            return {"adv/discriminator": loss, "adv/generator": generator_adversarial_loss(fake_logits),
                    "adv/feature_matching": feature_matching_loss(real_features, fake_features)}

    # --- vocoding ---------------------------------------------------------------------------

    def graph(self, modules: dict[str, nn.Module]) -> VocoderGraph:
        return VocoderGraph(modules["pitch"], modules["generator"])

    @torch.no_grad()
    def vocode(self, modules: dict[str, nn.Module], log_mel: torch.Tensor, chunk_seconds: float | None = None
               ) -> torch.Tensor:
        """A log-mel [n_mels, frames] (a VC or TTS model's output, or a recording's) -> wave
        [frames * hop], with the predicted F0 and seeded noise; a long one in chunks (`vocode_with_f0`)."""
        wave, _ = self.vocode_with_f0(modules, log_mel, chunk_seconds)
        return wave

    @torch.no_grad()
    def vocode_with_f0(self, modules: dict[str, nn.Module], log_mel: torch.Tensor, chunk_seconds: float | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """`vocode`, and the F0 [frames] (Hz, 0 unvoiced) it predicted and followed.

        A log-mel longer than `chunk_seconds` is vocoded in overlapping chunks (voicetrain.chunking):
        the F0 of each frame is predicted by the chunk that owns it first, each chunk's pulse train
        starts at the phase the frames before it reached, and the noise is keyed to frame positions,
        so a chunk computes what one pass would, up to its receptive field (one second of context)."""
        pitch, generator = modules["pitch"], modules["generator"]
        device = next(pitch.parameters()).device
        hop, frames = self.context.hop_length, log_mel.shape[-1]
        plan = plan_for(frames, self.context.sample_rate, hop, chunk_seconds)
        spans = plan.spans
        mel = log_mel.float().unsqueeze(0)
        f0 = torch.zeros(frames)
        for index, span in enumerate(spans):
            stop = spans[index + 1].start if index + 1 < len(spans) else span.end
            predicted = pitch.f0(mel[..., span.context_start:span.context_end].to(device))[0].float().cpu()
            f0[span.start:stop] = predicted[span.start - span.context_start:stop - span.context_start]
        stitcher = Stitcher(plan, scale=hop)
        for span in spans:
            start, end = span.context_start, span.context_end
            phase = torch.tensor([phase_advance(f0[:start + 1], self.context.sample_rate, hop)], device=device)
            noise = positional_noise(start, end, frames, hop, NOISE_SEED).to(device)
            wave = generator(mel[..., start:end].to(device), f0[start:end].unsqueeze(0).to(device), noise,
                             initial_phase=phase if start > 0 else None)
            stitcher.add(span, wave[0].float().cpu()[(span.start - start) * hop:(span.end - start) * hop])
        return stitcher.output, f0

    # --- validation -------------------------------------------------------------------------

    @torch.no_grad()
    def validate(self, modules: dict[str, nn.Module], data: ValidationData, previews: int) -> ValidationResult:
        """Copy synthesis of `validation_utterances` held-out recordings (spread over the held-out
        set), with the predicted F0 as inference does, each against its recording: WORLD MCD
        (`val/mcd`), MR-STFT distance (`val/mrstft`), and F0 RMSE in cents and voicing error of the
        output (tracked by the recipe's own tracker) against the recording's tracked F0. Previews:
        the first `previews` of them (`<name>/vocoded`, the recording once, and their log-mels)."""
        chosen = spread_evenly(list(range(len(data.utterances))), self.settings.validation_utterances)
        scores: dict[str, list[float]] = {name: [] for name in ("val/mcd", "val/mrstft", "val/f0_rmse_cents",
                                                                "val/voicing_error")}
        result = ValidationResult({})
        for position, index in enumerate(chosen):
            recording = data.features["wave"][index]
            wave, _ = self.vocode_with_f0(modules, data.features["mel"][index])
            wave = wave[:recording.shape[-1]]
            for name, value in self.copy_synthesis_scores(data, index, wave).items():
                if math.isfinite(value):  # F0 RMSE is undefined when no frame is voiced in both
                    scores[name].append(value)
            if position < previews:
                self.add_preview(result, data, index, wave)
        result.metrics.update({name: float(np.mean(values)) for name, values in scores.items() if values})
        return result

    def copy_synthesis_scores(self, data: ValidationData, index: int, wave: torch.Tensor) -> dict[str, float]:
        recording = data.features["wave"][index]
        reference = data.features["f0"][index]
        frames = reference.shape[-1]
        track = self.extractor_f0(wave.numpy())[:, :frames]
        output_f0, output_voiced = np.pad(track, ((0, 0), (0, frames - track.shape[-1])))
        reference_voiced = reference[1].numpy() > 0.5
        return {
            "val/mcd": aligned_cepstral_distance(self.recording_cepstra(data, index),
                                                 world_cepstra(wave.numpy(), self.context.sample_rate)),
            "val/mrstft": multi_resolution_stft_distance(recording.numpy(), wave.numpy()),
            "val/f0_rmse_cents": f0_rmse_cents(reference[0].numpy(), output_f0, reference_voiced, output_voiced > 0.5),
            "val/voicing_error": voicing_decision_error(reference_voiced, output_voiced > 0.5),
        }

    def extractor_f0(self, wave: np.ndarray) -> np.ndarray:
        """[2, frames] F0 and voiced flag of a wave by the run's own `features.f0` tracker and settings."""
        if self.f0_extractor is None:
            self.f0_extractor = extractor_of(self.context, "f0")
        return self.f0_extractor.extract(wave, self.context.sample_rate)

    def recording_cepstra(self, data: ValidationData, index: int) -> np.ndarray:
        """WORLD mel-cepstra of a held-out recording, computed once per run (it never changes)."""
        key = data.utterances[index].utterance_id
        if key not in self.recording_cache:
            self.recording_cache[key] = world_cepstra(data.features["wave"][index].numpy(), self.context.sample_rate)
        return self.recording_cache[key]

    def add_preview(self, result: ValidationResult, data: ValidationData, index: int, wave: torch.Tensor) -> None:
        """Audio `<name>/vocoded` (and the recording `<name>/recording`) and one image `<name>`: both log-mels."""
        utterance = data.utterances[index]
        name = utterance.utterance_id.replace("/", "_")
        result.audio[f"{name}/vocoded"] = wave
        result.reference_audio[f"{name}/recording"] = data.features["wave"][index]
        result.images[name] = comparison_image([
            MelPanel(f"recording: {utterance.utterance_id} ({utterance.speaker})", data.features["mel"][index].numpy()),
            MelPanel("vocoded from its log-mel, predicted F0", self.mel_spectrogram.cpu()(wave).numpy()),
        ], self.context.features)

    # --- export and inference ---------------------------------------------------------------

    def inference_model(self, modules: dict[str, nn.Module]) -> nn.Module:
        return self.graph(modules)

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        generator = torch.Generator().manual_seed(0)
        frames = 100
        log_mel = torch.tensor(self.context.mel_mean).view(1, -1, 1) + torch.tensor(
            self.context.mel_std).view(1, -1, 1) * torch.randn(1, len(self.context.mel_mean), frames, generator=generator)
        noise = torch.randn(1, frames, self.context.hop_length, generator=generator)
        return log_mel, torch.full((1, frames), PREDICT_F0), noise

    def verification_inputs(self, modules: dict[str, nn.Module]) -> tuple[torch.Tensor, ...]:
        """The example, its F0 pinned to the trained predictor's (see the module docstring)."""
        log_mel, _, noise = self.example_inputs()
        with torch.no_grad():
            f0 = modules["pitch"].f0(log_mel)
        return log_mel, f0, noise

    def onnx_dynamic_axes(self) -> dict[str, dict[int, str]]:
        frame_level = {0: "batch", 1: "frames"}
        return {"log_mel": {0: "batch", 2: "frames"}, "f0": frame_level, "noise": frame_level,
                "output": {0: "batch", 1: "samples"}}

    @torch.no_grad()
    def streaming(self, modules: dict[str, nn.Module], request: InferenceRequest) -> StreamingStep:
        """Copy synthesis block by block (`python -m voicetrain.stream`; voicetrain.tasks.streaming)."""
        from voicetrain.tasks.windowed import WindowedStep, mel_needs

        mel, features = self.context.extractor("mel"), self.context.features
        rate = self.context.sample_rate

        def analyse(samples: np.ndarray) -> np.ndarray:
            return mel.extract(samples, rate)

        hop = features.hop_length

        def graph_inputs(log_mel: torch.Tensor) -> tuple[torch.Tensor, ...]:
            # A window vocoded as `vocode` vocodes a short input: F0 predicted (-1), one draw of noise.
            frames = log_mel.shape[-1]
            return (log_mel.float().unsqueeze(0), -torch.ones(1, frames),
                    positional_noise(0, frames, frames, hop, NOISE_SEED))

        model = self.inference_model(modules)  # the pitch predictor and the generator: their reach
        return WindowedStep(analyse, model, graph_inputs, lambda wave: wave[0], mel_needs(model, features.n_fft, hop, 1),
                            hop, {"log_mel": {2: "frames"}, "f0": {1: "frames"}, "noise": {1: "frames"}})

    def infer(self, modules: dict[str, nn.Module], request: InferenceRequest) -> InferenceOutput:
        """Copy synthesis: `request.audio`'s log-mel (the run's own `features.mel`) vocoded with the
        predicted F0, as a VC or TTS model's log-mel would be. Returns the wave (as long as the
        input) and the F0 it followed."""
        if request.audio is None:
            raise InferenceError("a vocoder resynthesises a recording: pass --input in.wav (to vocode a VC or TTS "
                                 "model's output, give this export to that model's inference with --vocoder)")
        audio = request.audio.float().reshape(-1).numpy()
        shortest = self.context.features.n_fft // 2 + 1
        if audio.shape[-1] < shortest:
            raise InferenceError(f"the input has {audio.shape[-1]} samples; the vocoder needs at least {shortest} at "
                                 f"{self.context.sample_rate} Hz")
        log_mel = frames_of_extractor(extractor_of(self.context, "mel"), torch.from_numpy(audio),
                                      self.context.sample_rate, self.context.hop_length, request.chunk_seconds)
        wave, f0 = self.vocode_with_f0(modules, log_mel, request.chunk_seconds)
        return InferenceOutput(wave[:audio.shape[-1]], {"f0": f0})
