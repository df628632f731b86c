"""What an evaluation writes: the markdown table (stdout), report.json, the per-utterance CSV and the figure.

The table and the summaries are pure functions of the per-utterance records; only `write_figure` draws.
A row's figure is the mean over its utterances that have a finite value; `count` says how many those were and
`undefined` how many were NaN (e.g. an untrained model's silence, which the speaker encoder cannot embed).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from voicetrain.evaluate.scoring import Column

EMPTY_CELL = "—"
PANELS_PER_LINE = 4


@dataclass(frozen=True)
class Record:
    """One row's output for one item, scored."""

    table: str  # the task kind
    row: str
    item_id: str
    speaker: str
    text: str | None
    audio: str  # the scored wave, relative to the output folder
    figures: dict[str, float | str] = field(default_factory=dict)


@dataclass(frozen=True)
class Summary:
    mean: float
    count: int
    undefined: int

    def to_dict(self) -> dict[str, Any]:
        return {"mean": None if math.isnan(self.mean) else self.mean, "count": self.count, "undefined": self.undefined}


def summarise(records: list[Record], column: str) -> Summary | None:
    """The mean of `column` over the records that have it, or None when none has it."""
    values = [record.figures[column] for record in records if column in record.figures]
    if not values:
        return None
    finite = [float(value) for value in values if math.isfinite(float(value))]
    return Summary(float(np.mean(finite)) if finite else math.nan, len(finite), len(values) - len(finite))


def row_summaries(records: list[Record], rows: list[str], columns: tuple[Column, ...]
                  ) -> dict[str, dict[str, Summary]]:
    """Row name -> column key -> summary, for the columns each row has."""
    summaries: dict[str, dict[str, Summary]] = {}
    for row in rows:
        own = [record for record in records if record.row == row]
        summaries[row] = {column.key: found for column in columns if (found := summarise(own, column.key))}
    return summaries


def cell(summary: Summary | None) -> str:
    if summary is None:
        return EMPTY_CELL
    if math.isnan(summary.mean):
        return "n/a"
    digits = 3 if abs(summary.mean) < 10 else 1
    marker = f" ({summary.undefined} n/a)" if summary.undefined else ""
    return f"{summary.mean:.{digits}f}{marker}"


def markdown_table(title: str, columns: tuple[Column, ...], summaries: dict[str, dict[str, Summary]],
                   items: dict[str, int]) -> str:
    """The table of one task: a header with an arrow per column, one line per row in order."""
    header = ["System", "Utterances", *(column.heading for column in columns)]
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row, by_column in summaries.items():
        cells = [row, str(items.get(row, 0)), *(cell(by_column.get(column.key)) for column in columns)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def csv_text(records: list[Record], keys: list[str]) -> str:
    """Every record as one CSV line: where it came from, then every figure (empty where the row has none)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["table", "row", "item_id", "speaker", "text", "audio", *keys])
    for record in records:
        writer.writerow([record.table, record.row, record.item_id, record.speaker, record.text or "", record.audio,
                         *(record.figures.get(key, "") for key in keys)])
    return buffer.getvalue()


def speaker_means(records: list[Record], row: str, column: str, speakers: list[str]) -> list[float]:
    means = []
    for speaker in speakers:
        values = [float(record.figures[column]) for record in records
                  if record.row == row and record.speaker == speaker and column in record.figures]
        finite = [value for value in values if math.isfinite(value)]
        means.append(float(np.mean(finite)) if finite else math.nan)
    return means


def write_figure(path: Path, tables: list[tuple[str, tuple[Column, ...], list[str], list[Record]]]) -> None:
    """One PNG: per table, one panel per column (`PANELS_PER_LINE` to a line) with a group of bars per target
    speaker and a bar per row of the table."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    lines = [math.ceil(len(columns) / PANELS_PER_LINE) for _, columns, _, _ in tables]
    figure, axes = pyplot.subplots(sum(lines), PANELS_PER_LINE, figsize=(4.0 * PANELS_PER_LINE, 3.0 * sum(lines)),
                                   squeeze=False)
    first_line = 0
    for (title, columns, rows, records), own_lines in zip(tables, lines):
        speakers = sorted({record.speaker for record in records})
        positions = np.arange(len(speakers))
        bar = 0.8 / max(len(rows), 1)
        for panel in range(own_lines * PANELS_PER_LINE):
            axis = axes[first_line + panel // PANELS_PER_LINE][panel % PANELS_PER_LINE]
            if panel >= len(columns):
                axis.axis("off")
                continue
            column = columns[panel]
            for row_index, row in enumerate(rows):
                axis.bar(positions + row_index * bar, speaker_means(records, row, column.key, speakers), bar,
                         label=row)
            axis.set_xticks(positions + bar * (len(rows) - 1) / 2, speakers, fontsize=7)
            axis.set_title(f"{title}: {column.heading}" if panel == 0 else column.heading, fontsize=9)
            axis.tick_params(axis="y", labelsize=7)
        axes[first_line][0].legend(fontsize=6, loc="lower left")
        first_line += own_lines
    figure.tight_layout()
    figure.savefig(path, dpi=100, format="png")
    pyplot.close(figure)
