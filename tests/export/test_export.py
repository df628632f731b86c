"""The export: written at the end of training (and every export.every_n_steps) with only the
inference modules, verified against the trained model in each dtype and through onnxruntime;
re-exported from a committed checkpoint by `python -m voicetrain.export` without training."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnxruntime
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from voicetrain.durable import folder_bytes, sha256_of
from voicetrain.export import writer as export_writer
from voicetrain.schema import import_target
from voicetrain.export.artifact import DTYPES, ExportError, load_inference_modules, rebuild_modules
from voicetrain.export.writer import RELATIVE_TOLERANCE, write_export
from voicetrain.run.reexport import main as export_main
from voicetrain.tasks.base import TaskContext
from voicetrain.tasks.vc import VoiceConversionTask

from export_helpers import EVERY, STEPS, TrainedRun, train_once, vc_run, with_tests_on_path
from helpers import output_of, standard_mel, task_settings


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, bundled_cache: Path) -> TrainedRun:
    return vc_run(tmp_path_factory, bundled_cache)


def final_checkpoint(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / f"step_{STEPS:08d}"


def trained_model(export_dir: Path, checkpoint: Path):
    """The trained model, straight from the checkpoint's fp32 weights (not through the exporter)."""
    config = json.loads((export_dir / "config.json").read_text())
    weights = {f"model.{key}": value
               for key, value in load_file(str(checkpoint / "modules" / "model.safetensors")).items()}
    return rebuild_modules(config, weights, import_target(config["task_target"]))


def outputs(task, modules, inputs) -> torch.Tensor:
    with torch.no_grad():
        return task.inference_model(modules)(*inputs).float()


def relative_error(reference: torch.Tensor, candidate: torch.Tensor) -> float:
    return float((reference - candidate).abs().max() / reference.abs().max())


def reexport(run_dir: Path, output: Path, *options: str) -> None:
    assert export_main([str(run_dir), "--output", str(output), *options]) == 0


def test_training_writes_a_small_verified_export(run: TrainedRun) -> None:
    export_dir = run.run_dir / "export"
    manifest = json.loads((export_dir / "manifest.json").read_text())
    assert sorted(path.name for path in export_dir.iterdir()) == ["config.json", "manifest.json", "model.safetensors"]
    assert manifest["step"] == STEPS and manifest["dtype"] == "fp16"
    assert manifest["formats"] == ["safetensors"]
    assert manifest["source_checkpoint"] == str(final_checkpoint(run.run_dir))
    assert "val/mcd" in manifest["metrics"]
    assert sorted(manifest["files"]) == ["config.json", "model.safetensors"]
    for name, entry in manifest["files"].items():
        assert sha256_of(export_dir / name) == entry["sha256"]
        assert (export_dir / name).stat().st_size == entry["bytes"]
    assert 0 < manifest["parity"]["safetensors"]["relative_error"] <= RELATIVE_TOLERANCE["fp16"]
    with safe_open(str(export_dir / "model.safetensors"), "pt") as weights:
        metadata = weights.metadata()
        assert {weights.get_tensor(key).dtype for key in weights.keys()} == {torch.float16}
    assert metadata["sample_rate"] == "16000" and metadata["step"] == str(STEPS)
    assert json.loads(metadata["speakers"]) == ["awb", "kal16", "rms", "slt"]
    assert json.loads(metadata["features"])["n_mels"] == 80
    assert metadata["source_checkpoint"] == str(final_checkpoint(run.run_dir))
    assert metadata["voicetrain_version"]
    # Weights without the optimizer's two moments, in half precision: a sixth of the checkpoint.
    checkpoint_bytes = folder_bytes(final_checkpoint(run.run_dir))
    assert manifest["files"]["model.safetensors"]["bytes"] * 5 < checkpoint_bytes
    assert "of the checkpoint" in run.result.stdout, output_of(run.result)
    assert not list(run.run_dir.rglob(".tmp-*")) and not list(run.run_dir.rglob(".old-*"))


def test_periodic_exports_sit_beside_the_final_one(run: TrainedRun) -> None:
    exports = run.run_dir / "exports"
    steps = range(EVERY, STEPS + 1, EVERY)
    assert sorted(path.name for path in exports.iterdir()) == [f"step_{step:08d}" for step in steps]
    for step in steps:
        manifest = json.loads((exports / f"step_{step:08d}" / "manifest.json").read_text())
        assert manifest["step"] == step
        assert set(manifest["parity"]) == {"safetensors"}
        load_inference_modules(exports / f"step_{step:08d}")  # sha256 and rebuild


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_reexport_reloads_within_the_dtype_tolerance(run: TrainedRun, tmp_path: Path, dtype: str) -> None:
    output = tmp_path / dtype
    reexport(run.run_dir, output, "--preset", dtype)
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["dtype"] == dtype and manifest["step"] == STEPS
    assert manifest["formats"] == ["safetensors"]
    task, exported = load_inference_modules(output)
    _, trained = trained_model(output, final_checkpoint(run.run_dir))
    stored = load_file(str(output / "model.safetensors"))
    assert {tensor.dtype for tensor in stored.values()} == {DTYPES[dtype]}
    assert not [key for key in stored if not key.startswith("model.")]
    inputs = task.example_inputs()
    error = relative_error(outputs(task, trained, inputs), outputs(task, exported, inputs))
    assert error <= RELATIVE_TOLERANCE[dtype]
    if dtype == "fp32":
        assert error == 0.0
    else:
        assert error > 0.0  # really rounded


@pytest.fixture(scope="module")
def onnx_export(run: TrainedRun, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ONNX added to a finished run afterwards, as the issue's user does: --preset onnx."""
    output = tmp_path_factory.mktemp("onnx") / "export"
    reexport(run.run_dir, output, "--preset", "onnx")
    return output


def test_onnx_reexport_is_verified_with_onnxruntime(onnx_export: Path) -> None:
    manifest = json.loads((onnx_export / "manifest.json").read_text())
    assert manifest["formats"] == ["safetensors", "onnx"] and manifest["dtype"] == "fp16"
    assert sorted(manifest["files"]) == ["config.json", "model.onnx", "model.safetensors"]
    assert sha256_of(onnx_export / "model.onnx") == manifest["files"]["model.onnx"]["sha256"]
    assert set(manifest["parity"]) == {"safetensors", "onnx", "onnx_resized_inputs"}
    for result in manifest["parity"].values():
        assert result["relative_error"] <= RELATIVE_TOLERANCE["fp16"]
    onnx = manifest["onnx"]
    assert onnx["opset"] >= 17 and onnx["compute_dtype"] == "fp32" and onnx["weights_rounded_to"] == "fp16"
    assert onnx["dynamic_axes"]["log_mel"] == {"0": "batch", "2": "frames"}


def test_onnx_matches_the_export_at_other_lengths_and_batch_sizes(run: TrainedRun, onnx_export: Path) -> None:
    export_dir = onnx_export
    task, exported = load_inference_modules(export_dir)
    _, trained = trained_model(export_dir, final_checkpoint(run.run_dir))
    session = onnxruntime.InferenceSession(str(export_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [item.name for item in session.get_inputs()] == ["log_mel", "speaker"]
    generator = torch.Generator().manual_seed(1)
    mean = torch.tensor(task.context.mel_mean).view(1, -1, 1)
    for batch, frames in ((1, 100), (3, 37), (2, 251)):
        log_mel = mean + torch.randn(batch, 80, frames, generator=generator)
        speaker = torch.arange(batch) % len(task.context.speakers)
        (result,) = session.run(None, {"log_mel": log_mel.numpy(), "speaker": speaker.numpy()})
        result = torch.from_numpy(result)
        assert result.shape == (batch, 80, frames)
        # Same weights (the export's, rounded to fp16), computed in fp32 by both runtimes.
        assert relative_error(outputs(task, exported, (log_mel, speaker)), result) < 1e-5
        assert relative_error(outputs(task, trained, (log_mel, speaker)), result) <= RELATIVE_TOLERANCE["fp16"]


def test_reexport_of_a_named_checkpoint_with_a_preset(run: TrainedRun, tmp_path: Path) -> None:
    reexport(run.run_dir, tmp_path / "early", "--checkpoint", f"step_{EVERY:08d}", "--preset", "fp32",
             "--dtype", "bf16")
    manifest = json.loads((tmp_path / "early" / "manifest.json").read_text())
    assert manifest["step"] == EVERY and manifest["dtype"] == "bf16"
    assert manifest["source_checkpoint"].endswith(f"step_{EVERY:08d}")


def test_reexport_replaces_the_run_export_only_once_verified(run: TrainedRun, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "export"
    reexport(run.run_dir, target, "--preset", "fp16")
    before = {path.name: sha256_of(path) for path in target.iterdir()}
    # A tolerance nothing can meet: verification fails, the previous export stays as it was.
    monkeypatch.setitem(export_writer.RELATIVE_TOLERANCE, "bf16", 0.0)
    assert export_main([str(run.run_dir), "--output", str(target), "--preset", "bf16"]) == 1
    assert {path.name: sha256_of(path) for path in target.iterdir()} == before
    assert [path.name for path in tmp_path.iterdir()] == ["export"]


def test_reexport_without_task_context_reads_the_data_again(run: TrainedRun, tmp_path: Path) -> None:
    old = tmp_path / "old-checkpoint"
    old.mkdir()
    source = final_checkpoint(run.run_dir)
    manifest = json.loads((source / "manifest.json").read_text())
    for name in manifest["files"]:
        if name != "task_context.json":
            (old / name).parent.mkdir(parents=True, exist_ok=True)
            (old / name).write_bytes((source / name).read_bytes())
    manifest["files"].pop("task_context.json", None)
    (old / "manifest.json").write_text(json.dumps(manifest))
    reexport(run.run_dir, tmp_path / "out", "--checkpoint", str(old))
    reference = json.loads((run.run_dir / "export" / "config.json").read_text())["context"]
    assert json.loads((tmp_path / "out" / "config.json").read_text())["context"] == reference


def test_write_export_leaves_training_state_alone(run: TrainedRun, tmp_path: Path) -> None:
    task, modules = load_inference_modules(run.run_dir / "export")
    modules["model"].train()
    rng_before = torch.get_rng_state()
    write_export(task, modules, tmp_path / "export", "fp16", 3, None, {}, ["safetensors", "onnx"])
    assert torch.equal(torch.get_rng_state(), rng_before), "exporting consumed the global RNG"
    assert modules["model"].training


@pytest.mark.slow  # long: runs in make test-slow (CI runs both)
def test_a_training_only_module_is_left_out(tmp_path_factory: pytest.TempPathFactory, bundled_cache: Path,
                                            tmp_path: Path) -> None:
    trained = train_once(tmp_path_factory, bundled_cache, "gan",
                         "task._target_=helper_tasks.VoiceConversionWithDiscriminator", "task.hidden_channels=32",
                         steps=4, every=4)
    checkpoint = trained.run_dir / "checkpoints" / "step_00000004"
    assert (checkpoint / "modules" / "discriminator.safetensors").is_file(), "the discriminator was not checkpointed"
    # helper_tasks is not voicetrain's own nor registered by an entry point: re-exporting trusts it by name.
    reexport(trained.run_dir, tmp_path / "again", "--trust-code", "helper_tasks")
    for export_dir in (trained.run_dir / "export", tmp_path / "again"):
        keys = list(load_file(str(export_dir / "model.safetensors")))
        assert keys and all(key.startswith("model.") for key in keys), keys
        config = json.loads((export_dir / "config.json").read_text())
        assert config["inference_modules"] == ["model"]
        assert config["task_target"] == "helper_tasks.VoiceConversionWithDiscriminator"
    # The re-export read both weight files in build_modules order and rebuilt the same model.
    assert load_file(str(tmp_path / "again" / "model.safetensors")).keys() == load_file(
        str(trained.run_dir / "export" / "model.safetensors")).keys()
    for key, value in load_file(str(tmp_path / "again" / "model.safetensors")).items():
        assert torch.equal(value, load_file(str(trained.run_dir / "export" / "model.safetensors"))[key])


def test_export_command_errors_are_clear(run: TrainedRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty-run"
    (empty / "checkpoints").mkdir(parents=True)
    # One real subprocess: `python -m voicetrain.export` is the command users type.
    result = subprocess.run([sys.executable, "-m", "voicetrain.export", str(empty)], capture_output=True, text=True,
                            env=with_tests_on_path(), timeout=300)
    assert result.returncode == 2, output_of(result)
    assert "no committed checkpoint" in result.stderr and "Traceback" not in result.stderr, output_of(result)

    assert export_main([str(run.run_dir), "--checkpoint", "step_00000999"]) == 2
    error = capsys.readouterr().err
    assert "no such checkpoint" in error and f"step_{EVERY:08d}" in error, error
    assert export_main([str(tmp_path / "missing")]) == 2
    assert "no such run directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        export_main([str(run.run_dir), "--preset", "fp8"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "invalid choice: 'fp8'" in error and "onnx" in error, error
    assert export_main([str(run.run_dir), "--preset", "none"]) == 2
    assert "disables export" in capsys.readouterr().err


class FrozenLength(nn.Module):
    """Traces into a graph that only works at the example's length: int() freezes it."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, log_mel: torch.Tensor, speaker: torch.Tensor) -> torch.Tensor:
        return self.inner(log_mel, speaker) * torch.linspace(0.5, 1.0, int(log_mel.shape[-1]))


class FrozenLengthTask(VoiceConversionTask):
    def inference_model(self, modules: dict[str, nn.Module]) -> nn.Module:
        return FrozenLength(modules["model"])


def test_an_onnx_graph_that_only_works_at_the_traced_size_is_refused_naming_the_input(tmp_path: Path) -> None:
    context = TaskContext(standard_mel(), ["a", "b"], [0.0] * 80, [1.0] * 80)
    task = FrozenLengthTask(task_settings("vc", hidden_channels=16), context)
    with pytest.raises(ExportError, match="froze a size") as refused:
        write_export(task, task.build_modules(), tmp_path / "export", "fp32", 0, None, {}, ["safetensors", "onnx"])
    assert "inputs['log_mel'].shape[2]" in str(refused.value) and "int(x.shape[-1])" in str(refused.value)
    assert not list(tmp_path.iterdir()), "a failed export left files behind"


def test_unknown_formats_are_refused(run: TrainedRun, tmp_path: Path) -> None:
    task, modules = load_inference_modules(run.run_dir / "export")
    with pytest.raises(ExportError, match="export.formats"):
        write_export(task, modules, tmp_path / "export", "fp16", 0, None, {}, ["tflite"])
    assert not list(tmp_path.iterdir())
