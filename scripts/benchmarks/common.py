"""What every benchmark shares: the recipe composed as the CLI composes it, launches of
`python -m voicetrain` timed to their first step, ratios of medians with their per-round spread,
and the machine's load and a process's private memory."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_module

import voicetrain.paths  # noqa: F401  (registers the resolvers the composed config uses, as the CLI does)
from voicetrain.config import Settings
from voicetrain.data import BUNDLED_CORPUS
from voicetrain.run.launch import settings_from

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
RUNS = REPOSITORY_ROOT / "runs"  # git-ignored; on the persistent disk, where runs normally go
# The feature store `make train` fills: reusing it skips extracting the bundled corpus again.
DEFAULT_CACHE = RUNS / ".cache" / "features"
NEVER = 10**9  # an interval no measured step reaches
# With trainer.val_every=NEVER: no validation but the last step's, not even the untrained model's at step 0.
NO_VALIDATION = (f"trainer.val_every={NEVER}", "trainer.validate_at_start=false")
QUIET = ("trainer.progress=false", "export.enabled=false")
# The last step always validates. The bundled corpus read as plain speaker folders has no parallel
# sentences, so the VC recipe then scores reconstruction only: benchmarks of launches and saves
# skip the conversion scoring (WORLD, speaker embeddings) they do not measure, which after one step
# can fail on a silent conversion (and task.validation_pairs=0, which would skip it, divides by zero).
NO_CONVERSION_SCORING = ("data=speakers", f"data.root={BUNDLED_CORPUS}")
FIRST_STEP_LINE = "first step of this launch done"  # logged by the Trainer after its first step


def compose_settings(run_root: Path, cache_dir: Path, *overrides: str) -> Settings:
    """The default recipe, composed and validated exactly as the CLI does it."""
    with initialize_config_module("voicetrain.conf", version_base="1.3"):
        config = compose(config_name="config",
                         overrides=[f"run.root={run_root}", f"data.cache_dir={cache_dir}", *overrides])
    return settings_from(config)


def synchronize(device: torch.device) -> None:
    # Kernels are queued asynchronously on a GPU: a timestamp means nothing until they finished.
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_to_first_step(arguments: list[str], stop_there: bool = False) -> float:
    """Wall time from launching `python -m voicetrain ARGS` to its first finished step. With
    `stop_there` the launch is killed at that point (what follows is not measured)."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "voicetrain", *arguments], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    elapsed = None
    output = []
    for line in process.stdout:
        output.append(line)
        if elapsed is None and FIRST_STEP_LINE in line:
            elapsed = time.perf_counter() - started
            if stop_there:
                process.kill()
    process.wait()
    if elapsed is None or (process.returncode != 0 and not stop_there):
        raise RuntimeError(f"voicetrain {' '.join(arguments)} exited with {process.returncode} before a first "
                           f"step; its last lines:\n{''.join(output[-15:])}")
    return elapsed


def ratio_of_medians(numerators: list[float], denominators: list[float]) -> float:
    return statistics.median(numerators) / statistics.median(denominators)


def per_round(numerators: list[float], denominators: list[float]) -> list[float]:
    return [numerator / denominator for numerator, denominator in zip(numerators, denominators)]


def spread_text(ratios: list[float]) -> str:
    """Every round's ratio and their range, e.g. `0.93 .. 1.10 (1.01, 0.93, 1.10)`."""
    listed = ", ".join(f"{ratio:.2f}" for ratio in ratios)
    return f"{min(ratios):.2f} .. {max(ratios):.2f} ({listed})"


def load_text() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (5 min {five:.1f}) on {os.cpu_count() or 1} cores"


def private_bytes(smaps_rollup: str) -> int:
    """Private_Clean + Private_Dirty of a /proc/<pid>/smaps_rollup text: the memory only this
    process holds (shared libraries and the page cache of files it reads are not counted)."""
    total = 0
    for line in smaps_rollup.splitlines():
        name, _, value = line.partition(":")
        if name in ("Private_Clean", "Private_Dirty"):
            total += int(value.split()[0]) * 1024  # reported in kB
    return total
