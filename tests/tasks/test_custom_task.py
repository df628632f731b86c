"""A brand-new task defined entirely inside tests/ (custom_gan_task.py, and its YAML in
tests/custom_conf/task/ found through `hydra.searchpath`) trains through the normal CLI, survives
a real SIGKILL mid-run, resumes with the same command to the same bits as an uninterrupted run,
and exports only its inference module: no change to src/ or conf/ is involved."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from safetensors.torch import load_file

from export_helpers import with_tests_on_path
from helpers import CONFIG_ROOT, QUICK, assert_ok, output_of, run_cli

TESTS_DIR = Path(__file__).resolve().parents[1]  # tests/, where the shared test tasks live
STEPS = 30
EVERY = 10


def command_overrides(root: Path, name: str, cache: Path) -> list[str]:
    return [
        f"hydra.searchpath=[file://{TESTS_DIR / 'custom_conf'}]",
        "task=custom_gan",
        # Each step lasts at least 50 ms, so the kill lands between the first checkpoint and the last step.
        "task.minimum_step_seconds=0.05",
        # A Settings field the task's YAML leaves to the dataclass's default, set like any other key.
        "task.adversarial_weight=0.05",
        "ckpt.monitor=val/l1",
        f"run.root={root}",
        f"run.name={name}",
        f"data.cache_dir={cache}",
        f"trainer.max_steps={STEPS}",
        f"trainer.val_every={STEPS}",
        f"ckpt.every_n_steps={EVERY}",
        *QUICK,
    ]


def kill_after_first_checkpoint(overrides: list[str], checkpoints: Path, log: Path, timeout: float = 300) -> int:
    """Starts the command, SIGKILLs it once its first checkpoint is committed; returns that step."""
    committed: list[Path] = []
    with log.open("w") as output:
        process = subprocess.Popen([sys.executable, "-m", "voicetrain", *overrides], env=with_tests_on_path(),
                                   stdout=output, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline and process.poll() is None:
                # Only a complete checkpoint carries a step_* name (it is renamed into place last).
                committed = sorted(checkpoints.glob("step_*")) if checkpoints.is_dir() else []
                if committed:
                    process.send_signal(signal.SIGKILL)
                    break
                time.sleep(0.005)
        finally:
            if process.poll() is None and not committed:
                process.kill()  # out of time: no checkpoint appeared
            process.wait()
    assert committed and process.returncode == -signal.SIGKILL, f"the run was not killed mid-run:\n{log.read_text()}"
    return int(committed[0].name.removeprefix("step_"))


def test_custom_gan_task_trains_survives_sigkill_resumes_bit_exactly_and_exports_the_generator_only(
        tmp_path: Path, bundled_cache: Path) -> None:
    assert not (CONFIG_ROOT / "task" / "custom_gan.yaml").exists(), "the task must come from tests/ alone"
    reference_overrides = command_overrides(tmp_path, "reference", bundled_cache)
    crashed_overrides = command_overrides(tmp_path, "crashed", bundled_cache)
    crashed_checkpoints = tmp_path / "crashed" / "checkpoints"
    with ThreadPoolExecutor(max_workers=2) as pool:
        reference_future = pool.submit(run_cli, *reference_overrides, cwd=tmp_path, env=with_tests_on_path())
        killed_at = kill_after_first_checkpoint(crashed_overrides, crashed_checkpoints, tmp_path / "killed.log")
        reference = reference_future.result()
    assert_ok(reference)
    assert killed_at < STEPS

    resumed = run_cli(*crashed_overrides, cwd=tmp_path, env=with_tests_on_path())
    assert_ok(resumed)
    assert "resuming from step" in resumed.stderr + resumed.stdout, output_of(resumed)

    expected = tmp_path / "reference" / "checkpoints" / f"step_{STEPS:08d}"
    actual = crashed_checkpoints / f"step_{STEPS:08d}"
    state_files = sorted(path.relative_to(expected).as_posix() for path in expected.rglob("*")
                         if path.parent.name in ("modules", "optimizers", "schedulers"))
    # Two modules and two optimizers, each file named by what it holds.
    assert state_files == ["modules/discriminator.safetensors", "modules/generator.safetensors",
                           "optimizers/discriminator.json", "optimizers/discriminator.safetensors",
                           "optimizers/generator.json", "optimizers/generator.safetensors",
                           "schedulers/discriminator.json", "schedulers/generator.json"], state_files
    for name in state_files:
        assert (expected / name).read_bytes() == (actual / name).read_bytes(), f"{actual / name} differs"

    assert "adversarial_weight: 0.05" in (expected / "config.yaml").read_text(), "the override did not take"
    for run in ("reference", "crashed"):
        exported = load_file(str(tmp_path / run / "export" / "model.safetensors"))
        assert exported and all(key.startswith("generator.") for key in exported), sorted(exported)
        assert not any("discriminator" in key for key in exported), sorted(exported)
    # ...while the training checkpoint does hold the discriminator (it resumes the GAN, not just the generator).
    generator_keys = {key.removeprefix("generator.") for key in exported}
    assert generator_keys == set(load_file(str(expected / "modules" / "generator.safetensors")))
    assert set(load_file(str(expected / "modules" / "discriminator.safetensors")))
