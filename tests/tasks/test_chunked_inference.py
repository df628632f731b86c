"""Long inputs run in chunks (voicetrain.chunking) in every recipe's `infer` and in
Griffin-Lim: an input shorter than one chunk gives exactly the one-pass output, and a ~40 s input
cut into several chunks gives what one pass over it gives (measured against one pass, forced by a
chunk longer than the input). Models are untrained (random weights): chunking must not depend on
what they learned."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from voicetrain.audio import MelSpectrogram, griffin_lim
from voicetrain.audio_files import load_audio
from voicetrain.tasks.base import InferenceRequest, TaskContext
from voicetrain.chunking import plan_for
from voicetrain.tasks.svc import NOISE_SEED, SingingVoiceConversionTask
from voicetrain.tasks.vc import VoiceConversionTask
from voicetrain.tasks.vocoder import VocoderTask

from helpers import bundled_files, compose_config, standard_mel, task_settings

ONE_PASS = 1e9  # a chunk longer than any input: the unchunked computation
CHUNK_SECONDS = 10.0  # four chunks, three joins, in the long input


@pytest.fixture(scope="module")
def long_speech() -> torch.Tensor:
    """40 s of bundled speech at 16 kHz (several recordings back to back)."""
    speech = np.concatenate([load_audio(path, 16000) for path in bundled_files("slt", 20)])
    assert speech.shape[0] >= 40 * 16000
    return torch.from_numpy(speech[:40 * 16000].copy())


def correlation(first: torch.Tensor, second: torch.Tensor) -> float:
    return float(np.corrcoef(first.numpy(), second.numpy())[0, 1])


def untrained(task_class: type, task: str, context: TaskContext, **changes: object) -> tuple:
    torch.manual_seed(0)
    built = task_class(task_settings(task, **changes), context)
    modules = built.build_modules()
    for module in modules.values():
        module.eval()
    return built, modules


def vc_task() -> tuple[VoiceConversionTask, dict]:
    mel = standard_mel()
    return untrained(VoiceConversionTask, "vc", TaskContext(mel, ["a", "b"], [-4.0] * mel.n_mels, [2.0] * mel.n_mels))


def test_voice_conversion_of_a_short_input_is_the_one_pass_conversion_bit_for_bit(long_speech: torch.Tensor) -> None:
    task, modules = vc_task()
    short = long_speech[:16000 * 3]
    request = InferenceRequest(audio=short, speaker="b")
    with torch.no_grad():
        converted = modules["model"](MelSpectrogram(task.context.features)(short.reshape(1, -1)), torch.tensor([1]))[0]
        assert torch.equal(task.convert_in_chunks(modules["model"], short, 1, None), converted)
        assert torch.equal(task.infer(modules, request), griffin_lim(converted, task.context.features, chunk_seconds=ONE_PASS))


def test_voice_conversion_of_a_long_input_in_chunks_matches_one_pass(long_speech: torch.Tensor) -> None:
    task, modules = vc_task()
    with torch.no_grad():
        whole = task.convert_in_chunks(modules["model"], long_speech, 1, ONE_PASS)
        chunked = task.convert_in_chunks(modules["model"], long_speech, 1, CHUNK_SECONDS)
    # Instance normalisation with the whole input's statistics: the same log-mel up to float rounding.
    assert chunked.shape == whole.shape
    assert float((chunked - whole).abs().max()) < 1e-3, float((chunked - whole).abs().max())


def test_griffin_lim_of_a_long_log_mel_in_chunks_matches_one_pass(long_speech: torch.Tensor) -> None:
    """Each chunk estimates its own phase, so the waves differ; what they say does not: the
    log-mel of the chunked inversion is as close to the target as one pass's, over the whole
    input and around each join."""
    features = standard_mel()
    spectrogram = MelSpectrogram(features)
    target = spectrogram(long_speech[:20 * 16000])
    whole = griffin_lim(target, features, chunk_seconds=ONE_PASS)
    chunked = griffin_lim(target, features, chunk_seconds=5.0)
    assert chunked.shape == whole.shape == ((target.shape[-1] - 1) * features.hop_length,)
    rebuilt = {"whole": spectrogram(whole), "chunked": spectrogram(chunked)}

    def error(name: str, frames: slice = slice(None)) -> float:
        return float((rebuilt[name] - target[:, :rebuilt[name].shape[-1]])[:, frames].abs().mean())

    assert error("chunked") < 1.05 * error("whole"), (error("chunked"), error("whole"))
    plan = plan_for(target.shape[-1], features.sample_rate, features.hop_length, 5.0)
    assert len(plan.spans) >= 4
    for span in plan.spans[1:]:
        join = slice(span.start - 5, span.start + plan.overlap + 5)
        assert error("chunked", join) < 1.25 * error("whole", join), (span, error("chunked", join), error("whole", join))


def svc_task() -> tuple[SingingVoiceConversionTask, dict]:
    config = OmegaConf.to_container(compose_config("task=svc"), resolve=True)
    described = {name: node for name, node in config["features"].items() if isinstance(node, dict)}
    statistics = {"mel": {"mean": [-4.0] * 80, "std": [2.0] * 80, "speakers": {}},
                  "f0": {"mean": [5.0, 0.0], "std": [0.3, 1.0], "speakers": {}},
                  "loudness": {"mean": [-40.0], "std": [15.0], "speakers": {}}}
    context = TaskContext(None, ["a", "b"], [], [], 16000, 256,
                          {name: described[name] for name in ("mel", "f0", "loudness", "wave")}, statistics)
    return untrained(SingingVoiceConversionTask, "svc", context)


def test_svc_of_a_short_input_is_the_one_pass_render_and_a_long_one_matches_it(long_speech: torch.Tensor) -> None:
    task, modules = svc_task()
    short = long_speech[:16000 * 3]
    sample_rate = task.context.sample_rate
    with torch.no_grad():
        # The computation before chunking: features of the whole input, one render.
        frames = {name: torch.from_numpy(task.extractor(name).extract(short.numpy(), sample_rate))
                  for name in ("mel", "f0", "loudness")}
        f0, voiced = frames["f0"]
        before = task.render(modules["model"], frames["mel"], f0, voiced, frames["loudness"][0], "b")
        assert torch.equal(task.infer(modules, InferenceRequest(audio=short, speaker="b", transpose=0)).wave,
                           before[:short.shape[-1]])
        assert NOISE_SEED == 0
        whole = task.infer(modules, InferenceRequest(audio=long_speech, speaker="b", chunk_seconds=ONE_PASS))
        chunked = task.infer(modules, InferenceRequest(audio=long_speech, speaker="b", chunk_seconds=CHUNK_SECONDS))
    assert chunked.wave.shape == whole.wave.shape == long_speech.shape
    # The F0 each frame follows comes from the chunk that owns it, with a second of context.
    assert torch.equal(chunked.outputs["f0"] > 0, whole.outputs["f0"] > 0)
    assert correlation(chunked.wave, whole.wave) > 0.9999, correlation(chunked.wave, whole.wave)


def vocoder_task() -> tuple[VocoderTask, dict]:
    config = OmegaConf.to_container(compose_config("task=vocoder"), resolve=True)
    extractors = {name: config["features"][name] for name in ("mel", "f0", "wave")}
    mel = standard_mel()
    context = TaskContext(mel, ["a"], [-4.0] * mel.n_mels, [2.0] * mel.n_mels, mel.sample_rate, mel.hop_length,
                          extractors, {})
    return untrained(VocoderTask, "vocoder", context)


def test_vocoding_a_short_input_is_one_pass_and_a_long_one_matches_it(long_speech: torch.Tensor) -> None:
    task, modules = vocoder_task()
    hop = task.context.hop_length
    short = long_speech[:16000 * 3]
    with torch.no_grad():
        log_mel = MelSpectrogram(task.context.features)(short)
        f0 = modules["pitch"].f0(log_mel.unsqueeze(0))
        noise = torch.randn(1, log_mel.shape[-1], hop, generator=torch.Generator().manual_seed(0))
        before = modules["generator"](log_mel.unsqueeze(0), f0, noise)[0]
        assert torch.equal(task.vocode(modules, log_mel), before)
        whole = task.infer(modules, InferenceRequest(audio=long_speech, chunk_seconds=ONE_PASS))
        chunked = task.infer(modules, InferenceRequest(audio=long_speech, chunk_seconds=CHUNK_SECONDS))
    assert chunked.wave.shape == whole.wave.shape == long_speech.shape
    assert correlation(chunked.wave, whole.wave) > 0.9999, correlation(chunked.wave, whole.wave)
