"""The Hydra entry point of `python -m voicetrain.preprocess`: compose, validate, preprocess, report.

The config is its own primary config, conf/preprocess.yaml, so its keys never appear among the
training config's groups. Problems the user can fix from the message (a bad key or value, a
missing input, an input that cannot be read as a corpus, an output another launch is writing) are
logged without a traceback and end the process with status 2. The composed config is recorded in OUTPUT/.preprocess/config.yaml.
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("voicetrain.preprocess")


def run(config: DictConfig) -> int:
    """Preprocesses once; returns the process exit status."""
    # Imported here so that --help answers without loading the audio stack (torch, scipy).
    from voicetrain.config import ConfigError
    from voicetrain.preprocess.pipeline import preprocess
    from voicetrain.preprocess.settings import validate
    from voicetrain.preprocess.sources import InputError
    from voicetrain.run.lock import RunLockedError

    try:
        settings = validate(OmegaConf.to_container(config, resolve=True, throw_on_missing=False))
        outcome = preprocess(settings, OmegaConf.to_yaml(config, resolve=True))
    except (ConfigError, InputError, RunLockedError) as error:
        log.error("%s", error)
        return 2
    except OSError as error:
        # A full disk, or a folder that cannot be read or written: what is finished stays finished.
        log.error("%s. Free some space or fix the permissions it names, then run the same command again to "
                  "continue: finished recordings are kept.", error)
        return 1
    except KeyboardInterrupt:
        log.warning("Interrupted. Run the same command again to continue: finished recordings are kept.")
        return 130
    log.info("%s", outcome.summary)
    log.info("Wrote %s (%d recordings processed now, %d done before)", settings.output, outcome.processed,
             len(outcome.records) - outcome.processed)
    return 0


@hydra.main(config_path="pkg://voicetrain.conf", config_name="preprocess", version_base="1.3")
def hydra_entry(config: DictConfig) -> None:
    status = run(config)
    if status:
        sys.exit(status)


def main() -> None:
    hydra_entry()
