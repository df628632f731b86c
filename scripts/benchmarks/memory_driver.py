"""One training process whose private memory feature_memory measures, run as a subprocess:

    PYTHONPATH=scripts python -m benchmarks.memory_driver CORPUS CACHE RUN_ROOT STEPS

trains the default VC recipe on the `data=speakers` corpus CORPUS (its features already in the
store CACHE) for STEPS steps, then prints one JSON line: the process's private memory after
import, after setup and at the end, and the bytes of the corpus's features in the store."""

from __future__ import annotations

import json
import sys
from itertools import islice
from pathlib import Path

from benchmarks.common import NEVER, NO_VALIDATION, QUIET, compose_settings, private_bytes
from voicetrain.data.sampler import StepBatchSampler
from voicetrain.features.reading import CorpusFeatures
from voicetrain.run.trainer import Trainer

RESULT_PREFIX = "memory: "


def private_now() -> int:
    return private_bytes(Path("/proc/self/smaps_rollup").read_text())


def stored_bytes(features: CorpusFeatures) -> int:
    return sum(entry.nbytes for reader in features.readers.values() for entry in reader.entries)


class MeasuredTrainer(Trainer):
    """The real Trainer; notes the private memory once setup (data, task, model) is done."""

    private_after_setup = 0

    def setup(self) -> None:
        super().setup()
        self.private_after_setup = private_now()


def distinct_read(trainer: Trainer, steps: int) -> int:
    """How many different training utterances `steps` steps read (the sampler is a pure function)."""
    trainer_settings = trainer.settings.trainer
    sampler = StepBatchSampler(len(trainer.data.train_utterances), trainer_settings.batch_size, trainer_settings.seed)
    return len({index for batch in islice(sampler, steps) for index, _ in batch})


def main(corpus: str, cache: str, run_root: str, steps: str) -> None:
    after_import = private_now()
    settings = compose_settings(Path(run_root), Path(cache), "data=speakers", f"data.root={corpus}",
                                f"trainer.max_steps={steps}", f"ckpt.every_n_steps={NEVER}", *NO_VALIDATION,
                                *QUIET)
    trainer = MeasuredTrainer(settings)
    trainer.train()
    at_end = private_now()
    data = trainer.data
    result = {
        "private_after_import": after_import,
        "private_after_setup": trainer.private_after_setup,
        "private_at_end": at_end,
        "train_utterances": len(data.train_utterances),
        "val_utterances": len(data.val_utterances),
        "distinct_read": distinct_read(trainer, int(steps)),
        "feature_bytes": stored_bytes(data.all_features),
        # Held-out features are read from the store when validate() indexes them (FeatureSequence);
        # only a list of tensors (as before) would hold them in memory.
        "val_bytes_in_memory": sum(tensor.nbytes for tensors in data.val_features.values() if isinstance(tensors, list)
                                   for tensor in tensors),
    }
    print(RESULT_PREFIX + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
