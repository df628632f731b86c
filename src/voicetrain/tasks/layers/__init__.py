"""Building blocks shared by recipes (alignment search, and later synthesisers, discriminators, losses)."""
