"""Tasks that exist only for tests, imported by name in training subprocesses
(`task._target_=helper_tasks.VoiceConversionWithDiscriminator`, with this folder on PYTHONPATH),
the way a forked project adds its own task. Imports nothing from the test suite."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional

from voicetrain.tasks.base import Batch, StepContext
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
