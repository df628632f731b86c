"""The Hydra entry point of `python -m voicetrain`; what one launch does is voicetrain.run.launch.

Hydra composes the config and then calls `hydra_entry`. When Hydra itself refuses the command line
(an unknown preset, a key that is not in the config, an override it cannot parse), it exits with
status 1 before voicetrain runs; `main` turns that into status 2, like every other problem with
what the user gave, and adds the quoting hint Hydra's parser errors lack.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

import voicetrain.paths  # noqa: F401  (registers the ${voicetrain_scratch_folder:...} resolver)
from voicetrain.config_features import moved_key_hints
from voicetrain.distributed import process_rank
from voicetrain.run.sweeps import final_objective, in_sweep, name_run_after_job, optimising

HYDRA_REFUSED = 1  # Hydra's exit status for a command line or config it cannot compose
QUOTING_HINT = (
    "voicetrain: Hydra could not parse an override. A value with spaces (which the shell splits into two words), "
    "non-ASCII letters or characters such as , = ( ) [ ] { } must be quoted twice, once for the shell and once for "
    "Hydra: data.root=\"'/data/my voices'\" or data.root=\"'/data/stimmen_äöü'\"."
)
entered = False  # set when Hydra hands the composed config to voicetrain


def register_rank_resolvers() -> None:
    """Every rank of a multi-process run runs Hydra; these keep the console single-writer:
    messages below warnings from rank 0 only (train.log and the record are written by
    voicetrain.run.launch, per rank)."""
    rank = process_rank()
    OmegaConf.register_new_resolver("voicetrain_console_level", lambda: "INFO" if rank == 0 else "WARNING",
                                    replace=True)


register_rank_resolvers()


@hydra.main(config_path="pkg://voicetrain.conf", config_name="config", version_base="1.3")
def hydra_entry(config: DictConfig) -> int | float:
    global entered
    entered = True
    # Imported here so that `--help` and Hydra's own errors do not wait for torch.
    from voicetrain.run.launch import launch

    name_run_after_job(config)
    status = launch(config)
    if optimising():
        # hydra/sweeper=optuna: the trial's objective (NaN marks a failed trial); a finished trial
        # launched again returns its saved value at once, so a relaunched search does not retrain it.
        return final_objective(config) if status == 0 else math.nan
    if in_sweep():
        # Returned, not exited: the sweep goes on and SweepReport lists the failures at its end.
        return status
    if status:
        sys.exit(status)
    return status


def unparsable_overrides(arguments: list[str]) -> list[str]:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    bad = []
    for argument in arguments:
        if argument.startswith("-"):
            continue
        try:
            parser.parse_overrides([argument])
        except OverrideParseException:
            bad.append(argument)
    return bad


def settable_task_overrides(arguments: list[str]) -> list[str]:
    """`task.KEY=VALUE` for a KEY the task's YAML leaves to its Settings dataclass's default becomes
    `++task.KEY=VALUE` (add or override), which Hydra accepts where it would refuse the plain form
    ("not in struct"). A key the Settings do not have is still refused by voicetrain's validation,
    with the known keys listed. Keys the YAML has are left alone (sweep folder names stay as typed)."""
    wanted = [argument for argument in arguments if argument.startswith("task.") and "=" in argument]
    if not wanted:
        return arguments
    from hydra import compose, initialize_config_module
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    others = []
    for argument in arguments:
        if argument.startswith("-") or "=" not in argument or argument.lstrip("+~").startswith("task."):
            continue
        try:
            if not parser.parse_overrides([argument])[0].is_sweep_override():
                others.append(argument)
        except Exception:  # noqa: BLE001  (Hydra itself reports an unparsable override next)
            return arguments
    try:
        with initialize_config_module("voicetrain.conf", version_base="1.3"):
            present = set(compose(config_name="config", overrides=others).task)
    except Exception:  # noqa: BLE001  (the real launch reports whatever is wrong, in its own words)
        return arguments
    return [f"++{argument}" if argument in wanted and argument[len("task."):].split("=")[0].split(".")[0]
            not in present else argument for argument in arguments]


def run_entry(entry: Callable[[], Any], was_entered: Callable[[], bool]) -> None:
    """Runs a Hydra entry point. Hydra's own refusal of the command line, before `entry`'s body ran
    (`was_entered()` false), becomes exit status 2 with the quoting and moved-key hints."""
    try:
        entry()
    except SystemExit as exit:
        if was_entered() or exit.code != HYDRA_REFUSED:
            raise
        if unparsable_overrides(sys.argv[1:]):
            print(QUOTING_HINT, file=sys.stderr)
        for hint in moved_key_hints(sys.argv[1:]):
            print(f"voicetrain: {hint}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    sys.argv[1:] = settable_task_overrides(sys.argv[1:])
    run_entry(hydra_entry, lambda: entered)


if __name__ == "__main__":
    main()
