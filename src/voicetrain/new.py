"""`python -m voicetrain.new NAME`: the three files a new model starts from, and the command that trains it.

It writes a task module holding a working minimal model that implements the whole task contract (a
speaker-conditioned mel autoencoder; with `--with f0` an F0-conditioned waveform converter that
honours `python -m voicetrain.infer --transpose`), its `# @package _global_` YAML (a `task:` and a
`features:` block) opening with the command that trains it, and a test that trains two steps,
validates, resumes and exports. Where they go depends on where it runs:

- in a clone of voicetrain (this folder or a parent holds a pyproject.toml naming the project
  voicetrain, src/voicetrain/tasks/ and conf/task/): `src/voicetrain/tasks/NAME.py`,
  `conf/task/NAME.yaml`, `tests/tasks/test_task_NAME.py`; trained by `python -m voicetrain task=NAME`;
- anywhere else (a project of your own that installed voicetrain): `NAME.py`, `conf/task/NAME.yaml`,
  `tests/test_NAME.py` in the current folder; trained with `hydra.searchpath` pointing at its conf/.
  A `pyproject.toml` registering the task in the entry-point group `voicetrain.tasks` is written
  too when the folder has none (one that exists is never touched: the lines to add are printed), so
  that after `pip install -e .` an export or checkpoint naming the task is trusted without
  `--trust-code NAME`.

The files are rendered from the templates shipped in voicetrain/templates/ with `string.Template`.
Nothing is ever overwritten; a NAME that would shadow a task, a voicetrain module or an importable
module is refused before anything is written. This module imports no torch, so it answers at once.
"""

from __future__ import annotations

import argparse
import importlib.util
import keyword
import re
import shlex
import string
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

PROG = "python -m voicetrain.new"
NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]*")

@dataclass(frozen=True)
class Model:
    """One starting model: its templates, the metric its validate reports and its test's tiny sizes."""

    task_template: str
    yaml_template: str
    metric: str
    tiny: tuple[str, ...]  # task overrides that make the generated test's runs small


MODELS = {
    "mel": Model("task.py.txt", "task.yaml.txt", "val/reconstruction_mcd",
                 ("task.hidden_channels=8", "task.bottleneck_channels=4", "task.segment_frames=16",
                  "task.validation_utterances=2")),
    "f0": Model("task_f0.py.txt", "task_f0.yaml.txt", "val/mrstft",
                ("task.hidden_channels=8", "task.bottleneck_channels=4", "task.speaker_channels=8",
                 "task.generator_channels=16", "task.generator_layers=1", "task.segment_frames=16",
                 "task.validation_utterances=2")),
}
ENTRY_POINT_GROUP = "voicetrain.tasks"
# Names that voicetrain's recipes are growing into (DESIGN.md lists task=svc and task=vocoder).
LAYOUTS = ("auto", "clone", "project")

DESCRIPTION = """\
Write a new task: a working minimal model (a speaker-conditioned mel autoencoder; with --with f0 an
F0-conditioned waveform converter that honours --transpose), its YAML (task: and features: blocks)
and a test that trains it two steps, resumes and exports. Start from it and replace the model.

Where the files go:
  in a clone of voicetrain (the destination or a folder above it holds pyproject.toml naming the
  project voicetrain, src/voicetrain/tasks/ and conf/task/):
      src/voicetrain/tasks/NAME.py   _target_: voicetrain.tasks.NAME.<Name>Task
      conf/task/NAME.yaml
      tests/tasks/test_task_NAME.py
      train: python -m voicetrain task=NAME   (the clone installed editable: make install)
  anywhere else, e.g. a project of your own that installed voicetrain:
      NAME.py                        _target_: NAME.<Name>Task
      conf/task/NAME.yaml
      tests/test_NAME.py
      pyproject.toml                 registers the task (entry point group voicetrain.tasks); an
                                     existing one is left alone and the lines to add are printed
      train: python -m voicetrain "hydra.searchpath=[file://<folder>/conf]" task=NAME
             with <folder> importable (export PYTHONPATH=<folder>, or pip install -e <folder>)
      export/infer: pip install -e <folder> registers the task; otherwise pass --trust-code NAME

Nothing is overwritten: an existing file stops the command (exit status 2) before anything is
written. NAME must be a lowercase Python identifier that is neither a voicetrain task or module nor
a standard-library or installed module.
"""


class Refusal(Exception):
    """What stops the command before it writes anything; the message names the file or name and the fix."""


@dataclass(frozen=True)
class Plan:
    """Where one new task's files go, and the class its YAML names."""

    layout: str  # "clone" or "project"
    root: Path  # the clone's root, or the project folder
    task_file: Path
    yaml_file: Path
    test_file: Path
    target: str  # the YAML's _target_
    pyproject: Path | None = None  # a project's pyproject.toml (written only when absent)

    @property
    def files(self) -> list[Path]:
        return [self.task_file, self.yaml_file, self.test_file]

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()


def class_prefix(name: str) -> str:
    """`my_model` -> `MyModel`: the prefix of the generated Settings, model and Task classes."""
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


def project_name(pyproject: str) -> str | None:
    """The `name` of a pyproject.toml's [project] table (a regular expression: Python 3.10 has no tomllib)."""
    section = re.search(r"^\[project\][ \t]*$(.*?)(?=^\[|\Z)", pyproject, re.MULTILINE | re.DOTALL)
    found = re.search(r"""^name\s*=\s*["']([^"']+)["']""", section[1], re.MULTILINE) if section else None
    return found[1] if found else None


def is_clone(folder: Path) -> bool:
    pyproject = folder / "pyproject.toml"
    if not (pyproject.is_file() and (folder / "src" / "voicetrain" / "tasks").is_dir()
            and (folder / "conf" / "task").is_dir()):
        return False
    return project_name(pyproject.read_text(encoding="utf-8", errors="replace")) == "voicetrain"


def find_clone(start: Path) -> Path | None:
    """The voicetrain clone `start` lies in (itself or a parent), or None."""
    for folder in [start, *start.parents]:
        if is_clone(folder):
            return folder
    return None


def plan_files(name: str, destination: Path, layout: str) -> Plan:
    """Where NAME's files go for `layout` ("auto": a clone when `destination` lies in one)."""
    clone = find_clone(destination)
    if layout == "clone" and clone is None:
        raise Refusal(f"--layout clone: {destination} is not inside a clone of voicetrain (no folder from it upward "
                      "holds pyproject.toml naming the project voicetrain, src/voicetrain/tasks/ and conf/task/); "
                      "drop --layout to write a separate project there")
    if clone is not None and layout != "project":
        return Plan("clone", clone, clone / "src" / "voicetrain" / "tasks" / f"{name}.py",
                    clone / "conf" / "task" / f"{name}.yaml", clone / "tests" / "tasks" / f"test_task_{name}.py",
                    f"voicetrain.tasks.{name}.{class_prefix(name)}Task")
    return Plan("project", destination, destination / f"{name}.py", destination / "conf" / "task" / f"{name}.yaml",
                destination / "tests" / f"test_{name}.py", f"{name}.{class_prefix(name)}Task",
                destination / "pyproject.toml")


def name_syntax_problem(name: str) -> str | None:
    if NAME_PATTERN.fullmatch(name) and not keyword.iskeyword(name):
        return None
    suggestion = re.sub(r"[^a-z0-9_]+", "_", name.lower()).strip("_")
    suggestion = suggestion if NAME_PATTERN.fullmatch(suggestion) and not keyword.iskeyword(suggestion) else "mymodel"
    return (f"NAME {name!r} is not a lowercase Python identifier: it names a Python module and a config file, so use "
            f"lowercase letters, digits and underscores, starting with a letter (e.g. {suggestion})")


def task_folders(plan: Plan) -> tuple[list[Path], list[Path]]:
    """The folders of task YAMLs and of task modules that NAME must not collide with: the installed
    voicetrain's and, in a clone, the clone's own."""
    # find_spec locates the subpackage without running it (voicetrain.tasks imports torch).
    tasks = importlib.util.find_spec("voicetrain.tasks")
    configs = [Path(str(resources.files("voicetrain.conf").joinpath("task")))]
    modules = [Path(folder) for folder in (tasks.submodule_search_locations or [])] if tasks else []
    if plan.layout == "clone":
        configs.append(plan.yaml_file.parent)
        modules.append(plan.task_file.parent)
    return configs, modules


def voicetrain_names(configs: list[Path], modules: list[Path]) -> dict[str, str]:
    """Names a new task may not take, each with why: voicetrain's tasks and its task modules."""
    taken: dict[str, str] = {}
    for folder in filter(Path.is_dir, configs):
        taken.update({path.stem: f"task={path.stem} exists ({path})" for path in sorted(folder.glob("*.yaml"))})
    for folder in filter(Path.is_dir, modules):
        for entry in sorted(folder.iterdir()):
            if entry.suffix == ".py" or (entry / "__init__.py").is_file():
                taken.setdefault(entry.stem, f"voicetrain.tasks.{entry.stem} exists ({entry})")
    return taken


def collision_problem(name: str, taken: dict[str, str]) -> str | None:
    """Why task=NAME would be another task, or None."""
    return f"NAME {name!r} is taken: {taken[name]}; pick another NAME (e.g. my_{name})" if name in taken else None


def shadowing_problem(name: str) -> str | None:
    """Why `import NAME` would find something else than the new task, or None."""
    fix = f"pick another NAME (e.g. my_{name})"
    if name in sys.stdlib_module_names:
        return f"NAME {name!r} would shadow the Python standard-library module {name}; {fix}"
    spec = importlib.util.find_spec(name)
    if spec is not None:
        where = spec.origin or ", ".join(spec.submodule_search_locations or []) or "an installed package"
        return f"NAME {name!r} would shadow the importable module {name} ({where}); {fix}"
    return None


def check_destination(plan: Plan) -> None:
    existing = [path for path in plan.files if path.exists()]
    if existing:
        listed = ", ".join(str(path) for path in existing)
        raise Refusal(f"refusing to overwrite {listed}: it exists; pick another NAME, or move it away and run again")


def render(template: str, values: dict[str, str]) -> str:
    text = resources.files("voicetrain").joinpath("templates", template).read_text(encoding="utf-8")
    return string.Template(text).substitute(values)


def train_command(plan: Plan, name: str, conf_folder: str) -> str:
    if plan.layout == "clone":
        return f"python -m voicetrain task={name}"
    return f'python -m voicetrain "hydra.searchpath=[file://{conf_folder}]" task={name}'


def entry_point_lines(name: str) -> str:
    """The pyproject.toml table that registers task NAME with voicetrain (module:Class)."""
    return f'[project.entry-points."{ENTRY_POINT_GROUP}"]\n{name} = "{name}:{class_prefix(name)}Task"\n'


def distribution_name(folder: Path, name: str) -> str:
    """A distribution name for a new pyproject.toml: the folder's name normalised (PEP 503), else NAME."""
    normalized = re.sub(r"[^a-z0-9]+", "-", folder.name.lower()).strip("-")
    return normalized if normalized and normalized[0].isalpha() else name


def pyproject_text(plan: Plan, name: str) -> str:
    return (f"# pip install -e .   (makes {name}.py importable and registers task {name} with voicetrain)\n"
            "[build-system]\n"
            'requires = ["setuptools>=64"]\n'
            'build-backend = "setuptools.build_meta"\n\n'
            "[project]\n"
            f'name = "{distribution_name(plan.root, name)}"\n'
            'version = "0.1.0"\n'
            'dependencies = ["voicetrain"]\n\n'
            "[tool.setuptools]\n"
            f'py-modules = ["{name}"]\n\n'
            "# voicetrain imports a class named inside an export or a checkpoint only when an installed package\n"
            "# registers it here (or the command trusts its module: --trust-code). Once this project is\n"
            f"# installed, python -m voicetrain.export and .infer load task {name} without --trust-code {name}.\n"
            f"{entry_point_lines(name)}")


def template_values(plan: Plan, name: str, model: Model) -> dict[str, str]:
    prefix = class_prefix(name)
    values = {"name": name, "prefix": prefix, "target": plan.target, "metric": model.metric,
              "tiny": ", ".join(f'"{override}"' for override in model.tiny),
              "task_path": plan.relative(plan.task_file), "yaml_path": plan.relative(plan.yaml_file),
              "test_path": plan.relative(plan.test_file),
              # folders between the test file and the project root: tests/tasks/ in a clone, tests/ elsewhere
              "project_depth": str(len(plan.relative(plan.test_file).split("/")) - 1)}
    if plan.layout == "clone":
        return {**values, "command": train_command(plan, name, ""),
                "command_note": "from the clone (installed editable, as `make install` does)",
                "task_overrides": f'["task={name}"]',
                "import_paths": f"[]  # the clone's editable install (make install) imports voicetrain.tasks.{name}"}
    return {**values, "command": train_command(plan, name, "$PWD/conf"),
            "command_note": f"from the folder holding {name}.py, with that folder on PYTHONPATH",
            "task_overrides": f'[f"hydra.searchpath=[file://{{PROJECT.as_posix()}}/conf]", "task={name}"]',
            "import_paths": f"[str(PROJECT)]  # the training subprocess imports {name} from this folder"}


def write_files(plan: Plan, name: str, model: Model) -> list[Path]:
    """Writes the task, its YAML and its test, and a project's pyproject.toml when it has none;
    returns what was written."""
    values = template_values(plan, name, model)
    rendered = {plan.task_file: render(model.task_template, values), plan.yaml_file: render(model.yaml_template, values),
                plan.test_file: render("test_task.py.txt", values)}
    if plan.pyproject is not None and not plan.pyproject.exists():
        rendered[plan.pyproject] = pyproject_text(plan, name)
    for path, text in rendered.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        # "x": a file that appeared since the check is still never overwritten.
        with path.open("x", encoding="utf-8") as handle:
            handle.write(text)
    return list(rendered)


def entry_point_advice(plan: Plan, name: str, written: list[Path]) -> str:
    """How the project registers the task: the pyproject.toml written, or the lines to add to the one there."""
    if plan.pyproject in written:
        return (f"export and infer trust task {name} once the project is installed (its pyproject.toml registers it):\n"
                f"  pip install -e {shlex.quote(str(plan.root))}\n"
                f"or pass --trust-code {name} to python -m voicetrain.export and python -m voicetrain.infer")
    text = plan.pyproject.read_text(encoding="utf-8", errors="replace") if plan.pyproject else ""
    registered = re.search(rf'^\s*{re.escape(name)}\s*=\s*"{re.escape(name)}:', text, re.MULTILINE)
    if registered:
        return f"{plan.pyproject} already registers task {name}: pip install -e {shlex.quote(str(plan.root))}"
    lines = "\n".join(f"  {line}" for line in entry_point_lines(name).splitlines())
    return (f"{plan.pyproject} exists, so it was left alone; to have export and infer trust task {name}, add these "
            f"lines to it (into the existing [project.entry-points.\"{ENTRY_POINT_GROUP}\"] table if it has one):\n"
            f"{lines}\nthen pip install -e {shlex.quote(str(plan.root))}, or pass --trust-code {name} to "
            "python -m voicetrain.export and python -m voicetrain.infer")


def report(plan: Plan, name: str, model: Model, written: list[Path]) -> str:
    files = "\n".join(f"  {plan.relative(path)}" for path in written)
    test = f"  python -m pytest {plan.relative(plan.test_file)}"
    best = f"keep the best checkpoints by its validation metric: add +ckpt=best ckpt.monitor={model.metric}"
    if plan.layout == "clone":
        return (f"wrote the task {name} into the voicetrain clone {plan.root}:\n{files}\n"
                f"train it (the clone installed editable, as `make install` does):\n"
                f"  {train_command(plan, name, '')}\n"
                f"test it (two steps, a resume and an export):\n{test}\n{best}")
    folder = shlex.quote(str(plan.root))
    return (f"wrote the task {name} into {plan.root}:\n{files}\n"
            f"train it: {name}.py must be importable, so put its folder on PYTHONPATH (or pip install -e your "
            f"project); hydra.searchpath adds its conf/ to voicetrain's configs so that task={name} resolves:\n"
            f"  export PYTHONPATH={folder}\n"
            f"  {train_command(plan, name, (plan.root / 'conf').as_posix())}\n"
            f"test it (two steps, a resume and an export; it sets both itself), from {folder}:\n{test}\n{best}\n"
            f"{entry_point_advice(plan, name, written)}")


def create(name: str, destination: Path, layout: str, model: Model = MODELS["mel"]) -> tuple[Plan, list[Path]]:
    """Checks NAME and the destination, then writes the files; raises Refusal before writing anything.
    A collision with a task comes before an existing file, so that NAME=vc in a clone says why."""
    problem = name_syntax_problem(name)
    if problem:
        raise Refusal(problem)
    plan = plan_files(name, destination.resolve(), layout)
    problem = collision_problem(name, voicetrain_names(*task_folders(plan)))
    if problem:
        raise Refusal(problem)
    check_destination(plan)
    # After the file check: a project's own NAME.py, written by an earlier run, is importable from here.
    problem = shadowing_problem(name)
    if problem:
        raise Refusal(problem)
    return plan, write_files(plan, name, model)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", metavar="NAME", help="the task's name: task=NAME, the module NAME.py")
    parser.add_argument("--into", type=Path, default=Path.cwd(), metavar="DIR",
                        help="where to write (default: the current folder); a clone is looked for from DIR upward")
    parser.add_argument("--layout", choices=LAYOUTS, default="auto",
                        help="auto (default): clone when DIR lies in a clone of voicetrain, else project; project "
                             "writes a separate project even inside a clone")
    parser.add_argument("--with", dest="model", choices=sorted(MODELS), default="mel",
                        help="the starting model: mel (default), a speaker-conditioned mel autoencoder; f0, an "
                             "F0-conditioned waveform converter (features mel, f0, wave) that honours --transpose")
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    try:
        model = MODELS[arguments.model]
        plan, written = create(arguments.name, arguments.into, arguments.layout, model)
    except Refusal as refusal:
        print(f"{PROG}: error: {refusal}", file=sys.stderr)
        return 2
    print(report(plan, arguments.name, model, written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
