"""The bundled corpus copied to N utterances, as a `data=speakers` layout, for the benchmarks of
corpus size (issue 13), and the feature store they share.

    <folder>/corpus-<N>/<speaker>/c<copy>_<file>.flac   hard links to the bundled files (copies
                                                        where the folder is on another disk)
    <folder>/features/                                  the store both corpora use, filled once

The store keys an audio file by its resolved path, size and mtime, so every link is its own entry
(a symbolic link would resolve to the bundled file and share one)."""

from __future__ import annotations

import os
import shutil
from collections import defaultdict
from pathlib import Path

from voicetrain.data import read_bundled_corpus

COMPLETE = ".complete"  # written last: a folder without it (an interrupted build) is rebuilt


def bundled_by_speaker() -> dict[str, list[Path]]:
    files: dict[str, list[Path]] = defaultdict(list)
    for utterance in read_bundled_corpus():
        files[utterance.speaker].append(utterance.path)
    return {speaker: sorted(paths) for speaker, paths in sorted(files.items())}


def place(source: Path, destination: Path) -> str:
    """A hard link where the disk allows one, else a copy keeping the modification time."""
    try:
        os.link(source, destination)
        return "hard link"
    except OSError:
        shutil.copy2(source, destination)
        return "copy"


def build_corpus(root: Path, utterances: int) -> set[str]:
    """`utterances` files spread evenly over the bundled speakers; returns how they were made."""
    speakers = bundled_by_speaker()
    shutil.rmtree(root, ignore_errors=True)
    methods = set()
    for index, (speaker, sources) in enumerate(speakers.items()):
        # The first `utterances % speakers` speakers take one file more.
        count = utterances // len(speakers) + (index < utterances % len(speakers))
        folder = root / speaker
        folder.mkdir(parents=True)
        for number in range(count):
            source = sources[number % len(sources)]
            methods.add(place(source, folder / f"c{number // len(sources):04d}_{source.name}"))
    (root / COMPLETE).write_text(", ".join(sorted(methods)))
    return methods


class Corpora:
    """Corpora of several sizes under one folder, each built on first use."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.store = folder / "features"

    def corpus(self, utterances: int) -> Path:
        root = self.folder / f"corpus-{utterances}"
        if not (root / COMPLETE).is_file():
            build_corpus(root, utterances)
        return root

    def description(self, utterances: int) -> str:
        """How a corpus was made, for the benchmark's output."""
        root = self.corpus(utterances)
        speakers = bundled_by_speaker()
        files = sum(len(paths) for paths in speakers.values())
        return (f"{utterances} utterances = the bundled corpus's {files} files repeated as "
                f"{(root / COMPLETE).read_text()}s under {root} ({len(speakers)} speaker folders, data=speakers)")
