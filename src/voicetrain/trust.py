"""The one door through which a class named inside a file is imported (DESIGN.md invariant 13).

An export's `config.json` names its task class, a checkpoint's `config.yaml` its task and feature
extractors, an export's context the extractors inference rebuilds. Importing a module runs its top
level, so a name read from a file chooses code unless something stands between the two. This module
is that thing. A name passes only when it is:

- voicetrain's own (a module of the installed `voicetrain` package);
- registered by an installed package under the entry-point group `voicetrain.tasks` or
  `voicetrain.features` (how a model in its own project makes itself known: `python -m voicetrain.new`
  writes that entry point), and then exactly the class the entry point names;
- in a module the user trusts explicitly for this command (`--trust-code MODULE`).

Callers resolve a name only after the folder that holds it verified against its manifest; the manifest
proves integrity (the files are the ones written), never authenticity (anyone can recompute it).
While a name from a file is imported, the current folder is not a source of modules: `python -m`
puts it first on `sys.path`, so a folder downloaded next to the user's shell could otherwise plant a
module under any name. Modules the user trusts explicitly keep the ordinary search path.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

ENTRY_POINT_GROUPS = ("voicetrain.tasks", "voicetrain.features")
OWN_PACKAGE = "voicetrain"
DEFAULT_HOW_TO_TRUST = "pass --trust-code {module} to the command"

# sys.path is process-wide: two threads importing at once must not see each other's filtering.
_path_lock = threading.Lock()
# Classes this process may import when a file names them again: those the user's own configuration
# chose (a training launch's task and extractors, which the run's context then records) and those that
# already passed `resolve_class`.
_approved: set[str] = set()


class UntrustedCodeError(RuntimeError):
    """A file named a class that is not allowed to run here; the message is one line with the fix."""


def registered_targets() -> dict[str, str]:
    """Classes installed packages register, as `module.Class` -> the entry point that names them."""
    targets = {}
    for group in ENTRY_POINT_GROUPS:
        for entry_point in importlib.metadata.entry_points(group=group):
            module, _, attribute = entry_point.value.partition(":")
            if module and attribute:
                distribution = getattr(entry_point.dist, "name", None) or "an installed package"
                targets[f"{module.strip()}.{attribute.strip()}"] = f"{group} entry point {entry_point.name!r} " \
                                                                  f"of {distribution}"
    return targets


def is_dotted_name(name: Any) -> bool:
    return isinstance(name, str) and "." in name and all(part.isidentifier() for part in name.split("."))


def trusted_by_user(module: str, trusted_modules: Sequence[str]) -> bool:
    return any(module == trusted or module.startswith(f"{trusted}.") for trusted in trusted_modules)


def refusal_reason(name: Any, trusted_modules: Sequence[str], registered: dict[str, str],
                   approved: frozenset[str] | set[str] = frozenset()) -> str | None:
    """Why `name` may not be imported, or None when it may. Pure: the whole policy in one place."""
    if not is_dotted_name(name):
        return "it is not a dotted path like package.module.ClassName"
    module = name.rpartition(".")[0]
    if module == OWN_PACKAGE or module.startswith(f"{OWN_PACKAGE}."):
        return None
    if name in registered or name in approved or trusted_by_user(module, trusted_modules):
        return None
    return ("it is neither voicetrain's own nor registered by an installed package (entry points "
            f"{' / '.join(ENTRY_POINT_GROUPS)}) nor trusted for this command")


def implicit_current_folder(path: Sequence[str], current: str) -> bool:
    """Whether `path[0]` is the entry Python adds by itself for `python -m` / `-c` (the current folder),
    as opposed to folders the user or an installed package put on the path (PYTHONPATH, .pth files)."""
    if not path:
        return False
    entry = path[0]
    if entry in ("", "."):
        return True
    try:
        return os.path.realpath(entry) == current
    except (OSError, ValueError):
        return False


@contextmanager
def current_folder_off_path() -> Iterator[None]:
    """`sys.path` without the current folder Python put first (what `python -P` does), for one import."""
    with _path_lock:
        saved = list(sys.path)
        if implicit_current_folder(saved, os.path.realpath(os.getcwd())):
            sys.path[:] = saved[1:]
        try:
            yield
        finally:
            sys.path[:] = saved


def resolve_class(name: Any, source: str, trusted_modules: Sequence[str] = (),
                  how_to_trust: str = DEFAULT_HOW_TO_TRUST) -> type:
    """The class `name` (read from `source`, e.g. 'runs/x/export/config.json task_target'), imported
    only if the policy allows it. Raises UntrustedCodeError (one line) otherwise, and when an allowed
    name cannot be imported or is not a class."""
    reason = refusal_reason(name, trusted_modules, registered_targets(), _approved)
    module_name = name.rpartition(".")[0] if is_dotted_name(name) else str(name)
    if reason is not None:
        trust = how_to_trust.format(module=module_name.split(".")[0]) if is_dotted_name(name) else ""
        advice = f"; if you trust that code, {trust}" if trust else ""
        raise UntrustedCodeError(f"{source} names the class {name!r}: refused without importing it, since {reason} "
                                 f"(a file never chooses code){advice}")
    module_name, _, attribute = name.rpartition(".")
    explicit = trusted_by_user(module_name, trusted_modules)
    try:
        if explicit or module_name in sys.modules:
            module = importlib.import_module(module_name)
        else:
            with current_folder_off_path():
                module = importlib.import_module(module_name)
    except ImportError as error:
        raise UntrustedCodeError(f"{source} names the class {name!r}, whose module cannot be imported here "
                                 f"({error}); the project that defines it is not installed in this environment") \
            from error
    resolved = getattr(module, attribute, None)
    if not isinstance(resolved, type):
        raise UntrustedCodeError(f"{source} names {name!r}, which is not a class in module {module_name}")
    _approved.add(name)
    return resolved


def import_chosen(name: str) -> Any:
    """What the user's own configuration or command line names (`task._target_=...` when training): their
    choice, imported as Python would. Recorded, so the same name read back from the run's own files
    (its task context) later in this process passes `resolve_class`."""
    module_name, _, attribute = name.rpartition(".")
    if not module_name:
        raise ImportError(f"{name!r} is not a dotted path like 'package.module.ClassName'")
    resolved = getattr(importlib.import_module(module_name), attribute)
    _approved.add(name)
    return resolved


def add_trust_argument(parser: argparse.ArgumentParser, named_by: str) -> None:
    """The `--trust-code MODULE` option every command that loads an export or a checkpoint takes;
    `named_by` says which file names the classes (e.g. "the export (or its vocoder)")."""
    parser.add_argument("--trust-code", metavar="MODULE", action="append", default=[],
                        help=f"import the classes {named_by} names from MODULE even though it is neither voicetrain's "
                             "own nor registered by an installed package (repeatable). Only for code you trust: "
                             "importing a module runs it")
