"""The vocoder recipe (`task=vocoder`): through the real CLI it trains a tiny GAN vocoder on the
bundled corpus (discriminators active from step 0, their learning rate set apart with
`optim.overrides.discriminator.lr`), validates copy synthesis, resumes bit-exactly, takes a new
discriminator learning rate on resume, and exports the generator and pitch predictor alone
(safetensors and a verified ONNX graph). `python -m voicetrain.infer` resynthesises a recording
from the export, and vocodes a VC export's log-mels instead of Griffin-Lim, refusing a vocoder
trained on other log-mels. The slow tests train the default recipe a short way and measure, on a
fixed subset of held-out recordings, that copy synthesis keeps a low voice's voiced frames voiced
(pYIN, a tracker the recipe does not use), where Griffin-Lim loses them, and that it is on the better
side of Griffin-Lim in every column of `voicetrain.evaluate`'s vocoder table.
In-process: the crop, the F0 flags and the graph's predicted-or-given F0."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from voicetrain.audio import griffin_lim
from voicetrain.audio_files import load_audio
from voicetrain.data import BUNDLED_CORPUS
from voicetrain.data.readers import Utterance
from voicetrain.export.artifact import load_inference_modules
from voicetrain.export.infer import main as infer_main
from voicetrain.tasks.base import TaskContext
from voicetrain.tasks.vocoder import PREDICT_F0, VocoderTask, tracked_f0

from helpers import (TINY_MODEL, assert_ok, compose_config, environment, fill_feature_cache, output_of,
                     recipe_run_schedule, run_cli, standard_mel, task_settings, write_speech)

STEPS = 4
SLOW_STEPS = 1500  # the slow tests' training: the default model, before its discriminators join
STATE_FOLDERS = ("modules", "optimizers", "schedulers", "rng")
GENERATOR_LR, DISCRIMINATOR_LR, CHANGED_DISCRIMINATOR_LR = 0.01, 0.003, 0.001
WARMUP = STEPS  # the learning rates rise at every step of these runs
# The recipe at its smallest on 0.25 s crops, the discriminators joining after the first step, with
# a warm-up that outlasts the run and no decay after it (a cosine decay would depend on
# trainer.max_steps, which the halves of the resume test change); two scored copy syntheses and one
# preview per validation.
TINY_VOCODER = [
    "task=vocoder",
    "task.generator_channels=16",
    "task.generator_intermediate_channels=32",
    "task.generator_layers=1",
    "task.filter_bins=17",
    "task.pitch_channels=8",
    "task.pitch_intermediate_channels=16",
    "task.pitch_layers=1",
    "task.segment_frames=16",
    "task.adversarial_start_step=1",
    "task.discriminator_periods=[2,3]",
    "task.period_channels=[4,8]",
    "task.discriminator_resolutions=[[256,64,256]]",
    "task.resolution_channels=4",
    "task.validation_utterances=2",
    f"optim.lr={GENERATOR_LR}",
    f"optim.warmup_steps={WARMUP}",
    "optim.schedule=constant",
    f"optim.overrides.discriminator.lr={DISCRIMINATOR_LR}",
    *recipe_run_schedule(STEPS),
]
# One torch thread per launch: two launches run side by side on two cores.
ONE_THREAD = environment(OMP_NUM_THREADS="1")


@dataclass(frozen=True)
class Runs:
    root: Path
    whole: subprocess.CompletedProcess[str]  # STEPS steps in one launch, validated, exported with ONNX
    first_half: subprocess.CompletedProcess[str]  # STEPS / 2 steps ...
    second_half: subprocess.CompletedProcess[str]  # ... then the same run resumed to STEPS
    changed_lr: subprocess.CompletedProcess[str]  # a copy of the first half resumed with another discriminator lr
    other_mel: subprocess.CompletedProcess[str]  # a vocoder of 40-band log-mels, no discriminator step
    vc: subprocess.CompletedProcess[str]  # a voice converter of the standard log-mels

    def export(self, name: str) -> Path:
        return self.root / name / "export"


@pytest.fixture(scope="module")
def vocoder_cache(bundled_cache: Path) -> Path:
    """The shared feature store with the recipe's F0 and wave added."""
    return fill_feature_cache(bundled_cache, "task=vocoder")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, vocoder_cache: Path) -> Runs:
    root = tmp_path_factory.mktemp("vocoder")

    def launch(name: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return run_cli(f"run.root={root}", f"run.name={name}", f"data.cache_dir={vocoder_cache}", *extra, cwd=root,
                       env=ONE_THREAD)

    def other_runs() -> tuple[subprocess.CompletedProcess[str], ...]:
        whole = launch("whole", *TINY_VOCODER, f"trainer.max_steps={STEPS}", "+export=onnx")
        vc = launch("vc", "task=vc", *TINY_MODEL, "trainer.max_steps=1", "trainer.validate_at_start=false",
                    "export.enabled=true")
        # The discriminator is never stepped here, yet its optimizer is checkpointed.
        other_mel = launch("other_mel", *TINY_VOCODER, "features.mel.n_mels=40", "task.adversarial_start_step=100",
                           "trainer.max_steps=1", "trainer.validate_at_start=false", "export.enabled=true")
        return whole, vc, other_mel

    def resumed_runs() -> tuple[subprocess.CompletedProcess[str], ...]:
        halves = [*TINY_VOCODER, "export.enabled=false"]
        first = launch("halves", *halves, f"trainer.max_steps={STEPS // 2}")
        assert_ok(first)
        shutil.copytree(root / "halves", root / "changed_lr")
        second = launch("halves", *halves, f"trainer.max_steps={STEPS}")
        changed = launch("changed_lr", *halves, f"trainer.max_steps={STEPS}",
                         f"optim.overrides.discriminator.lr={CHANGED_DISCRIMINATOR_LR}")
        return first, second, changed

    # Two chains side by side: each launch spends much of its time importing.
    with ThreadPoolExecutor(max_workers=2) as pool:
        others = pool.submit(other_runs)
        first, second, changed = pool.submit(resumed_runs).result()
        whole, vc, other_mel = others.result()
    return Runs(root, whole, first, second, changed, other_mel, vc)


def events_of(run_dir: Path) -> EventAccumulator:
    return EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "images": 0, "tensors": 0}).Reload()


def scalars(run_dir: Path, tag: str) -> dict[int, float]:
    return {event.step: event.value for event in events_of(run_dir).Scalars(tag)}


# --- training, validation, resume -------------------------------------------------------------


def test_vocoder_trains_adversarially_validates_and_previews(runs: Runs) -> None:
    assert_ok(runs.whole)
    events = events_of(runs.root / "whole")
    tags = events.Tags()
    for name in ("train/mel/l1", "train/stft/mrstft", "train/pitch/log_f0_l1", "train/pitch/voicing_bce",
                 "train/adv/generator", "train/adv/discriminator", "train/adv/feature_matching",
                 "val/mcd", "val/mrstft", "val/f0_rmse_cents", "val/voicing_error"):
        assert name in tags["scalars"], tags["scalars"]
        values = [event.value for event in events.Scalars(name)]
        assert values and all(math.isfinite(value) for value in values), (name, values)
    assert [event.step for event in events.Scalars("train/adv/discriminator")] == list(range(2, STEPS + 1))
    assert [event.step for event in events.Scalars("val/mcd")] == [0, STEPS]
    assert len(tags["images"]) == 1 and tags["images"][0].startswith("mel/"), tags["images"]
    name = tags["images"][0].removeprefix("mel/")
    audio = sorted(tag for tag in tags["tensors"] if tag.startswith("audio/"))
    assert audio == [f"audio/{name}/recording", f"audio/{name}/vocoded"], tags["tensors"]
    assert [event.step for event in events.Tensors(f"audio/{name}/recording")] == [0]
    assert [event.step for event in events.Tensors(f"audio/{name}/vocoded")] == [0, STEPS]


def test_resume_with_two_optimizers_is_bit_identical_to_an_uninterrupted_run(runs: Runs) -> None:
    for result in (runs.whole, runs.first_half, runs.second_half):
        assert_ok(result)
    assert f"resuming from step {STEPS // 2}" in output_of(runs.second_half)
    expected = runs.root / "whole" / "checkpoints" / f"step_{STEPS:08d}"
    actual = runs.root / "halves" / "checkpoints" / f"step_{STEPS:08d}"
    names = sorted(path.relative_to(expected).as_posix() for path in expected.rglob("*")
                   if path.is_file() and path.relative_to(expected).parts[0] in STATE_FOLDERS)
    for module in ("generator", "pitch", "discriminator"):
        assert f"modules/{module}.safetensors" in names, names
    for optimizer in ("generator", "discriminator"):
        assert f"optimizers/{optimizer}.safetensors" in names, names
    for name in names:
        assert (expected / name).read_bytes() == (actual / name).read_bytes(), f"{actual / name} differs"


def warmed_up(rate: float, steps: range) -> list[float]:
    """The learning rate logged at each of `steps`: after `step` steps of the warm-up, `rate` times
    (step + 1) / WARMUP (voicetrain.run.optimizers.learning_rate_factor)."""
    return [rate * min(step + 1, WARMUP) / WARMUP for step in steps]


def test_each_optimizer_has_its_own_learning_rate_curve_on_the_runs_schedule(runs: Runs) -> None:
    """The discriminator joins after step 1 yet its schedule is the run's, not one of its own that
    would start its warm-up there."""
    assert_ok(runs.whole)
    steps = range(1, STEPS + 1)
    assert list(scalars(runs.root / "whole", "lr/generator").values()) == pytest.approx(warmed_up(GENERATOR_LR, steps))
    assert list(scalars(runs.root / "whole", "lr/discriminator").values()) == pytest.approx(
        warmed_up(DISCRIMINATOR_LR, steps))


def test_a_new_discriminator_learning_rate_takes_effect_on_resume_and_is_logged(runs: Runs) -> None:
    assert_ok(runs.changed_lr)
    output = output_of(runs.changed_lr)
    assert f"resuming from step {STEPS // 2}" in output, output
    assert re.search(rf"lr of optimizer 'discriminator' changed on resume: {DISCRIMINATOR_LR} \(saved\) -> "
                     rf"{CHANGED_DISCRIMINATOR_LR}", output), output
    assert "optimizer 'generator' changed" not in output, output
    run_dir = runs.root / "changed_lr"
    first, second = range(1, STEPS // 2 + 1), range(STEPS // 2 + 1, STEPS + 1)
    assert list(scalars(run_dir, "lr/discriminator").values()) == pytest.approx(
        warmed_up(DISCRIMINATOR_LR, first) + warmed_up(CHANGED_DISCRIMINATOR_LR, second))
    assert list(scalars(run_dir, "lr/generator").values()) == pytest.approx(warmed_up(GENERATOR_LR, range(1, STEPS + 1)))
    # The discriminator's parameters then differ from the uninterrupted run's, the generator's too
    # (it learns against that discriminator).
    changed = load_file(str(run_dir / "checkpoints" / f"step_{STEPS:08d}" / "modules" / "discriminator.safetensors"))
    same_lr = load_file(str(runs.root / "halves" / "checkpoints" / f"step_{STEPS:08d}" / "modules"
                            / "discriminator.safetensors"))
    assert any(not torch.equal(changed[key], same_lr[key]) for key in changed)


def test_the_discriminator_optimizer_is_checkpointed_before_its_first_step(runs: Runs) -> None:
    assert_ok(runs.other_mel)
    checkpoint = runs.root / "other_mel" / "checkpoints" / f"step_{1:08d}"
    # Never stepped, it has no tensors yet (so no .safetensors), but its settings are saved, with the
    # learning rate its schedule has reached after one step of the run.
    saved = json.loads((checkpoint / "optimizers" / "discriminator.json").read_text())
    assert saved["state"] == {}
    assert saved["param_groups"][0]["lr"] == pytest.approx(warmed_up(DISCRIMINATOR_LR, range(1, 2))[0])
    assert "train/adv/discriminator" not in events_of(runs.root / "other_mel").Tags()["scalars"]


# --- the export -------------------------------------------------------------------------------


def test_the_export_holds_the_generator_and_pitch_predictor_only_and_its_onnx_graph_verifies(runs: Runs) -> None:
    assert_ok(runs.whole)
    export = runs.export("whole")
    weights = load_file(str(export / "model.safetensors"))
    assert {key.split(".")[0] for key in weights} == {"generator", "pitch"}
    checkpoint = load_file(str(runs.root / "whole" / "checkpoints" / f"step_{STEPS:08d}" / "modules"
                               / "discriminator.safetensors"))
    assert checkpoint, "the training checkpoint holds the discriminator"
    manifest = (export / "manifest.json").read_text()
    assert (export / "model.onnx").is_file() and '"onnx_resized_inputs"' in manifest, manifest
    task, _ = load_inference_modules(export)
    assert task.inference_input_names == ("log_mel", "f0", "noise")


# --- inference --------------------------------------------------------------------------------


def infer(*arguments: object) -> subprocess.CompletedProcess[str]:
    """`python -m voicetrain.infer ARGUMENTS` as a user runs it, in a fresh process."""
    return subprocess.run([sys.executable, "-m", "voicetrain.infer", *(str(argument) for argument in arguments)],
                          capture_output=True, text=True, timeout=300, env=ONE_THREAD)


def test_copy_synthesis_writes_a_wave_as_long_as_the_input(runs: Runs, tmp_path: Path) -> None:
    assert_ok(runs.whole)
    # At 22050 Hz, so inference resamples it to the export's 16 kHz; no --speaker: a vocoder has none.
    speech = write_speech(tmp_path / "in_22k.wav", BUNDLED_CORPUS / "kal16" / "h01_09.flac", 22050)
    output = tmp_path / "copy.wav"
    result = infer(runs.export("whole"), "--input", speech, "--output", output)
    assert result.returncode == 0, output_of(result)
    wave, rate = soundfile.read(output, dtype="float32")
    assert rate == 16000 and len(wave) == len(load_audio(speech, 16000))
    assert np.all(np.isfinite(wave)) and float(np.sqrt(np.mean(wave ** 2))) > 1e-3, "the output is silent"
    refused = infer(runs.export("whole"), "--input", speech, "--speaker", "slt", "--output", output)
    assert refused.returncode == 2 and "does not take --speaker" in refused.stderr, output_of(refused)


def test_a_vc_export_vocoded_by_it_differs_from_griffin_lim(runs: Runs, tmp_path: Path) -> None:
    assert_ok(runs.whole)
    assert_ok(runs.vc)
    source = BUNDLED_CORPUS / "rms" / "h01_09.flac"
    outputs = {name: tmp_path / f"{name}.wav" for name in ("vocoded", "griffin_lim")}
    vocoded = infer(runs.export("vc"), "--input", source, "--speaker", "slt", "--vocoder", runs.export("whole"),
                    "--output", outputs["vocoded"])
    assert vocoded.returncode == 0 and f"vocoded by {runs.export('whole')}" in vocoded.stdout, output_of(vocoded)
    plain = infer(runs.export("vc"), "--input", source, "--speaker", "slt", "--output", outputs["griffin_lim"])
    assert plain.returncode == 0, output_of(plain)
    waves = {name: soundfile.read(path, dtype="float32")[0] for name, path in outputs.items()}
    frames = len(load_audio(source, 16000)) // 256 + 1
    # The vocoder makes frames x hop samples; Griffin-Lim (frames - 1) x hop.
    assert len(waves["vocoded"]) == frames * 256 and len(waves["griffin_lim"]) == (frames - 1) * 256
    common = len(waves["griffin_lim"])
    difference = waves["vocoded"][:common] - waves["griffin_lim"]
    assert float(np.sqrt(np.mean(difference ** 2))) > 0.1 * float(np.sqrt(np.mean(waves["griffin_lim"] ** 2)))


def test_an_export_made_with_a_vocoder_uses_it_without_the_flag(runs: Runs, tmp_path: Path) -> None:
    """Train a vocoder once, name it when re-exporting each VC/TTS run, and inference uses it."""
    assert_ok(runs.whole)
    assert_ok(runs.vc)
    export = tmp_path / "vc-with-vocoder"
    made = subprocess.run([sys.executable, "-m", "voicetrain.export", str(runs.root / "vc"), "--vocoder",
                           str(runs.export("whole")), "--output", str(export)], capture_output=True, text=True,
                          timeout=600)
    assert made.returncode == 0, output_of(made)
    output = tmp_path / "out.wav"
    result = infer(export, "--input", BUNDLED_CORPUS / "rms" / "h01_09.flac", "--speaker", "slt", "--output", output)
    assert result.returncode == 0, output_of(result)
    assert f"vocoded by {runs.export('whole').resolve()}" in result.stdout, output_of(result)
    # A vocoder of other log-mels is refused at export time, before anything is written.
    refused = subprocess.run([sys.executable, "-m", "voicetrain.export", str(runs.root / "vc"), "--vocoder",
                              str(runs.export("other_mel")), "--output", str(tmp_path / "refused")],
                             capture_output=True, text=True, timeout=600)
    assert refused.returncode == 1 and "other log-mels" in refused.stderr, output_of(refused)
    assert not (tmp_path / "refused").exists()


def test_a_vocoder_of_other_log_mels_is_refused_naming_both(runs: Runs, tmp_path: Path) -> None:
    assert_ok(runs.vc)
    assert_ok(runs.other_mel)
    output = tmp_path / "out.wav"
    result = infer(runs.export("vc"), "--input", BUNDLED_CORPUS / "rms" / "h01_09.flac", "--speaker", "slt",
                   "--vocoder", runs.export("other_mel"), "--output", output)
    assert result.returncode == 2 and "Traceback" not in result.stderr, output_of(result)
    assert "other log-mels" in result.stderr and "n_mels=40" in result.stderr and "n_mels=80" in result.stderr, \
        result.stderr
    assert not output.exists()


def test_inference_errors_name_the_fix(runs: Runs, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert_ok(runs.whole)
    output = tmp_path / "out.wav"
    assert infer_main([str(runs.export("whole")), "--output", str(output)]) == 2
    assert "pass --input in.wav" in capsys.readouterr().err
    short = tmp_path / "short.wav"
    soundfile.write(short, np.random.default_rng(0).uniform(-0.5, 0.5, 100).astype(np.float32), 16000)
    assert infer_main([str(runs.export("whole")), "--input", str(short), "--output", str(output)]) == 2
    assert "needs at least 513" in capsys.readouterr().err
    assert not output.exists()


# --- in-process: the parts --------------------------------------------------------------------


def tiny_context() -> TaskContext:
    """A context of the recipe's features with made-up statistics: enough to build the model."""
    config = OmegaConf.to_container(compose_config("task=vocoder"), resolve=True)
    extractors = {name: config["features"][name] for name in ("mel", "f0", "wave")}
    mel = standard_mel()
    return TaskContext(mel, ["a"], [-4.0] * mel.n_mels, [2.0] * mel.n_mels, mel.sample_rate, mel.hop_length,
                       extractors, {})


def tiny_task() -> VocoderTask:
    return VocoderTask(task_settings("vocoder", generator_channels=16, generator_intermediate_channels=32,
                                     generator_layers=1, filter_bins=17, pitch_channels=8,
                                     pitch_intermediate_channels=16, pitch_layers=1, segment_frames=16),
                       tiny_context())


def test_an_istft_size_other_than_the_log_mels_is_refused_naming_the_key() -> None:
    settings = task_settings("vocoder", generator_channels=16, generator_intermediate_channels=32,
                             generator_layers=1, istft_n_fft=512)
    with pytest.raises(ValueError, match=r"task.istft_n_fft=512.*features.mel.n_fft=1024"):
        VocoderTask(settings, tiny_context()).build_modules()


def test_an_export_written_before_the_istft_head_rebuilds_its_source_filter_generator() -> None:
    from voicetrain.export.artifact import export_config, rebuild_task
    from voicetrain.tasks.layers.generators import SourceFilterGenerator

    written = export_config(tiny_task())
    del written["task_settings"]["generator"], written["task_settings"]["istft_n_fft"]
    rebuilt = rebuild_task(written, VocoderTask)
    assert rebuilt.settings.generator == "source_filter"
    assert isinstance(rebuilt.build_modules()["generator"].generator, SourceFilterGenerator)


def test_a_short_utterance_is_padded_with_silence_in_every_feature() -> None:
    task, frames, hop = tiny_task(), 10, 256
    generator = torch.Generator().manual_seed(0)
    features = {"mel": torch.rand(80, frames, generator=generator) - 3.0,
                "f0": torch.stack([torch.full((frames,), 120.0), torch.ones(frames)]),
                "wave": torch.rand(frames * hop - 100, generator=generator) - 0.5}
    example = task.make_example(Utterance(path=Path("a/x.wav"), speaker="a", utterance_id="a/x"), features, generator)
    assert sorted(example) == ["f0", "mel", "wave"]
    assert example["wave"].shape == (16 * hop,) and example["f0"].shape == (2, 16)
    assert torch.equal(example["wave"][:frames * hop - 100], features["wave"])
    assert not example["wave"][frames * hop - 100:].any() and not example["f0"][:, frames:].any()
    assert torch.equal(example["mel"][:, frames:], features["mel"].amin(-1, keepdim=True).expand(80, 6))


def test_the_voiced_flag_decides_which_frames_have_an_f0() -> None:
    # A tracker set to `unvoiced: interpolate` leaves an F0 on unvoiced frames.
    track = torch.tensor([[90.0, 100.0, 150.0, 185.0], [0.0, 1.0, 1.0, 0.0]])
    assert torch.equal(tracked_f0(track), torch.tensor([0.0, 100.0, 150.0, 0.0]))
    assert torch.equal(tracked_f0(track.unsqueeze(0).repeat(3, 1, 1)), tracked_f0(track).repeat(3, 1))


def test_the_graph_predicts_f0_where_asked_and_follows_a_given_one_elsewhere() -> None:
    torch.manual_seed(0)
    task = tiny_task()
    modules = {name: module.eval() for name, module in task.build_modules().items()}
    graph = task.inference_model(modules)
    log_mel, f0, noise = task.example_inputs()
    assert bool((f0 == PREDICT_F0).all())
    with torch.no_grad():
        predicted = modules["pitch"].f0(log_mel)
        assert torch.equal(graph(log_mel, f0, noise), graph(log_mel, predicted, noise))
        assert torch.equal(graph(log_mel, f0, noise), modules["generator"](log_mel, predicted, noise))
        given = torch.full_like(f0, 110.0)
        assert torch.equal(graph(log_mel, given, noise), modules["generator"](log_mel, given, noise))
        assert not torch.equal(graph(log_mel, given, noise), graph(log_mel, f0, noise))
    assert torch.equal(task.verification_inputs(modules)[1], predicted)


# --- slow: what a user trains it for ------------------------------------------------------------


def pyin_voiced(wave: np.ndarray, sample_rate: int, hop: int) -> np.ndarray:
    """Voiced flags per frame by librosa's pYIN: a tracker independent of the recipe's swift-f0."""
    _, voiced, _ = librosa.pyin(wave, fmin=50.0, fmax=500.0, sr=sample_rate, frame_length=1024, hop_length=hop)
    return voiced


def voiced_kept(reference: list[np.ndarray], candidate: list[np.ndarray]) -> float:
    """The fraction of the frames voiced in the references that are voiced in the candidates too."""
    pairs = [(first[:min(len(first), len(second))], second[:min(len(first), len(second))])
             for first, second in zip(reference, candidate)]
    return float(np.concatenate([second[first] for first, second in pairs]).mean())


@dataclass(frozen=True)
class CopySynthesis:
    """Held-out recordings of the fixed subset, each vocoded from its log-mel and by Griffin-Lim."""

    sample_rate: int
    hop: int
    speakers: list[str]
    recordings: list[np.ndarray]
    vocoded: list[np.ndarray]
    griffin_lim: list[np.ndarray]


@pytest.fixture(scope="module")
def short_vocoder(tmp_path_factory: pytest.TempPathFactory, vocoder_cache: Path) -> CopySynthesis:
    """The default recipe trained SLOW_STEPS steps, then its copy synthesis of the subset."""
    root = tmp_path_factory.mktemp("short_vocoder")
    result = run_cli(f"run.root={root}", "run.name=voc", f"data.cache_dir={vocoder_cache}", "task=vocoder",
                     f"trainer.max_steps={SLOW_STEPS}", "trainer.validate_at_start=false",
                     f"trainer.val_every={SLOW_STEPS}", "trainer.progress=false", cwd=root, env=ONE_THREAD)
    assert_ok(result)
    task, modules = load_inference_modules(root / "voc" / "export")
    sample_rate, hop = task.context.sample_rate, task.context.hop_length
    synthesis = CopySynthesis(sample_rate, hop, [], [], [], [])
    for speaker in sorted(path.name for path in BUNDLED_CORPUS.iterdir() if path.is_dir()):
        for path in sorted(path for path in (BUNDLED_CORPUS / speaker).glob("h0?_*.flac")
                           if path.stem.endswith(("_09", "_10")))[:2]:
            wave = load_audio(path, sample_rate)
            log_mel = task.mel_spectrogram(torch.from_numpy(wave))
            synthesis.speakers.append(speaker)
            synthesis.recordings.append(wave)
            synthesis.vocoded.append(task.vocode(modules, log_mel).numpy()[:len(wave)])
            synthesis.griffin_lim.append(griffin_lim(log_mel, task.context.features).numpy())
    return synthesis


@pytest.mark.slow
def test_copy_synthesis_keeps_a_low_voice_voiced_where_griffin_lim_does_not(short_vocoder: CopySynthesis) -> None:
    """kal16 speaks low: Griffin-Lim's phase loses its voicing almost entirely. The vocoder follows
    the F0 its predictor reads off the log-mel and keeps it."""
    low = [index for index, speaker in enumerate(short_vocoder.speakers) if speaker == "kal16"]
    rate, hop = short_vocoder.sample_rate, short_vocoder.hop
    recordings = [pyin_voiced(short_vocoder.recordings[index], rate, hop) for index in low]
    vocoded = [pyin_voiced(short_vocoder.vocoded[index], rate, hop) for index in low]
    griffin = [pyin_voiced(short_vocoder.griffin_lim[index], rate, hop) for index in low]
    kept, kept_by_griffin_lim = voiced_kept(recordings, vocoded), voiced_kept(recordings, griffin)
    assert np.concatenate(recordings).sum() > 50, "too few voiced frames in the recordings to judge"
    assert kept >= 0.8 and kept >= kept_by_griffin_lim + 0.5, (kept, kept_by_griffin_lim)


@pytest.mark.slow
def test_copy_synthesis_beats_griffin_lim_in_every_column_of_the_evaluation(short_vocoder: CopySynthesis) -> None:
    """Every column of `voicetrain.evaluate`'s vocoder table, by its own scorers, averaged over the
    subset: the vocoder's mean is on the better side of Griffin-Lim's on the same log-mels."""
    from voicetrain.evaluate.scoring import copy_synthesis, guarded_mcd, quality

    def scores(outputs: list[np.ndarray]) -> dict[str, float]:
        rows = []
        for recording, wave in zip(short_vocoder.recordings, outputs):
            row = copy_synthesis(recording, wave, short_vocoder.sample_rate)
            row["mcd"] = guarded_mcd(recording, wave, short_vocoder.sample_rate)
            row["dnsmos_ovrl"] = quality(wave, short_vocoder.sample_rate)["dnsmos_ovrl"]
            rows.append(row)
        return {key: float(np.nanmean([row[key] for row in rows])) for key in rows[0]}

    ours, theirs = scores(short_vocoder.vocoded), scores(short_vocoder.griffin_lim)
    lower_is_better = {"mstft", "mcd", "periodicity_rmse"}
    for key in ("mstft", "pesq", "mcd", "periodicity_rmse", "vuv_f1", "dnsmos_ovrl"):
        better = ours[key] < theirs[key] if key in lower_is_better else ours[key] > theirs[key]
        assert better, (key, ours, theirs)
