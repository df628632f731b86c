"""`python -m voicetrain.evaluate EXPORT [EXPORT ...] [data overrides]`: the command line.

Loads every export (checked, through the trust boundary), builds one table per task from the held-out split,
makes every row's wave for every item, scores it, and writes into an output folder it creates and owns:
`report.json` (every figure, the settings, the scorer versions), `utterances.csv`, `figure.png` and the scored
audio under `audio/`; the tables go to stdout. Every file is written whole or not at all.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
from tqdm import tqdm

from voicetrain.data.readers import DataError, Utterance
from voicetrain.durable import atomic_write, atomic_write_text
from voicetrain.evaluate.data import EvaluationError, data_settings, held_out_and_training
from voicetrain.evaluate.plan import (TASK_KINDS, TASK_TITLES, Item, Row, conversion_items, export_rows,
                                      recording_items, speech_items, spread_subset, table_rows)
from voicetrain.evaluate.report import Record, csv_text, markdown_table, row_summaries, write_figure
from voicetrain.evaluate.scoring import COLUMNS, REFERENCE_RECORDINGS, Embedder, Scorer, Transcriber, mean_embedding
from voicetrain.evaluate.systems import LoadedExport, Systems, load_export
from voicetrain.export.artifact import ExportError
from voicetrain.metrics.asr import transcribe
from voicetrain.metrics.extras import EVAL_INSTALL, MissingExtraError, import_scorer
from voicetrain.metrics.pretrained import PretrainedModelError, ctc_recogniser, xvector_speaker_model
from voicetrain.metrics.speaker import NoSpeechError, speaker_embedding
from voicetrain.tasks.base import InferenceError
from voicetrain.trust import add_trust_argument

PROG = "python -m voicetrain.evaluate"
# The distributions whose versions make a figure reproducible.
SCORING_PACKAGES = ("voicetrain", "pocketsphinx", "speechmos", "pesq", "Resemblyzer", "onnxruntime",
                    "pyworld-prebuilt", "swift-f0", "librosa", "soxr", "torch", "transformers")
# The scorers' modules, imported before anything else so that a missing one is refused at once.
SCORER_MODULES = {"pocketsphinx": "WER/CER (pocketsphinx)", "speechmos.dnsmos": "DNSMOS (speechmos)",
                  "pesq": "PESQ (pesq)", "resemblyzer": "SECS (resemblyzer)", "onnxruntime": "DNSMOS (onnxruntime)"}
# Rows made from the reference recordings alone: one line per recording, whatever the source.
RECORDING_ROWS = ("ground_truth", "griffin_lim")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Score exports the way the field reports them (Seed-VC's SECS, WER, CER and DNSMOS; BigVGAN's "
                    "M-STFT, PESQ, MCD, periodicity and V/UV F1), one table per task with a ground-truth row, "
                    "each export's rows and the task's baseline, on the held-out split of the corpus. Offline: every "
                    f"scorer ships inside its package ({EVAL_INSTALL}).",
        epilog=f"examples:\n  {PROG} runs/alice/export runs/bob/export\n"
               f"  {PROG} runs/vc/export --vocoder runs/voc/export\n"
               f"  {PROG} runs/tts/export data=ljspeech data.root=/data/LJSpeech-1.1 --limit 50",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("arguments", nargs="+", metavar="EXPORT | data=...",
                        help="export folders (runs/<name>/export), then optional data overrides as in training "
                             "(data=vctk data.root=...; default: the corpus the first export's run was trained on, "
                             "or the bundled corpus)")
    parser.add_argument("--vocoder", metavar="VOCODER_EXPORT", type=Path, action="append", default=[],
                        help="also score every log-mel export through this vocoder export (repeatable)")
    parser.add_argument("--output", metavar="DIR", type=Path,
                        help="a new or empty folder for the report (default: evaluations/<UTC time>)")
    parser.add_argument("--limit", metavar="N", type=int,
                        help="score at most N held-out items per table, taken in turn from each speaker (default: all)")
    add_trust_argument(parser, "an export (or a vocoder)")
    parser.add_argument("--asr-model", metavar="DIR", type=Path,
                        help="a local CTC recogniser (HuBERT-CTC, wav2vec 2.0-CTC; a save_pretrained folder with its "
                             "processor) for WER/CER instead of pocketsphinx")
    parser.add_argument("--speaker-model", metavar="DIR", type=Path,
                        help="a local x-vector speaker-verification model (e.g. WavLMForXVector; a save_pretrained "
                             "folder with its feature extractor) for SECS instead of Resemblyzer")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def require_scorers() -> None:
    for module, scorer in SCORER_MODULES.items():
        import_scorer(module, scorer)


def output_folder(requested: Path | None) -> Path:
    """The folder the command will own: a new one or an existing empty one; a folder with files is refused so
    that nothing the user has is overwritten. Checked first, created once the evaluation is planned."""
    folder = requested or Path("evaluations") / datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise EvaluationError(f"--output {folder} already holds files; give a new or empty folder")
    return folder


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")


def write_wave(path: Path, wave: np.ndarray, sample_rate: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    clipped = np.clip(np.nan_to_num(np.asarray(wave, dtype=np.float32)), -1.0, 1.0)
    atomic_write(path, lambda temporary: soundfile.write(str(temporary), clipped, sample_rate, subtype="PCM_16",
                                                         format="WAV"))


@dataclass(frozen=True)
class Models:
    """The recogniser and the speaker encoder every table uses."""

    transcriber: Transcriber
    embedder: Embedder
    asr_name: str
    speaker_name: str


def scoring_models(asr_model: Path | None, speaker_model: Path | None) -> Models:
    transcriber: Transcriber = transcribe
    embedder: Embedder = speaker_embedding
    asr_name = "pocketsphinx en-us (packaged acoustic model, dictionary and language model)"
    speaker_name = "Resemblyzer"
    if asr_model is not None:
        transcriber, asr_name = ctc_recogniser(asr_model.resolve()), f"the CTC model in {asr_model}"
    if speaker_model is not None:
        embedder = xvector_speaker_model(speaker_model.resolve())
        speaker_name = f"the x-vector model in {speaker_model}"
    return Models(transcriber, embedder, asr_name, speaker_name)


@dataclass(frozen=True)
class Table:
    kind: str
    rows: list[Row]
    items: list[Item]
    exports: list[LoadedExport]


def plan_tables(exports: list[LoadedExport], vocoders: list[Path], held_out: list[Utterance],
                limit: int | None) -> list[Table]:
    tables = []
    for kind in TASK_KINDS:
        own = [export for export in exports if export.kind == kind]
        if not own:
            continue
        # Several exports side by side: the items every one of them can make.
        speakers = sorted(set.intersection(*(set(export.task.context.speakers) for export in own)))
        if kind in ("vc", "svc"):
            items = conversion_items(held_out, speakers)
        elif kind == "tts":
            items = speech_items(held_out, speakers)
        else:
            items = recording_items(held_out)
        if not items:
            raise EvaluationError(f"no held-out item suits the {TASK_TITLES[kind]} exports (speakers they know: "
                                  f"{', '.join(speakers) or 'none'}); evaluate on the corpus they were trained on")
        rows = [row for export in own
                for row in export_rows(kind, export.path, export.label, export.default_vocoder, vocoders)]
        tables.append(Table(kind, unique_names(table_rows(kind, rows)), spread_subset(items, limit), own))
    return tables


def unique_names(rows: list[Row]) -> list[Row]:
    """Rows of two exports with the same run name get a number, so that no two lines of a table are named alike."""
    seen: dict[str, int] = {}
    named = []
    for row in rows:
        seen[row.name] = seen.get(row.name, 0) + 1
        named.append(row if seen[row.name] == 1 else Row(f"{row.name} #{seen[row.name]}", row.system, row.export,
                                                          row.vocoder, row.transpose))
    return named


def speaker_references(speakers: set[str], training: list[Utterance], systems: Systems,
                       embedder: Embedder) -> dict[str, np.ndarray]:
    """Each speaker's reference embedding from its first training recordings (see voicetrain.evaluate.scoring)."""
    references = {}
    for speaker in sorted(speakers):
        embeddings = []
        for utterance in [utterance for utterance in training if utterance.speaker == speaker]:
            try:
                embeddings.append(embedder(systems.recording(utterance.path), systems.sample_rate))
            except NoSpeechError:
                continue
            if len(embeddings) == REFERENCE_RECORDINGS:
                break
        if embeddings:
            references[speaker] = mean_embedding(embeddings)
    return references


def score_table(table: Table, training: list[Utterance], output: Path, trusted: list[str], models: Models,
                progress: tqdm) -> list[Record]:
    first = table.exports[0].task.context
    mel = next((export.task.context.features for export in table.exports if export.task.context.features), None)
    systems = Systems({export.path: export for export in table.exports}, first.sample_rate, mel, trusted)
    references = speaker_references({item.speaker for item in table.items}, training, systems, models.embedder)
    scorer = Scorer(first.sample_rate, first.hop_length, references, models.transcriber, models.embedder)
    records = []
    for row in table.rows:
        done: set[str] = set()
        for item in table.items:
            progress.update(1)
            # The ground truth of a VC sentence is the same recording for every source speaker, and so is its
            # Griffin-Lim copy: score each once.
            if row.system in RECORDING_ROWS and item.reference is not None:
                if item.reference.utterance_id in done:
                    continue
                done.add(item.reference.utterance_id)
            scored = systems.produce(row, item)
            if scored is None:
                continue
            item_id = item.reference.utterance_id if row.system in RECORDING_ROWS else item.item_id
            audio = Path("audio") / table.kind / slug(row.name) / f"{slug(item_id)}.wav"
            write_wave(output / audio, scored.wave, first.sample_rate)
            figures = scorer.score(table.kind, row.system, item.speaker, item.text, scored)
            records.append(Record(table.kind, row.name, item_id, item.speaker, item.text, str(audio), figures))
    return records


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for package in SCORING_PACKAGES:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    return found


def asr_floor(records: list[Record]) -> float | None:
    values = [float(record.figures["wer"]) for record in records
              if record.row == "Ground truth" and "wer" in record.figures]
    return float(np.mean(values)) if values else None


def run(arguments: argparse.Namespace) -> str:
    """Runs the evaluation; returns what to print (the tables). Raises the errors `main` reports."""
    require_scorers()
    exports_given = [Path(argument) for argument in arguments.arguments if "=" not in argument]
    overrides = [argument for argument in arguments.arguments if "=" in argument]
    if not exports_given:
        raise EvaluationError("give at least one export folder (runs/<name>/export)")
    settings, origin = data_settings(overrides, exports_given[0])
    held_out, training = held_out_and_training(settings)
    output = output_folder(arguments.output)
    models = scoring_models(arguments.asr_model, arguments.speaker_model)
    exports = [load_export(path, arguments.trust_code) for path in exports_given]
    tables = plan_tables(exports, arguments.vocoder, held_out, arguments.limit)
    output.mkdir(parents=True, exist_ok=True)
    total = sum(len(table.rows) * len(table.items) for table in tables)
    records_by_table = {}
    with tqdm(total=total, desc="evaluate", unit="wave", disable=arguments.no_progress, file=sys.stderr) as progress:
        for table in tables:
            records_by_table[table.kind] = score_table(table, training, output, arguments.trust_code, models,
                                                       progress)
    return write_report(output, tables, records_by_table, {
        "exports": [str(path) for path in exports_given], "vocoders": [str(path) for path in arguments.vocoder],
        "data": {"kind": settings.kind, "root": settings.root, "val_fraction": settings.val_fraction,
                 "origin": origin},
        "limit": arguments.limit, "held_out_recordings": len(held_out),
        "secs_reference": f"mean {models.speaker_name} embedding of the target speaker's first "
                          f"{REFERENCE_RECORDINGS} training recordings",
        "asr": models.asr_name, "speaker_model": models.speaker_name,
        "mcd": "WORLD mel-cepstra c1-c24, DIO F0, speech frames, DTW",
        "dnsmos": "P.835 SIG/BAK/OVRL (speechmos models), 16 kHz",
        "pesq": "wide band (P.862.2) at 16 kHz",
    })


def write_report(output: Path, tables: list[Table], records_by_table: dict[str, list[Record]],
                 settings: dict[str, object]) -> str:
    lines, report_tables, drawn = [], {}, []
    all_records = [record for records in records_by_table.values() for record in records]
    for table in tables:
        records, columns = records_by_table[table.kind], COLUMNS[table.kind]
        names = [row.name for row in table.rows]
        summaries = row_summaries(records, names, columns)
        counts = {name: sum(1 for record in records if record.row == name) for name in names}
        lines += [markdown_table(TASK_TITLES[table.kind], columns, summaries, counts), ""]
        floor = asr_floor(records)
        if floor is not None:
            lines += [f"ASR floor: the recogniser's own WER on the ground-truth recordings is {floor:.3f} "
                      f"({settings['asr']}); read the rows' WER against it.", ""]
        report_tables[table.kind] = {
            "title": TASK_TITLES[table.kind], "asr_floor_wer": floor,
            "columns": [{"key": column.key, "title": column.title, "better": column.better} for column in columns],
            "rows": {name: {"system": row.system, "export": str(row.export) if row.export else None,
                            "vocoder": str(row.vocoder) if row.vocoder else None, "transpose": row.transpose,
                            "utterances": counts[name],
                            "figures": {key: summary.to_dict() for key, summary in summaries[name].items()}}
                     for name, row in zip(names, table.rows)},
        }
        drawn.append((TASK_TITLES[table.kind], columns, names, records))
    keys = list(dict.fromkeys(key for record in all_records for key in record.figures))
    atomic_write_text(output / "utterances.csv", csv_text(all_records, keys))
    atomic_write(output / "figure.png", lambda temporary: write_figure(temporary, drawn))
    report = {"settings": settings, "versions": versions(), "tables": report_tables}
    atomic_write_text(output / "report.json", json.dumps(report, indent=2, default=json_value, allow_nan=False))
    lines.append(f"wrote {output}: report.json, utterances.csv, figure.png, audio/")
    return "\n".join(lines)


def json_value(value: object) -> object:
    if isinstance(value, float) and math.isnan(value):
        return None
    return str(value)


def main(argv: list[str] | None = None) -> int:
    # Intermixed: data overrides may follow the options, as they follow them in training commands.
    arguments = build_parser().parse_intermixed_args(argv)
    try:
        print(run(arguments))
    except (EvaluationError, ExportError, InferenceError, DataError, MissingExtraError, PretrainedModelError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    return 0
