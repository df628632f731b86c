"""The voice-conversion recipe (`task=vc`): an AdaIN-VC style mel-to-mel model.

The content encoder applies instance normalisation after every block, which removes the
per-channel statistics that carry most of a speaker's timbre, and ends in a narrow bottleneck so
the decoder cannot copy the input. The decoder gets the speaker back from a learned embedding
through adaptive instance normalisation. Trained only to reconstruct; converting means decoding
one speaker's content with another speaker's embedding.
"""

from __future__ import annotations

import itertools
import logging

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from voicetrain.audio import MelSpectrogram, griffin_lim, minimum_samples
from voicetrain.audio_files import load_audio
from voicetrain.data.readers import Utterance
from voicetrain.features.reading import CorpusFeatures
from voicetrain.metrics import (NoSpeechError, aligned_cepstral_distance, mel_cepstral_distortion,
                                similarity_available, speaker_embedding, world_cepstra)
from voicetrain.plots import MelPanel, comparison_image
from voicetrain.tasks.base import InferenceError, InferenceRequest, StepContext, StreamingStep, Task, TaskContext
from voicetrain.tasks.base import Batch, ValidationData, ValidationResult
from voicetrain.chunking import Span, Stitcher, framed_slice, plan_for, whole_input_instance_norm
from voicetrain.tasks.vc_network import VoiceConversionSettings, VoiceConversionModel
from voicetrain.tasks.windowed import Bound, WindowedStep, mel_needs

log = logging.getLogger("voicetrain")
# Frames either side of a streamed window's output that its vocoder may reach: a neural vocoder's
# convolutions (4 ConvNeXt blocks of kernel 7 reach 15 frames), Griffin-Lim's STFT and iterations.
STREAM_VOCODER_MARGIN_FRAMES = 16
STREAM_GRIFFIN_LIM_MARGIN_FRAMES = 4


def cosine(first: np.ndarray, second: np.ndarray) -> float:
    return float(np.dot(first, second) / (np.linalg.norm(first) * np.linalg.norm(second)))


def parallel_pairs(utterances: list[Utterance], limit: int) -> list[tuple[int, int]]:
    """(source index, target index) pairs of different speakers reading the same sentence,
    spread evenly over all such pairs so every speaker and sentence is represented."""
    by_sentence: dict[str, list[int]] = {}
    for index, utterance in enumerate(utterances):
        if utterance.sentence_id is not None:
            by_sentence.setdefault(utterance.sentence_id, []).append(index)
    pairs = [
        (source, target)
        for sentence in sorted(by_sentence)
        for source, target in itertools.permutations(by_sentence[sentence], 2)
        if utterances[source].speaker != utterances[target].speaker
    ]
    return spread_evenly(pairs, limit)


def voice_pairs(utterances: list[Utterance], limit: int) -> list[tuple[int, int]]:
    """For previews when no sentence was read twice: (source index, target index) where the target
    is the first held-out recording of the next speaker (in name order), a sample of the voice to
    convert to rather than the same words."""
    first_of_speaker: dict[str, int] = {}
    for index, utterance in enumerate(utterances):
        first_of_speaker.setdefault(utterance.speaker, index)
    speakers = sorted(first_of_speaker)
    if len(speakers) < 2:
        return []
    following = {speaker: speakers[(position + 1) % len(speakers)] for position, speaker in enumerate(speakers)}
    pairs = [(index, first_of_speaker[following[utterance.speaker]]) for index, utterance in enumerate(utterances)]
    return spread_evenly(pairs, limit)


def spread_evenly(pairs: list[tuple[int, int]], limit: int) -> list[tuple[int, int]]:
    """`limit` of `pairs` at even strides (all of them when there are no more than `limit`)."""
    if len(pairs) <= limit:
        return pairs
    stride = len(pairs) / limit
    return [pairs[int(position * stride)] for position in range(limit)]


class VoiceConversionTask(Task):
    inference_inputs = ("audio", "speaker", "vocoder")
    Settings = VoiceConversionSettings
    inference_modules = ("model",)
    inference_input_names = ("log_mel", "speaker")

    def __init__(self, settings: VoiceConversionSettings, context: TaskContext):
        super().__init__(settings, context)
        self.speaker_index = {speaker: index for index, speaker in enumerate(context.speakers)}
        self.reported_no_parallel_pairs = False  # said once per launch, not at every validation
        self.recording_cache: dict[object, np.ndarray] = {}  # WORLD mel-cepstra, embeddings of held-out recordings

    def check_data(self, utterances: list[Utterance], features: CorpusFeatures) -> None:
        if len(self.context.speakers) < 2:
            log.warning("this corpus has one speaker (%s): the model learns to reconstruct that voice but has no other "
                        "voice to convert to or from; voice conversion needs recordings of two or more speakers",
                        ", ".join(self.context.speakers))

    def build_modules(self) -> dict[str, nn.Module]:
        context = self.context
        model = VoiceConversionModel(
            self.settings, context.features.n_mels, len(context.speakers), context.mel_mean, context.mel_std
        )
        return {"model": model}

    def make_example(self, utterance: Utterance, features: dict[str, torch.Tensor],
                     generator: torch.Generator) -> dict[str, torch.Tensor]:
        mel = features["mel"]
        length = self.settings.segment_frames
        frames = mel.shape[-1]
        start = int(torch.randint(0, max(frames - length, 0) + 1, (1,), generator=generator))
        segment = mel[:, start:start + length]
        mask = torch.zeros(length)
        mask[: segment.shape[-1]] = 1.0
        # Pad short utterances with the quietest value; the mask keeps padding out of the loss.
        segment = functional.pad(segment, (0, length - segment.shape[-1]), value=float(mel.min()))
        return {"mel": segment, "mask": mask, "speaker": torch.tensor(self.speaker_index[utterance.speaker])}

    def training_step(self, batch: Batch, modules: dict[str, nn.Module], step: StepContext) -> dict[str, torch.Tensor]:
        model = modules["model"]
        reconstruction = model(batch["mel"], batch["speaker"])
        std = self.normalizer_std(model)
        # L1 in normalised units, so every mel bin counts equally whatever its loudness.
        error = ((reconstruction - batch["mel"]).abs() / std).mean(dim=1)
        loss = (error * batch["mask"]).sum() / batch["mask"].sum().clamp(min=1.0)
        step.optimize("model", loss)
        return {"mel/l1": loss.detach()}

    @staticmethod
    def normalizer_std(model: nn.Module) -> torch.Tensor:
        return getattr(model, "module", model).mel_std

    @torch.no_grad()
    def validate(self, modules: dict[str, nn.Module], data: ValidationData, previews: int) -> ValidationResult:
        """Scores reconstruction on every held-out utterance and, where the same sentence was read by
        several speakers, conversion against the other speaker's reading (`val/mcd`). Previews convert
        the first `previews` pairs, the same ones at every validation."""
        model = modules["model"]
        device = next(model.parameters()).device
        reconstruction_scores = []
        for utterance, mel in zip(data.utterances, data.mels):
            speaker = torch.tensor([self.speaker_index[utterance.speaker]], device=device)
            output = model(mel.unsqueeze(0).to(device), speaker)[0].float().cpu()
            reconstruction_scores.append(mel_cepstral_distortion(mel.numpy(), output.numpy()))
        result = ValidationResult({"val/reconstruction_mcd": sum(reconstruction_scores) / len(reconstruction_scores)})
        pairs = parallel_pairs(data.utterances, self.settings.validation_pairs)
        if pairs:
            result.metrics.update(self.conversion_metrics(model, data, pairs))
        else:
            self.report_no_parallel_pairs(data.utterances)
        for source, target in (pairs or voice_pairs(data.utterances, self.settings.validation_pairs))[:previews]:
            self.add_preview(result, model, data, source, target, parallel=bool(pairs))
        return result

    def conversion_metrics(self, model: nn.Module, data: ValidationData, pairs: list[tuple[int, int]]
                           ) -> dict[str, float]:
        """`val/mcd` as papers compute it (WORLD mel-cepstra of the vocoded conversion against the
        target's recording, DTW, dB) next to `val/mcd_baseline` (the source recording against the
        target) and `val/mcd_source_speaker` (the model keeping the source speaker: conversion must
        beat this too, or the gain over the baseline would come from smoothing alone); the same
        three on log-mel cepstra as `val/logmel_*`."""
        features = self.context.features
        scores: dict[str, list[float]] = {}
        for source, target in pairs:
            source_mel, target_mel = data.mels[source], data.mels[target]
            target_cepstra = self.recording_cepstra(data.utterances[target])
            outputs = {"": self.convert(model, source_mel, data.utterances[target].speaker),
                       "_source_speaker": self.convert(model, source_mel, data.utterances[source].speaker)}
            for suffix, output in outputs.items():
                wave = griffin_lim(output, features).numpy()
                scores.setdefault(f"val/mcd{suffix}", []).append(
                    aligned_cepstral_distance(target_cepstra, world_cepstra(wave, features.sample_rate)))
                if suffix == "" and similarity_available():
                    similarity = self.similarity_to_recording(wave, data.utterances[target])
                    if similarity is not None:
                        scores.setdefault("val/speaker_similarity", []).append(similarity)
                scores.setdefault(f"val/logmel_mcd{suffix}", []).append(
                    mel_cepstral_distortion(target_mel.numpy(), output.numpy()))
            if similarity_available():  # the optional extra `similarity` (Resemblyzer)
                scores.setdefault("val/speaker_similarity_baseline", []).append(
                    cosine(self.recording_embedding(data.utterances[source]),
                           self.recording_embedding(data.utterances[target])))
            scores.setdefault("val/mcd_baseline", []).append(
                aligned_cepstral_distance(target_cepstra, self.recording_cepstra(data.utterances[source])))
            scores.setdefault("val/logmel_mcd_baseline", []).append(
                mel_cepstral_distortion(target_mel.numpy(), source_mel.numpy()))
        return {name: sum(values) / len(values) for name, values in scores.items()}

    def similarity_to_recording(self, wave: np.ndarray, utterance: Utterance) -> float | None:
        """Cosine similarity of the speaker embeddings of a conversion and of `utterance`'s
        recording; None where the conversion holds no speech (an early model's output often does
        not), so `val/speaker_similarity` averages the conversions that do, and is absent when none does."""
        try:
            embedding = speaker_embedding(wave, self.context.sample_rate)
        except NoSpeechError:
            return None
        return cosine(embedding, self.recording_embedding(utterance))

    def recording_embedding(self, utterance: Utterance) -> np.ndarray:
        """The speaker embedding of a held-out recording, computed once per run."""
        key = ("embedding", utterance.utterance_id)
        if key not in self.recording_cache:
            self.recording_cache[key] = speaker_embedding(
                load_audio(utterance.path, self.context.sample_rate), self.context.sample_rate)
        return self.recording_cache[key]

    def recording_cepstra(self, utterance: Utterance) -> np.ndarray:
        """WORLD mel-cepstra of a held-out recording, computed once per run (it never changes)."""
        if utterance.utterance_id not in self.recording_cache:
            wave = load_audio(utterance.path, self.context.features.sample_rate)
            self.recording_cache[utterance.utterance_id] = world_cepstra(wave, self.context.features.sample_rate)
        return self.recording_cache[utterance.utterance_id]

    def convert(self, model: nn.Module, source_mel: torch.Tensor, target_speaker: str) -> torch.Tensor:
        device = next(model.parameters()).device
        speaker = torch.tensor([self.speaker_index[target_speaker]], device=device)
        return model(source_mel.unsqueeze(0).to(device), speaker)[0].float().cpu()

    def add_preview(self, result: ValidationResult, model: nn.Module, data: ValidationData, source: int, target: int,
                    parallel: bool) -> None:
        """Audio `<pair>/converted` (and the recordings `<pair>/source`, `<pair>/target`) and one
        image `<pair>`: the three log-mels on one colour scale."""
        features = self.context.features
        source_utterance, target_utterance = data.utterances[source], data.utterances[target]
        name = f"{source_utterance.utterance_id}_to_{target_utterance.speaker}".replace("/", "_")
        converted = self.convert(model, data.mels[source], target_utterance.speaker)
        result.audio[f"{name}/converted"] = griffin_lim(converted, features)
        for role, utterance in (("source", source_utterance), ("target", target_utterance)):
            recording = load_audio(utterance.path, features.sample_rate)
            result.reference_audio[f"{name}/{role}"] = torch.from_numpy(recording)
        target_title = "target" if parallel else "target speaker's voice (another sentence)"
        result.images[name] = comparison_image([
            MelPanel(f"source: {source_utterance.utterance_id} ({source_utterance.speaker})",
                     data.mels[source].numpy()),
            MelPanel(f"{target_title}: {target_utterance.utterance_id} ({target_utterance.speaker})",
                     data.mels[target].numpy()),
            MelPanel(f"converted to {target_utterance.speaker}", converted.numpy()),
        ], features)

    def report_no_parallel_pairs(self, utterances: list[Utterance]) -> None:
        if self.reported_no_parallel_pairs:
            return
        self.reported_no_parallel_pairs = True
        log.warning(
            "validation found no parallel pairs among its %d held-out utterances (the same sentence read by two or "
            "more speakers, matched by sentence id: data=bundled has them), so conversion is not scored and val/mcd "
            "is not reported; val/reconstruction_mcd is", len(utterances))

    def inference_model(self, modules: dict[str, nn.Module]) -> nn.Module:
        return modules["model"]

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        generator = torch.Generator().manual_seed(0)
        mel = torch.tensor(self.context.mel_mean).view(1, -1, 1) + torch.randn(
            1, self.context.features.n_mels, 100, generator=generator
        )
        return mel, torch.tensor([len(self.context.speakers) - 1])

    def onnx_dynamic_axes(self) -> dict[str, dict[int, str]]:
        # The model is fully convolutional: any number of frames, any batch.
        return {"log_mel": {0: "batch", 2: "frames"}, "speaker": {0: "batch"}, "output": {0: "batch", 2: "frames"}}

    @torch.no_grad()
    def infer(self, modules: dict[str, nn.Module], request: InferenceRequest) -> torch.Tensor:
        """Converts `request.audio` to `request.speaker`'s voice, vocoded by `request.vocoder` (a
        task=vocoder export), or by Griffin-Lim (a preview vocoder: intelligible but buzzy)."""
        speaker = self.speaker_id(request.speaker)
        features = self.context.features
        if request.text is not None:
            raise InferenceError("voice conversion converts a recording and reads no text: drop --text and pass "
                                 "--input in.wav (text-to-speech exports, task=tts, take --text)")
        if request.audio is None:
            raise InferenceError("voice conversion needs an input recording (--input in.wav)")
        if request.audio.shape[-1] < minimum_samples(features):
            raise InferenceError(f"the input has {request.audio.shape[-1]} samples; voice conversion needs at least "
                                 f"{minimum_samples(features)} at {features.sample_rate} Hz")
        converted = self.convert_in_chunks(self.inference_model(modules), request.audio.float().reshape(-1), speaker,
                                           request.chunk_seconds)
        if request.vocoder is not None:
            return request.vocoder(converted)
        return griffin_lim(converted, features, chunk_seconds=request.chunk_seconds)

    def streaming(self, modules: dict[str, nn.Module], request: InferenceRequest) -> StreamingStep:
        """Live conversion block by block (`python -m voicetrain.stream`): each window's log-mel
        converted with running instance-norm statistics, then vocoded by `request.vocoder` or
        Griffin-Lim, which are given a fixed margin of frames either side (their reach is not known
        from here)."""
        speaker = torch.tensor([self.speaker_id(request.speaker)])
        model = self.inference_model(modules)
        features = self.context.features
        mel_spectrogram = MelSpectrogram(features)
        vocoder = request.vocoder

        def analyse(samples: np.ndarray) -> np.ndarray:
            return mel_spectrogram(torch.from_numpy(samples)).numpy()

        def finish(converted: torch.Tensor) -> torch.Tensor:
            return vocoder(converted[0]) if vocoder is not None else griffin_lim(converted[0], features)

        margin = STREAM_VOCODER_MARGIN_FRAMES if vocoder is not None else STREAM_GRIFFIN_LIM_MARGIN_FRAMES
        return WindowedStep(analyse, Bound(model, speaker), lambda mel: (mel.unsqueeze(0),), finish,
                            mel_needs(model, features.n_fft, features.hop_length, margin), features.hop_length,
                            {"log_mel": {2: "frames"}})

    def convert_in_chunks(self, model: nn.Module, audio: torch.Tensor, speaker: int,
                          chunk_seconds: float | None) -> torch.Tensor:
        """The converted log-mel [n_mels, samples // hop + 1] of a wave [samples], computed in
        overlapping chunks (voicetrain.chunking) crossfaded at the joins. Each chunk's log-mel
        comes from the samples it needs alone; the instance normalisations use the whole input's
        statistics, measured in one streaming pass per layer before the chunks are converted, so a
        chunk computes what one pass over the whole input would, up to float rounding."""
        features = self.context.features
        hop = features.hop_length
        receptive = (self.settings.encoder_layers + self.settings.decoder_layers) * (self.settings.kernel_size // 2)
        plan = plan_for(audio.shape[-1] // hop + 1, features.sample_rate, hop, chunk_seconds, receptive)
        spans = plan.spans
        mel_spectrogram = MelSpectrogram(features)
        device = next(model.parameters()).device
        speaker_id = torch.tensor([speaker], device=device)

        def computed(span: Span) -> torch.Tensor:
            log_mel = framed_slice(mel_spectrogram, audio, span.context_start, span.context_end, hop,
                                   features.n_fft // 2)
            return model(log_mel.unsqueeze(0).to(device), speaker_id)[0].float().cpu()

        stitcher = Stitcher(plan, leading=(features.n_mels,))
        with whole_input_instance_norm(model, computed, spans):
            for span in spans:
                stitcher.add(span, computed(span)[:, span.owned])
        return stitcher.output
