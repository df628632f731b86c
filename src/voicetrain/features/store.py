"""The on-disk feature cache: log-mels computed once per audio file and reused across runs.

This module owns the cache layout and its invalidation rules:

* ``cache_dir / settings.cache_key() /`` holds the entries of one ``MelSettings`` (so changing any setting, or the
  feature computation version, uses a fresh folder and stale features are never read);
* one safetensors file per audio file, named by a digest of (resolved path, size, mtime_ns), so an edited or
  replaced audio file gets a new entry and is recomputed;
* entries are written atomically (temp file in the same folder, then ``os.replace``), and an entry that fails to
  load or has the wrong shape is recomputed rather than trusted.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from voicetrain.audio import AudioReadError, MelSettings, MelSpectrogram, load_audio, minimum_samples

TENSOR_NAME = "log_mel"


class FeatureError(ValueError):
    """Features cannot be computed or stored as configured; the message names the path and the fix."""


class AudioSource(Protocol):
    """Anything with an audio file: a corpus reader's utterance record."""

    @property
    def path(self) -> Path: ...


Source = TypeVar("Source", bound=AudioSource)
ENTRY_SUFFIX = ".safetensors"
LISTED_SKIPPED_PATHS = 3


@dataclass(frozen=True)
class FeatureTable:
    """Log-mels of the utterances that loaded, in the order they were given."""

    utterances: list  # the records (e.g. Utterance) whose audio loaded (order preserved)
    mels: list[torch.Tensor]  # float32 [n_mels, frames] per utterance, same order
    skipped: list[tuple[Path, str]]  # (path, reason) of unreadable files skipped because skip_bad_files
    settings: MelSettings


def entry_name(resolved_path: str, size: int, mtime_ns: int) -> str:
    """The cache file name of one audio file version; any change to path, size or mtime changes it."""
    digest = hashlib.sha256(f"{resolved_path}\0{size}\0{mtime_ns}".encode("utf-8")).hexdigest()[:32]
    return digest + ENTRY_SUFFIX


def _entry_path(audio: Path, settings_dir: Path) -> Path | None:
    try:
        resolved = audio.resolve()
        status = resolved.stat()
    except OSError:
        # A missing file has no entry; load_audio reports it properly when it is computed.
        return None
    return settings_dir / entry_name(str(resolved), status.st_size, status.st_mtime_ns)


def _read_entry(entry: Path, settings: MelSettings) -> torch.Tensor | None:
    """The cached log-mel, or None when there is no usable entry (missing, corrupt or of the wrong shape)."""
    if not entry.is_file():
        return None
    try:
        tensors = load_file(str(entry))
    except (SafetensorError, OSError):
        # A damaged entry is only a lost optimisation: recomputing it is always safe.
        return None
    mel = tensors.get(TENSOR_NAME)
    if mel is None or mel.dtype != torch.float32 or mel.dim() != 2:
        return None
    if mel.shape[0] != settings.n_mels or mel.shape[1] == 0:
        return None
    return mel


def _write_entry(entry: Path, mel: torch.Tensor, source: Path, settings: MelSettings) -> None:
    # Temp file in the same folder so that os.replace is an atomic rename: readers (other processes, a later run
    # after a crash) see either no entry or a complete one.
    handle, temporary_name = tempfile.mkstemp(dir=entry.parent, prefix=f".{entry.stem}.", suffix=".tmp")
    os.close(handle)
    temporary = Path(temporary_name)
    try:
        save_file(
            {TENSOR_NAME: mel.contiguous()},
            str(temporary),
            metadata={"source": str(source), "settings": settings.cache_key()},
        )
        os.replace(temporary, entry)
    finally:
        temporary.unlink(missing_ok=True)


def _compute(audio: Path, settings: MelSettings, extractor: MelSpectrogram) -> torch.Tensor:
    wave = load_audio(audio, settings.sample_rate)
    if wave.shape[0] < minimum_samples(settings):
        raise AudioReadError(
            f"Cannot use audio file {audio}: it is {wave.shape[0]} samples long at {settings.sample_rate} Hz, shorter "
            f"than the {minimum_samples(settings)} samples one analysis window needs. Remove it from the dataset, "
            f"or set data.skip_bad_files=true to skip it."
        )
    with torch.no_grad():
        mel = extractor(torch.from_numpy(np.ascontiguousarray(wave)))
    return mel.to(torch.float32).contiguous()


def _prepare_cache(cache_dir: Path, settings: MelSettings) -> Path:
    settings_dir = Path(cache_dir) / settings.cache_key()
    try:
        settings_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise FeatureError(
            f"Cannot create the feature cache folder {settings_dir} ({error}); set data.cache_dir to a writable folder."
        ) from error
    return settings_dir


def load_features(
    utterances: list[Source],
    settings: MelSettings,
    cache_dir: Path,
    skip_bad_files: bool = False,
    progress: bool = True,
) -> FeatureTable:
    """Log-mels for ``utterances``, computed with ``load_audio`` + ``MelSpectrogram`` and cached under
    ``cache_dir / settings.cache_key()``.

    An unreadable or too-short audio file raises ``AudioReadError`` naming it, unless ``skip_bad_files``: then it is
    left out, recorded in ``FeatureTable.skipped``, and one warning gives the count and the first few paths.
    Raises ``FeatureError`` when ``utterances`` is empty or every file was skipped.
    """
    if not utterances:
        raise FeatureError(
            f"No utterances to compute features for (cache {cache_dir}); check the dataset reader and data.root."
        )
    settings_dir = _prepare_cache(cache_dir, settings)
    mels: list[torch.Tensor | None] = [None] * len(utterances)
    entries: list[Path | None] = []
    pending: list[int] = []
    for index, utterance in enumerate(utterances):
        entry = _entry_path(utterance.path, settings_dir)
        entries.append(entry)
        cached = None if entry is None else _read_entry(entry, settings)
        if cached is None:
            pending.append(index)
        else:
            mels[index] = cached

    # Built only when something is missing: the filterbank needs librosa, slow to import, and a
    # warm cache (every resume) should not pay for it.
    extractor = MelSpectrogram(settings) if pending else None
    skipped: list[tuple[Path, str]] = []
    for index in tqdm(pending, desc="Computing log-mels", unit="file", disable=not progress or not pending):
        utterance = utterances[index]
        try:
            mel = _compute(utterance.path, settings, extractor)
        except AudioReadError as error:
            if not skip_bad_files:
                raise
            skipped.append((utterance.path, str(error)))
            continue
        mels[index] = mel
        entry = entries[index]
        if entry is not None:
            _write_entry(entry, mel, utterance.path, settings)

    if skipped:
        listed = ", ".join(str(path) for path, _ in skipped[:LISTED_SKIPPED_PATHS])
        more = f" and {len(skipped) - LISTED_SKIPPED_PATHS} more" if len(skipped) > LISTED_SKIPPED_PATHS else ""
        warnings.warn(
            f"Skipped {len(skipped)} of {len(utterances)} audio files that could not be used "
            f"(data.skip_bad_files=true): {listed}{more}.",
            stacklevel=2,
        )
    if len(skipped) == len(utterances):
        raise FeatureError(
            f"Every one of the {len(utterances)} audio files was unreadable and skipped (first: {skipped[0][0]}: "
            f"{skipped[0][1]}); the dataset is empty. Check data.root and the audio files."
        )
    kept = [index for index, mel in enumerate(mels) if mel is not None]
    return FeatureTable(
        utterances=[utterances[index] for index in kept],
        mels=[mels[index] for index in kept],  # type: ignore[misc]  # None entries were filtered out above
        skipped=skipped,
        settings=settings,
    )
