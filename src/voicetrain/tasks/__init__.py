"""The task contract (`voicetrain.tasks.base`) and the recipes: one module per model (vc, tts, ...).

A forked model imports the contract from here: `from voicetrain.tasks import Task, StepContext, ...`.
"""

from voicetrain.tasks.base import InferenceError, InferenceOutput, InferenceRequest, StepContext, Task, TaskContext, crop
from voicetrain.tasks.base import Batch, ValidationData, ValidationResult

__all__ = ["Batch", "InferenceError", "InferenceOutput", "InferenceRequest", "StepContext", "Task", "TaskContext", "ValidationData",
           "ValidationResult", "crop"]
