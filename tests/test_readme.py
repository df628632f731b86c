"""Every command in the README's ```bash blocks runs, in order, as a new user would type it.

The commands run in an empty folder, so `runs/` and every path they write are the test's own.
Three things are changed, the same way for every command, and nothing else:
- training launches (`python -m voicetrain ...`, also multirun) get a tiny step count
  (`trainer.max_steps=2`, replacing the README's own), no progress bar, and the session's warm
  feature store (`data.cache_dir`), so the whole README runs in minutes;
- paths outside the folder (`/raw`, `/data`, `/tmp`) are moved inside it, and the recordings the
  README converts (`me.wav`, `song.wav`) and the raw recordings it prepares are made from the
  bundled corpus first;
- a checkpoint named by its step (`step_00001500`) becomes the run's newest, since two steps
  were trained.
Commands that cannot run here are skipped with the reason, listed by `SKIPPED` and printed; a
command that matches no rule fails the test, so a new README command must either run or say why not.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile

from voicetrain.data import BUNDLED_CORPUS

from helpers import environment

README = Path(__file__).resolve().parents[1] / "README.md"
FENCED_BASH = re.compile(r"^```bash\n(?P<body>.*?)^```", re.DOTALL | re.MULTILINE)
TINY = {"trainer.max_steps": "2", "trainer.val_every": "2", "ckpt.every_n_steps": "2", "trainer.progress": "false"}
OUTSIDE = re.compile(r"(?<![\w./])/(raw|data|tmp)(?=/|\b)")
STEP_NAME = re.compile(r"step_\d{8}")
COMMAND_TIMEOUT_SECONDS = 900

# (pattern matched against the command as written, why it does not run here)
SKIPPED = [
    (r"^make (train|test)\b", "the first screen's set-up commands: `make test` is this suite, and `make train` is "
                              "`python -m voicetrain`, which runs below"),
    (r"^make tensorboard$|^tensorboard ", "a server that does not exit; tests/run/test_tensorboard_view.py starts it"),
    (r"^accelerate launch", "needs GPUs or several machines"),
    (r"^torchrun ", "two processes training for real; tests/run/test_distributed.py (slow) runs torchrun"),
    (r"hydra/launcher=slurm", "needs a SLURM cluster; tests/run/test_sweeps.py runs submitit's local executor"),
    (r"^python -m voicetrain\.upgrade ", "needs a run written by voicetrain 0.1; tests/test_upgrade.py writes one "
                                          "and converts it"),
    (r"--trust-code mymodel", "needs a model of your own in its own project; tests/export/test_trust.py trusts a "
                              "module by name with --trust-code and loads a fork registered by its entry point"),
    (r"^python -m voicetrain task=mymodel", "trains the task `voicetrain.new` writes into a clone, which needs the "
                                            "clone's editable install; tests/test_new.py trains it there"),
]


@dataclass
class Command:
    text: str  # as written in the README
    line: int


def readme_commands() -> list[Command]:
    """Every command of every ```bash block, in order, comments and blank lines left out."""
    text = README.read_text()
    commands = []
    for block in FENCED_BASH.finditer(text):
        first_line = text.count("\n", 0, block.start("body")) + 1
        for offset, line in enumerate(block.group("body").splitlines()):
            command = " ".join(shlex.split(line, comments=True))
            if command:
                commands.append(Command(line.split(" #")[0].strip(), first_line + offset))
    return commands


def skip_reason(command: str) -> str | None:
    for pattern, reason in SKIPPED:
        if re.search(pattern, command):
            return reason
    return None


def is_training(arguments: list[str]) -> bool:
    """`python -m voicetrain` launches that train (not --help or --cfg)."""
    return arguments[:3] == ["python", "-m", "voicetrain"] and not {"--help", "--cfg"} & set(arguments)


def newest_step(folder: Path) -> str:
    steps = sorted(path.name for path in (folder / "checkpoints").glob("step_*"))
    assert steps, f"{folder} has no checkpoint for the README's --checkpoint"
    return steps[-1]


def prepared(command: str, workdir: Path, feature_store: Path) -> list[str]:
    """The command as it runs here: see the module docstring."""
    arguments = [OUTSIDE.sub(lambda match: f"{workdir}/{match.group(1)}", argument)
                 for argument in shlex.split(command, comments=True)]
    if arguments[:3] == ["python", "-m", "voicetrain.export"] and "--checkpoint" in arguments:
        run = workdir / arguments[3]
        arguments = [STEP_NAME.sub(newest_step(run), argument) for argument in arguments]
    if is_training(arguments):
        kept = [argument for argument in arguments[3:] if argument.split("=")[0] not in TINY]
        arguments = arguments[:3] + kept + [f"{key}={value}" for key, value in TINY.items()]
        arguments.append(f"data.cache_dir={feature_store}")
    if arguments[0] == "python":
        arguments[0] = sys.executable
    return arguments


def write_inputs(workdir: Path) -> None:
    """What the README's commands read: two recordings to convert and raw recordings to prepare
    (long ones, utterances joined by a second of quiet noise, as a person would record them)."""
    corpus = sorted(BUNDLED_CORPUS.glob("*/*.flac"))
    wave, rate = soundfile.read(corpus[0], dtype="float32")
    soundfile.write(workdir / "me.wav", wave, rate)
    soundfile.write(workdir / "song.wav", wave, rate)
    noise = np.random.default_rng(0)
    for speaker in ("alice", "bob"):
        source = "slt" if speaker == "alice" else "rms"
        pieces = []
        for path in sorted((BUNDLED_CORPUS / source).glob("*.flac"))[:6]:
            utterance, rate = soundfile.read(path, dtype="float32")
            pieces += [utterance, 0.001 * noise.standard_normal(rate).astype(np.float32)]
        folder = workdir / "raw" / speaker
        folder.mkdir(parents=True)
        soundfile.write(folder / "session.wav", np.concatenate(pieces), rate)


def test_the_first_screen_gives_exactly_two_set_up_commands() -> None:
    first = FENCED_BASH.search(README.read_text())
    commands = [line.split("#")[0].strip() for line in first.group("body").splitlines() if line.split("#")[0].strip()]
    assert commands == ["make train", "make test"]


def test_every_command_is_run_or_skipped_with_a_reason() -> None:
    """The classification alone (fast): each command runs under the rules above or is skipped."""
    commands = readme_commands()
    assert len(commands) > 20
    for command in commands:
        arguments = shlex.split(command.text)
        runnable = arguments[:2] == ["python", "-m"] and arguments[2].startswith("voicetrain")
        assert runnable or skip_reason(command.text), \
            f"README.md:{command.line}: `{command.text}` neither runs here nor is listed in SKIPPED with a reason"


@pytest.mark.slow
def test_every_readme_command_runs(tmp_path: Path, bundled_cache: Path) -> None:
    write_inputs(tmp_path)
    env = environment(PYTHONPATH=str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    skipped, ran = [], []
    for command in readme_commands():
        # A command the README repeats (the command list, then its section) ran already: run again,
        # `voicetrain.new` would rightly refuse to overwrite what it wrote.
        reason = skip_reason(command.text) or ("the same command ran above" if command.text in ran else None)
        if reason:
            skipped.append(f"README.md:{command.line} `{command.text}`: {reason}")
            continue
        arguments = prepared(command.text, tmp_path, bundled_cache)
        result = subprocess.run(arguments, cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=COMMAND_TIMEOUT_SECONDS)
        assert result.returncode == 0, (
            f"README.md:{command.line} `{command.text}` exited {result.returncode}\nran: {shlex.join(arguments)}\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
        ran.append(command.text)
    print(f"ran {len(ran)} README commands; skipped {len(skipped)}:\n" + "\n".join(skipped))
    assert (tmp_path / "runs" / "default" / "export" / "manifest.json").is_file()
    assert (tmp_path / "me_as_slt.wav").is_file() and (tmp_path / "hello.wav").is_file()
    assert (tmp_path / "data" / "alice" / "alice").is_dir()
