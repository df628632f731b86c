"""Compatibility name: the task contract now lives in `voicetrain.tasks.base` (import it as
`from voicetrain.tasks import Task, ...`). Forks written against `voicetrain.task` keep working."""

from voicetrain.tasks.base import (Batch, InferenceError, InferenceRequest, StepContext, Task, TaskContext,
                                   ValidationData, ValidationResult)

__all__ = ["Batch", "InferenceError", "InferenceRequest", "StepContext", "Task", "TaskContext", "ValidationData",
           "ValidationResult"]
