"""Durable files: the one commit protocol that checkpoints, exports and the feature store share.

A folder is committed by filling it under a staging name beside its final place, fsyncing every
file, writing a manifest last (every file with its size and SHA-256), renaming it into place and
fsyncing the parent. A reader that finds the final name therefore finds a complete folder, and
`verify_folder` tells whether its files are still the ones the manifest lists. Single files
(cache entries, lock and marker files) are written to a temporary name in the same folder and
renamed, so a reader sees the old file or the new one, never half of either.

A name read from a manifest is confined to its folder (`confined_path`): an absolute name, `..`
or a link leading out is damage, never read. Staging folders that two processes could want at
once (exports) carry their owner's host and pid (`unique_staging_path`), so a clean-up removes
only those of processes that are gone.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

MANIFEST = "manifest.json"
STAGING_PREFIX = ".tmp-"  # folders and files under this prefix are never read, and are removed at start-up
HASH_BLOCK_BYTES = 1 << 20
# Files are created with the mode the process's umask gives ordinary files (tempfile's 0600 would
# make weights and cache entries unreadable to the rest of a group that shares a run folder).
_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK


def fsync_path(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_tree(root: Path) -> None:
    """fsyncs every file and folder under `root`, then `root` itself."""
    for path in sorted(root.rglob("*")):
        fsync_path(path)
    fsync_path(root)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(HASH_BLOCK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def folder_bytes(root: Path) -> int:
    return sum(path.stat().st_size for path in root.rglob("*") if path.is_file())


def write_json_durably(path: Path, data: dict[str, Any]) -> None:
    """Writes JSON in place and fsyncs it: for files inside a staging folder (the folder's rename
    is what makes them visible)."""
    with open(path, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Calls `write(temporary_path)`, then renames the result onto `path` and fsyncs the folder.
    The temporary file is in the same folder, so the rename is atomic."""
    handle, temporary_name = tempfile.mkstemp(dir=path.parent, prefix=f"{STAGING_PREFIX}{path.name}.")
    os.close(handle)
    temporary = Path(temporary_name)
    try:
        write(temporary)
        os.chmod(temporary, FILE_MODE)
        fsync_path(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    fsync_path(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda temporary: temporary.write_text(text))


def staging_path(final: Path) -> Path:
    return final.parent / f"{STAGING_PREFIX}{final.name}"


def host_tag() -> str:
    # A short digest: host names can be long or hold characters a file name should not.
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def unique_staging_path(final: Path) -> Path:
    """A staging name for `final` that no other process uses: `.tmp-<name>.<host>-<pid>-<random>`.
    The host and pid let a later clean-up tell a live writer's folder from a dead one's."""
    return final.parent / f"{STAGING_PREFIX}{final.name}.{host_tag()}-{os.getpid()}-{secrets.token_hex(3)}"


def staging_owner(name: str) -> tuple[str, int] | None:
    """(host tag, pid) of a name made by `unique_staging_path`, or None for any other name."""
    tail = name.rsplit(".", 1)[-1].split("-")
    if name.startswith(STAGING_PREFIX) and "." in name and len(tail) == 3 and tail[1].isdigit():
        return tail[0], int(tail[1])
    return None


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def owned_by_live_process(path: Path) -> bool:
    """Whether a staging name belongs to a process that may still be writing it: a live pid on
    this host, or any pid on another host (whose processes this one cannot see)."""
    owner = staging_owner(path.name)
    if owner is None:
        return False
    host, pid = owner
    return host != host_tag() or process_alive(pid)


def remove_path(path: Path) -> None:
    """Deletes a file, a link (never what it points to) or a folder."""
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def remove_staging(root: Path) -> list[Path]:
    """Deletes leftovers of interrupted writes directly under `root`, except those a live process
    may still be writing; returns what it removed."""
    removed = []
    if root.is_dir():
        for path in sorted(root.glob(f"{STAGING_PREFIX}*")):
            if owned_by_live_process(path):
                continue
            remove_path(path)
            removed.append(path)
    return removed


def staging_leftovers(final: Path) -> list[Path]:
    """Every staging name for `final` beside it (a shared `.tmp-<name>`, unique ones
    `.tmp-<name>.<owner>`, replaced predecessors `.tmp-replaced-<name>[.<owner>]`), whoever owns it."""
    found = []
    for prefix in (f"{STAGING_PREFIX}{final.name}", f"{STAGING_PREFIX}replaced-{final.name}"):
        found += [path for path in final.parent.glob(f"{prefix}*")
                  if path.name == prefix or (path.name.startswith(f"{prefix}.") and staging_owner(path.name))]
    return sorted(found)


def remove_dead_staging(final: Path) -> list[Path]:
    """Removes the staging leftovers of `final` whose writer is gone; a live writer's stay."""
    doomed = [path for path in staging_leftovers(final) if not owned_by_live_process(path)]
    for path in doomed:
        remove_path(path)
    return doomed


@contextmanager
def staged(final: Path, explain: Callable[[BaseException], BaseException | None] = lambda error: None,
           fresh: bool = True, unique: bool = False) -> Iterator[Path]:
    """A staging folder for `final` (with `unique`, one no other process uses). If the body
    fails, `explain(error)` runs first (while the staging folder still holds what was written, so a
    full disk can still be measured), then the folder is removed and the explained error (or the
    original) is raised."""
    folder = unique_staging_path(final) if unique else staging_path(final)
    if fresh:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    try:
        yield folder
    except BaseException as error:
        explained = explain(error)
        shutil.rmtree(folder, ignore_errors=True)
        if explained is not None and explained is not error:
            raise explained from error
        raise


def file_table(folder: Path, known: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """Size and SHA-256 of every file under `folder` (the manifest excepted). `known` holds digests
    computed while the files were written; the others are read back from the staged files."""
    known = known or {}
    table = {}
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        if path.is_file() and name != MANIFEST:
            table[name] = {"bytes": path.stat().st_size, "sha256": known.get(name) or sha256_of(path)}
    return table


def commit_folder(staging: Path, final: Path, manifest: dict[str, Any]) -> None:
    """The end of the protocol for a staging folder whose files are written: fsync them, write the
    manifest last, rename into place and fsync the parent. An older folder of the same name is
    replaced only once the new one is complete. Every file gets the mode of ordinary files (some
    writers, safetensors among them, create 0600 files)."""
    for path in staging.rglob("*"):
        if path.is_file():
            os.chmod(path, FILE_MODE)
    fsync_tree(staging)
    write_json_durably(staging / MANIFEST, manifest)
    fsync_path(staging)
    if final.exists() or final.is_symlink():
        # Unique: another process replacing the same folder must not remove this one's retired copy.
        retired = unique_staging_path(final.parent / f"replaced-{final.name}")
        os.replace(final, retired)
        os.replace(staging, final)
        fsync_path(final.parent)
        remove_path(retired)  # a link that stood at `final` goes, never what it pointed to
    else:
        os.replace(staging, final)
        fsync_path(final.parent)


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The folder's manifest, or None when it is missing or unreadable."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return manifest if isinstance(manifest, dict) else None


def listed_files(manifest: dict[str, Any]) -> dict[str, tuple[int | None, str | None]]:
    """(size, sha256) per file a manifest lists. Reads both layouts: `files: {name: {bytes, sha256}}`
    and the older `files: {name: size}` with an optional separate `sha256: {name: digest}` table."""
    files = manifest.get("files")
    digests = manifest.get("sha256") if isinstance(manifest.get("sha256"), dict) else {}
    listed: dict[str, tuple[int | None, str | None]] = {}
    if isinstance(files, dict):
        for name, entry in files.items():
            if isinstance(entry, dict):
                listed[name] = (entry.get("bytes"), entry.get("sha256"))
            else:
                listed[name] = (entry if isinstance(entry, int) else None, digests.get(name))
    for name, digest in digests.items():
        listed.setdefault(name, (None, digest))
    return listed


def confined_path(folder: Path, name: str) -> Path | None:
    """`folder / name` when the relative `name` (read from a manifest or a record) names a path
    inside `folder` once every link is resolved; None for an absolute name, one with `..`, or one
    that a link leads out of the folder (such a name is damage, and the path is never read)."""
    relative = PurePosixPath(name)
    if not name or relative.is_absolute() or ".." in relative.parts:
        return None
    path = folder / relative
    try:
        root = folder.resolve()
        resolved = path.resolve()
    except (OSError, RuntimeError):  # a loop of links
        return None
    return path if resolved != root and resolved.is_relative_to(root) else None


def verify_folder(folder: Path, manifest: dict[str, Any], check_contents: bool = True) -> list[str]:
    """Problems of a committed folder against its manifest: a name that leaves the folder, a link
    (a committed folder holds plain files only), a listed file missing, of another size, or (with
    `check_contents`) whose SHA-256 differs; a file the manifest does not list."""
    problems = []
    listed = listed_files(manifest)
    for name, (size, digest) in sorted(listed.items()):
        path = confined_path(folder, name)
        if path is None:
            problems.append(f"{folder / MANIFEST} lists {name!r}, which is not a file inside {folder} (an absolute "
                            "name, '..' or a link leading out): damage, never read")
        elif path.is_symlink():
            problems.append(f"{path} is a symbolic link; a committed folder holds plain files only")
        elif not path.is_file():
            problems.append(f"{path} is missing")
        elif size is not None and path.stat().st_size != size:
            problems.append(f"{path} has {path.stat().st_size} bytes, the manifest says {size}")
        elif check_contents and digest is not None and sha256_of(path) != digest:
            problems.append(f"{path} does not match the SHA-256 in its manifest (damaged or changed after it was "
                            "written)")
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        if path.is_symlink() and name not in listed:
            problems.append(f"{path} is a symbolic link, not listed in {folder / MANIFEST}")
        elif path.is_file() and name != MANIFEST and name not in listed:
            problems.append(f"{path} is not listed in {folder / MANIFEST}")
    return problems


def has_checksums(manifest: dict[str, Any]) -> bool:
    listed = listed_files(manifest)
    return bool(listed) and all(digest is not None for _, digest in listed.values())
