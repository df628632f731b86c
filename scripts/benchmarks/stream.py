"""Real-time conversion (issue 22, `python -m voicetrain.stream`): per recipe and setting, the
algorithmic latency and the p99 compute time per block divided by the block's length, on one CPU
thread, PyTorch and ONNX Runtime side by side; and how far the streamed output is from the offline
output of the same export (MR-STFT distance, beside the distance between two different sentences'
offline outputs, the scale a difference of content has).

Goal (svc): algorithmic latency <= 60 ms with p99 compute <= 0.5 of the block. Exports come from
short trainings at the default model sizes (svc with and without `task.causal=true`, vc with
Griffin-Lim); the stream reads the bundled corpus's held-out recordings one after another."""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks.inference import one_thread, recipe_settings, train_export
from voicetrain.audio_files import load_audio
from voicetrain.export.artifact import load_inference_modules
from voicetrain.metrics import multi_resolution_stft_distance
from voicetrain.stream.engine import StreamEngine, steady_collection, stream_array
from voicetrain.stream.latency import stream_timing
from voicetrain.stream.onnx_backend import use_onnx_runtime
from voicetrain.stream.report import compute_summary
from voicetrain.tasks.base import InferenceOutput, InferenceRequest

STREAM_STEPS = 200  # training steps of each export: enough for speech-like output to compare against


@dataclass(frozen=True)
class Setting:
    label: str
    recipe: str
    overrides: tuple[str, ...]
    block_ms: float
    crossfade_ms: float
    search_ms: float


# The causal svc with the log-mel's and the loudness's windows halved (512 samples): 16 ms less of
# analysis delay, which buys a 32 ms block within the goal's 60 ms.
SHORT_WINDOWS = ("task.causal=true", "features.mel.n_fft=512", "features.mel.win_length=512",
                 "features.loudness.n_fft=512")
SETTINGS = (
    Setting("svc", "svc", (), 40.0, 8.0, 4.0),
    Setting("svc causal", "svc", ("task.causal=true",), 16.0, 4.0, 0.0),
    Setting("svc causal", "svc", ("task.causal=true",), 32.0, 4.0, 0.0),
    Setting("svc causal, 512-sample windows", "svc", SHORT_WINDOWS, 32.0, 4.0, 0.0),
    Setting("vc + Griffin-Lim", "vc", (), 40.0, 8.0, 4.0),
)


def held_out_waves(data, sample_rate: int) -> list[np.ndarray]:  # noqa: ANN001 - voicetrain's PreparedData
    return [load_audio(utterance.path, sample_rate) for utterance in data.val_utterances]


def offline_wave(task, modules, audio: np.ndarray, request: InferenceRequest) -> np.ndarray:  # noqa: ANN001
    import dataclasses

    result = task.infer(modules, dataclasses.replace(request, audio=torch.from_numpy(audio)))
    return (result.wave if isinstance(result, InferenceOutput) else result).numpy()


def measure(setting: Setting, export: Path, waves: list[np.ndarray], backend: str) -> str:
    task, modules = load_inference_modules(export)
    speaker = task.context.speakers[-1]
    request = InferenceRequest(speaker=speaker, transpose=0.0 if setting.recipe == "svc" else None)
    step = task.streaming(modules, request)
    if backend == "onnx":
        if not hasattr(step, "onnx_module"):
            return "ONNX Runtime: not supported by this step (PyTorch only)"
        use_onnx_runtime(step, export, 1)
    context = task.context
    timing = stream_timing(context.sample_rate, context.hop_length, setting.block_ms, None, setting.crossfade_ms,
                           setting.search_ms, step.needs.lookahead, step.needs.analysis_delay)
    engine = StreamEngine(step, timing)
    engine.warm_up()
    audio = np.concatenate(waves)
    with steady_collection():  # as `python -m voicetrain.stream` streams
        streamed = stream_array(engine, audio)
    summary = compute_summary(engine.compute.seconds, timing)
    offline = offline_wave(task, modules, audio, request)
    aligned = streamed[engine.delay:engine.delay + offline.shape[0]]
    distance = multi_resolution_stft_distance(offline[:aligned.shape[0]], aligned)
    first, second = (offline_wave(task, modules, wave, request) for wave in waves[:2])
    length = min(first.shape[0], second.shape[0])
    between = multi_resolution_stft_distance(first[:length], second[:length])
    name = "PyTorch" if backend == "torch" else "ONNX Runtime"
    return (f"{name}: p50 {summary.p50_seconds * 1000:.2f} ms, p99 {summary.p99_seconds * 1000:.2f} ms per "
            f"{summary.block_seconds * 1000:.0f} ms block = p99 {summary.p99_ratio:.3f} of the block; streamed vs "
            f"offline MR-STFT {distance:.3f} (two sentences: {between:.3f}; ratio {distance / between:.2f})")


def stream(options: argparse.Namespace) -> None:
    print("stream: algorithmic latency and p99 compute per block / block length at 1 CPU thread (goal for svc: "
          "<= 60 ms and <= 0.5); streamed output's MR-STFT distance to the offline output of the same export")
    exports: dict[tuple[str, tuple[str, ...]], tuple[Path, list[np.ndarray]]] = {}
    with tempfile.TemporaryDirectory(prefix="voicetrain-bench-stream-") as run_root:
        for setting in SETTINGS:
            key = (setting.recipe, setting.overrides)
            if key not in exports:
                name = "_".join([setting.recipe, *(override.replace("=", "").replace(".", "_") for override in
                                                   setting.overrides)])
                settings = recipe_settings(Path(run_root) / name, options.cache_dir, setting.recipe,
                                           f"trainer.max_steps={STREAM_STEPS}", *setting.overrides)
                export, data = train_export(settings)
                exports[key] = (export, held_out_waves(data, settings.features.sample_rate))
            export, waves = exports[key]
            with one_thread():
                lines = [measure(setting, export, waves, backend) for backend in ("torch", "onnx")]
            task, modules = load_inference_modules(export)
            step = task.streaming(modules, InferenceRequest(speaker=task.context.speakers[-1]))
            timing = stream_timing(task.context.sample_rate, task.context.hop_length, setting.block_ms, None,
                                   setting.crossfade_ms, setting.search_ms, step.needs.lookahead,
                                   step.needs.analysis_delay)
            print(f"  {setting.label}, --block-ms {setting.block_ms:g} --crossfade-ms {setting.crossfade_ms:g} "
                  f"--search-ms {setting.search_ms:g}: {timing.describe()}")
            for line in lines:
                print(f"    {line}")
    print(f"  exports of {STREAM_STEPS}-step trainings at the default model sizes; the held-out recordings of the "
          "bundled corpus streamed one after another, converted to its last speaker, after one warm-up step")
