"""docs/fork_guide.md is executed: its example task and YAML are written into a fresh project
folder outside the repository, and its command block runs there through bash, as a user would
paste it (only trainer.max_steps is scaled down, and the tiny-run overrides are appended to the
training commands). The guide cannot go stale without this test failing."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from voicetrain.data import BUNDLED_CORPUS

from helpers import CLI_TIMEOUT_SECONDS, QUICK, environment, output_of, write_speech

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "fork_guide.md"
MARKER = re.compile(r"<!-- fork-guide: (file (?P<path>\S+)|commands) -->\n```[a-z]*\n(?P<body>.*?)```", re.DOTALL)
# The guide's step counts are real ones; here each 500 steps become one.
STEP_SCALE = 500
TRAINING_COMMAND = "python -m voicetrain "


def guide_blocks() -> tuple[dict[str, str], str]:
    """The guide's marked files (relative path -> text) and its command block."""
    files, commands = {}, []
    for match in MARKER.finditer(GUIDE.read_text(encoding="utf-8")):
        if match["path"]:
            files[match["path"]] = match["body"]
        else:
            commands.append(match["body"])
    assert len(commands) == 1, f"{GUIDE} must hold one '<!-- fork-guide: commands -->' block"
    return files, commands[0]


def scaled_for_a_test(commands: str, cache: Path) -> str:
    lines = []
    for line in commands.splitlines():
        if line.startswith(TRAINING_COMMAND):
            line = re.sub(r"trainer\.max_steps=(\d+)", lambda match: f"trainer.max_steps={int(match[1]) // STEP_SCALE}",
                          line)
            line += f" data.cache_dir={cache} ckpt.every_n_steps=2 trainer.val_every=1000 {' '.join(QUICK)}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def test_the_guide_names_the_files_it_says_a_project_adds() -> None:
    files, commands = guide_blocks()
    assert set(files) == {"mymodel.py", "conf/task/mymodel.yaml"}
    yaml = files["conf/task/mymodel.yaml"]
    assert yaml.startswith("# python -m voicetrain"), "every YAML opens with the command that uses it"
    assert "_target_: mymodel.MyModelTask" in yaml and "class MyModelTask(Task)" in files["mymodel.py"]
    assert 'hydra.searchpath=[file://$PWD/conf]" task=mymodel' in commands


@pytest.mark.slow  # long: runs in make test-slow (CI runs both)
def test_the_guide_example_trains_resumes_exports_and_infers(tmp_path: Path, bundled_cache: Path) -> None:
    files, commands = guide_blocks()
    project = tmp_path / "my-voice-project"
    for relative, text in files.items():
        (project / relative).parent.mkdir(parents=True, exist_ok=True)
        (project / relative).write_text(text, encoding="utf-8")
    write_speech(project / "in.wav", BUNDLED_CORPUS / "rms" / "h01_09.flac", 22050)
    script = scaled_for_a_test(commands, bundled_cache)
    # `python` is this interpreter (its virtual environment's bin first on PATH); nothing of the
    # repository is on PYTHONPATH, so the guide's own `export PYTHONPATH=$PWD` must do its job.
    env = environment(PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    env.pop("PYTHONPATH", None)
    result = subprocess.run(["bash", "-e", "-x", "-c", script], cwd=project, env=env, capture_output=True, text=True,
                            timeout=4 * CLI_TIMEOUT_SECONDS)
    assert result.returncode == 0, f"{script}\n{output_of(result)}"
    output = result.stdout + result.stderr

    first, second = (int(steps) // STEP_SCALE for steps in re.findall(r"trainer\.max_steps=(\d+)", commands)[:2])
    assert f"resuming from step {first}" in output, f"the second command did not continue the run\n{output}"
    run = project / "runs" / "mymodel"
    assert (run / "checkpoints" / f"step_{second:08d}").is_dir(), output
    manifest = json.loads((run / "export" / "manifest.json").read_text())
    assert manifest["step"] == second and f"exporting runs/mymodel/checkpoints/step_{second:08d}" in output, output
    wave, rate = soundfile.read(project / "out.wav", dtype="float32")
    assert rate == 16000 and len(wave) > 0 and np.all(np.isfinite(wave)), output
    assert float(np.sqrt(np.mean(wave ** 2))) > 1e-4, "the converted recording is silent"


@pytest.mark.parametrize("marker", ["file mymodel.py", "file conf/task/mymodel.yaml", "commands"])
def test_each_marker_is_followed_by_a_fenced_block(marker: str) -> None:
    text = GUIDE.read_text(encoding="utf-8")
    position = text.index(f"<!-- fork-guide: {marker} -->")
    assert text[position:].split("\n", 2)[1].startswith("```"), f"'{marker}' must sit right above its code block"


def guide_section(title: str) -> str:
    text = GUIDE.read_text(encoding="utf-8")
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def test_the_building_blocks_section_lists_every_layer_module_and_names_only_what_exists() -> None:
    import importlib
    import pkgutil

    import voicetrain.tasks.layers as layers

    section = guide_section("11. Building blocks")
    named = re.findall(r"`(\w+)\.(\w+)`", section)
    assert named, section
    for module_name, attribute in named:
        module = importlib.import_module(f"voicetrain.tasks.layers.{module_name}")
        assert hasattr(module, attribute), f"the guide names voicetrain.tasks.layers.{module_name}.{attribute}"
    modules = {info.name for info in pkgutil.iter_modules(layers.__path__)}
    assert modules == {module_name for module_name, _ in named}, "every layer module has its line"


def test_the_features_section_extractor_runs_and_its_yaml_is_the_global_form(tmp_path: Path) -> None:
    section = guide_section("9. Features")
    python, yaml = re.search(r"```python\n(.*?)```", section, re.DOTALL)[1], \
        re.search(r"```yaml\n(.*?)```", section, re.DOTALL)[1]
    (tmp_path / "tilt.py").write_text(python)
    sys.path.insert(0, str(tmp_path))
    try:
        import tilt
    finally:
        sys.path.remove(str(tmp_path))
    extractor = tilt.SpectralTilt(tilt.SpectralTiltSettings(n_fft=512), 16000, 256)
    rng = np.random.default_rng(0)
    white = rng.standard_normal(8000).astype(np.float32)
    brown = np.cumsum(white).astype(np.float32) / 100  # -6 dB per octave
    for wave in (white, brown):
        assert extractor.extract(wave, 16000).shape == (extractor.channels(), 8000 // 256 + 1)
    assert float(np.median(extractor.extract(brown, 16000))) < float(np.median(extractor.extract(white, 16000))) - 3
    assert yaml.startswith("# @package _global_\n") and "\ntask:\n" in yaml and "\nfeatures:\n  tilt:\n" in yaml
