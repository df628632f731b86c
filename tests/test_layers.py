"""The package layout is the architecture: every `voicetrain.*` import points down the layer list
(README "Code map"), checkpoint/ and export/ never import each other, and no two modules import
each other, directly or in a ring. Function-local imports count like top-level ones."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import voicetrain

PACKAGE_ROOT = Path(voicetrain.__file__).resolve().parent

# Entry points and compatibility names sit on top: they may import anything.
ENTRY_MODULES = {"voicetrain.__main__", "voicetrain.cli", "voicetrain.export.__main__", "voicetrain.infer",
                 "voicetrain.task", "voicetrain.new", "voicetrain.upgrade", "voicetrain.preprocess",
                 "voicetrain.preprocess.__main__", "voicetrain.demo",
                 "voicetrain.extract"}
# From the top down; a module may import its own layer and the layers below it.
LAYERS = ["entry", "preprocess", "run", "evaluate", "stream", "export", "tasks", "checkpoint", "data", "features", "leaf"]
# Pairs that the order alone would allow but that must stay apart.
FORBIDDEN = {("export", "checkpoint"), ("checkpoint", "export")}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> str:
    if module in ENTRY_MODULES:
        return "entry"
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in LAYERS and (PACKAGE_ROOT / parts[1]).is_dir():
        return parts[1]
    return "leaf"  # voicetrain itself, config, paths, distributed, durable, audio, text, metrics, conf


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE_ROOT.rglob("*.py"))}


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """Every voicetrain module `path` imports, anywhere in the file (function bodies included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from voicetrain.x import y` imports voicetrain.x, or voicetrain.x.y when y is a module.
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module
                     for alias in node.names]
        else:
            continue
        found |= {name for name in names if name == "voicetrain" or name.startswith("voicetrain.")}
    return found


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    known = set(modules)
    return {name: {target for target in imported_modules(path, known) if target != name}
            for name, path in modules.items()}


def test_every_import_points_down_the_layers() -> None:
    problems = []
    for module, targets in sorted(import_graph().items()):
        source_layer = layer_of(module)
        for target in sorted(targets):
            target_layer = layer_of(target)
            if LAYERS.index(target_layer) < LAYERS.index(source_layer):
                problems.append(f"{module} ({source_layer}) imports {target} ({target_layer}): an upward import")
            if (source_layer, target_layer) in FORBIDDEN:
                problems.append(f"{module} ({source_layer}) imports {target} ({target_layer}): these two share "
                                "voicetrain.durable instead of importing each other")
    assert not problems, "\n".join(problems)


def test_no_module_imports_itself_through_a_ring() -> None:
    try:
        graphlib.TopologicalSorter(import_graph()).prepare()
    except graphlib.CycleError as error:
        raise AssertionError(f"an import ring: {' -> '.join(error.args[1])}") from error


def test_the_checker_sees_function_local_and_upward_imports(tmp_path: Path) -> None:
    """The rules above would pass vacuously if the parser missed imports: check it on a sample."""
    sample = tmp_path / "sample.py"
    sample.write_text("import os\n\ndef later():\n    from voicetrain.run.trainer import Trainer\n"
                      "    import voicetrain.checkpoint.store\n")
    found = imported_modules(sample, set(all_modules()))
    assert found == {"voicetrain.run.trainer", "voicetrain.checkpoint.store"}
    assert LAYERS.index(layer_of("voicetrain.run.trainer")) < LAYERS.index(layer_of("voicetrain.audio"))
    assert layer_of("voicetrain.checkpoint.store") == "checkpoint" and layer_of("voicetrain.cli") == "entry"
