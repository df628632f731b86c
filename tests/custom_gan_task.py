"""A task the framework has never seen, defined entirely inside tests/ (imported by name in the
training subprocesses of tasks/test_custom_task.py, with this folder on PYTHONPATH; its YAML is
tests/custom_conf/task/custom_gan.yaml, found through `hydra.searchpath`).

A tiny GAN-style mel model: a generator that reconstructs mel segments through a narrow
bottleneck, trained with L1 plus an adversarial loss against a discriminator that has its own
optimizer. Only the generator is an inference module, so exports carry no discriminator weights.
Written as forks were before features had names (`make_example(utterance, mel, generator)`,
`data.mels`), with defaults in its Settings dataclass that its YAML does not repeat: it proves both
still work. Imports nothing from the test suite."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional

from voicetrain.data.readers import Utterance
from voicetrain.tasks.base import Batch, StepContext, Task, ValidationData, ValidationResult


@dataclass
class CustomGanSettings:
    hidden_channels: int = 32
    bottleneck_channels: int = 4
    segment_frames: int = 32
    adversarial_weight: float = 0.1
    # Keeps each step at least this long, so a test can kill the run between two checkpoints;
    # it changes timing only, never a number.
    minimum_step_seconds: float = 0.0


def mel_convolutions(channels: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for index, (inputs, outputs) in enumerate(zip(channels, channels[1:])):
        layers.append(nn.Conv1d(inputs, outputs, 3, padding=1))
        if index < len(channels) - 2:
            layers.append(nn.LeakyReLU(0.2))
    return nn.Sequential(*layers)


class Generator(nn.Module):
    """forward(log_mel [B, n_mels, T]) -> log_mel [B, n_mels, T]; statistics in buffers (exported)."""

    def __init__(self, settings: CustomGanSettings, mel_mean: list[float], mel_std: list[float]):
        super().__init__()
        n_mels = len(mel_mean)
        self.register_buffer("mel_mean", torch.tensor(mel_mean).view(1, -1, 1))
        self.register_buffer("mel_std", torch.tensor(mel_std).view(1, -1, 1))
        hidden, bottleneck = settings.hidden_channels, settings.bottleneck_channels
        self.network = mel_convolutions([n_mels, hidden, bottleneck, hidden, n_mels])

    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        normalized = (log_mel - self.mel_mean) / self.mel_std
        return self.network(normalized) * self.mel_std + self.mel_mean


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """The generator's adversarial loss must not leave gradients in the discriminator, whose
    optimizer would otherwise apply them at its next step."""
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter in module.parameters():
            parameter.requires_grad_(True)


class CustomGanTask(Task):
    Settings = CustomGanSettings
    inference_modules = ("generator",)  # the discriminator is training-only
    inference_input_names = ("log_mel",)

    def build_modules(self) -> dict[str, nn.Module]:
        n_mels = self.context.features.n_mels
        return {
            "generator": Generator(self.settings, self.context.mel_mean, self.context.mel_std),
            "discriminator": mel_convolutions([n_mels, self.settings.hidden_channels, 1]),
        }

    def build_optimizers(self, modules: dict[str, nn.Module],
                         make_optimizer: Callable[[Sequence[nn.Parameter]], torch.optim.Optimizer]
                         ) -> dict[str, torch.optim.Optimizer]:
        return {name: make_optimizer(list(module.parameters())) for name, module in modules.items()}

    def make_example(self, utterance: Utterance, mel: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        length = self.settings.segment_frames
        start = int(torch.randint(0, max(mel.shape[-1] - length, 0) + 1, (1,), generator=generator))
        segment = mel[:, start:start + length]
        return {"mel": functional.pad(segment, (0, length - segment.shape[-1]), value=float(mel.min()))}

    def training_step(self, batch: Batch, modules: dict[str, nn.Module], step: StepContext) -> dict[str, torch.Tensor]:
        started = time.perf_counter()
        generator, discriminator = modules["generator"], modules["discriminator"]
        real = batch["mel"]
        fake = generator(real)
        discriminator_loss = (functional.softplus(-discriminator(real)).mean()
                              + functional.softplus(discriminator(fake.detach())).mean())
        step.optimize("discriminator", discriminator_loss)
        reconstruction = (fake - real).abs().mean()
        with frozen(discriminator):
            adversarial = functional.softplus(-discriminator(fake)).mean()
        step.optimize("generator", reconstruction + self.settings.adversarial_weight * adversarial)
        time.sleep(max(0.0, self.settings.minimum_step_seconds - (time.perf_counter() - started)))
        return {"mel/l1": reconstruction.detach(), "adv/generator": adversarial.detach(),
                "adv/discriminator": discriminator_loss.detach()}

    @torch.no_grad()
    def validate(self, modules: dict[str, nn.Module], data: ValidationData, previews: int) -> ValidationResult:
        generator = modules["generator"]
        device = next(generator.parameters()).device
        errors = [float((generator(mel.unsqueeze(0).to(device)).cpu() - mel).abs().mean()) for mel in data.mels[:4]]
        return ValidationResult({"val/l1": sum(errors) / len(errors)})

    def inference_model(self, modules: dict[str, nn.Module]) -> nn.Module:
        return modules["generator"]

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        mean = torch.tensor(self.context.mel_mean).view(1, -1, 1)
        return (mean + torch.randn(1, self.context.features.n_mels, 40, generator=torch.Generator().manual_seed(0)),)
