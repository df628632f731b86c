"""`python -m voicetrain.evaluate`: the pure parts (items, subsets, rows, the table), the refusals (a missing
extra with its install command, a folder with files, an override of something other than the data), and the
command end to end on a tiny trained run of each recipe (slow): every column and the ground-truth row in the
table, report.json, the CSV, the figure and the scored audio."""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from voicetrain.data.readers import Utterance
from voicetrain.durable import MANIFEST, file_table
from voicetrain.evaluate.command import main as evaluate_main
from voicetrain.evaluate.command import output_folder
from voicetrain.evaluate.data import EvaluationError, check_overrides
from voicetrain.evaluate.plan import (conversion_items, export_rows, spread_subset, table_rows, task_kind)
from voicetrain.evaluate.report import Record, markdown_table, row_summaries, summarise
from voicetrain.evaluate.scoring import COLUMNS

from helpers import assert_ok, environment, recipe_run_schedule, run_cli

PROG = "python -m voicetrain.evaluate"


def utterance(speaker: str, sentence: str) -> Utterance:
    return Utterance(f"{speaker}_{sentence}", speaker, Path(f"/corpus/{speaker}/{sentence}.flac"),
                     f"sentence {sentence}", sentence, "val")


# --- pure parts ---------------------------------------------------------------------------------


def test_conversion_items_pair_every_source_with_every_other_speaker_and_find_the_parallel_reference() -> None:
    held_out = [utterance("a", "s1"), utterance("b", "s1"), utterance("c", "s2")]
    items = conversion_items(held_out, ["a", "b", "c"])
    assert [item.item_id for item in items] == ["a_s1->b", "a_s1->c", "b_s1->a", "b_s1->c", "c_s2->a", "c_s2->b"]
    by_id = {item.item_id: item for item in items}
    assert by_id["a_s1->b"].reference == held_out[1] and by_id["a_s1->b"].text == "sentence s1"
    assert by_id["a_s1->c"].reference is None  # c never read s1


def test_a_spread_subset_takes_each_speaker_in_turn() -> None:
    held_out = [utterance(speaker, sentence) for speaker in "ab" for sentence in ("s1", "s2", "s3")]
    items = conversion_items(held_out, ["a", "b"])
    assert [item.item_id for item in spread_subset(items, 3)] == ["a_s1->b", "b_s1->a", "a_s2->b"]
    assert spread_subset(items, None) == items
    with pytest.raises(ValueError, match="--limit 0"):
        spread_subset(items, 0)


def test_rows_put_the_ground_truth_first_and_the_task_baseline_last() -> None:
    export, vocoder = Path("runs/alice/export"), Path("runs/voc/export")
    svc = table_rows("svc", export_rows("svc", export, "alice", None, []))
    assert [row.name for row in svc] == ["Ground truth", "alice (transpose auto)", "alice (transpose 0)",
                                         "Source (unconverted)"]
    vc = table_rows("vc", export_rows("vc", export, "alice", vocoder, [vocoder]))
    assert [row.name for row in vc] == ["Ground truth", "alice + Griffin-Lim", "alice + voc", "Source (unconverted)",
                                        "Griffin-Lim (recordings' log-mels)"]
    assert vc[2].vocoder == vocoder
    assert [row.system for row in table_rows("vocoder", export_rows("vocoder", export, "v", None, []))] == [
        "ground_truth", "export", "griffin_lim"]
    assert task_kind(("text", "speaker", "vocoder"), False) == "tts"
    assert task_kind(("audio",), True) == "vocoder"
    assert task_kind(("audio", "speaker", "transpose"), False) == "svc"
    assert task_kind(("audio", "speaker", "vocoder"), False) == "vc"


def test_the_table_has_an_arrow_per_column_and_counts_undefined_figures_apart() -> None:
    records = [Record("tts", "Ground truth", "u1", "a", "t", "x.wav", {"wer": 0.5, "secs": 0.9}),
               Record("tts", "Ground truth", "u2", "a", "t", "y.wav", {"wer": 0.3, "secs": math.nan}),
               Record("tts", "model", "u1", "a", "t", "z.wav", {"wer": 1.0, "secs": 0.5, "length_ratio": 1.2})]
    assert summarise(records[:2], "secs").count == 1 and summarise(records[:2], "secs").undefined == 1
    summaries = row_summaries(records, ["Ground truth", "model"], COLUMNS["tts"])
    table = markdown_table("Text-to-speech", COLUMNS["tts"], summaries, {"Ground truth": 2, "model": 1})
    lines = table.splitlines()
    assert lines[2] == ("| System | Utterances | WER ↓ | CER ↓ | SECS ↑ | SIG ↑ | BAK ↑ | OVRL ↑ | MCD (dB) ↓ | "
                        "Length ratio →1 |")
    assert lines[4].startswith("| Ground truth | 2 | 0.400 | — | 0.900 (1 n/a) |")
    assert lines[5].startswith("| model | 1 | 1.000 |") and lines[5].endswith("| 1.200 |")


def test_the_output_folder_is_new_or_empty_and_only_data_is_overridden(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(EvaluationError, match="already holds files"):
        output_folder(tmp_path / "taken")
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"
    assert output_folder(tmp_path / "new" / "folder") == tmp_path / "new" / "folder"
    check_overrides(["data=vctk", "data.root=/x", "+data.val_fraction=0.1"])
    with pytest.raises(EvaluationError, match="only the data"):
        check_overrides(["task.hidden_channels=4"])


def test_a_missing_extra_is_refused_with_the_install_command(tmp_path: Path) -> None:
    # The package is made unimportable the way Python marks a module as absent.
    code = ("import sys; sys.modules['pocketsphinx'] = None; from voicetrain.evaluate.command import main; "
            f"sys.exit(main(['{tmp_path / 'no-export'}']))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment(),
                            timeout=300, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if "error" in line]
    assert lines == [f"{PROG}: error: WER/CER (pocketsphinx) needs the optional extra 'eval' (pocketsphinx is not "
                     "installed): pip install 'voicetrain[eval]'"], result.stderr
    assert not list(tmp_path.iterdir())


# --- end to end on tiny trained runs ------------------------------------------------------------

TINY_RECIPES = {
    "vc": ["task=vc", "task.hidden_channels=16", "task.speaker_channels=16", "task.encoder_layers=1",
           "task.decoder_layers=1", "task.validation_pairs=2"],
    "tts": ["task=tts", "task.hidden_channels=32", "task.speaker_channels=16", "task.encoder_layers=1",
            "task.decoder_layers=1", "task.duration_layers=1", "task.validation_utterances=2"],
    "svc": ["task=svc", "task.hidden_channels=16", "task.bottleneck_channels=4", "task.encoder_layers=1",
            "task.speaker_channels=8", "task.generator_channels=16", "task.generator_intermediate_channels=32",
            "task.generator_layers=1", "task.filter_bins=17", "task.segment_frames=16", "task.kernel_size=5",
            "task.validation_pairs=2", "task.validation_utterances=2"],
    "vocoder": ["task=vocoder", "task.generator_channels=16", "task.generator_intermediate_channels=32",
                "task.generator_layers=1", "task.filter_bins=17", "task.pitch_channels=8",
                "task.pitch_intermediate_channels=16", "task.pitch_layers=1", "task.segment_frames=16",
                "task.adversarial_start_step=100", "task.validation_utterances=2"],
}
STEPS = 2
LIMIT = 2  # held-out items per table, from two speakers


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory, bundled_cache: Path) -> dict[str, Path]:
    """The four recipes at their smallest, STEPS steps each, exported; trained two at a time."""
    root = tmp_path_factory.mktemp("evaluate-runs")

    def train(name: str) -> Path:
        result = run_cli(f"run.root={root}", f"run.name=evaluate-{name}", f"data.cache_dir={bundled_cache}",
                         *TINY_RECIPES[name], *recipe_run_schedule(STEPS), "trainer.audio_previews=0",
                         "trainer.validate_at_start=false", f"trainer.max_steps={STEPS}", cwd=root,
                         env=environment(OMP_NUM_THREADS="1"))
        assert_ok(result)
        return root / f"evaluate-{name}" / "export"

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(TINY_RECIPES, pool.map(train, TINY_RECIPES)))


def evaluate(arguments: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = evaluate_main([*arguments, "--no-progress"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.slow
@pytest.mark.parametrize("recipe", list(TINY_RECIPES))
def test_each_recipe_gets_its_table_with_every_column_and_the_ground_truth_row(
        recipe: str, exports: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "evaluation"
    code, out, err = evaluate([str(exports[recipe]), "--limit", str(LIMIT), "--output", str(output)], capsys)
    assert code == 0, err
    table = [line for line in out.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in table[0].strip("|").split("|")]
    assert header == ["System", "Utterances", *(column.heading for column in COLUMNS[recipe])]
    names = [line.strip("|").split("|")[0].strip() for line in table[2:]]
    assert names[0] == "Ground truth"
    copy = "Griffin-Lim (recordings' log-mels)"
    baseline = {"vc": "Source (unconverted)", "svc": "Source (unconverted)", "tts": copy, "vocoder": copy}[recipe]
    assert baseline in names
    label = f"evaluate-{recipe}"
    expected_exports = {"svc": [f"{label} (transpose auto)", f"{label} (transpose 0)"], "vocoder": [label]}.get(
        recipe, [f"{label} + Griffin-Lim"])
    assert all(name in names for name in expected_exports), names
    if recipe != "vocoder":
        assert "ASR floor: the recogniser's own WER on the ground-truth recordings is" in out
    report = json.loads((output / "report.json").read_text())
    rows = report["tables"][recipe]["rows"]
    assert list(rows) == names
    # Every column has a figure in some row (the export's own row has every intrusive one).
    for column in COLUMNS[recipe]:
        assert any(column.key in row["figures"] for row in rows.values()), (column.key, rows)
    assert rows["Ground truth"]["utterances"] >= 1 and rows["Ground truth"]["figures"]["dnsmos_ovrl"]["count"] >= 1
    assert report["versions"]["pocketsphinx"] and report["versions"]["speechmos"] and report["versions"]["pesq"]
    assert report["settings"]["data"]["kind"] == "bundled" and report["settings"]["limit"] == LIMIT
    with (output / "utterances.csv").open() as handle:
        lines = list(csv.DictReader(handle))
    assert {line["row"] for line in lines} == set(names)
    assert all((output / line["audio"]).is_file() for line in lines)
    assert (output / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [path for path in output.rglob(".tmp-*")]


@pytest.mark.slow
def test_several_exports_side_by_side_and_a_vocoder_variant(exports: dict[str, Path], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "evaluation"
    code, out, err = evaluate([str(exports["vc"]), str(exports["tts"]), "--vocoder", str(exports["vocoder"]),
                               "--limit", "1", "--output", str(output), "data=bundled"], capsys)
    assert code == 0, err
    assert "### Voice conversion" in out and "### Text-to-speech" in out
    report = json.loads((output / "report.json").read_text())
    assert "evaluate-vc + evaluate-vocoder" in report["tables"]["vc"]["rows"]
    assert "evaluate-tts + evaluate-vocoder" in report["tables"]["tts"]["rows"]
    assert report["settings"]["data"]["origin"] == "the overrides data=bundled"
    # A second evaluation into the same folder is refused: nothing there is overwritten.
    code, _, err = evaluate([str(exports["vc"]), "--output", str(output)], capsys)
    assert code == 2 and "already holds files" in err


def reseal(folder: Path) -> None:
    """What an attacker does after editing a folder: recompute every size and SHA-256 of its manifest."""
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["files"] = file_table(folder)
    (folder / MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.slow
def test_an_export_naming_untrusted_code_is_refused_unless_trusted(exports: dict[str, Path], tmp_path: Path) -> None:
    """The evaluation loads exports through the trust boundary, as `python -m voicetrain.infer` does."""
    export = tmp_path / "downloads" / "model" / "export"
    shutil.copytree(exports["vc"], export)
    marker = tmp_path / "payload-ran"
    (export / "payload.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
                                       "from voicetrain.tasks.vc import VoiceConversionTask\n\n"
                                       "class Task(VoiceConversionTask):\n    pass\n")
    config = json.loads((export / "config.json").read_text())
    (export / "config.json").write_text(json.dumps({**config, "task_target": "downloads.model.export.payload.Task"}))
    reseal(export)

    def evaluate_here(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "voicetrain.evaluate", "downloads/model/export", "--limit", "1",
                               "--no-progress", *extra], cwd=tmp_path, env=environment(OMP_NUM_THREADS="1"),
                              capture_output=True, text=True, timeout=900)

    refused = evaluate_here("--output", "refused")
    assert refused.returncode == 2, refused.stderr
    assert "--trust-code downloads" in refused.stderr and not marker.exists()
    assert not (tmp_path / "refused").exists()
    trusted = evaluate_here("--output", "trusted", "--trust-code", "downloads")
    assert trusted.returncode == 0, trusted.stderr
    assert marker.exists() and "| Ground truth |" in trusted.stdout
