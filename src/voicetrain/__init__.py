"""voicetrain: a Hydra-configured, forkable training framework for voice conversion and TTS."""

__version__ = "0.1.0"
