"""Features computed from audio and the on-disk store that caches them per audio file."""
