"""Benchmarks of the exports at inference (issue 14): each recipe's real-time factor on one CPU
thread, PyTorch against ONNX Runtime on the same graph and inputs (inference_rtf), and the
vocoder's copy synthesis of the held-out recordings against Griffin-Lim's on the same log-mels, in
every column of `voicetrain.evaluate`'s vocoder table, per speaker (vocoder_copy_synthesis).

Both read the bundled corpus's held-out utterances, the split every recipe validates on."""

from __future__ import annotations

import argparse
import contextlib
import logging
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmarks.common import NEVER, NO_VALIDATION, compose_settings, per_round, spread_text
from voicetrain.audio import griffin_lim
from voicetrain.audio_files import load_audio
from voicetrain.config import Settings
from voicetrain.data.prepare import PreparedData, prepare_data
from voicetrain.export.artifact import ONNX, load_inference_modules, read_export_manifest
from voicetrain.features.building import mel_settings
from voicetrain.run.trainer import Trainer
from voicetrain.tasks.base import InferenceOutput, InferenceRequest, Task
from voicetrain.tasks.vocoder import PREDICT_F0

# --- shared --------------------------------------------------------------------------------

QUIET_TRAINING = (*NO_VALIDATION, f"ckpt.every_n_steps={NEVER}", "trainer.audio_previews=0", "trainer.progress=false")


def recipe_settings(run_root: Path, cache_dir: Path, recipe: str, *overrides: str) -> Settings:
    return compose_settings(run_root, cache_dir, f"task={recipe}", f"run.name={recipe}", *QUIET_TRAINING, *overrides)


def train_export(settings: Settings) -> tuple[Path, PreparedData]:
    """Trains the recipe as the CLI would; its export folder and the prepared corpus."""
    trainer = Trainer(settings)
    with warnings.catch_warnings(), quiet_logger("torch.onnx._internal.exporter._registration"):
        # The ONNX exporter's notes (torchvision absent, a deprecated pytree spec) are not results.
        warnings.filterwarnings("ignore", category=FutureWarning)
        summary = trainer.train()
    if summary.export is None:
        raise RuntimeError(f"run {settings.run.name} wrote no export; the benchmark needs export.enabled=true")
    return summary.export.path, trainer.data


@contextlib.contextmanager
def quiet_logger(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def noise(frames: int, hop_length: int) -> torch.Tensor:
    """The synthesisers' noise input [1, frames, hop], from a fixed seed as inference draws it."""
    return torch.randn(1, frames, hop_length, generator=torch.Generator().manual_seed(0))


# --- real-time factor ----------------------------------------------------------------------

RTF_RECIPES = ("vc", "tts", "svc", "vocoder")
RTF_STEPS = 20  # the weights do not change the speed; the default model sizes do (what users deploy)
RTF_ROUNDS = 5


def even_durations(frames: int, characters: int) -> list[int]:
    """`frames` spread over `characters` as evenly as whole frames allow (at least one each): a
    trained TTS model's output length for the recording's sentence, which a 20-step duration
    predictor does not yet produce."""
    if characters < 1:
        raise ValueError(f"even_durations: characters={characters}; a sentence has at least one character")
    frames = max(frames, characters)
    return [(index + 1) * frames // characters - index * frames // characters for index in range(characters)]


def samples_of(output: torch.Tensor, hop_length: int) -> int:
    """Audio samples a graph's output stands for: a log-mel [1, n_mels, frames] (VC, TTS) is a
    hop per frame once vocoded; a wave [1, samples] (SVC, vocoder) is itself."""
    if output.dim() == 3:
        return output.shape[-1] * hop_length
    if output.dim() == 2:
        return output.shape[-1]
    raise ValueError(f"samples_of: an output shaped {tuple(output.shape)} is neither a log-mel [1, n_mels, frames] "
                     "nor a wave [1, samples]")


def graph_inputs(recipe: str, task: Task, data: PreparedData, index: int) -> tuple[torch.Tensor, ...]:
    """The inference graph's inputs for held-out utterance `index`, as the task's own inference
    builds them: its features from the store, another speaker as the target, noise from a seed."""
    utterance = data.val_utterances[index]
    features = {name: values[index].float() for name, values in data.val_features.items()}
    speakers = task.context.speakers
    target = torch.tensor([(speakers.index(utterance.speaker) + 1) % len(speakers)])
    frames, hop = features["mel"].shape[-1], task.context.hop_length
    if recipe == "vc":
        return features["mel"].unsqueeze(0), target
    if recipe == "tts":
        ids = task.tokenizer.encode(utterance.text)
        return torch.tensor([ids]), target, torch.tensor([even_durations(frames, len(ids))])
    if recipe == "svc":
        f0, voiced = features["f0"]
        return (features["mel"].unsqueeze(0), (f0 * voiced).unsqueeze(0), voiced.unsqueeze(0),
                features["loudness"], target, noise(frames, hop))
    if recipe == "vocoder":
        return features["mel"].unsqueeze(0), torch.full((1, frames), PREDICT_F0), noise(frames, hop)
    raise ValueError(f"graph_inputs: no inputs for recipe {recipe!r}; add them beside {RTF_RECIPES}")


def inference_request(recipe: str, task: Task, data: PreparedData, index: int) -> InferenceRequest:
    """What `python -m voicetrain.infer` would hand the task for the same utterance."""
    utterance = data.val_utterances[index]
    speakers = task.context.speakers
    target = speakers[(speakers.index(utterance.speaker) + 1) % len(speakers)]
    if recipe == "tts":
        return InferenceRequest(text=utterance.text, speaker=target)
    audio = torch.from_numpy(load_audio(utterance.path, task.context.sample_rate))
    if recipe == "vocoder":
        return InferenceRequest(audio=audio)
    return InferenceRequest(audio=audio, speaker=target, transpose=0.0 if recipe == "svc" else None)


def onnx_session(path: Path):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: its notes on unused initialisers are noise here
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def seconds_of(run: Callable[[int], object], count: int) -> float:
    started = time.perf_counter()
    for index in range(count):
        run(index)
    return time.perf_counter() - started


@dataclass
class RecipeTimes:
    graph_audio_seconds: float  # audio per pass over the held-out utterances, the graph's
    infer_audio_seconds: float  # and Task.infer's (TTS: its own predicted durations)
    pytorch: list[float]  # seconds per pass, one per round
    onnx: list[float]
    infer: list[float]  # Task.infer end to end (feature extraction, vocoding), PyTorch


def wave_of(result: torch.Tensor | InferenceOutput) -> torch.Tensor:
    return result.wave if isinstance(result, InferenceOutput) else result


def time_recipe(recipe: str, export: Path, data: PreparedData, rounds: int) -> RecipeTimes:
    """The graph in PyTorch and in ONNX Runtime, and Task.infer, alternating in rounds after one
    untimed pass each; every side on one thread, on the same inputs."""
    task, modules = load_inference_modules(export)
    model: nn.Module = task.inference_model(modules).eval()
    session = onnx_session(export / ONNX)
    names = [entry.name for entry in session.get_inputs()]
    count = len(data.val_utterances)
    inputs = [graph_inputs(recipe, task, data, index) for index in range(count)]
    feeds = [{name: tensor.numpy() for name, tensor in zip(names, call)} for call in inputs]
    requests = [inference_request(recipe, task, data, index) for index in range(count)]

    def run_pytorch(index: int) -> torch.Tensor:
        with torch.inference_mode():
            return model(*inputs[index])

    sides = {"pytorch": run_pytorch, "onnx": lambda index: session.run(None, feeds[index]),
             "infer": lambda index: task.infer(modules, requests[index])}
    # The warm-up pass of each side, which also says how much audio a pass produces.
    graph_samples = sum(samples_of(run_pytorch(index), task.context.hop_length) for index in range(count))
    infer_samples = sum(wave_of(sides["infer"](index)).shape[-1] for index in range(count))
    seconds_of(sides["onnx"], count)
    rate = task.context.sample_rate
    times = RecipeTimes(graph_samples / rate, infer_samples / rate, [], [], [])
    for round_index in range(rounds):
        order = list(sides) if round_index % 2 == 0 else list(reversed(sides))
        for side in order:
            getattr(times, side).append(seconds_of(sides[side], count))
    return times


def inference_rtf(options: argparse.Namespace) -> None:
    """Seconds of compute per second of audio of each recipe's export (default model sizes), its
    inference graph in PyTorch against ONNX Runtime, one CPU thread each, on the held-out
    utterances; and Task.infer end to end beside them (feature extraction and vocoding included)."""
    print("inference rtf: seconds of compute per second of audio produced, 1 CPU thread (lower is faster); "
          "PyTorch / ONNX Runtime above 1: ONNX Runtime is faster")
    with tempfile.TemporaryDirectory(prefix="voicetrain-bench-") as run_root:
        for recipe in RTF_RECIPES:
            settings = recipe_settings(Path(run_root), options.cache_dir, recipe, f"trainer.max_steps={RTF_STEPS}",
                                       "+export=onnx")
            export, data = train_export(settings)
            with one_thread():
                times = time_recipe(recipe, export, data, RTF_ROUNDS)
            print_rtf(recipe, times)
    print(f"  each: {len(data.val_utterances)} held-out utterances, {times.graph_audio_seconds:.1f} s of audio per pass, "
          f"{RTF_ROUNDS} alternating rounds after one warm-up pass per side; exports (fp16 weights) of "
          f"{RTF_STEPS}-step trainings at the default model sizes, read by PyTorch in fp32 and by ONNX Runtime "
          "(graph in fp32); TTS given the recording's length spread evenly over the characters; VC and TTS graphs "
          "end at the log-mel (their Task.infer adds Griffin-Lim); Task.infer's RTF is over the audio it produced (TTS: "
          "from its own predicted durations)")


def print_rtf(recipe: str, times: RecipeTimes) -> None:
    graph_pytorch, graph_onnx = (statistics.median(seconds) / times.graph_audio_seconds
                                 for seconds in (times.pytorch, times.onnx))
    infer = statistics.median(times.infer) / times.infer_audio_seconds
    print(f"  {recipe}: graph PyTorch {graph_pytorch:.3g} / ONNX Runtime {graph_onnx:.3g} = "
          f"{graph_pytorch / graph_onnx:.2f} (per round {spread_text(per_round(times.pytorch, times.onnx))}); "
          f"Task.infer end to end {infer:.3g}")


# --- vocoder copy synthesis ----------------------------------------------------------------

GRIFFIN_LIM_ITERATIONS = 32  # voicetrain.audio.griffin_lim's default, what inference without --vocoder uses
# pYIN: a tracker independent of the recipe's own (swift-f0) and of WORLD's, on the log-mel's frames.
PYIN_RANGE_HZ = (50.0, 800.0)
PYIN_FRAME = 1024


def voiced_frames(wave: np.ndarray, sample_rate: int, hop_length: int) -> np.ndarray:
    """The frames pYIN finds voiced, one per hop (centred)."""
    import librosa

    _, voiced, _ = librosa.pyin(np.asarray(wave, dtype=np.float64), fmin=PYIN_RANGE_HZ[0], fmax=PYIN_RANGE_HZ[1],
                                sr=sample_rate, frame_length=PYIN_FRAME, hop_length=hop_length, center=True)
    return voiced


def kept_voiced(reference_voiced: np.ndarray, candidate_voiced: np.ndarray) -> tuple[int, int]:
    """(frames voiced in the reference, of those also voiced in the candidate), on the reference's
    time line: a shorter candidate (Griffin-Lim drops the last hop) counts as unvoiced past its end."""
    reference = np.asarray(reference_voiced, dtype=bool)
    candidate = np.zeros_like(reference)
    length = min(len(reference), len(candidate_voiced))
    candidate[:length] = np.asarray(candidate_voiced, dtype=bool)[:length]
    return int(reference.sum()), int((reference & candidate).sum())


# The columns of `voicetrain.evaluate`'s vocoder table, its scorers: (key, title, which way is better).
COPY_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("mstft", "MR-STFT", "lower"), ("pesq", "PESQ wb", "higher"), ("mcd", "MCD", "lower"),
    ("periodicity_rmse", "periodicity", "lower"), ("vuv_f1", "V/UV F1", "higher"), ("dnsmos_ovrl", "DNSMOS", "higher"))


@dataclass
class CopyScores:
    """One held-out utterance's copy synthesis by each vocoder."""

    speaker: str
    reference_frames: int  # frames of the recording
    voiced: int  # of them voiced (pYIN)
    kept: dict[str, int]  # vocoder name -> voiced frames of the recording also voiced in its output
    columns: dict[str, dict[str, float]]  # vocoder name -> COPY_COLUMNS key -> score (NaN: not defined)


def column_scores(recording: np.ndarray, wave: np.ndarray, sample_rate: int) -> dict[str, float]:
    """Every COPY_COLUMNS score of one output against its recording, by voicetrain.evaluate's scorers."""
    from voicetrain.evaluate.scoring import copy_synthesis, guarded_mcd, quality

    scores = copy_synthesis(recording, wave, sample_rate)
    scores["mcd"] = guarded_mcd(recording, wave, sample_rate)
    scores["dnsmos_ovrl"] = quality(wave, sample_rate)["dnsmos_ovrl"]
    return {key: float(scores[key]) for key, _, _ in COPY_COLUMNS}


def copy_scores(speaker: str, recording: np.ndarray, outputs: dict[str, np.ndarray], sample_rate: int,
                hop_length: int) -> CopyScores:
    reference = voiced_frames(recording, sample_rate, hop_length)
    scores = CopyScores(speaker, len(reference), int(reference.sum()), {}, {})
    for name, wave in outputs.items():
        _, scores.kept[name] = kept_voiced(reference, voiced_frames(wave, sample_rate, hop_length))
        scores.columns[name] = column_scores(recording, wave, sample_rate)
    return scores


def speaker_groups(scores: list[CopyScores]) -> dict[str, list[CopyScores]]:
    groups = {speaker: [score for score in scores if score.speaker == speaker]
              for speaker in sorted({score.speaker for score in scores})}
    groups["all"] = scores
    return groups


def column_mean(group: list[CopyScores], vocoder: str, key: str) -> float:
    """The mean over the utterances that have the score (NaN if none has)."""
    values = [score.columns[vocoder][key] for score in group if np.isfinite(score.columns[vocoder][key])]
    return float(np.mean(values)) if values else float("nan")


def summary_rows(scores: list[CopyScores], vocoders: list[str]) -> list[list[str]]:
    """One row per speaker and vocoder, then "all": utterances, the recordings' voiced share, the mean
    of every COPY_COLUMNS score, and the share of voiced frames kept voiced (pooled over frames)."""
    rows = []
    for name, group in speaker_groups(scores).items():
        voiced = sum(score.voiced for score in group)
        share = percent(voiced, sum(score.reference_frames for score in group))
        for vocoder in vocoders:
            row = [name, vocoder, str(len(group)), share]
            row += [f"{column_mean(group, vocoder, key):.3f}" for key, _, _ in COPY_COLUMNS]
            rows.append(row + [percent(sum(score.kept[vocoder] for score in group), voiced)])
    return rows


def losing_cells(scores: list[CopyScores], vocoder: str, baseline: str) -> list[str]:
    """"speaker: column" for every speaker (and "all") and column where `vocoder`'s mean is not
    strictly better than `baseline`'s: empty when it wins everywhere."""
    losing = []
    for name, group in speaker_groups(scores).items():
        for key, title, better in COPY_COLUMNS:
            ours, theirs = column_mean(group, vocoder, key), column_mean(group, baseline, key)
            wins = ours < theirs if better == "lower" else ours > theirs
            if not wins:
                losing.append(f"{name}: {title} ({ours:.3f} vs {theirs:.3f})")
    return losing


def percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "n/a"


def table_text(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    return "\n".join("  " + "  ".join(cell.rjust(width) for cell, width in zip(row, widths)) for row in [header, *rows])


def vocoder_and_data(options: argparse.Namespace, settings: Settings) -> tuple[Path, str, PreparedData]:
    """The vocoder export to judge (--vocoder-export, or one trained for --vocoder-steps), what it
    is, and the bundled corpus prepared as the vocoder recipe (`settings`) prepares it."""
    if options.vocoder_export is None:
        started = time.perf_counter()
        export, data = train_export(settings)
        minutes = (time.perf_counter() - started) / 60
        return (export, f"the default vocoder recipe trained here for {settings.trainer.max_steps} steps "
                f"({minutes:.1f} min)", data)
    export = options.vocoder_export
    step = read_export_manifest(export).get("step")
    data = prepare_data(settings.data, settings.features, options.cache_dir, progress=False)
    return export, f"{export} (exported at step {step})", data


def vocoder_copy_synthesis(options: argparse.Namespace) -> None:
    """Copy synthesis of every held-out recording of the bundled corpus from its log-mel, by a
    vocoder export (predicted F0, as inference) and by Griffin-Lim, side by side: MR-STFT distance
    to the recording, and how many of the frames voiced in the recording stay voiced (pYIN)."""
    with tempfile.TemporaryDirectory(prefix="voicetrain-bench-") as run_root:
        steps = [] if options.vocoder_steps is None else [f"trainer.max_steps={options.vocoder_steps}"]
        settings = recipe_settings(Path(run_root), options.cache_dir, "vocoder", *steps)
        export, described, data = vocoder_and_data(options, settings)
        task, modules = load_inference_modules(export)
        features = task.context.features
        if features != mel_settings(settings.features):
            raise SystemExit(f"--vocoder-export {export} was trained on other log-mels ({features}) than the default "
                             "recipe's; give the export of a task=vocoder run with the default features")
        scores = []
        for index, utterance in enumerate(data.val_utterances):
            recording = data.val_features["wave"][index].numpy()
            log_mel = data.val_features["mel"][index]
            outputs = {"vocoder": task.vocode(modules, log_mel).numpy()[:len(recording)],
                       "griffin-lim": griffin_lim(log_mel, features, GRIFFIN_LIM_ITERATIONS).numpy()}
            scores.append(copy_scores(utterance.speaker, recording, outputs, features.sample_rate,
                                      features.hop_length))
    vocoders = ["vocoder", "griffin-lim"]
    print(f"vocoder copy synthesis: {described} vs Griffin-Lim ({GRIFFIN_LIM_ITERATIONS} iterations), on the same "
          f"log-mels of {len(scores)} held-out recordings")
    arrows = {"lower": "↓", "higher": "↑"}
    header = ["speaker", "vocoder", "utterances", "voiced (pYIN)",
              *[f"{title} {arrows[better]}" for _, title, better in COPY_COLUMNS], "voiced kept ↑"]
    print(table_text(header, summary_rows(scores, vocoders)))
    losing = losing_cells(scores, "vocoder", "griffin-lim")
    print("  vocoder better than Griffin-Lim in every column for every speaker: "
          + ("yes" if not losing else f"no; not better in {len(losing)}: " + "; ".join(losing)))
    print("  columns: voicetrain.evaluate's vocoder scorers against the recording (MR-STFT distance, PESQ wideband, "
          "WORLD MCD, periodicity RMSE and V/UV F1, DNSMOS OVRL of the output alone); voiced kept: share of the "
          "frames voiced in the recording that are voiced in the output, by pYIN "
          f"({PYIN_RANGE_HZ[0]:.0f}-{PYIN_RANGE_HZ[1]:.0f} Hz, a tracker the vocoder does not use)")
