"""Reading features from the store during training: lazily, one utterance at a time, from any
process (DataLoader workers included), checking each array's CRC-32 as it is read.

A reader holds only where each of its utterances' arrays lies (a few numbers per utterance), never
the arrays: the memory a training process holds does not grow with the corpus. Shards are read
with pread into a fresh buffer, opened once per process. A damaged array is recomputed from its
audio file (never trusted), noted in the folder's damaged.txt, and rewritten at the next launch.
"""

from __future__ import annotations

import logging
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from voicetrain.audio_files import load_audio
from voicetrain.features.base import FeatureExtractor
from voicetrain.features.extraction import from_storage, to_storage
from voicetrain.features.folder import DAMAGED, Entry

log = logging.getLogger("voicetrain")


@dataclass
class FeatureReader:
    """One feature of a fixed list of utterances."""

    folder: Path
    dtype: np.dtype
    entries: list[Entry]
    keys: list[str]
    sources: list[Path]  # the audio files, to recompute a damaged array
    extractor: FeatureExtractor
    sample_rate: int
    handles: dict[tuple[str, int], int] = field(default_factory=dict, repr=False)
    opened_by: int = field(default=-1, repr=False)

    def __getstate__(self) -> dict:
        # File descriptors belong to one process: a DataLoader worker opens its own.
        return {**self.__dict__, "handles": {}, "opened_by": -1}

    def descriptor(self, part: str, shard: int) -> int:
        """A shard of the folder (part "") or of one of its parts, opened once per process."""
        if self.opened_by != os.getpid():
            self.handles, self.opened_by = {}, os.getpid()
        if (part, shard) not in self.handles:
            self.handles[part, shard] = os.open(self.folder / part / f"shard-{shard:06d}.bin", os.O_RDONLY)
        return self.handles[part, shard]

    def read(self, position: int) -> torch.Tensor:
        entry = self.entries[position]
        data = os.pread(self.descriptor(entry.part, entry.shard), entry.nbytes, entry.offset)
        if len(data) != entry.nbytes or zlib.crc32(data) != entry.crc:
            return self.recompute(position)
        array = np.frombuffer(data, dtype=self.dtype).reshape(entry.shape)
        return torch.from_numpy(from_storage(array).copy())

    def recompute(self, position: int) -> torch.Tensor:
        log.warning("the stored %s of %s is damaged; recomputed from the audio (the store rewrites it at the next "
                    "launch)", self.folder.name, self.sources[position])
        with open(self.folder / DAMAGED, "a") as handle:  # one short append: atomic for O_APPEND writers
            handle.write(self.keys[position] + "\n")
        array = self.extractor.extract(load_audio(self.sources[position], self.sample_rate), self.sample_rate)
        stored = to_storage(array, self.extractor.storage_dtype)  # the numbers a sound entry would give
        return torch.from_numpy(from_storage(stored).copy())


class CorpusFeatures:
    """The features of a list of utterances by name, read when asked for."""

    def __init__(self, readers: dict[str, FeatureReader], frame_counts: list[int]):
        self.readers = readers
        self.frame_counts = frame_counts

    def __len__(self) -> int:
        return len(self.frame_counts)

    def names(self) -> list[str]:
        return list(self.readers)

    def example(self, position: int) -> dict[str, torch.Tensor]:
        """Every feature of one utterance: [channels, frames] tensors, and [samples] for the wave."""
        return {name: reader.read(position) for name, reader in self.readers.items()}

    def frames(self, position: int) -> int:
        """The utterance's frame count (every frame-level feature has it), without reading it."""
        return self.frame_counts[position]

    def __getitem__(self, name: str) -> "FeatureSequence":
        return FeatureSequence(self.readers[name])


class FeatureSequence:
    """One feature of every utterance as a read-on-access sequence (what older task code iterated
    over as a list of mels)."""

    def __init__(self, reader: FeatureReader):
        self.reader = reader

    def __len__(self) -> int:
        return len(self.reader.entries)

    def __getitem__(self, position: int | slice) -> torch.Tensor | list[torch.Tensor]:
        if isinstance(position, slice):  # data.mels[:4]: read those four only
            return [self.reader.read(index) for index in range(len(self))[position]]
        if not -len(self) <= position < len(self):
            raise IndexError(f"utterance {position} of {len(self)}")
        return self.reader.read(position % len(self))

    def __iter__(self):
        return (self.reader.read(position) for position in range(len(self)))
