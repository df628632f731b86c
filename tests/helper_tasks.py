"""Tasks that exist only for tests, imported by name in training subprocesses
(`task._target_=helper_tasks.VoiceConversionWithDiscriminator`, with this folder on PYTHONPATH),
the way a forked project adds its own task. Imports nothing from the test suite."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional

from voicetrain.tasks.base import Batch, StepContext, crop
from voicetrain.tasks.vc import VoiceConversionTask


class VoiceConversionWithDiscriminator(VoiceConversionTask):
    """The VC recipe plus a discriminator with its own optimizer, as GAN vocoders and VITS have:
    trained and checkpointed, but not needed for inference, so never exported."""

    def build_modules(self) -> dict[str, nn.Module]:
        modules = super().build_modules()
        n_mels = self.context.features.n_mels
        modules["discriminator"] = nn.Sequential(nn.Conv1d(n_mels, 32, 3, padding=1), nn.LeakyReLU(0.2),
                                                 nn.Conv1d(32, 1, 3, padding=1))
        return modules

    def build_optimizers(self, modules: dict[str, nn.Module],
                         make_optimizer: Callable[[Sequence[nn.Parameter]], torch.optim.Optimizer]
                         ) -> dict[str, torch.optim.Optimizer]:
        return {name: make_optimizer(list(modules[name].parameters())) for name in ("model", "discriminator")}

    def training_step(self, batch: Batch, modules: dict[str, nn.Module], step: StepContext) -> dict[str, torch.Tensor]:
        losses = super().training_step(batch, modules, step)
        with torch.no_grad():
            fake = modules["model"](batch["mel"], batch["speaker"])
        discriminator = modules["discriminator"]
        real_score, fake_score = discriminator(batch["mel"]), discriminator(fake)
        loss = functional.softplus(-real_score).mean() + functional.softplus(fake_score).mean()
        step.optimize("discriminator", loss)
        return {**losses, "adv/discriminator": loss.detach()}


class DivergesAtStep3(VoiceConversionTask):
    """The VC recipe whose loss turns NaN from the fourth step on, as a diverging run's does."""

    def training_step(self, batch: Batch, modules: dict[str, nn.Module], step: StepContext) -> dict[str, torch.Tensor]:
        losses = super().training_step(batch, modules, step)
        if step.step >= 3:
            losses = {name: value * float("nan") for name, value in losses.items()}
        return losses


class VoiceConversionWithPitch(VoiceConversionTask):
    """The VC recipe fed the F0 track and the waveform too, each cut at the mel's crop: the test of
    frame-aligned features through training, checkpoints and data-loader workers."""

    required_features = ("mel", "f0", "wave")

    def make_example(self, utterance, features, generator):
        length, frames = self.settings.segment_frames, features["mel"].shape[-1]
        start = int(torch.randint(0, max(frames - length, 0) + 1, (1,), generator=generator))
        cut = crop(features, start, length, self.context.hop_length)
        mask = (torch.arange(length) < frames - start).float()
        return {**cut, "mask": mask, "speaker": torch.tensor(self.speaker_index[utterance.speaker])}

    def training_step(self, batch: Batch, modules: dict[str, nn.Module], step: StepContext) -> dict[str, torch.Tensor]:
        losses = super().training_step(batch, modules, step)
        assert batch["wave"].shape[-1] == batch["f0"].shape[-1] * self.context.hop_length
        return {**losses, "data/voiced_fraction": batch["f0"][:, 1].mean()}
