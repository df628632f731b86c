"""The text-to-speech recipe (`task=tts`): a small multi-speaker text-to-mel model that learns
its own alignment, in the manner of Glow-TTS and Grad-TTS.

A convolutional character encoder predicts, for every character, the mean `mu` of the mel frames
it should produce (in normalised units, unit variance). Monotonic alignment search (MAS) finds the
monotonic, non-skipping path through (characters x frames) that makes the recording most likely
under those means; the path gives each character its duration. Three losses train it:
`align/prior` pulls each character's mean towards the frames MAS gave it, `duration/l2` teaches a
duration predictor the (detached) log durations, and `mel/l1` trains a convolutional decoder,
conditioned on the speaker, to refine the expanded encoder output into the mel. Inference
predicts durations (scaled by `length_scale`), expands and decodes; Griffin-Lim makes it audible.

The exported `inference_model` renders mel from (text ids, speaker, durations): its output length
is then a function of its inputs alone, so an fp16 or ONNX export can be checked against the
trained model exactly. Predicting durations rounds a continuous value, and 16-bit weights would
move some characters across a rounding boundary; `infer` predicts them first with the export's
own duration predictor.
"""

from __future__ import annotations

import logging
import textwrap

import numpy as np
import torch
from torch import nn

from voicetrain.audio import griffin_lim
from voicetrain.audio_files import load_audio
from voicetrain.data.readers import DataError, Utterance
from voicetrain.features.reading import CorpusFeatures
from voicetrain.metrics import aligned_cepstral_distance, mel_cepstral_distortion, world_cepstra
from voicetrain.plots import AlignmentPanel, MelPanel, comparison_image
from voicetrain.tasks.base import InferenceError, InferenceRequest, StepContext, Task, TaskContext
from voicetrain.tasks.base import Batch, ValidationData, ValidationResult
from voicetrain.tasks.layers.alignment import gaussian_log_likelihood
from voicetrain.tasks.tts_network import TextToSpeechSettings, TextToMelInference, TextToMelModel
from voicetrain.text import PAD_ID, CharacterTokenizer

log = logging.getLogger("voicetrain")

# A sentence for the export's parity check and ONNX trace; its durations are a fixed pattern.
EXAMPLE_SENTENCE = "The birch canoe slid on the smooth planks."


def spread(count: int, limit: int) -> list[int]:
    """`limit` indices spread evenly over range(count) (all of them when count <= limit)."""
    if count <= limit:
        return list(range(count))
    stride = count / limit
    return [int(position * stride) for position in range(limit)]


# --- the task -------------------------------------------------------------------------------


class TextToSpeechTask(Task):
    inference_inputs = ("text", "speaker", "vocoder")
    Settings = TextToSpeechSettings
    inference_modules = ("model",)
    inference_input_names = ("text_ids", "speaker", "durations")

    def __init__(self, settings: TextToSpeechSettings, context: TaskContext):
        super().__init__(settings, context)
        self.tokenizer = CharacterTokenizer(settings.characters)
        self.speaker_index = {speaker: index for index, speaker in enumerate(context.speakers)}
        self.recording_cache: dict[str, np.ndarray] = {}  # WORLD mel-cepstra of held-out recordings

    def build_modules(self) -> dict[str, nn.Module]:
        context = self.context
        return {"model": TextToMelModel(self.settings, context.features.n_mels, len(context.speakers),
                                        context.mel_mean, context.mel_std)}

    def check_data(self, utterances: list[Utterance], features: CorpusFeatures) -> None:
        problems = []
        for index, utterance in enumerate(utterances):
            try:
                self.text_ids(utterance, features.frames(index))
            except DataError as error:
                problems.append(str(error))
        if problems:
            shown = "\n  ".join(problems[:5])
            more = f"\n  ... and {len(problems) - 5} more" if len(problems) > 5 else ""
            raise DataError(f"{len(problems)} utterance(s) cannot train task=tts:\n  {shown}{more}")

    def text_ids(self, utterance: Utterance, frames: int) -> list[int]:
        if utterance.text is None:
            raise DataError(
                f"{utterance.path} has no transcript, and task=tts learns from text: every utterance needs one. "
                "data=bundled and data=ljspeech read it from the text column of metadata.csv; data=speakers reads "
                f"a sibling file with the same stem ({utterance.path.with_suffix('.txt').name} or .lab). Add the "
                "transcripts, or train this corpus with task=vc"
            )
        ids = self.tokenizer.encode(utterance.text)
        if not ids or len(ids) > frames:
            raise DataError(
                f"{utterance.path}: its transcript has {len(ids)} characters ({utterance.text!r}) for {frames} mel "
                "frames; task=tts aligns at least one frame to each character. Check that the transcript belongs to "
                "this recording, or remove the utterance"
            )
        return ids

    def make_example(self, utterance: Utterance, features: dict[str, torch.Tensor],
                     generator: torch.Generator) -> dict[str, torch.Tensor]:
        # Whole utterances: text and audio only line up as a pair (no random crop, no randomness).
        mel = features["mel"]
        ids = self.text_ids(utterance, mel.shape[-1])
        return {"text_ids": torch.tensor(ids, dtype=torch.long), "mel": mel,
                "speaker": torch.tensor(self.speaker_index[utterance.speaker])}

    def collate(self, examples: list[dict[str, torch.Tensor]]) -> Batch:
        text_lengths = torch.tensor([len(example["text_ids"]) for example in examples])
        mel_lengths = torch.tensor([example["mel"].shape[-1] for example in examples])
        text_ids = torch.full((len(examples), int(text_lengths.max())), PAD_ID, dtype=torch.long)
        mel = torch.zeros(len(examples), examples[0]["mel"].shape[0], int(mel_lengths.max()))
        for index, example in enumerate(examples):
            text_ids[index, : text_lengths[index]] = example["text_ids"]
            # Padding stays out of every loss and of the alignment through the length masks.
            mel[index, :, : mel_lengths[index]] = example["mel"]
        speaker = torch.stack([example["speaker"] for example in examples])
        return {"text_ids": text_ids, "text_lengths": text_lengths, "mel": mel, "mel_lengths": mel_lengths,
                "speaker": speaker}

    def training_step(self, batch: Batch, modules: dict[str, nn.Module], step: StepContext) -> dict[str, torch.Tensor]:
        output = modules["model"](batch["text_ids"], batch["text_lengths"], batch["mel"], batch["mel_lengths"],
                                  batch["speaker"])
        losses = self.losses(output)
        settings = self.settings
        total = (settings.mel_weight * losses["mel/l1"] + settings.prior_weight * losses["align/prior"]
                 + settings.duration_weight * losses["duration/l2"])
        step.optimize("model", total)
        return {**{name: loss.detach() for name, loss in losses.items()}, "loss/total": total.detach()}

    @staticmethod
    def losses(output: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        frame_mask, text_mask = output["frame_mask"], output["text_mask"]
        # Means over valid (frame, mel bin) cells, in normalised units: every bin counts alike.
        cells = frame_mask.sum() * output["target"].shape[1]
        mel_l1 = ((output["prediction"] - output["target"]).abs() * frame_mask).sum() / cells
        prior = (0.5 * (output["target"] - output["aligned_mu"]).pow(2) * frame_mask).sum() / cells
        target_log_durations = torch.log(output["durations"].clamp(min=1.0))
        duration = ((output["log_durations"] - target_log_durations).pow(2) * text_mask).sum() / text_mask.sum()
        return {"mel/l1": mel_l1, "align/prior": prior, "duration/l2": duration}

    @torch.no_grad()
    def validate(self, modules: dict[str, nn.Module], data: ValidationData, previews: int) -> ValidationResult:
        """Synthesises each held-out utterance's text with its speaker (predicted durations) and
        scores it against the recording: `val/mcd` as papers compute it (WORLD mel-cepstra of the
        Griffin-Lim-vocoded synthesis, DTW, dB) and `val/logmel_mcd` on log-mel cepstra; also the
        teacher-forced decoder, whose alignment comes from MAS on the recording."""
        model: TextToMelModel = modules["model"]
        device = next(model.parameters()).device
        synthesized_scores, world_scores, teacher_scores, length_ratios = [], [], [], []
        result = ValidationResult({})
        # The same utterances at every validation: the first `previews` of them are previewed.
        for number, index in enumerate(spread(len(data.utterances), self.settings.validation_utterances)):
            utterance, recorded = data.utterances[index], data.mels[index]
            ids = torch.tensor([self.text_ids(utterance, recorded.shape[-1])], device=device)
            speaker = torch.tensor([self.speaker_index[utterance.speaker]], device=device)
            durations = model.predict_durations(ids, speaker, self.settings.length_scale)
            synthesized = model.synthesize(ids, speaker, durations)[0].float().cpu()
            synthesized_scores.append(mel_cepstral_distortion(recorded.numpy(), synthesized.numpy()))
            world_scores.append(aligned_cepstral_distance(self.recording_cepstra(utterance), world_cepstra(
                griffin_lim(synthesized, self.context.features).numpy(), self.context.sample_rate)))
            length_ratios.append(synthesized.shape[-1] / recorded.shape[-1])
            lengths = torch.tensor([ids.shape[1]], device=device), torch.tensor([recorded.shape[-1]], device=device)
            forced = model(ids, lengths[0], recorded.unsqueeze(0).to(device), lengths[1], speaker)
            teacher = model.denormalize(forced["prediction"])[0].float().cpu()
            teacher_scores.append(mel_cepstral_distortion(recorded.numpy(), teacher.numpy()))
            if number < previews:
                self.add_preview(result, model, utterance, recorded, synthesized, ids, speaker, forced)
        count = len(synthesized_scores)
        result.metrics.update({
            "val/mcd": sum(world_scores) / count,
            "val/logmel_mcd": sum(synthesized_scores) / count,
            "val/logmel_mcd_teacher_forced": sum(teacher_scores) / count,
            "val/length_ratio": sum(length_ratios) / count,  # synthesised frames / recorded frames
        })
        return result

    def recording_cepstra(self, utterance: Utterance) -> np.ndarray:
        """WORLD mel-cepstra of a held-out recording, computed once per run (it never changes)."""
        if utterance.utterance_id not in self.recording_cache:
            wave = load_audio(utterance.path, self.context.sample_rate)
            self.recording_cache[utterance.utterance_id] = world_cepstra(wave, self.context.sample_rate)
        return self.recording_cache[utterance.utterance_id]

    def add_preview(self, result: ValidationResult, model: TextToMelModel, utterance: Utterance, recorded: torch.Tensor,
                    synthesized: torch.Tensor, ids: torch.Tensor, speaker: torch.Tensor,
                    forced: dict[str, torch.Tensor]) -> None:
        """Audio `<utterance>/synthesis` (and the recording `<utterance>/recording`) and one image
        `<utterance>`: recording and synthesis on one colour scale, and the alignment MAS found on
        the recording (the posterior over characters per frame, the path in red)."""
        features = self.context.features
        name = utterance.utterance_id.replace("/", "_")
        result.audio[f"{name}/synthesis"] = griffin_lim(synthesized, features)
        result.reference_audio[f"{name}/recording"] = torch.from_numpy(load_audio(utterance.path, features.sample_rate))
        device = ids.device
        _, mu = model.encode(ids, torch.ones(1, 1, ids.shape[1], device=device), model.speakers(speaker))
        posterior = torch.softmax(gaussian_log_likelihood(forced["target"], mu)[0].float(), dim=0).cpu().numpy()
        result.images[name] = comparison_image([
            MelPanel(f"recording: {utterance.utterance_id} ({utterance.speaker})", recorded.numpy()),
            MelPanel("synthesis (predicted durations)", synthesized.numpy()),
            AlignmentPanel(f"alignment on the recording: {textwrap.shorten(utterance.text or '', 70)}", posterior,
                           forced["path"][0].cpu().numpy()),
        ], features)

    def inference_model(self, modules: dict[str, nn.Module]) -> nn.Module:
        return TextToMelInference(modules["model"], self.settings.length_scale)

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        ids = torch.tensor([self.tokenizer.encode(EXAMPLE_SENTENCE)])
        durations = (2 + torch.arange(ids.shape[1]) % 5).unsqueeze(0)
        return ids, torch.tensor([len(self.context.speakers) - 1]), durations

    def verification_inputs(self, modules: dict[str, nn.Module]) -> tuple[torch.Tensor, ...]:
        """The example sentence with the trained (fp32) model's predicted durations: the exported
        graph's own predictor, on 16-bit weights, could round a duration the other way."""
        ids, speaker, _ = self.example_inputs()
        with torch.no_grad():
            return ids, speaker, modules["model"].predict_durations(ids, speaker, self.settings.length_scale)

    def onnx_dynamic_axes(self) -> dict[str, dict[int, str]]:
        # One utterance per call (each has its own length); any number of characters and frames.
        return {"text_ids": {1: "characters"}, "durations": {1: "characters"}, "output": {2: "frames"}}

    @torch.no_grad()
    def infer(self, modules: dict[str, nn.Module], request: InferenceRequest) -> torch.Tensor:
        """Speaks `request.text` with `request.speaker`'s voice (the only speaker when there is one),
        vocoded by `request.vocoder`, or by Griffin-Lim (a preview vocoder: intelligible but buzzy)."""
        if request.text is None:
            raise InferenceError('text-to-speech speaks text: pass --text "Hello there."')
        if request.audio is not None:
            raise InferenceError("text-to-speech takes no input recording: drop --input and pass --text")
        name = request.speaker
        if name is None and len(self.context.speakers) == 1:
            name = self.context.speakers[0]
        speaker = torch.tensor([self.speaker_id(name)])
        ids = self.tokenizer.encode(request.text)
        if not ids:
            raise InferenceError(f"--text {request.text!r} holds nothing to speak")
        unknown = self.tokenizer.unknown_characters(request.text)
        if unknown:
            log.warning("characters outside the model's alphabet are spoken as one 'unknown' symbol: %s",
                        " ".join(repr(character) for character in unknown))
        text_ids = torch.tensor([ids])
        model: TextToMelModel = modules["model"]
        durations = model.predict_durations(text_ids, speaker, self.settings.length_scale)
        log_mel = self.inference_model(modules)(text_ids, speaker, durations)[0]
        # The text sets the length: the model runs in one pass, the vocoder (or Griffin-Lim) in chunks.
        if request.vocoder is not None:
            return request.vocoder(log_mel)
        return griffin_lim(log_mel, self.context.features, chunk_seconds=request.chunk_seconds)
