"""`make bench`: voicetrain's costs as ratios, each measured side by side in one run.

These machines are noisy (shared cores, turbo, other jobs), so no benchmark compares against a
number measured elsewhere: each one alternates the two things it compares, in rounds, after a
warm-up, and prints the ratio of the medians and the per-round spread.

    python scripts/bench.py                      every benchmark
    python scripts/bench.py --only loop_overhead one of them (repeatable)
    python scripts/bench.py --list               their names

The benchmarks live in scripts/benchmarks/, one module per area. To add one: write
`def name(options) -> None` that prints its ratio lines in the right module, and add it to
BENCHMARKS.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks import checkpoints, evaluation, features, inference, stream, training
from benchmarks.common import DEFAULT_CACHE, load_text

BENCHMARKS: dict[str, Callable[[argparse.Namespace], None]] = {
    "loop_overhead": training.loop_overhead,
    "export_size": training.export_size,
    "tts_mcd": training.tts_mcd,
    "checkpoint_stall": checkpoints.checkpoint_stall,
    "scratch_bytes": checkpoints.scratch_bytes,
    "resume_latency": checkpoints.resume_latency,
    "feature_memory": features.feature_memory,
    "warm_start": features.warm_start,
    "cold_extraction": features.cold_extraction,
    "sharded_extraction": features.sharded_extraction,
    "inference_rtf": inference.inference_rtf,
    "vocoder_copy_synthesis": inference.vocoder_copy_synthesis,
    "evaluate_rtf": evaluation.evaluate_rtf,
    "stream": stream.stream,
}


def parse_options(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=list(BENCHMARKS), action="append",
                        help="run only this benchmark (repeatable)")
    parser.add_argument("--list", action="store_true", help="print the benchmark names and exit")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE,
                        help="feature store of the bundled corpus (default: %(default)s)")
    parser.add_argument("--corpora", type=Path, default=None,
                        help="folder for the 500- and 4000-utterance copies of the bundled corpus and their "
                             "feature store, kept and reused (default: a temporary folder, removed at the end)")
    parser.add_argument("--cold-utterances", type=int, choices=(features.SMALL, features.LARGE), default=features.SMALL,
                        help="cold_extraction's corpus size (default: %(default)s; the workers' start-up weighs "
                             "less on the larger one)")
    parser.add_argument("--sharded-utterances", type=int, default=features.SMALL,
                        help="sharded_extraction's corpus size (default: %(default)s)")
    parser.add_argument("--memory-steps", type=int, default=None,
                        help="feature_memory's steps per process (default: enough to read every training "
                             "utterance of the 4000 corpus once)")
    parser.add_argument("--rounds", type=int, default=9,
                        help="loop_overhead's alternating rounds per side (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=80.0,
                        help="time loop_overhead's measured rounds should take, both sides together; sets the "
                             "steps per round from the warm-up speed (default: %(default)s)")
    parser.add_argument("--steps-per-round", type=int, default=None, help="fixed steps per round instead")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads for both sides (default: torch's own choice); 1 steadies "
                             "the figure on a machine shared with other jobs")
    parser.add_argument("--vocoder-export", type=Path, default=None,
                        help="vocoder_copy_synthesis: judge this task=vocoder export (default: train one for "
                             "--vocoder-steps steps)")
    parser.add_argument("--vocoder-steps", type=int, default=None,
                        help="vocoder_copy_synthesis: steps of the vocoder it trains without --vocoder-export "
                             "(default: the recipe's own trainer.max_steps)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps per side first (default: %(default)s)")
    return parser.parse_args(argv)


def corpora_folder(options: argparse.Namespace, stack: contextlib.ExitStack) -> Path:
    if options.corpora is not None:
        options.corpora.mkdir(parents=True, exist_ok=True)
        return options.corpora.resolve()
    return Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="voicetrain-bench-corpora-")))


def main(argv: list[str]) -> int:
    options = parse_options(argv)
    if options.list:
        print("\n".join(BENCHMARKS))
        return 0
    if options.rounds < 3 or options.warmup < 1:
        print("--rounds must be at least 3 (for a median to mean anything) and --warmup at least 1", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    print(f"voicetrain benchmarks: torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
          f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}; {load_text()}")
    if os.getloadavg()[0] > 0.5 * (os.cpu_count() or 1):
        # Other jobs compete for the cores: torch's threads then wait on each other and every
        # timing swings widely. The ratios stay side by side, but take them with salt.
        print("  note: other jobs are running, so expect noisy ratios (--threads 1 steadies loop_overhead)")
    with contextlib.ExitStack() as stack:
        options.corpora = corpora_folder(options, stack)
        for name in options.only or list(BENCHMARKS):
            BENCHMARKS[name](options)
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
