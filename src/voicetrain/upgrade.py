"""`python -m voicetrain.upgrade RUN_DIR --trust`: convert a run's checkpoints written by an older
voicetrain (Accelerate's save_state layout, whose .bin/.pkl files are pickles) into the layout of
voicetrain.checkpoint.training_state, which holds no pickle.

A pickle can run code when it is read, so voicetrain refuses to resume from such a checkpoint.
This command reads them only when told to trust them (`--trust`), and even then through torch's
restricted unpickler (`weights_only=True`, plus the numpy types an RNG state needs), never a plain
`pickle.load`. Each converted checkpoint replaces the old one under its name (committed with the
usual protocol); the original is kept beside it as `step_XXXXXXXX.legacy` until you delete it.
"""

from __future__ import annotations

import argparse
import codecs
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from voicetrain.checkpoint.state_files import write_state
from voicetrain.checkpoint.store import Checkpoint, CheckpointStore, is_legacy, legacy_weight_files
from voicetrain.checkpoint.training_state import LOOP_STATE, OPTIMIZERS, SCALER, SCHEDULERS, module_file, rng_name
from voicetrain.config_features import modern_features
from voicetrain.paths import RunPaths
from voicetrain.run.reexport import CommandError, build_task, read_saved_config

log = logging.getLogger("voicetrain")
PROG = "python -m voicetrain.upgrade"
LEGACY_SUFFIX = ".legacy"
# What an RNG state pickled by Accelerate holds besides tensors: numpy arrays and their dtypes.
# numpy 2 keeps its internals in numpy._core (numpy.core is a deprecated alias that warns).
NUMPY_CORE = getattr(np, "_core", None) or np.core
NUMPY_GLOBALS = [NUMPY_CORE.multiarray._reconstruct, np.ndarray, np.dtype, codecs.encode, type(np.dtype(np.uint32))]


def trusted_load(path: Path) -> Any:
    """torch's restricted unpickler: tensors, numbers, strings, containers and numpy arrays only."""
    with torch.serialization.safe_globals(NUMPY_GLOBALS):
        return torch.load(path, map_location="cpu", weights_only=True)


def legacy_rng(state: dict[str, Any]) -> dict[str, Any]:
    converted = {"python": state["random_state"], "numpy": state["numpy_random_seed"],
                 "torch": state["torch_manual_seed"]}
    if "torch_cuda_manual_seed" in state:
        converted["cuda"] = state["torch_cuda_manual_seed"]
    return converted


def numbered(folder: Path, stem: str, suffix: str) -> list[Path]:
    """Accelerate's numbering: stem.suffix, stem_1.suffix, stem_2.suffix, ..."""
    files = [folder / f"{stem}{suffix}"] if (folder / f"{stem}{suffix}").is_file() else []
    index = 1
    while (folder / f"{stem}_{index}{suffix}").is_file():
        files.append(folder / f"{stem}_{index}{suffix}")
        index += 1
    return files


def convert(checkpoint: Checkpoint, staging: Path) -> None:
    """Writes the new layout of a legacy checkpoint into `staging` (an empty folder)."""
    saved = read_saved_config(checkpoint)
    task = build_task(checkpoint, saved)
    with torch.random.fork_rng(devices=[]):
        modules = task.build_modules()
        # Only the names matter here (the states come from the files): any optimizer will do.
        optimizer_names = list(task.build_optimizers(modules, lambda parameters: torch.optim.SGD(parameters, lr=0.1)))
    module_names = list(modules)
    weights, optimizers = legacy_weight_files(checkpoint.path), numbered(checkpoint.path, "optimizer", ".bin")
    customs = sorted(checkpoint.path.glob("custom_checkpoint_*.pkl"), key=lambda path: int(path.stem.split("_")[-1]))
    if len(weights) != len(module_names) or len(optimizers) != len(optimizer_names) or not customs:
        raise CommandError(f"{checkpoint.path} does not hold what its task builds ({len(module_names)} module(s), "
                           f"{len(optimizer_names)} optimizer(s)): found {len(weights)} weight file(s), "
                           f"{len(optimizers)} optimizer file(s), {len(customs)} custom state file(s)")
    (staging / "modules").mkdir(parents=True)
    for name, path in zip(module_names, weights):
        save_file(load_file(str(path)), str(staging / module_file(name)))
    for name, path in zip(optimizer_names, optimizers):
        write_state(staging, f"{OPTIMIZERS}/{name}", trusted_load(path))
    # The old loop registered its progress first, then one schedule per optimizer, in order.
    write_state(staging, LOOP_STATE, trusted_load(customs[0]))
    for name, path in zip(optimizer_names, customs[1:]):
        write_state(staging, f"{SCHEDULERS}/{name}", trusted_load(path))
    if (checkpoint.path / "scaler.pt").is_file():
        write_state(staging, SCALER, trusted_load(checkpoint.path / "scaler.pt"))
    for path in sorted(checkpoint.path.glob("random_states_*.pkl")):
        rank = int(path.stem.split("_")[-1])
        write_state(staging, rng_name(rank), legacy_rng(trusted_load(path)))
    # The settings as today's config writes them (older runs kept the log-mel's keys under `features`).
    saved["features"] = modern_features(saved.get("features") or {})
    (staging / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(saved)))
    if (checkpoint.path / "task_context.json").is_file():
        shutil.copyfile(checkpoint.path / "task_context.json", staging / "task_context.json")


def upgrade(run_dir: Path, trust: bool) -> list[Path]:
    store = CheckpointStore(RunPaths(run_dir).checkpoints)
    legacy = [checkpoint for checkpoint in store.list() if is_legacy(checkpoint)]
    if not legacy:
        raise CommandError(f"{store.root} holds no checkpoint in the old layout; nothing to convert")
    if not trust:
        listing = "\n  ".join(str(checkpoint.path) for checkpoint in legacy)
        raise CommandError(f"these checkpoints hold pickles (Accelerate's .bin/.pkl files), and reading a pickle can "
                           f"run code:\n  {listing}\nIf you trust where they came from (your own training), run "
                           f"`{PROG} {run_dir} --trust`")
    converted = []
    for checkpoint in legacy:
        fields = {key: value for key, value in checkpoint.manifest.items()
                  if key not in ("step", "files", "layout", "save_seconds")}
        fields["upgraded_from"] = str(checkpoint.path.with_name(checkpoint.path.name + LEGACY_SUFFIX))
        keep = checkpoint.path.with_name(checkpoint.path.name + LEGACY_SUFFIX)
        staging = store.prepare(checkpoint.step)
        convert(checkpoint, staging)
        # A copy first: the commit then replaces the original under its name, atomically.
        shutil.rmtree(keep, ignore_errors=True)
        shutil.copytree(checkpoint.path, keep)
        converted.append(store.commit(checkpoint.step, lambda folder: None, fields).path)
        log.info("converted %s (the original is kept as %s)", checkpoint.path, keep.name)
    return converted


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="the run directory, e.g. runs/alice")
    parser.add_argument("--trust", action="store_true",
                        help="read the old checkpoints' pickles (restricted to tensors, numbers and numpy arrays)")
    arguments = parser.parse_args(argv)
    try:
        converted = upgrade(arguments.run_dir, arguments.trust)
    except CommandError as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return 2
    print(f"converted {len(converted)} checkpoint(s) of {arguments.run_dir}; the same training command resumes "
          "from them now")
    return 0


if __name__ == "__main__":
    sys.exit(main())
