"""The `logger` group (voicetrain.run.trackers): composition and validation, the CSV file's resume
rule, the held points of MLflow and W&B, and (slow) a real run killed with SIGKILL and relaunched,
whose TensorBoard, CSV, MLflow file store and offline W&B directory each hold every step once."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from helpers import CLI_TIMEOUT_SECONDS, TINY_MODEL, assert_ok, compose_config, environment, output_of, reset_accelerate, run_cli
from voicetrain.config import ConfigError, validate
from voicetrain.run.trackers import CsvTracker, HeldPoints, MLflowRunTracker, TrackerStart, WandbRunTracker, flat_parameters


def settings_of(*overrides: str):
    return validate(OmegaConf.to_container(compose_config(*overrides), resolve=True))


@pytest.fixture
def accelerate_state() -> Iterator[None]:
    """Trackers check the main process through Accelerate's PartialState; each test starts without one."""
    reset_accelerate()
    yield
    reset_accelerate()


def start_at(folder: Path, step: int, run_ids: dict[str, str] | None = None) -> TrackerStart:
    return TrackerStart("alice", folder, folder / "tb", step, run_ids or {})


# ----- configuration -----

def test_tensorboard_is_the_default_logger() -> None:
    assert settings_of().logger.chosen() == ["tensorboard"]


def test_several_loggers_at_once_with_their_keys() -> None:
    settings = settings_of("logger=[tensorboard,mlflow,csv]", "logger.mlflow.tracking_uri=sqlite:///x/mlflow.db")
    assert settings.logger.chosen() == ["tensorboard", "mlflow", "csv"]
    assert settings.logger.mlflow.tracking_uri == "sqlite:///x/mlflow.db"
    assert settings.logger.csv.file == "metrics.csv"


def test_an_unknown_logger_key_is_named() -> None:
    with pytest.raises(ConfigError, match=r"logger\.mlflow\.tracking_url: unknown key"):
        settings_of("logger=mlflow", "+logger.mlflow.tracking_url=x")


def test_no_logger_at_all_is_allowed() -> None:
    assert settings_of("logger=[]").logger.chosen() == []


def test_the_composed_config_becomes_flat_parameters() -> None:
    flat = flat_parameters({"optim": {"lr": 0.001, "betas": [0.8, 0.99]}, "run": {"name": "alice"}})
    assert flat == {"optim.lr": 0.001, "optim.betas": "[0.8, 0.99]", "run.name": "alice"}


# ----- held points -----

def test_held_points_leave_in_order_once_a_checkpoint_covers_them() -> None:
    published: list[int] = []
    held = HeldPoints()
    for step in (1, 2, 3, 4, 5):
        held.hold(step, lambda step=step: published.append(step))
    held.publish_through(3)
    assert published == [1, 2, 3]
    held.publish_through(3)
    assert published == [1, 2, 3], "a point was published twice"
    held.publish_through(5)
    assert published == [1, 2, 3, 4, 5]


# ----- CSV -----

def csv_rows(path: Path) -> list[tuple[int, str, float]]:
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["step", "name", "value"]
    return [(int(step), name, float(value)) for step, name, value in rows[1:]]


def test_csv_resume_drops_rows_after_the_checkpoint(tmp_path: Path, accelerate_state: None) -> None:
    first = CsvTracker("metrics.csv")
    first.begin(start_at(tmp_path, 0))
    first.start()
    for step in range(1, 8):
        first.log({"train/loss": 1.0 / step, "note": "text is not a number"}, step=step)
    first.finish()  # the launch "crashed" at step 7; its newest checkpoint is step 4
    resumed = CsvTracker("metrics.csv")
    resumed.begin(start_at(tmp_path, 4))
    resumed.start()
    for step in range(5, 9):
        resumed.log({"train/loss": 2.0 / step}, step=step)
    resumed.finish()
    rows = csv_rows(tmp_path / "metrics.csv")
    assert [step for step, _, _ in rows] == list(range(1, 9))
    assert rows[4] == (5, "train/loss", pytest.approx(2.0 / 5)), "the crashed launch's step 5 was kept"


def test_csv_fresh_start_keeps_no_rows(tmp_path: Path, accelerate_state: None) -> None:
    first = CsvTracker("metrics.csv")
    first.begin(start_at(tmp_path, 0))
    first.start()
    first.log({"val/mcd": 9.0}, step=0)
    first.finish()  # killed before its first checkpoint: the next launch starts over at step 0
    again = CsvTracker("metrics.csv")
    again.begin(start_at(tmp_path, 0))
    again.start()
    again.log({"val/mcd": 8.0}, step=0)
    again.finish()
    assert csv_rows(tmp_path / "metrics.csv") == [(0, "val/mcd", 8.0)]


def test_csv_refuses_a_file_it_did_not_write(tmp_path: Path, accelerate_state: None) -> None:
    (tmp_path / "metrics.csv").write_text("date,price\n2026,3\n")
    tracker = CsvTracker("metrics.csv")
    tracker.begin(start_at(tmp_path, 0))
    with pytest.raises(ConfigError, match="logger.csv.file='metrics.csv'.*not a voicetrain metrics file"):
        tracker.start()
    assert (tmp_path / "metrics.csv").read_text() == "date,price\n2026,3\n"


# ----- MLflow and W&B, in process -----

def mlflow_history(tracking_uri: str, run_id: str, key: str) -> list[int]:
    from mlflow.tracking import MlflowClient

    return sorted(point.step for point in MlflowClient(tracking_uri).get_metric_history(run_id, key))


def test_mlflow_publishes_at_commits_and_continues_the_same_run(tmp_path: Path, accelerate_state: None) -> None:
    pytest.importorskip("mlflow")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    first = MLflowRunTracker(uri, "voicetrain", str(tmp_path / "mlartifacts"))
    first.begin(start_at(tmp_path, 0))
    first.start()
    first.store_init_configuration({"optim.lr": 0.001, "run.name": "alice"})
    for step in range(1, 6):
        first.log({"train/loss": 1.0 / step}, step=step)
    first.log_mel_images({"mel/pair0": np.zeros((8, 12, 3), dtype=np.uint8)}, step=4)
    first.log_audio({"audio/pair0/converted": torch.zeros(1600)}, 16000, step=4)
    first.publish_through(4)  # the checkpoint at step 4 committed; step 5 was never covered
    run_id = first.run_id
    first.finish()
    assert mlflow_history(uri, run_id, "train/loss") == [1, 2, 3, 4]
    resumed = MLflowRunTracker(uri, "voicetrain", str(tmp_path / "mlartifacts"))
    resumed.begin(start_at(tmp_path, 4, {"mlflow": run_id}))
    resumed.start()
    resumed.store_init_configuration({"optim.lr": 0.001, "run.name": "alice"})
    for step in range(5, 8):
        resumed.log({"train/loss": 1.0 / step}, step=step)
    resumed.publish_through(7)
    assert resumed.run_id == run_id
    resumed.finish()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    assert mlflow_history(uri, run_id, "train/loss") == [1, 2, 3, 4, 5, 6, 7]
    run = client.get_run(run_id)
    assert run.data.params == {"optim.lr": "0.001", "run.name": "alice"}
    assert run.info.run_name == "alice"
    artifacts = [item.path for item in client.list_artifacts(run_id, "audio/step_00000004")]
    assert artifacts == ["audio/step_00000004/audio_pair0_converted.wav"]
    assert (tmp_path / "mlartifacts").is_dir(), "the artifacts went elsewhere than logger.mlflow.artifacts"


def test_wandb_offline_holds_points_until_a_commit(tmp_path: Path, accelerate_state: None,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    tracker = WandbRunTracker("voicetrain", None, None)
    tracker.begin(start_at(tmp_path, 0))
    tracker.start()
    tracker.store_init_configuration({"optim.lr": 0.001})
    for step in range(1, 6):
        tracker.log({"train/loss": 1.0 / step}, step=step)
    tracker.publish_through(3)
    run_id = tracker.run_id
    (run_folder,) = (tmp_path / "wandb").glob(f"offline-run-*-{run_id}")
    # The checkpoint's own step is on disk before the run ends (a crash would not lose it).
    assert wait_for(lambda: [row["_step"] for row in wandb_history(run_folder)] == [1, 2, 3])
    tracker.finish()
    assert [row["_step"] for row in wandb_history(run_folder)] == [1, 2, 3]
    assert wandb_config(run_folder)["optim.lr"] == 0.001


def wait_for(condition, patience_seconds: float = 60) -> bool:
    """Guards against a hang, not a speed requirement: W&B's core process writes its log file itself."""
    deadline = time.monotonic() + patience_seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


# ----- reading an offline W&B run folder -----

# The .wandb file is a LevelDB-style log (W&B's own reader moved into its Go core): a 7-byte file
# header, then 32 KiB blocks of chunks, each with a 7-byte header (CRC, length, type: 1 whole
# record, 2 first, 3 middle, 4 last piece); a block's tail shorter than a header is padding.
WANDB_FILE_HEADER = 7
WANDB_BLOCK = 32768
WANDB_CHUNK_HEADER = 7


def wandb_records(run_folder: Path) -> Iterator[object]:
    import struct

    from wandb.proto import wandb_internal_pb2

    (log_file,) = run_folder.glob("*.wandb")
    data = log_file.read_bytes()
    assert data[:4] == b":W&B", f"{log_file} is not a W&B transaction log"
    offset, pieces = WANDB_FILE_HEADER, b""
    while offset + WANDB_CHUNK_HEADER <= len(data):
        left_in_block = WANDB_BLOCK - offset % WANDB_BLOCK
        if left_in_block < WANDB_CHUNK_HEADER:
            offset += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[offset:offset + WANDB_CHUNK_HEADER])
        if length == 0 and kind == 0:
            offset += left_in_block  # a block's zero padding
            continue
        chunk = data[offset + WANDB_CHUNK_HEADER:offset + WANDB_CHUNK_HEADER + length]
        offset += WANDB_CHUNK_HEADER + length
        pieces = chunk if kind in (1, 2) else pieces + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            yield record


def wandb_history(run_folder: Path) -> list[dict[str, object]]:
    import json

    rows = []
    for record in wandb_records(run_folder):
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
    return rows


def wandb_config(run_folder: Path) -> dict[str, object]:
    import json

    config: dict[str, object] = {}
    for record in wandb_records(run_folder):
        kind = record.WhichOneof("record_type")
        items = record.config.update if kind == "config" else record.run.config.update if kind == "run" else []
        for item in items:
            value = json.loads(item.value_json)
            config[item.key] = value["value"] if isinstance(value, dict) and "value" in value else value
    return config


# ----- a real run, killed and relaunched -----

# The tiny model trains tens of steps a second: checkpoints far enough apart that the kill lands
# between two of them, after the first.
KILLED_STEPS = 400
KILLED_EVERY = 100
KILLED_VALIDATION = 200
TRACKED = "train/mel/l1"  # the VC recipe's loss


def killed_and_resumed_command(root: Path, cache: Path) -> list[str]:
    return [f"run.root={root / 'runs'}", f"data.cache_dir={cache}", *TINY_MODEL, "logger=[tensorboard,mlflow,wandb,csv]",
            f"trainer.max_steps={KILLED_STEPS}", f"ckpt.every_n_steps={KILLED_EVERY}", "trainer.log_every=1",
            f"trainer.val_every={KILLED_VALIDATION}"]


def csv_steps(path: Path, name: str) -> list[int]:
    return [step for step, row_name, _ in csv_rows(path) if row_name == name] if path.is_file() else []


def kill_after_uncommitted_points(command: list[str], root: Path, metrics: Path) -> None:
    """Starts the run, waits until the CSV file shows a step past the first checkpoint, and kills it
    with SIGKILL: the MLflow and W&B points after its newest checkpoint die with it."""
    env = environment(WANDB_MODE="offline", WANDB_SILENT="true")
    process = subprocess.Popen([sys.executable, "-m", "voicetrain", *command], cwd=root, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + CLI_TIMEOUT_SECONDS
    while max(csv_steps(metrics, TRACKED), default=0) < KILLED_EVERY + 2:
        assert process.poll() is None and time.monotonic() < deadline, process.stdout.read() if process.stdout else ""
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)


@pytest.mark.slow
def test_killed_run_continues_every_tracker_without_duplicates(tmp_path: Path, bundled_cache: Path) -> None:
    pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    import json

    command = killed_and_resumed_command(tmp_path, bundled_cache)
    run_dir = tmp_path / "runs" / "default"
    metrics = run_dir / "metrics.csv"
    kill_after_uncommitted_points(command, tmp_path, metrics)
    committed = max(int(path.name.removeprefix("step_")) for path in (run_dir / "checkpoints").glob("step_*"))
    assert max(csv_steps(metrics, TRACKED)) > committed, "the kill left no point after the newest checkpoint"

    resumed = run_cli(*command, cwd=tmp_path, env=environment(WANDB_MODE="offline", WANDB_SILENT="true"))
    assert_ok(resumed)
    every_step = list(range(1, KILLED_STEPS + 1))

    assert csv_steps(metrics, TRACKED) == every_step
    assert csv_steps(metrics, "val/mcd") == [KILLED_VALIDATION, KILLED_STEPS]

    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    assert [event.step for event in events.Scalars(TRACKED)] == every_step

    final_state = json.loads((run_dir / "checkpoints" / f"step_{KILLED_STEPS:08d}" / "loop_state.json").read_text())
    tracker_runs = final_state["tracker_runs"]
    assert set(tracker_runs) == {"mlflow", "wandb"}, output_of(resumed)

    client = MlflowClient(f"sqlite:///{tmp_path / 'runs'}/mlflow.db")
    (experiment,) = [item for item in client.search_experiments() if item.name == "voicetrain"]
    runs = client.search_runs([experiment.experiment_id])
    assert [run.info.run_id for run in runs] == [tracker_runs["mlflow"]], "the resumed launch started a second run"
    assert sorted(point.step for point in client.get_metric_history(runs[0].info.run_id, TRACKED)) == every_step
    assert runs[0].data.params["trainer.max_steps"] == str(KILLED_STEPS)
    assert runs[0].data.params["run.name"] == "default"

    folders = sorted((run_dir / "wandb").glob(f"offline-run-*-{tracker_runs['wandb']}"))
    assert len(folders) == 2, "expected the killed launch's and the resumed launch's offline folders of one run"
    steps = [row["_step"] for folder in folders for row in wandb_history(folder) if TRACKED in row]
    # W&B's own background process writes the offline files: points handed to it just before the SIGKILL
    # may be lost with it (seen once on a loaded machine), so its history holds no duplicate, nothing
    # after the run's end, and the resumed launch's points to the last step.
    assert len(steps) == len(set(steps)) and set(steps) <= set(every_step), steps
    assert max(steps) == KILLED_STEPS and set(range(committed + 1, KILLED_STEPS + 1)) <= set(steps), steps
    assert wandb_config(folders[0])["trainer.max_steps"] == KILLED_STEPS
