"""A feature for the sharded-extraction kill test: the zero-crossing rate, which, when the
environment variable VOICETRAIN_TEST_BLOCK_AFTER=N is set, computes N files, then writes the file
named by VOICETRAIN_TEST_BLOCKED and waits forever (the test then kills the process). The variables
are not settings, so a rerun without them uses the same store folder."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from custom_extractor import ZeroCrossings

computed_files = 0


class BlockingZeroCrossings(ZeroCrossings):
    def extract(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        global computed_files
        limit = os.environ.get("VOICETRAIN_TEST_BLOCK_AFTER")
        if limit is not None and computed_files >= int(limit):
            Path(os.environ["VOICETRAIN_TEST_BLOCKED"]).write_text(str(computed_files))
            while True:
                time.sleep(1)
        computed_files += 1
        return super().extract(wave, sample_rate)
