"""The tts recipe's settings (the keys of conf/task/tts.yaml) and networks (`task=tts`,
voicetrain.tasks.tts; the task imports both from here): the character encoder that predicts
each character's mel mean, the duration predictor, the speaker-conditioned decoder, and the
inference graph that renders a log-mel from text ids, a speaker and durations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional

from voicetrain.config import limits
from voicetrain.tasks.layers.alignment import (durations_to_path, gaussian_log_likelihood, monotonic_alignment_search,
                                               sequence_mask)
from voicetrain.tasks.layers.statistics import register_mel_statistics
from voicetrain.text import PAD_ID, CharacterTokenizer



@dataclass
class TextToSpeechSettings:
    """The keys of conf/task/tts.yaml (which holds their values: the one source of defaults)."""

    characters: str  # the model's alphabet (after lower-casing); others map to one "unknown" id
    hidden_channels: int = limits(minimum=1)
    speaker_channels: int = limits(minimum=1)
    encoder_layers: int = limits(minimum=1)
    decoder_layers: int = limits(minimum=1)
    duration_layers: int = limits(minimum=1)
    kernel_size: int = limits(minimum=1)
    dropout: float = limits(minimum=0, maximum=0.99)  # text encoder and duration predictor (per character: cheap)
    mel_weight: float = limits(minimum=0)
    prior_weight: float = limits(minimum=0)
    duration_weight: float = limits(minimum=0)
    length_scale: float = limits(minimum_exclusive=0)  # > 1 speaks slower, < 1 faster
    validation_utterances: int = limits(minimum=1)  # held-out utterances synthesised and scored per validation

    def __post_init__(self) -> None:
        CharacterTokenizer(self.characters)  # raises on an empty or repeating alphabet
        if self.kernel_size % 2 == 0:
            raise ValueError(f"TextToSpeechSettings.kernel_size={self.kernel_size!r}: must be odd (same-length "
                             "convolutions), e.g. 5")


# --- model ----------------------------------------------------------------------------------



class ChannelNorm(nn.Module):
    """LayerNorm over the channels of [B, C, T] (ONNX opset 17 LayerNormalization)."""

    def __init__(self, channels: int, affine: bool = True):
        super().__init__()
        self.norm = nn.LayerNorm(channels, elementwise_affine=affine)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.norm(hidden.transpose(1, 2)).transpose(1, 2)


class ConvBlock(nn.Module):
    def __init__(self, channels: int, kernel_size: int, dropout: float):
        super().__init__()
        self.convolution = nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2)
        self.normalization = ChannelNorm(channels)
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # Inputs arrive masked and outputs leave masked: padding stays zero, so a padded item's
        # convolutions see what an unpadded one sees at its end (inference has no padding).
        branch = self.dropout(functional.gelu(self.convolution(hidden)))
        return self.normalization(hidden + branch) * mask


class SpeakerBlock(nn.Module):
    """A residual convolution whose output is scaled and shifted per speaker (FiLM). No
    normalisation and no dropout: this runs at the frame rate, where every elementwise pass over
    [batch, channels, frames] costs more than the convolution's arithmetic on a CPU."""

    def __init__(self, channels: int, speaker_channels: int, kernel_size: int):
        super().__init__()
        self.convolution = nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2)
        self.style = nn.Linear(speaker_channels, 2 * channels)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor, speaker: torch.Tensor) -> torch.Tensor:
        scale, shift = self.style(speaker).unsqueeze(-1).chunk(2, dim=1)
        branch = torch.addcmul(shift, self.convolution(hidden), 1 + scale)
        return (hidden + functional.gelu(branch)) * mask


class DurationPredictor(nn.Module):
    def __init__(self, channels: int, kernel_size: int, layers: int, dropout: float):
        super().__init__()
        self.blocks = nn.ModuleList(ConvBlock(channels, kernel_size, dropout) for _ in range(layers))
        self.output = nn.Conv1d(channels, 1, 1)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            hidden = block(hidden, mask)
        return (self.output(hidden) * mask).squeeze(1)  # log durations [B, T]


class TextToMelModel(nn.Module):
    """forward(text_ids, text_lengths, mel, mel_lengths, speaker) is the training pass (teacher
    forcing through MAS); predict_durations and synthesize are inference."""

    def __init__(self, settings: TextToSpeechSettings, n_mels: int, n_speakers: int,
                 mel_mean: list[float], mel_std: list[float]):
        super().__init__()
        hidden = settings.hidden_channels
        register_mel_statistics(self, mel_mean, mel_std)
        self.embedding = nn.Embedding(CharacterTokenizer(settings.characters).vocabulary_size, hidden,
                                      padding_idx=PAD_ID)
        self.encoder = nn.ModuleList(ConvBlock(hidden, settings.kernel_size, settings.dropout)
                                     for _ in range(settings.encoder_layers))
        self.speakers = nn.Embedding(n_speakers, settings.speaker_channels)
        self.speaker_to_text = nn.Linear(settings.speaker_channels, hidden)
        self.mean_output = nn.Conv1d(hidden, n_mels, 1)
        self.duration_predictor = DurationPredictor(hidden, 3, settings.duration_layers, settings.dropout)
        self.decoder_input = nn.Conv1d(hidden + n_mels, hidden, 1)
        self.decoder = nn.ModuleList(
            SpeakerBlock(hidden, settings.speaker_channels, settings.kernel_size)
            for _ in range(settings.decoder_layers)
        )
        self.decoder_output = nn.Conv1d(hidden, n_mels, 1)

    def encode(self, text_ids: torch.Tensor, text_mask: torch.Tensor,
               style: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> speaker-conditioned character states [B, H, T] and means mu [B, n_mels, T] (normalised)."""
        hidden = self.embedding(text_ids).transpose(1, 2) * text_mask
        for block in self.encoder:
            hidden = block(hidden, text_mask)
        hidden = (hidden + self.speaker_to_text(style).unsqueeze(-1)) * text_mask
        return hidden, self.mean_output(hidden) * text_mask

    def decode(self, hidden: torch.Tensor, mu: torch.Tensor, frame_mask: torch.Tensor,
               style: torch.Tensor) -> torch.Tensor:
        """Expanded states [B, H, F] and means [B, n_mels, F] -> normalised mel [B, n_mels, F]."""
        output = self.decoder_input(torch.cat([hidden, mu], dim=1)) * frame_mask
        for block in self.decoder:
            output = block(output, frame_mask, style)
        # A refinement of the prior mean: the untrained decoder already outputs something mel-like.
        return (mu + self.decoder_output(output)) * frame_mask

    def normalize(self, log_mel: torch.Tensor) -> torch.Tensor:
        return (log_mel - self.mel_mean) / self.mel_std

    def denormalize(self, normalized: torch.Tensor) -> torch.Tensor:
        return normalized * self.mel_std + self.mel_mean

    def forward(self, text_ids: torch.Tensor, text_lengths: torch.Tensor, mel: torch.Tensor,
                mel_lengths: torch.Tensor, speaker: torch.Tensor) -> dict[str, torch.Tensor]:
        text_mask = sequence_mask(text_lengths, text_ids.shape[1])
        frame_mask = sequence_mask(mel_lengths, mel.shape[-1])
        target = self.normalize(mel) * frame_mask
        style = self.speakers(speaker)
        hidden, mu = self.encode(text_ids, text_mask, style)
        with torch.no_grad():
            log_likelihood = gaussian_log_likelihood(target, mu).cpu().numpy()
            path = monotonic_alignment_search(log_likelihood, text_lengths.cpu().numpy(),
                                              mel_lengths.cpu().numpy())
            path = torch.from_numpy(path).to(mu.device, mu.dtype)
        # The duration predictor learns from the alignment without steering the encoder.
        log_durations = self.duration_predictor(hidden.detach(), text_mask)
        aligned_mu = mu @ path
        prediction = self.decode(hidden @ path, aligned_mu, frame_mask, style)
        return {"prediction": prediction, "target": target, "aligned_mu": aligned_mu, "path": path,
                "log_durations": log_durations, "durations": path.sum(-1), "text_mask": text_mask.squeeze(1),
                "frame_mask": frame_mask}

    def predict_durations(self, text_ids: torch.Tensor, speaker: torch.Tensor,
                          length_scale: float = 1.0) -> torch.Tensor:
        """[1, T] ids -> [1, T] whole frames per character (at least one)."""
        mask = torch.ones_like(text_ids, dtype=torch.float32).unsqueeze(1)
        hidden, _ = self.encode(text_ids, mask, self.speakers(speaker))
        log_durations = self.duration_predictor(hidden, mask)
        return torch.clamp(torch.ceil(torch.exp(log_durations) * length_scale), min=1).long()

    def synthesize(self, text_ids: torch.Tensor, speaker: torch.Tensor, durations: torch.Tensor) -> torch.Tensor:
        """[1, T] ids, [1] speaker, [1, T] durations -> log-mel [1, n_mels, sum(durations)]."""
        text_mask = torch.ones_like(text_ids, dtype=torch.float32).unsqueeze(1)
        style = self.speakers(speaker)
        hidden, mu = self.encode(text_ids, text_mask, style)
        path = durations_to_path(durations)
        frame_mask = torch.ones(1, 1, path.shape[-1], device=path.device)
        return self.denormalize(self.decode(hidden @ path, mu @ path, frame_mask, style))


class TextToMelInference(nn.Module):
    """What is exported: forward(text_ids [1, T], speaker [1], durations [1, T]) -> log-mel
    [1, n_mels, frames]. A character whose given duration is 0 gets the duration predictor's
    (scaled by length_scale), so a runtime needs only text ids and a speaker (durations all 0); the
    export's verification gives the fp32 model's predicted durations instead, since 16-bit weights
    could move a rounded duration and with it the whole output's length."""

    def __init__(self, model: TextToMelModel, length_scale: float):
        super().__init__()
        self.model = model
        self.length_scale = length_scale

    def forward(self, text_ids: torch.Tensor, speaker: torch.Tensor, durations: torch.Tensor) -> torch.Tensor:
        predicted = self.model.predict_durations(text_ids, speaker, self.length_scale)
        return self.model.synthesize(text_ids, speaker, torch.where(durations > 0, durations, predicted))
