"""Compatibility name: the task contract now lives in `voicetrain.tasks.base` (import it as
`from voicetrain.tasks import Task, ...`). Forks written against `voicetrain.task` keep working."""

from voicetrain.tasks import *  # noqa: F401,F403
from voicetrain.tasks import __all__  # noqa: F401
