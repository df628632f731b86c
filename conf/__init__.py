"""Configuration files shipped with voicetrain (Hydra config root)."""
