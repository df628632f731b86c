"""A launch without a progress bar is not silent: every trainer.log_every steps a line with the
step, the losses, the learning rate and steps/s reaches the console and train.log (train.log
always, even with the bar); and trainer.validate_at_end=false skips the last step's validation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from voicetrain.run.reporting import training_line
from voicetrain.run.trainer import validation_due

from helpers import TINY_MODEL, assert_ok, run_cli

LINE = re.compile(r"step (\d+)/3: mel/l1=\d+\.\d{4} lr=\d\.\d\de[-+]\d\d \d+\.\d\d steps/s")


def test_the_line_names_the_step_the_losses_the_learning_rates_and_the_speed() -> None:
    assert training_line(25, 1500, {"mel/l1": 0.43214}, {"model": 3e-4}, 2.414) == \
        "step 25/1500: mel/l1=0.4321 lr=3.00e-04 2.41 steps/s"
    two = training_line(2, 4, {"adv/generator": 1.0, "adv/discriminator": 0.5}, {"generator": 2e-4, "discriminator": 1e-4},
                        1.0)
    assert two == ("step 2/4: adv/generator=1.0000 adv/discriminator=0.5000 lr/generator=2.00e-04 "
                   "lr/discriminator=1.00e-04 1.00 steps/s")


def test_the_last_step_validates_unless_validate_at_end_is_false() -> None:
    assert validation_due(3, 500, 3, validate_at_end=True)
    assert not validation_due(3, 500, 3, validate_at_end=False)
    assert validation_due(500, 500, 1000, validate_at_end=False), "val_every still holds"


def test_without_a_bar_every_log_every_steps_is_a_line_and_the_last_validation_can_be_skipped(
        tmp_path: Path, bundled_cache: Path) -> None:
    result = run_cli(*TINY_MODEL, "trainer.max_steps=3", "trainer.log_every=1", "trainer.validate_at_end=false",
                     f"run.root={tmp_path}", "run.name=quiet", f"data.cache_dir={bundled_cache}", cwd=tmp_path)
    assert_ok(result)
    console = result.stdout + result.stderr
    train_log = (tmp_path / "quiet" / "train.log").read_text()
    for text in (console, train_log):
        assert [int(step) for step in LINE.findall(text)] == [1, 2, 3], text
    assert "validation at step" not in train_log, "trainer.validate_at_end=false skips the last validation"


@pytest.mark.slow  # a second launch of the above: runs in make test-slow (CI runs both)
def test_with_the_bar_train_log_still_gets_every_line(tmp_path: Path, bundled_cache: Path) -> None:
    result = run_cli(*TINY_MODEL, "trainer.max_steps=3", "trainer.log_every=1", "trainer.progress=true",
                     "trainer.validate_at_end=false", f"run.root={tmp_path}", "run.name=bar",
                     f"data.cache_dir={bundled_cache}", cwd=tmp_path)
    assert_ok(result)
    assert LINE.findall(result.stdout) == [], "the console's bar shows the losses instead"
    assert [int(step) for step in LINE.findall((tmp_path / "bar" / "train.log").read_text())] == [1, 2, 3]
