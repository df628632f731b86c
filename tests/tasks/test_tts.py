"""The TTS recipe (`task=tts`): through the real CLI it trains on the bundled corpus and on the
LJSpeech layout, resumes bit-exactly (staged through scratch), exports (safetensors and ONNX) and
speaks `--text` from the export alone; in-process, its alignment search, tokenizer, batching and
validation images."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from voicetrain.audio import MelSpectrogram
from voicetrain.audio_files import load_audio
from voicetrain.data import BUNDLED_CORPUS, read_bundled_corpus
from voicetrain.data.readers import DataError, Utterance
from voicetrain.export.infer import main as infer_main
from voicetrain.tasks.base import TaskContext, ValidationData
from voicetrain.plots import DOTS_PER_INCH, FIGURE_WIDTH_INCHES, PANEL_HEIGHT_INCHES
from voicetrain.tasks.layers.alignment import durations_to_path, monotonic_alignment_search
from voicetrain.tasks.tts import TextToSpeechTask
from voicetrain.text import PAD_ID, UNKNOWN_ID, CharacterTokenizer

from helpers import assert_ok, output_of, run_cli, standard_mel, task_settings, write_speech

STEPS = 4
# A tiny model, two scored validation utterances and small batches: seconds per launch on 2 cores.
TINY_TTS = [
    "task=tts",
    "task.hidden_channels=32",
    "task.speaker_channels=16",
    "task.encoder_layers=1",
    "task.decoder_layers=1",
    "task.duration_layers=1",
    "task.validation_utterances=2",
    "trainer.batch_size=4",
    "trainer.log_every=1",
    "trainer.progress=false",
    f"trainer.val_every={STEPS}",
    f"ckpt.every_n_steps={STEPS // 2}",
]
STATE_FOLDERS = ("modules", "optimizers", "schedulers", "rng")


@dataclass(frozen=True)
class TextToSpeechRuns:
    root: Path
    whole: subprocess.CompletedProcess[str]  # STEPS steps in one launch, exported as fp16 safetensors + ONNX
    first_half: subprocess.CompletedProcess[str]  # STEPS / 2 steps with +scratch=ramdisk ...
    second_half: subprocess.CompletedProcess[str] | None  # ... then the same run resumed to STEPS


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, bundled_cache: Path) -> TextToSpeechRuns:
    root = tmp_path_factory.mktemp("tts")

    def launch(name: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return run_cli(f"run.root={root}", f"run.name={name}", f"data.cache_dir={bundled_cache}", *TINY_TTS, *extra,
                       cwd=root)

    def halves() -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str] | None]:
        # Staged through scratch (a folder here, not the shared /dev/shm), which the task never notices.
        staged = ["export.enabled=false", "+scratch=ramdisk", f"scratch.dir={root / 'scratch'}"]
        first = launch("halves", f"trainer.max_steps={STEPS // 2}", *staged)
        if first.returncode != 0:
            return first, None
        return first, launch("halves", f"trainer.max_steps={STEPS}", *staged)

    # Two chains side by side: each launch spends much of its time importing.
    with ThreadPoolExecutor(max_workers=2) as pool:
        whole = pool.submit(launch, "whole", f"trainer.max_steps={STEPS}", "+export=onnx", "trainer.audio_previews=1")
        first, second = pool.submit(halves).result()
    return TextToSpeechRuns(root, whole.result(), first, second)


def test_tts_trains_and_logs_losses_metrics_audio_and_alignments(runs: TextToSpeechRuns) -> None:
    assert_ok(runs.whole)
    output = runs.whole.stdout + runs.whole.stderr
    assert "TextToSpeechTask" in output and "val/mcd" in output, output_of(runs.whole)
    events = EventAccumulator(str(runs.root / "whole" / "tb"), size_guidance={"images": 0, "tensors": 0}).Reload()
    tags = events.Tags()
    for name in ("train/mel/l1", "train/align/prior", "train/duration/l2", "val/mcd", "val/logmel_mcd",
                 "val/logmel_mcd_teacher_forced", "val/length_ratio"):
        assert name in tags["scalars"], tags["scalars"]
        assert all(np.isfinite(event.value) for event in events.Scalars(name)), name
    # trainer.audio_previews=1: one utterance, its recording (written once) and its synthesis.
    assert len(tags["images"]) == 1 and tags["images"][0].startswith("mel/"), tags["images"]
    name = tags["images"][0].removeprefix("mel/")
    # Audio is written in the audio plugin's own form (a tensor whose metadata names the plugin).
    audio = [tag for tag in tags["tensors"] if events.SummaryMetadata(tag).plugin_data.plugin_name == "audio"]
    assert sorted(audio) == [f"audio/{name}/recording", f"audio/{name}/synthesis"], tags["tensors"]
    assert [event.step for event in events.Tensors(f"audio/{name}/recording")] == [0]
    assert [event.step for event in events.Tensors(f"audio/{name}/synthesis")] == [0, STEPS]


def test_tts_resume_is_bit_identical_to_an_uninterrupted_run(runs: TextToSpeechRuns) -> None:
    assert_ok(runs.whole)
    assert_ok(runs.first_half)
    assert runs.second_half is not None
    assert_ok(runs.second_half)
    assert f"resuming from step {STEPS // 2}" in runs.second_half.stdout + runs.second_half.stderr, \
        output_of(runs.second_half)
    assert "scratch: checkpoints are committed to" in runs.first_half.stdout + runs.first_half.stderr, \
        output_of(runs.first_half)
    expected = runs.root / "whole" / "checkpoints" / f"step_{STEPS:08d}"
    actual = runs.root / "halves" / "checkpoints" / f"step_{STEPS:08d}"
    names = sorted(path.relative_to(expected).as_posix() for path in expected.rglob("*")
                   if path.is_file() and path.relative_to(expected).parts[0] in STATE_FOLDERS)
    assert "modules/model.safetensors" in names and "optimizers/model.safetensors" in names, names
    for name in names:
        assert (expected / name).read_bytes() == (actual / name).read_bytes(), f"{actual / name} differs"


def test_tts_export_speaks_text_from_the_export_alone(runs: TextToSpeechRuns, tmp_path: Path) -> None:
    assert_ok(runs.whole)
    export_dir = runs.root / "whole" / "export"
    manifest = json.loads((export_dir / "manifest.json").read_text())
    assert set(manifest["parity"]) >= {"safetensors", "onnx", "onnx_resized_inputs"}, manifest["parity"]
    output = tmp_path / "spoken.wav"
    # A fresh process in another folder: nothing but the export is read.
    result = subprocess.run([sys.executable, "-m", "voicetrain.infer", str(export_dir), "--text",
                             "Glue the sheet to the dark blue background, 42 times!", "--speaker", "slt",
                             "--output", str(output)], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, output_of(result)
    assert f"wrote {output}" in result.stdout, output_of(result)
    wave, rate = soundfile.read(output, dtype="float32")
    features = json.loads((export_dir / "config.json").read_text())["context"]["features"]
    assert rate == features["sample_rate"]
    assert wave.ndim == 1 and len(wave) >= features["hop_length"] and np.all(np.isfinite(wave))


def test_tts_inference_errors_name_the_fix(runs: TextToSpeechRuns, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert_ok(runs.whole)
    export_dir = runs.root / "whole" / "export"
    output = tmp_path / "out.wav"
    cases = [
        (["--speaker", "slt"], "--text"),
        (["--text", "hi", "--speaker", "bob"], "unknown speaker 'bob'"),
        (["--text", "hi"], "no speaker given"),
        (["--text", "   ", "--speaker", "slt"], "nothing to speak"),
        (["--text", "hi", "--speaker", "slt", "--input", str(BUNDLED_CORPUS / "slt" / "h01_01.flac")], "drop --input"),
    ]
    for arguments, expected in cases:
        assert infer_main([str(export_dir), *arguments, "--output", str(output)]) == 2, arguments
        error = capsys.readouterr().err
        assert expected in error and "Traceback" not in error, (arguments, error)
    assert not output.exists()


def write_ljspeech(root: Path, count: int) -> Path:
    """A tiny LJSpeech-1.1 layout: bundled slt recordings as 22050 Hz wavs and their sentences."""
    utterances = [utterance for utterance in read_bundled_corpus() if utterance.speaker == "slt"][:count]
    lines = []
    for number, utterance in enumerate(utterances, start=1):
        clip = f"LJ001-{number:04d}"
        write_speech(root / "wavs" / f"{clip}.wav", utterance.path, 22050)
        lines.append(f"{clip}|{utterance.text}|{utterance.text}")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def test_tts_trains_on_the_ljspeech_layout(tmp_path: Path) -> None:
    corpus = write_ljspeech(tmp_path / "LJSpeech-1.1", 6)
    assert soundfile.info(corpus / "wavs" / "LJ001-0001.wav").samplerate == 22050
    result = run_cli(f"run.root={tmp_path / 'runs'}", "run.name=lj", "data=ljspeech", f"data.root={corpus}",
                     *TINY_TTS, "trainer.max_steps=2", "export.enabled=false", cwd=tmp_path)
    assert_ok(result)
    output = result.stdout + result.stderr
    assert "5 training utterances, 1 speakers" in output and "val/mcd" in output, output_of(result)
    assert (tmp_path / "runs" / "lj" / "checkpoints" / "step_00000002").is_dir()


# --- in-process: the parts ------------------------------------------------------------------


def best_monotonic_score(log_likelihood: np.ndarray) -> float:
    """Brute force over every monotonic path: which frames advance to the next character."""
    characters, frames = log_likelihood.shape
    best = -np.inf
    for advances in itertools.combinations(range(1, frames), characters - 1):
        index = np.zeros(frames, dtype=int)
        for frame in advances:
            index[frame:] += 1
        best = max(best, float(log_likelihood[index, np.arange(frames)].sum()))
    return best


def test_monotonic_alignment_search_finds_the_best_path_and_ignores_padding() -> None:
    generator = np.random.default_rng(7)
    for _ in range(20):
        log_likelihood = generator.normal(size=(3, 5, 9))
        text_lengths = generator.integers(1, 6, size=3)
        frame_lengths = np.array([generator.integers(length, 10) for length in text_lengths])
        path = monotonic_alignment_search(log_likelihood, text_lengths, frame_lengths)
        for item in range(3):
            characters, frames = text_lengths[item], frame_lengths[item]
            own = path[item]
            assert own[characters:].sum() == 0 and own[:, frames:].sum() == 0
            assert np.all(own[:, :frames].sum(0) == 1), "every frame belongs to exactly one character"
            assert np.all(own[:characters].sum(1) >= 1), "every character gets a frame"
            score = float((log_likelihood[item] * own).sum())
            assert score == pytest.approx(best_monotonic_score(log_likelihood[item, :characters, :frames]))


def test_durations_expand_in_order() -> None:
    path = durations_to_path(torch.tensor([[2, 1, 3]]))
    assert path.shape == (1, 3, 6)
    assert path[0].argmax(0).tolist() == [0, 0, 1, 2, 2, 2]


def test_tokenizer_normalises_and_keeps_unknown_characters_visible() -> None:
    tokenizer = CharacterTokenizer("abc ")
    # Lower case, accents stripped (e is outside this alphabet), whitespace collapsed and trimmed.
    assert tokenizer.encode("  AB\u00e9\tc ") == [2, 3, UNKNOWN_ID, 5, 4]
    assert tokenizer.encode("Ca\u0301b") == [4, 2, 3]  # the accent is stripped, not unknown
    assert tokenizer.encode("a%b") == [2, UNKNOWN_ID, 3] and tokenizer.unknown_characters("a%b") == ["%"]
    assert PAD_ID not in tokenizer.encode("abc abc")
    with pytest.raises(ValueError, match="repeated"):
        CharacterTokenizer("aa")


def tiny_task(speakers: list[str], **settings: int) -> TextToSpeechTask:
    features = standard_mel()
    context = TaskContext(features, speakers, [-4.0] * features.n_mels, [2.0] * features.n_mels)
    options = {"hidden_channels": 16, "speaker_channels": 8, "encoder_layers": 1, "decoder_layers": 1,
               "duration_layers": 1, **settings}
    return TextToSpeechTask(task_settings("tts", **options), context)


def test_missing_transcripts_and_impossible_alignments_are_clear_data_errors(tmp_path: Path) -> None:
    task = tiny_task(["alice"])
    recording = tmp_path / "alice" / "clip.wav"
    with pytest.raises(DataError, match=r"clip\.wav has no transcript.*clip\.txt.*task=vc"):
        task.make_example(Utterance("alice/clip", "alice", recording, text=None), {"mel": torch.zeros(80, 50)},
                          torch.Generator())
    with pytest.raises(DataError, match="12 characters .* for 3 mel frames"):
        task.make_example(Utterance("alice/clip", "alice", recording, text="far too long"), {"mel": torch.zeros(80, 3)},
                          torch.Generator())


def test_collate_pads_text_and_mel_with_their_lengths() -> None:
    task = tiny_task(["a", "b"])
    examples = [task.make_example(Utterance(name, speaker, Path(f"{name}.wav"), text=text), {"mel": torch.ones(80, frames)},
                                  torch.Generator())
                for name, speaker, text, frames in (("1", "b", "ab c", 7), ("2", "a", "a", 3))]
    batch = task.collate(examples)
    assert batch["text_ids"].shape == (2, 4) and batch["text_lengths"].tolist() == [4, 1]
    assert batch["text_ids"][1, 1:].tolist() == [PAD_ID] * 3
    assert batch["mel"].shape == (2, 80, 7) and batch["mel_lengths"].tolist() == [7, 3]
    assert batch["speaker"].tolist() == [1, 0]


def test_validation_scores_synthesis_and_previews_recording_synthesis_and_alignment() -> None:
    utterances = [utterance for utterance in read_bundled_corpus() if utterance.split == "val"][:2]
    features = standard_mel()
    extractor = MelSpectrogram(features)
    mels = [extractor(torch.from_numpy(load_audio(utterance.path, features.sample_rate))) for utterance in utterances]
    task = tiny_task(sorted({utterance.speaker for utterance in utterances}))
    model = task.build_modules()["model"].eval()
    result = task.validate({"model": model}, ValidationData(utterances, {"mel": mels}), previews=1)
    assert set(result.metrics) == {"val/mcd", "val/logmel_mcd", "val/logmel_mcd_teacher_forced", "val/length_ratio"}
    assert all(np.isfinite(value) for value in result.metrics.values())
    name = utterances[0].utterance_id
    assert set(result.audio) == {f"{name}/synthesis"} and set(result.reference_audio) == {f"{name}/recording"}
    recording = result.reference_audio[f"{name}/recording"]
    assert torch.equal(recording, torch.from_numpy(load_audio(utterances[0].path, features.sample_rate)))
    # One figure: recording, synthesis and alignment one above the other.
    assert set(result.images) == {name}
    image = result.images[name]
    assert image.dtype == np.uint8 and image.shape == (round(3 * PANEL_HEIGHT_INCHES * DOTS_PER_INCH),
                                                       round(FIGURE_WIDTH_INCHES * DOTS_PER_INCH), 3)


def test_a_missing_transcript_stops_the_run_before_any_step(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    for speaker in ("slt", "rms"):
        for index, source in enumerate(sorted((BUNDLED_CORPUS / speaker).glob("*.flac"))[:3]):
            recording = write_speech(corpus / speaker / f"clip{index}.wav", source, 16000)
            if (speaker, index) != ("rms", 1):
                recording.with_suffix(".txt").write_text("the birch canoe slid on the smooth planks")
    result = run_cli("task=tts", "data=speakers", f"data.root={corpus}", f"run.root={tmp_path / 'runs'}",
                     "trainer.max_steps=2", "trainer.progress=false", cwd=tmp_path)
    assert result.returncode == 2, output_of(result)
    text = result.stdout + result.stderr
    assert "1 utterance(s) cannot train task=tts" in text and "clip1.wav has no transcript" in text, text
    assert "Traceback" not in text and "first step of this launch done" not in text
    assert not (tmp_path / "runs" / "default" / "checkpoints").exists()
