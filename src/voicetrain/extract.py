"""The Hydra entry point of `python -m voicetrain.extract`: the feature extraction of a training
launch, on its own and split into shards that any Hydra launcher can run side by side.

    python -m voicetrain.extract task=svc data=speakers data.root=/data/all        (one process)
    python -m voicetrain.extract -m extract.shards=4 extract.shard=0,1,2,3 hydra/launcher=parallel

It composes conf/extract.yaml, which is the training config plus an `extract` node, so the same
`task=`, `data=` and `features.*` overrides choose what is extracted. Shard I of N computes the
audio files whose key hashes to I that no index of the store holds yet, into its own part of the
store (voicetrain.features.sharding), prints a progress bar and, at its end, one summary line.
Exit status: 0 done (failures are listed, and training decides with data.skip_bad_files), 2 a
problem with the command line or the corpus, 1 one of the machine (disk space, the store).
"""

from __future__ import annotations

import logging
import sys
import time

import hydra
from omegaconf import DictConfig, OmegaConf

from voicetrain.cli import run_entry, settable_task_overrides
from voicetrain.run.sweeps import in_sweep

log = logging.getLogger("voicetrain")
entered = False  # set when Hydra hands the composed config to voicetrain


def run(config: DictConfig, overrides: list[str]) -> int:
    """Extracts this process's shard; returns the exit status."""
    # Imported here so that --help and Hydra's own errors do not wait for torch.
    from pathlib import Path

    from voicetrain.audio_files import AudioReadError
    from voicetrain.config import ConfigError, build_extract_settings, validate
    from voicetrain.data.prepare import read_utterances
    from voicetrain.data.readers import DataError
    from voicetrain.features.building import build_extractors
    from voicetrain.features.extraction import usable_cores
    from voicetrain.features.folder import FeatureError, FeatureSpaceError
    from voicetrain.features.store import FeatureStore

    plain = OmegaConf.to_container(config, resolve=True, throw_on_missing=False)
    extract, problems = build_extract_settings(plain.pop("extract", {}))
    try:
        settings = validate(plain)
    except ConfigError as error:
        problems = error.problems + problems
    if problems:
        log.error("%s", ConfigError(problems))
        return 2
    assert extract is not None
    started = time.monotonic()
    try:
        utterances = read_utterances(settings.data)
        store = FeatureStore(Path(settings.data.cache_dir), build_extractors(settings.features),
                             settings.features.sample_rate, settings.features.hop_length)
        summary = store.extract_shard([utterance.path for utterance in utterances], extract.shard, extract.shards,
                                      overrides, settings.data.feature_workers or usable_cores(),
                                      settings.trainer.progress)
    except (DataError, AudioReadError) as error:
        log.error("%s", error)
        return 2
    except FeatureSpaceError as error:
        log.error("%s", error)
        return 1
    except FeatureError as error:
        log.error("%s", error)
        return 2
    log.info("%s in %.1f s", summary.line(f"shard {extract.shard} of {extract.shards}"), time.monotonic() - started)
    return 0


@hydra.main(config_path="pkg://voicetrain.conf", config_name="extract", version_base="1.3")
def hydra_entry(config: DictConfig) -> int:
    from hydra.core.hydra_config import HydraConfig

    global entered
    entered = True

    status = run(config, list(HydraConfig.get().overrides.task))
    if in_sweep():
        return status  # the sweep goes on; SweepReport lists the failed shards at its end
    if status:
        sys.exit(status)
    return status


def main() -> None:
    # extract.* is not a key of the training config that settable_task_overrides composes; the
    # others are changed in place (it keeps their order and number), since Hydra's parser cares.
    arguments = sys.argv[1:]
    own = {index for index, argument in enumerate(arguments) if argument.lstrip("+~").startswith("extract.")}
    changed = iter(settable_task_overrides([argument for index, argument in enumerate(arguments) if index not in own]))
    sys.argv[1:] = [argument if index in own else next(changed) for index, argument in enumerate(arguments)]
    run_entry(hydra_entry, lambda: entered)

if __name__ == "__main__":
    main()
