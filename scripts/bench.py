"""`make bench`: voicetrain's costs as ratios, each measured side by side in one process.

These machines are noisy (shared cores, turbo, other jobs), so no benchmark compares against a
number measured elsewhere: each one alternates the two things it compares, in rounds, after a
warm-up, and prints the ratio of the medians.

    python scripts/bench.py                      every benchmark
    python scripts/bench.py --only loop_overhead one of them
    python scripts/bench.py --list               their names

To add one: write `def name(options) -> None` that prints one ratio line, and append it to
BENCHMARKS.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from torch.utils.data import DataLoader

from voicetrain.cli import settings_from
from voicetrain.config import Settings
from voicetrain.data.dataset import TrainingExamples
from voicetrain.data.prepare import PreparedData
from voicetrain.data.sampler import StepBatchSampler
from voicetrain.run.optimizers import build_optimizer, build_scheduler
from voicetrain.run.trainer import Trainer
from voicetrain.tasks.base import Task, TaskContext

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
# The feature cache `make train` fills (runs/ is git-ignored): reusing it skips ~10 s of log-mels.
DEFAULT_CACHE = REPOSITORY_ROOT / "runs" / ".cache" / "features"
NEVER = 10**9  # an interval no measured step reaches
# With trainer.val_every=NEVER: no validation at all, not even the untrained model's at step 0.
NO_VALIDATION = [f"trainer.val_every={NEVER}", "trainer.validate_at_start=false"]


def compose_settings(run_root: Path, cache_dir: Path, *overrides: str) -> Settings:
    """The default recipe, composed and validated exactly as the CLI does it."""
    with initialize_config_module("voicetrain.conf", version_base="1.3"):
        config = compose(config_name="config", overrides=[f"run.root={run_root}", f"data.cache_dir={cache_dir}",
                                                          *overrides])
    return settings_from(config)


def synchronize(device: torch.device) -> None:
    # Kernels are queued asynchronously on a GPU: a timestamp means nothing until they finished.
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- loop overhead ------------------------------------------------------------------------


class PlainLoop:
    """The baseline: the same model, data pipeline, loss, clipping, optimizer and schedule,
    written as the bare PyTorch loop a user would write, with no logging at all."""

    def __init__(self, settings: Settings, data: PreparedData, task_class: type[Task], device: torch.device):
        context = TaskContext(settings.features, data.speakers, data.mel_mean, data.mel_std)
        task = task_class(settings.task, context)
        self.model = task.build_modules()["model"].to(device).train()
        self.optimizer = build_optimizer(list(self.model.parameters()), settings.optim)
        self.scheduler = build_scheduler(self.optimizer, settings.optim, settings.trainer.max_steps)
        self.grad_clip = settings.trainer.grad_clip
        self.device = device
        sampler = StepBatchSampler(len(data.train_utterances), settings.trainer.batch_size, settings.trainer.seed)
        loader = DataLoader(TrainingExamples(data.train_utterances, data.train_mels, task), batch_sampler=sampler,
                            collate_fn=task.collate, num_workers=settings.trainer.num_workers,
                            pin_memory=device.type == "cuda")
        self.batches = iter(loader)

    def step(self) -> None:
        batch = {key: value.to(self.device, non_blocking=True) for key, value in next(self.batches).items()}
        mel, mask = batch["mel"], batch["mask"]
        reconstruction = self.model(mel, batch["speaker"])
        # The VC recipe's loss: masked L1 in normalised units.
        error = ((reconstruction - mel).abs() / self.model.mel_std).mean(dim=1)
        loss = (error * mask).sum() / mask.sum().clamp(min=1.0)
        loss.backward()
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def run(self, steps: int) -> float:
        """Runs `steps` steps; returns their wall time in seconds."""
        synchronize(self.device)
        started = time.perf_counter()
        for _ in range(steps):
            self.step()
        synchronize(self.device)
        return time.perf_counter() - started


class MeasurementDone(Exception):
    """Raised from inside the training loop once the last round is measured: training stops there,
    without the validation, save and export of a normal last step."""


@dataclass
class Interleaver:
    """Called at the start of each voicetrain training step. After the warm-up it alternates:
    a round of N voicetrain steps, then N plain steps run from inside that same call, and so on.

    A voicetrain round spans N whole iterations of the real loop (data, step, bookkeeping,
    logging), from the start of one training step to the start of the step N later. Unless
    given, N is chosen from the warm-up speed so the measured rounds take about `budget_seconds`."""

    plain: Callable[[int], float]
    device: torch.device
    warmup_steps: int
    rounds: int
    budget_seconds: float
    steps_per_round: int | None = None
    voicetrain_seconds: list[float] = field(default_factory=list)
    plain_seconds: list[float] = field(default_factory=list)
    last_step: int = -1
    next_boundary: int = 0
    round_started: float = 0.0
    measuring_since: float = 0.0

    def before_step(self, step: int) -> None:
        if step == self.last_step:  # another micro-batch of the same step (gradient accumulation)
            return
        self.last_step = step
        if step != self.next_boundary:
            return
        synchronize(self.device)
        now = time.perf_counter()
        if step == 0:
            self.next_boundary = self.warmup_steps
        elif step == self.warmup_steps:
            warmup_voicetrain = now - self.round_started
            warmup_plain = self.plain(self.warmup_steps)
            if self.steps_per_round is None:
                seconds_per_step = (warmup_voicetrain + warmup_plain) / (2 * self.warmup_steps)
                fitting = int(self.budget_seconds / (2 * self.rounds * seconds_per_step))
                self.steps_per_round = min(max(fitting, 3), 100)
            self.next_boundary = step + self.steps_per_round
            self.measuring_since = time.perf_counter()
        else:
            self.voicetrain_seconds.append(now - self.round_started)
            self.plain_seconds.append(self.plain(self.steps_per_round))
            done = len(self.voicetrain_seconds)
            # Past the time budget (the machine got slower than the warm-up said), three rounds
            # still give a median.
            out_of_time = time.perf_counter() - self.measuring_since > self.budget_seconds and done >= 3
            if done == self.rounds or out_of_time:
                raise MeasurementDone
            self.next_boundary = step + self.steps_per_round
        self.round_started = time.perf_counter()


class MeasuredTrainer(Trainer):
    """voicetrain's real Trainer, unchanged except that each training step first calls the
    interleaver (one Python call per step, which counts against voicetrain)."""

    interleaver: Interleaver

    def setup(self) -> None:
        super().setup()
        training_step = self.task.training_step

        def measured_step(batch, modules, step):
            self.interleaver.before_step(step.step)
            return training_step(batch, modules, step)

        self.task.training_step = measured_step


def loop_overhead(options: argparse.Namespace) -> None:
    """voicetrain steps/s ÷ a plain PyTorch loop's steps/s: same model, data, optimizer, batch."""
    with tempfile.TemporaryDirectory(prefix="voicetrain-bench-") as run_root:
        # A long run whose validation, saving and export intervals lie beyond the measured steps
        # (MeasurementDone ends it early), so the schedule and loop are those of a real run.
        settings = compose_settings(Path(run_root), options.cache_dir, "trainer.max_steps=1000000",
                                    *NO_VALIDATION, f"ckpt.every_n_steps={NEVER}",
                                    "trainer.progress=false")
        trainer = MeasuredTrainer(settings)
        device = trainer.accelerator.device
        plain: PlainLoop | None = None

        def plain_round(steps: int) -> float:
            nonlocal plain
            if plain is None:
                # Built once the trainer has prepared its data: the same features, split and statistics.
                plain = PlainLoop(settings, trainer.data, type(trainer.task), device)
            return plain.run(steps)

        interleaver = Interleaver(plain_round, device, options.warmup, options.rounds, options.seconds,
                                  options.steps_per_round)
        trainer.interleaver = interleaver
        try:
            trainer.train()
        except MeasurementDone:
            pass
    steps = interleaver.steps_per_round
    voicetrain_rates = [steps / seconds for seconds in interleaver.voicetrain_seconds]
    plain_rates = [steps / seconds for seconds in interleaver.plain_seconds]
    voicetrain_rate, plain_rate = statistics.median(voicetrain_rates), statistics.median(plain_rates)
    paired = [ours / theirs for ours, theirs in zip(voicetrain_rates, plain_rates)]
    print(f"loop overhead: voicetrain {voicetrain_rate:.1f} steps/s / plain PyTorch {plain_rate:.1f} steps/s = "
          f"{voicetrain_rate / plain_rate:.2f} (goal >= 0.97)")
    print(f"  median of the per-round ratios {statistics.median(paired):.2f} "
          f"({', '.join(f'{ratio:.2f}' for ratio in paired)})")
    print(f"  {len(paired)} alternating rounds of {steps} steps after {options.warmup} warm-up steps each, "
          f"batch {settings.trainer.batch_size}, on {device}; voicetrain with its default logging (TensorBoard "
          f"every trainer.log_every={settings.trainer.log_every} steps) and the progress bar off; the plain loop "
          "logs nothing")


# --- export size --------------------------------------------------------------------------


def export_size(options: argparse.Namespace) -> None:
    """Export size ÷ training-checkpoint size for the default recipe (AdamW), and the exported
    model's max error against the trained one, in each export dtype. Sizes do not depend on the
    number of steps, so a short run measures them; the error after 20 steps is indicative only."""
    from voicetrain.durable import folder_bytes
    from voicetrain.export.writer import RELATIVE_TOLERANCE, write_export

    with tempfile.TemporaryDirectory(prefix="voicetrain-bench-") as run_root:
        settings = compose_settings(Path(run_root), options.cache_dir, "trainer.max_steps=20",
                                    *NO_VALIDATION, f"ckpt.every_n_steps={NEVER}",
                                    "trainer.audio_previews=0", "trainer.progress=false")
        trainer = Trainer(settings)
        summary = trainer.train()
        checkpoint = summary.checkpoint.path
        checkpoint_bytes = folder_bytes(checkpoint)
        print(f"export size: checkpoint {checkpoint.name} {checkpoint_bytes / 1e6:.2f} MB (weights, "
              f"{settings.optim.name} moments, RNG and loop state)")
        for dtype in ("fp16", "fp32", "bf16"):
            result = summary.export if dtype == settings.export.dtype else write_export(
                trainer.task, trainer.unwrapped_modules(), Path(run_root) / f"export-{dtype}", dtype,
                summary.final_step, str(checkpoint), {})
            ratio = result.bytes / checkpoint_bytes
            goal = " (goal <= 1/6)" if dtype == "fp16" else ""
            print(f"  {dtype}: export {result.bytes / 1e6:.2f} MB / checkpoint = {ratio:.4f} = 1/{1 / ratio:.3f}"
                  f"{goal}; max error vs trained {result.max_error:.2e} (relative {result.relative_error:.1e}, "
                  f"tolerance {RELATIVE_TOLERANCE[dtype]:.0e})")


# --- TTS quality ---------------------------------------------------------------------------

TTS_STEPS = 300  # a few minutes on 2 CPU cores; enough for the alignment to form


def tts_mcd(options: argparse.Namespace) -> None:
    """Validation MCD of the TTS recipe (task=tts) after TTS_STEPS steps next to the same model
    untrained (its step-0 weights: same seed), on the bundled corpus's held-out sentences: each
    is synthesised from its text with its speaker's voice and compared with the recording."""
    from voicetrain.tasks.base import ValidationData

    with tempfile.TemporaryDirectory(prefix="voicetrain-bench-") as run_root:
        settings = compose_settings(Path(run_root), options.cache_dir, "task=tts", f"trainer.max_steps={TTS_STEPS}",
                                    *NO_VALIDATION, f"ckpt.every_n_steps={NEVER}",
                                    "trainer.audio_previews=0", "trainer.progress=false", "export.enabled=false")
        untrained = Trainer(settings)
        untrained.setup()
        modules = untrained.unwrapped_modules()
        for module in modules.values():
            module.eval()
        data = ValidationData(untrained.data.val_utterances, untrained.data.val_mels)
        before = untrained.task.validate(modules, data, 0).metrics
        started = time.perf_counter()
        after = Trainer(settings).train().metrics
        seconds = time.perf_counter() - started
    print(f"tts mcd: val/mcd trained {after['val/mcd']:.2f} dB after {TTS_STEPS} steps / untrained "
          f"{before['val/mcd']:.2f} dB = {after['val/mcd'] / before['val/mcd']:.2f} (lower is better)")
    for name in ("val/mcd_teacher_forced", "val/length_ratio"):
        print(f"  {name}: trained {after[name]:.3f}, untrained {before[name]:.3f}")
    print(f"  {len(data.utterances)} held-out utterances, batch {settings.trainer.batch_size}, "
          f"{seconds / TTS_STEPS:.2f} s per step including the final validation and save")


# --- checkpoint stall ----------------------------------------------------------------------

STALL_WIDTH = 4096  # three 4096x4096 layers: about 50M parameters


def checkpoint_stall(options: argparse.Namespace) -> None:
    """Training time blocked by one asynchronous save ÷ one synchronous save of the same state:
    a ~50M-parameter model with AdamW (weights + two moments, about 600 MB), saved through the
    checkpoint store into the persistent disk, alternating the two kinds of save."""
    from accelerate import Accelerator

    from voicetrain.checkpoint.store import CheckpointStore

    accelerator = Accelerator(cpu=True)
    model = torch.nn.Sequential(*(torch.nn.Linear(STALL_WIDTH, STALL_WIDTH) for _ in range(3)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model, optimizer = accelerator.prepare(model, optimizer)
    model(torch.randn(4, STALL_WIDTH)).square().mean().backward()
    optimizer.step()  # fills the two moments
    parameters = sum(parameter.numel() for parameter in model.parameters())
    synchronous, asynchronous = [], []
    # On the persistent disk (runs/ is git-ignored), where checkpoints normally go.
    (REPOSITORY_ROOT / "runs").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".bench-stall-", dir=REPOSITORY_ROOT / "runs") as root:
        store = CheckpointStore(Path(root), on_commit=lambda committed: store.delete(committed))
        for round_number in range(1, 4):
            started = time.perf_counter()
            store.save(accelerator, round_number, {}, {})
            synchronous.append(time.perf_counter() - started)
            started = time.perf_counter()
            store.save_async(accelerator, 100 + round_number, {}, {})
            asynchronous.append(time.perf_counter() - started)
            store.wait()  # the background write, not counted: training would go on meanwhile
    ratio = statistics.median(asynchronous) / statistics.median(synchronous)
    print(f"checkpoint stall: async save blocks {statistics.median(asynchronous):.2f} s / synchronous save "
          f"{statistics.median(synchronous):.2f} s = {ratio:.2f} (goal <= 0.2; {parameters / 1e6:.0f}M parameters "
          "with AdamW, medians of 3)")


# --- scratch bytes -------------------------------------------------------------------------


def process_write_bytes() -> int:
    """Bytes this process sent to block storage (Linux /proc/self/io); a RAM disk counts nothing."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def scratch_bytes(options: argparse.Namespace) -> None:
    """Bytes written to the persistent run directory with +scratch=ramdisk (persist_every=10) ÷
    without scratch, for 60 saves of the default recipe; and the training time blocked per save."""
    results = {}
    with tempfile.TemporaryDirectory(prefix="voicetrain-bench-", dir=REPOSITORY_ROOT / "runs") as run_root:
        for label, extra in (("without", []), ("with", ["+scratch=ramdisk", "scratch.persist_every=10",
                                                       f"scratch.dir=/dev/shm/voicetrain-bench-{os.getpid()}"])):
            settings = compose_settings(Path(run_root), options.cache_dir, f"run.name={label}",
                                        "trainer.max_steps=120", "ckpt.every_n_steps=2", *NO_VALIDATION,
                                        "trainer.progress=false", "export.enabled=false", *extra)
            before = process_write_bytes()
            summary = Trainer(settings).train()
            device_bytes = process_write_bytes() - before
            saving = summary.saving
            results[label] = (saving.bytes_to_persistent(), saving.bytes_without_scratch(), device_bytes,
                              saving.blocked_seconds / max(saving.saves, 1))
    with_scratch, without = results["with"], results["without"]
    print(f"scratch bytes: persistent checkpoint bytes with +scratch=ramdisk {with_scratch[0] / 1e6:.1f} MB / without "
          f"{without[0] / 1e6:.1f} MB = {with_scratch[0] / without[0]:.3f} (goal <= 0.12; 60 saves, persist_every=10)")
    print(f"  block-device writes of the whole process (/proc/self/io): {with_scratch[2] / 1e6:.1f} MB / "
          f"{without[2] / 1e6:.1f} MB = {with_scratch[2] / max(without[2], 1):.3f}")
    print(f"  training time blocked per save: {with_scratch[3] * 1e3:.0f} ms with scratch, "
          f"{without[3] * 1e3:.0f} ms without = {with_scratch[3] / without[3]:.2f}")


# --- resume latency ------------------------------------------------------------------------


def seconds_to_first_step(arguments: list[str]) -> float:
    """Wall time from launching `python -m voicetrain ARGS` to its first finished step."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "voicetrain", *arguments], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    elapsed = None
    for line in process.stdout:
        if elapsed is None and "first step of this launch done" in line:
            elapsed = time.perf_counter() - started
    process.wait()
    if elapsed is None or process.returncode != 0:
        raise RuntimeError(f"voicetrain {' '.join(arguments)} exited with {process.returncode} before a first step")
    return elapsed


def resume_latency(options: argparse.Namespace) -> None:
    """Launch-to-first-step when resuming a run ÷ when starting a fresh one (same recipe, warm
    feature cache), alternating 3 launches of each."""
    fresh, resumed = [], []
    with tempfile.TemporaryDirectory(prefix="voicetrain-bench-", dir=REPOSITORY_ROOT / "runs") as run_root:
        common = [f"run.root={run_root}", f"data.cache_dir={options.cache_dir}", "trainer.progress=false",
                  "export.enabled=false", *NO_VALIDATION, "ckpt.every_n_steps=1"]
        seconds_to_first_step([*common, "run.name=resumed", "trainer.max_steps=1"])
        for round_number in range(1, 4):
            fresh.append(seconds_to_first_step([*common, f"run.name=fresh{round_number}", "trainer.max_steps=1"]))
            resumed.append(seconds_to_first_step([*common, "run.name=resumed", f"trainer.max_steps={round_number + 1}"]))
    ratio = statistics.median(resumed) / statistics.median(fresh)
    print(f"resume latency: launch-to-first-step resuming {statistics.median(resumed):.1f} s / fresh "
          f"{statistics.median(fresh):.1f} s = {ratio:.2f} (goal <= 1.5; medians of 3)")


# --- driver -------------------------------------------------------------------------------

BENCHMARKS: dict[str, Callable[[argparse.Namespace], None]] = {
    "loop_overhead": loop_overhead,
    "export_size": export_size,
    "tts_mcd": tts_mcd,
    "checkpoint_stall": checkpoint_stall,
    "scratch_bytes": scratch_bytes,
    "resume_latency": resume_latency,
}


def parse_options(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(BENCHMARKS), action="append",
                        help="run only this benchmark (repeatable)")
    parser.add_argument("--list", action="store_true", help="print the benchmark names and exit")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="feature cache (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=9, help="alternating rounds per side (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=80.0,
                        help="time the measured rounds of one benchmark should take, both sides together; "
                             "sets the steps per round from the warm-up speed (default: %(default)s)")
    parser.add_argument("--steps-per-round", type=int, default=None, help="fixed steps per round instead")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads for both sides (default: torch's own choice); 1 steadies "
                             "the figure on a machine shared with other jobs")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps per side first (default: %(default)s)")
    return parser.parse_args(argv)


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
          f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}")
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load > 0.5 * cores:
        # Other jobs compete for the cores: torch's threads then wait on each other and every
        # timing swings widely. The ratios stay side by side, but take them with salt.
        print(f"  note: load average {load:.1f} on {cores} cores before starting; other jobs are running, "
              "so expect noisy ratios (--threads 1 steadies them)")
    for name in options.only or list(BENCHMARKS):
        BENCHMARKS[name](options)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
