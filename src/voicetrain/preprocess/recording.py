"""One recording, start to finish: read, check, cut or trim, normalise, write, record.

This is what a worker process runs. A recording with a transcript is never cut (the text would
no longer match): it is trimmed of leading and trailing silence, and left out when it is still
longer than `slice.max_seconds`. One without is cut at its silences (voicetrain.preprocess.slicer).
Each clip is then checked and normalised (voicetrain.preprocess.levels), and written in the
output layout with its record (voicetrain.preprocess.journal).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import soxr

from voicetrain.preprocess import levels
from voicetrain.preprocess.journal import Clip, Dropped, Record, read_record, record_path, remove_files, write_record
from voicetrain.preprocess.layout import clip_files, clip_name, write_clip
from voicetrain.preprocess.settings import STATE_FOLDER, PreprocessSettings
from voicetrain.preprocess.slicer import plan_segments, trim_bounds
from voicetrain.preprocess.sources import Recording
from voicetrain.preprocess.transcripts import normalise_transcript


@dataclass(frozen=True)
class Job:
    recording: Recording
    base: str  # the output name of its clips, relative to the output folder, without suffix
    key: str
    settings: PreprocessSettings


@dataclass(frozen=True)
class Piece:
    """A clip to be: the samples, where they were in the recording, and the name it gets."""

    wave: np.ndarray
    start: int
    end: int
    name: str


class Unreadable(ValueError):
    pass


def read_mono(path: Path, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """The recording as mono at `sample_rate`, and the times in seconds where a channel clips.
    Clipping is found in each channel at the file's own rate, before mixing and resampling blur it."""
    try:
        channels, file_rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.SoundFileError, RuntimeError, OSError) as error:
        raise Unreadable(f"unreadable: {error}; re-encode it as wav or flac") from error
    if channels.shape[0] == 0:
        raise Unreadable("unreadable: it holds no samples")
    if not np.all(np.isfinite(channels)):
        raise Unreadable("unreadable: it holds NaN or infinite samples; re-encode it")
    clipped = np.concatenate([levels.clipped_positions(channel) for channel in channels.T]) / file_rate
    mono = channels.mean(axis=1, dtype=np.float32)
    if file_rate != sample_rate:
        mono = soxr.resample(mono, file_rate, sample_rate, quality="HQ")
    return np.clip(mono, -1.0, 1.0).astype(np.float32, copy=False), np.sort(clipped)


def describe(source: str, start: int, end: int, sample_rate: int) -> str:
    return f"{source} {start / sample_rate:.2f}-{end / sample_rate:.2f} s"


def cut(job: Job, wave: np.ndarray) -> tuple[list[Piece], list[Dropped]]:
    """The pieces a recording becomes before checks: one, trimmed, when it has a transcript."""
    rate, slicing, recording = job.settings.sample_rate, job.settings.slice, job.recording
    if recording.text is not None:
        start, end = trim_bounds(wave, rate, slicing)
        if (end - start) / rate > slicing.max_seconds:
            return [], [Dropped(recording.source, f"longer than slice.max_seconds={slicing.max_seconds:g} after "
                                                  f"trimming ({(end - start) / rate:.2f} s); a recording with a "
                                                  "transcript is never cut, so split it and its text by hand")]
        return [Piece(wave[start:end], start, end, clip_name(job.base, None))], []
    segments = plan_segments(wave, rate, slicing)
    return [Piece(wave[start:end], start, end, clip_name(job.base, number))
            for number, (start, end) in enumerate(segments, start=1)], []


def finish(job: Job, piece: Piece, clipped_at: np.ndarray) -> tuple[np.ndarray, float] | Dropped:
    """The piece normalised with its loudness, or why it is left out."""
    settings, rate = job.settings, job.settings.sample_rate
    was_clipped = bool(np.any((clipped_at >= piece.start / rate) & (clipped_at < piece.end / rate)))
    reason = levels.problem(piece.wave, rate, settings.slice.min_seconds, was_clipped)
    if reason is None:
        wave, loudness = levels.normalise(piece.wave, rate, settings.loudness.target_lufs, settings.loudness.peak_db)
        reason = levels.loudness_problem(loudness, settings.loudness.target_lufs, settings.loudness.peak_db)
        if reason is None:
            return wave, loudness
    return Dropped(describe(job.recording.source, piece.start, piece.end, rate), reason)


def process(job: Job) -> Record:
    """Makes the clips of one recording and returns its complete record (also written to disk)."""
    settings, recording = job.settings, job.recording
    record = Record(source=recording.source, key=job.key, speaker=recording.speaker)
    try:
        wave, clipped_at = read_mono(recording.path, settings.sample_rate)
    except Unreadable as error:
        record.dropped.append(Dropped(recording.source, str(error)))
        return commit(job, record, [])
    if levels.is_silent(wave, settings.sample_rate):
        record.dropped.append(Dropped(recording.source, f"silent: nothing above {levels.SILENT_DBFS:g} dBFS"))
        return commit(job, record, [])
    pieces, record.dropped = cut(job, wave)
    kept = []
    for piece in pieces:
        outcome = finish(job, piece, clipped_at)
        if isinstance(outcome, Dropped):
            record.dropped.append(outcome)
        else:
            kept.append((piece, *outcome))
    return commit(job, record, kept)


def transcripts(recording: Recording) -> tuple[str | None, str | None]:
    """(normalised, original) transcript; a metadata.csv's own normalised column is taken as it is."""
    if recording.text is None:
        return None, None
    return recording.normalised_text or normalise_transcript(recording.text), recording.text


def commit(job: Job, record: Record, kept: list[tuple[Piece, np.ndarray, float]]) -> Record:
    """Writes the clips and the record. A record listing them as incomplete goes first, together
    with the files of an older record that this one no longer writes; those are removed next, so
    an interruption at any point leaves a record naming every file this recording put there."""
    settings, output = job.settings, job.settings.output_root
    state = output / STATE_FOLDER
    text, original_text = transcripts(job.recording)
    planned = [file for piece, _, _ in kept for file in clip_files(piece.name, settings.layout, text is not None)]
    old = read_record(record_path(state, record.source))
    stale = sorted(set(old.files) - set(planned)) if old is not None else []
    write_record(state, Record(record.source, record.key, record.speaker, complete=False,
                               files={name: -1 for name in [*planned, *stale]}))
    remove_files(output, stale)
    for piece, wave, loudness in kept:
        record.files.update(write_clip(output, piece.name, wave, settings.sample_rate, text, original_text,
                                       settings.layout))
        record.clips.append(Clip(path=f"{piece.name}.wav", speaker=job.recording.speaker,
                                 seconds=len(wave) / settings.sample_rate, lufs=round(loudness, 3),
                                 peak_db=round(levels.peak_dbfs(wave), 3), text=text, original_text=original_text))
    record.complete = True
    write_record(state, record)
    return record
