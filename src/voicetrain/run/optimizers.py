"""Optimizers and learning-rate schedules built from `optim` settings."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from voicetrain.config import OptimSettings


def build_optimizer(parameters: Sequence[nn.Parameter], settings: OptimSettings) -> torch.optim.Optimizer:
    parameters = [parameter for parameter in parameters if parameter.requires_grad]
    betas = (settings.betas[0], settings.betas[1])
    if settings.name == "adamw":
        return torch.optim.AdamW(parameters, lr=settings.lr, betas=betas, weight_decay=settings.weight_decay)
    return torch.optim.Adam(parameters, lr=settings.lr, betas=betas, weight_decay=settings.weight_decay)


def learning_rate_factor(step: int, settings: OptimSettings, max_steps: int) -> float:
    """Multiplier of optim.lr at `step`: linear warm-up, then constant or cosine decay."""
    if step < settings.warmup_steps:
        return (step + 1) / settings.warmup_steps
    if settings.schedule == "constant":
        return 1.0
    decay_steps = max(max_steps - settings.warmup_steps, 1)
    progress = min((step - settings.warmup_steps) / decay_steps, 1.0)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return settings.min_lr_ratio + (1.0 - settings.min_lr_ratio) * cosine


def build_scheduler(optimizer: torch.optim.Optimizer, settings: OptimSettings, max_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: learning_rate_factor(step, settings, max_steps))
