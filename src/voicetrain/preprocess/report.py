"""The report that ends a launch: what the corpus holds, per speaker, and what was left out.

`OUTPUT/report.md` has a table per speaker (clips, total, shortest and longest clip, median
loudness, clips or recordings left out) and every left-out item with its reason;
`OUTPUT/report.png` the histograms of clip durations (per speaker) and of loudness. The table
and the first reasons are also returned as text for the console.
"""

from __future__ import annotations

import io
import statistics
from dataclasses import dataclass

from voicetrain.durable import atomic_write, atomic_write_text
from voicetrain.preprocess.journal import Clip, Dropped, Record
from voicetrain.preprocess.settings import PreprocessSettings

REPORT_MARKDOWN = "report.md"
REPORT_IMAGE = "report.png"
PRINTED_REASONS = 10


@dataclass(frozen=True)
class SpeakerRow:
    speaker: str
    clips: int
    seconds: float
    shortest: float
    longest: float
    median_lufs: float
    left_out: int


def summarise(clips: list[Clip], dropped: int, speaker: str) -> SpeakerRow:
    durations = [clip.seconds for clip in clips]
    return SpeakerRow(speaker=speaker, clips=len(clips), seconds=sum(durations),
                      shortest=min(durations, default=0.0), longest=max(durations, default=0.0),
                      median_lufs=statistics.median([clip.lufs for clip in clips]) if clips else float("nan"),
                      left_out=dropped)


def speaker_rows(records: list[Record], other_dropped: int) -> list[SpeakerRow]:
    """One row per speaker, then a row for the whole corpus (which also counts input-level problems)."""
    speakers = sorted({record.speaker for record in records})
    rows = [summarise([clip for record in records if record.speaker == speaker for clip in record.clips],
                      sum(len(record.dropped) for record in records if record.speaker == speaker), speaker)
            for speaker in speakers]
    every_clip = [clip for record in records for clip in record.clips]
    left_out = sum(len(record.dropped) for record in records) + other_dropped
    return rows + [summarise(every_clip, left_out, "all")]


def clock(seconds: float) -> str:
    minutes, second = divmod(round(seconds), 60)
    hours, minute = divmod(minutes, 60)
    return f"{hours}:{minute:02d}:{second:02d}"


def table(rows: list[SpeakerRow]) -> str:
    lines = ["| speaker | clips | total (h:mm:ss) | shortest (s) | longest (s) | median loudness (LUFS) | left out |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row.speaker} | {row.clips} | {clock(row.seconds)} | {row.shortest:.2f} | "
                     f"{row.longest:.2f} | {row.median_lufs:.1f} | {row.left_out} |")
    return "\n".join(lines)


def left_out(records: list[Record], other: list[Dropped]) -> list[Dropped]:
    return [item for record in records for item in record.dropped] + other


def markdown(settings: PreprocessSettings, rows: list[SpeakerRow], dropped: list[Dropped]) -> str:
    lines = ["# Preprocessing report", "",
             f"Input `{settings.input}`, output `{settings.output}` ({settings.layout} layout, "
             f"{settings.sample_rate} Hz 16-bit wav). Clips {settings.slice.min_seconds:g}-"
             f"{settings.slice.max_seconds:g} s, loudness {settings.loudness.target_lufs:g} LUFS, "
             f"peaks at most {settings.loudness.peak_db:g} dBFS.", "", table(rows), "",
             f"![clip durations and loudness]({REPORT_IMAGE})", "", f"## Left out ({len(dropped)})", ""]
    if dropped:
        lines += ["| what | why |", "|---|---|"]
        lines += [f"| {item.what.replace('|', '/')} | {item.reason.replace('|', '/')} |" for item in dropped]
    else:
        lines.append("Nothing.")
    return "\n".join(lines) + "\n"


def draw(records: list[Record], target_lufs: float) -> bytes:
    """The PNG: clip durations per speaker, and clip loudness against the target."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never a window
    from matplotlib import pyplot

    figure, (durations, loudness) = pyplot.subplots(1, 2, figsize=(11, 4))
    speakers = sorted({record.speaker for record in records})
    per_speaker = [[clip.seconds for record in records if record.speaker == speaker for clip in record.clips]
                   for speaker in speakers]
    if any(per_speaker):
        durations.hist(per_speaker, bins=20, stacked=True, label=speakers)
        durations.legend(fontsize="small")
    durations.set(title="Clip durations", xlabel="seconds", ylabel="clips")
    levels = [clip.lufs for record in records for clip in record.clips]
    if levels:
        loudness.hist(levels, bins=20)
    loudness.axvline(target_lufs, color="black", linestyle="--", label=f"target {target_lufs:g} LUFS")
    loudness.legend(fontsize="small")
    loudness.set(title="Clip loudness", xlabel="LUFS (ITU-R BS.1770)", ylabel="clips")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    pyplot.close(figure)
    return buffer.getvalue()


def write_report(settings: PreprocessSettings, records: list[Record], other: list[Dropped]) -> str:
    """Writes report.md and report.png into the output folder; returns the console summary."""
    output = settings.output_root
    rows = speaker_rows(records, len(other))
    dropped = left_out(records, other)
    atomic_write_text(output / REPORT_MARKDOWN, markdown(settings, rows, dropped))
    image = draw(records, settings.loudness.target_lufs)
    atomic_write(output / REPORT_IMAGE, lambda temporary: temporary.write_bytes(image))
    lines = [table(rows)]
    if dropped:
        lines.append(f"Left out: {len(dropped)} (every one with its reason in {output / REPORT_MARKDOWN})")
        lines += [f"  - {item.what}: {item.reason}" for item in dropped[:PRINTED_REASONS]]
        if len(dropped) > PRINTED_REASONS:
            lines.append(f"  ... and {len(dropped) - PRINTED_REASONS} more")
    return "\n".join(lines)
