"""`python -m voicetrain.new NAME` writes a task, its YAML and its test, in both layouts, and what it
writes trains.

The separate-project case runs the command in an empty folder, then the test it wrote with pytest
in a subprocess (that test trains two steps, resumes and exports) with nothing of this repository
on PYTHONPATH, so the generated test must make the folder importable itself.

The clone case copies what training needs of this repository (pyproject.toml, src/, conf/) into a
temporary folder, runs the command from a folder inside the copy and trains the printed command
once. The copy is imported ahead of the editable install of this repository through
PYTHONPATH=<copy>/src, and <copy>/src/voicetrain/conf is a link to <copy>/conf, where a plain
install puts it (package-dir in pyproject.toml): the editable install's finder maps voicetrain.conf
to this repository's conf/, which would never see the new YAML.

Refusals run the command in-process: they return before importing torch.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from voicetrain.new import find_clone, main, project_name

from helpers import CLI_TIMEOUT_SECONDS, QUICK, assert_ok, environment, output_of

REPOSITORY = Path(__file__).resolve().parents[1]
# A tiny run of a generated task: what is checked is that it trains, not what it learns.
TINY_TASK = ["task.hidden_channels=8", "task.bottleneck_channels=4", "task.segment_frames=16",
             "task.validation_utterances=1", "trainer.validate_at_start=false", "trainer.audio_previews=0",
             "export.enabled=false", *QUICK]


def new_command(*arguments: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "voicetrain.new", *arguments], cwd=cwd, env=env or environment(),
                          capture_output=True, text=True, timeout=CLI_TIMEOUT_SECONDS)


def files_under(folder: Path) -> set[str]:
    return {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()}


def assert_lints_clean(files: list[Path]) -> None:
    """ruff with this repository's settings, as `make lint` runs it."""
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--config",
                             str(REPOSITORY / "pyproject.toml"), *map(str, files)],
                            capture_output=True, text=True, timeout=120)
    assert_ok(result)


def copy_of_repository(destination: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    destination.mkdir()
    shutil.copy2(REPOSITORY / "pyproject.toml", destination / "pyproject.toml")
    for folder in ("src", "conf"):
        shutil.copytree(REPOSITORY / folder, destination / folder, ignore=ignore)
    (destination / "src" / "voicetrain" / "conf").symlink_to(Path("..", "..", "conf"), target_is_directory=True)
    return destination


@pytest.mark.slow  # long: runs in make test-slow (CI runs both)
def test_a_separate_project_gets_a_task_whose_own_test_trains_resumes_and_exports(tmp_path: Path) -> None:
    project = tmp_path / "my-voice-project"
    project.mkdir()
    result = new_command("mymodel", cwd=project)
    assert_ok(result)
    assert files_under(project) == {"mymodel.py", "conf/task/mymodel.yaml", "tests/test_mymodel.py", "pyproject.toml"}
    assert f'python -m voicetrain "hydra.searchpath=[file://{project}/conf]" task=mymodel\n' in result.stdout
    assert f"export PYTHONPATH={project}\n" in result.stdout, "the folder must be importable: say how"
    yaml = (project / "conf" / "task" / "mymodel.yaml").read_text()
    assert yaml.startswith('# @package _global_\n# python -m voicetrain "hydra.searchpath=[file://$PWD/conf]" task=mymodel\n')
    assert "\ntask:\n  _target_: mymodel.MymodelTask\n" in yaml and "\n    _target_: voicetrain.features.mel.LogMel\n" in yaml
    assert_lints_clean([project / "mymodel.py", project / "tests" / "test_mymodel.py"])

    env = environment()
    env.pop("PYTHONPATH", None)
    tested = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_mymodel.py"],
                            cwd=project, env=env, capture_output=True, text=True, timeout=4 * CLI_TIMEOUT_SECONDS)
    assert_ok(tested)
    assert "1 passed" in tested.stdout, output_of(tested)


def test_a_clone_gets_the_task_inside_its_package_and_the_printed_command_trains_it(tmp_path: Path) -> None:
    clone = copy_of_repository(tmp_path / "voicetrain")
    result = new_command("my_vc", cwd=clone / "src")  # from a folder inside the clone: found by climbing
    assert_ok(result)
    written = {"src/voicetrain/tasks/my_vc.py", "conf/task/my_vc.yaml", "tests/tasks/test_task_my_vc.py"}
    assert written <= files_under(clone) and not (clone / "src" / "my_vc.py").exists(), result.stdout
    yaml = (clone / "conf" / "task" / "my_vc.yaml").read_text()
    assert yaml.startswith("# @package _global_\n# python -m voicetrain task=my_vc\n")
    assert "\ntask:\n  _target_: voicetrain.tasks.my_vc.MyVcTask\n" in yaml
    assert_lints_clean([clone / "src" / "voicetrain" / "tasks" / "my_vc.py", clone / "tests" / "tasks" / "test_task_my_vc.py"])

    printed = [line.split() for line in result.stdout.splitlines() if line.startswith("  python -m voicetrain ")]
    assert printed == [["python", "-m", "voicetrain", "task=my_vc"]], result.stdout
    trained = subprocess.run(
        [sys.executable, *printed[0][1:], *TINY_TASK, f"run.root={tmp_path / 'runs'}", "run.name=my_vc",
         f"data.cache_dir={tmp_path / 'features'}", "trainer.max_steps=1"],
        cwd=tmp_path, env=environment(PYTHONPATH=str(clone / "src")), capture_output=True, text=True,
        timeout=CLI_TIMEOUT_SECONDS)
    assert_ok(trained)
    assert "Instantiating task <voicetrain.tasks.my_vc.MyVcTask>" in trained.stderr + trained.stdout
    assert (tmp_path / "runs" / "my_vc" / "checkpoints" / "step_00000001" / "manifest.json").is_file()


def fake_clone(root: Path, project: str = "voicetrain") -> Path:
    """The layout that marks a clone, and nothing else: no training happens in it."""
    (root / "src" / "voicetrain" / "tasks").mkdir(parents=True)
    (root / "conf" / "task").mkdir(parents=True)
    (root / "conf" / "task" / "custom.yaml").write_text("_target_: voicetrain.tasks.custom.CustomTask\n")
    (root / "pyproject.toml").write_text(f'[build-system]\nrequires = ["setuptools"]\n\n[project]\n'
                                         f'dependencies = [\n  "torch",\n]\nname = "{project}"\n')
    return root


def test_a_clone_is_recognised_by_its_project_name_and_folders(tmp_path: Path) -> None:
    clone = fake_clone(tmp_path / "fork")
    (clone / "docs").mkdir()
    assert find_clone(clone / "docs") == clone
    other = fake_clone(tmp_path / "other", project="other-project")
    assert find_clone(other) is None
    shutil.rmtree(clone / "conf" / "task")
    assert find_clone(clone) is None


def test_project_name_reads_only_the_project_table() -> None:
    assert project_name('[tool.x]\nname = "voicetrain"\n\n[project]\nversion = "1"\nname = "fork"\n') == "fork"
    assert project_name('[tool.x]\nname = "voicetrain"\n') is None


def test_into_a_fake_clone_writes_into_its_package_and_layout_project_overrides(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clone = fake_clone(tmp_path / "fork")
    assert main(["mymodel", "--into", str(clone / "conf")]) == 0
    assert {"src/voicetrain/tasks/mymodel.py", "conf/task/mymodel.yaml", "tests/tasks/test_task_mymodel.py"} <= \
        files_under(clone)
    assert "  python -m voicetrain task=mymodel\n" in capsys.readouterr().out

    inside = clone / "experiments"
    assert main(["mymodel", "--into", str(inside), "--layout", "project"]) == 0
    assert files_under(inside) == {"mymodel.py", "conf/task/mymodel.yaml", "tests/test_mymodel.py", "pyproject.toml"}
    assert "_target_: mymodel.MymodelTask" in (inside / "conf" / "task" / "mymodel.yaml").read_text()


def test_a_task_of_the_clone_itself_is_taken(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clone = fake_clone(tmp_path / "fork")
    assert main(["custom", "--into", str(clone)]) == 2
    assert f"task=custom exists ({clone / 'conf' / 'task' / 'custom.yaml'})" in capsys.readouterr().err


def test_layout_clone_outside_a_clone_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["mymodel", "--into", str(tmp_path), "--layout", "clone"]) == 2
    assert "is not inside a clone of voicetrain" in capsys.readouterr().err
    assert files_under(tmp_path) == set()


def test_an_existing_file_is_never_overwritten(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    yaml = tmp_path / "conf" / "task" / "mymodel.yaml"
    yaml.parent.mkdir(parents=True)
    yaml.write_text("mine\n")
    assert main(["mymodel", "--into", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert f"refusing to overwrite {yaml}" in error and "pick another NAME" in error, error
    assert files_under(tmp_path) == {"conf/task/mymodel.yaml"}, "nothing may be written when one file exists"
    assert yaml.read_text() == "mine\n"


def test_a_second_run_names_every_file_it_would_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["mymodel", "--into", str(tmp_path)]) == 0
    before = {path: path.read_text() for path in tmp_path.rglob("*") if path.is_file()}
    capsys.readouterr()
    assert main(["mymodel", "--into", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    # pyproject.toml is never overwritten either, but it does not stop the command: it is left alone.
    assert all(str(path) in error for path in before if path.name != "pyproject.toml"), error
    assert before == {path: path.read_text() for path in tmp_path.rglob("*") if path.is_file()}


@pytest.mark.parametrize("name", ["MyModel", "my-model", "2model", "_hidden", "class", "my model"])
def test_a_name_that_is_not_a_lowercase_identifier_is_refused(name: str, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main([name, "--into", str(tmp_path)]) == 2
    assert f"NAME {name!r} is not a lowercase Python identifier" in capsys.readouterr().err
    assert files_under(tmp_path) == set()


@pytest.mark.parametrize(("name", "reason"), [
    ("vc", "is taken: task=vc exists"),
    ("tts", "is taken: task=tts exists"),
    ("vocoder", "is taken: task=vocoder exists"),
    ("svc", "is taken: task=svc exists"),
    ("base", "is taken: voicetrain.tasks.base exists"),
    ("layers", "is taken: voicetrain.tasks.layers exists"),
    ("json", "would shadow the Python standard-library module json"),
    ("numpy", "would shadow the importable module numpy"),
])
def test_a_name_that_shadows_a_task_or_a_module_is_refused(name: str, reason: str, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main([name, "--into", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert f"NAME {name!r} {reason}" in error and f"e.g. my_{name}" in error, error
    assert files_under(tmp_path) == set()


def test_help_explains_both_layouts(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_status:
        main(["--help"])
    assert exit_status.value.code == 0
    shown = capsys.readouterr().out
    for layout_detail in ("src/voicetrain/tasks/NAME.py", "tests/tasks/test_task_NAME.py", "python -m voicetrain task=NAME",
                          "tests/test_NAME.py", '"hydra.searchpath=[file://<folder>/conf]" task=NAME', "PYTHONPATH"):
        assert layout_detail in shown, shown
