"""Real-time conversion (`python -m voicetrain.stream`): an export converts a live input block by
block, through its task's streaming hook (`Task.streaming`) or a sliding-window fallback, with the
output joined by SOLA, its algorithmic latency printed at start and a compute report at exit."""
