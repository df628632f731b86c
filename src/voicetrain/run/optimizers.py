"""Optimizers and learning-rate schedules: built from the `optim` settings (with per-optimizer
`optim.overrides.<name>.*`), stepped by the framework, and re-applied after a resume.

A task builds its optimizers (`Task.build_optimizers`); what each parameter group then holds
(learning rate, betas, weight decay) is the configured truth: after a checkpoint is loaded those
values are put back over the saved ones, so a changed `optim.*` key (or a task's own choice for one
optimizer) takes effect on resume and is logged, while unchanged ones leave the state bit-exact.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from accelerate import Accelerator
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from voicetrain.config import ConfigError, OptimSettings

log = logging.getLogger("voicetrain")
HYPERPARAMETERS = ("lr", "betas", "weight_decay")


def build_optimizer(parameters: Sequence[nn.Parameter], settings: OptimSettings) -> torch.optim.Optimizer:
    parameters = [parameter for parameter in parameters if parameter.requires_grad]
    betas = (settings.betas[0], settings.betas[1])
    if settings.name == "adamw":
        return torch.optim.AdamW(parameters, lr=settings.lr, betas=betas, weight_decay=settings.weight_decay)
    return torch.optim.Adam(parameters, lr=settings.lr, betas=betas, weight_decay=settings.weight_decay)


def learning_rate_factor(step: int, settings: OptimSettings, max_steps: int) -> float:
    """Multiplier of an optimizer's base learning rate at `step`: linear warm-up, then constant or
    cosine decay to min_lr_ratio at max_steps."""
    if step < settings.warmup_steps:
        return (step + 1) / settings.warmup_steps
    if settings.schedule == "constant":
        return 1.0
    decay_steps = max(max_steps - settings.warmup_steps, 1)
    progress = min((step - settings.warmup_steps) / decay_steps, 1.0)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return settings.min_lr_ratio + (1.0 - settings.min_lr_ratio) * cosine


def build_scheduler(optimizer: torch.optim.Optimizer, settings: OptimSettings, max_steps: int) -> LambdaLR:
    return LambdaLR(optimizer, lambda step: learning_rate_factor(step, settings, max_steps))


def apply_overrides(optimizers: dict[str, torch.optim.Optimizer], settings: OptimSettings) -> None:
    """`optim.overrides.<name>.lr` (betas, weight_decay) on every group of optimizer <name>."""
    unknown = sorted(set(settings.overrides) - set(optimizers))
    if unknown:
        raise ConfigError([f"optim.overrides.{name}: the task builds no optimizer of that name (it builds "
                           f"{', '.join(sorted(optimizers))})" for name in unknown])
    for name, override in settings.overrides.items():
        for group in optimizers[name].param_groups:
            for key in HYPERPARAMETERS:
                value = getattr(override, key)
                if value is not None:
                    group[key] = tuple(value) if key == "betas" else value


def configured_groups(optimizer: torch.optim.Optimizer) -> list[dict[str, object]]:
    return [{key: group[key] for key in HYPERPARAMETERS if key in group} for group in optimizer.param_groups]


@dataclass
class Optimizers:
    """The optimizers and schedules of a run, and the `optimize` step handed to the task."""

    accelerator: Accelerator
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, LambdaLR]
    parameters: dict[str, list[nn.Parameter]]
    configured: dict[str, list[dict[str, object]]]  # per optimizer and group, as built and overridden
    settings: OptimSettings
    grad_clip: float | None
    max_steps: int
    gradient_norms: dict[str, torch.Tensor] = field(default_factory=dict)
    scheduled: set[str] = field(default_factory=set)  # optimizers whose schedule advanced in this step

    def reapply_configured(self, step: int) -> None:
        """After loading a checkpoint: the configured hyperparameters win over the saved ones, and
        every change is logged. Unchanged values leave the state bit-exact."""
        factor = learning_rate_factor(step, self.settings, self.max_steps)
        for name, optimizer in self.optimizers.items():
            scheduler = self.schedulers[name]
            for index, (group, wanted) in enumerate(zip(optimizer.param_groups, self.configured[name])):
                for key, value in wanted.items():
                    saved = scheduler.base_lrs[index] if key == "lr" else group[key]
                    if saved != value:
                        log.info("optim: %s of optimizer %r changed on resume: %s (saved) -> %s", key, name, saved,
                                 value)
                    if key == "lr":
                        scheduler.base_lrs[index] = value
                        group["initial_lr"] = value
                        group["lr"] = value * factor
                    else:
                        group[key] = value

    def optimize(self, name: str, loss: torch.Tensor) -> None:
        if name not in self.optimizers:
            raise KeyError(f"optimize({name!r}): the task built optimizers {sorted(self.optimizers)}")
        optimizer = self.optimizers[name]
        self.accelerator.backward(loss)
        # Under gradient accumulation the prepared optimizer skips step/zero_grad until the
        # last micro-batch; clipping and the schedule must follow the same rhythm.
        if self.accelerator.sync_gradients:
            if self.grad_clip is not None:
                self.gradient_norms[name] = self.accelerator.clip_grad_norm_(self.parameters[name], self.grad_clip)
            optimizer.step()
            if not self.accelerator.optimizer_step_was_skipped:
                self.schedulers[name].step()
                self.scheduled.add(name)
            optimizer.zero_grad(set_to_none=True)

    def finish_step(self) -> None:
        """Called once per optimizer step of the run: a schedule the task did not advance in it (a
        GAN's discriminator before it joins, a step skipped on an fp16 overflow) advances here, so
        every schedule follows the run's step, as `reapply_configured` assumes on resume. Otherwise a
        discriminator joining at step N would warm up from scratch there, and a resumed run would
        give it the learning rate of step N + k where an uninterrupted one gives that of step k."""
        for name, scheduler in self.schedulers.items():
            if name not in self.scheduled:
                with warnings.catch_warnings():
                    # Advancing a schedule before its optimizer ever stepped is exactly the point here.
                    warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
                    scheduler.step()
        self.scheduled.clear()

    def learning_rates(self) -> dict[str, float]:
        """The current learning rate of each optimizer's first group (TensorBoard's lr/<name>)."""
        return {name: optimizer.param_groups[0]["lr"] for name, optimizer in self.optimizers.items()}
