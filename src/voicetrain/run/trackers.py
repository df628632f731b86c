"""The experiment trackers a run logs to: TensorBoard, MLflow, Weights & Biases and a plain CSV file,
chosen by the `logger` config group and driven through Accelerate's tracker API
(`Accelerator(log_with=[...])`, `init_trackers`, `log`): each is a `GeneralTracker`.

What every tracker here adds to Accelerate's: validation audio and mel images, the run name, the
id of its tracker run (kept in the checkpoint's loop_state.json, so a resumed run continues the
same MLflow or W&B run), and invariant 4's rule that no step appears twice after a crash:
- TensorBoard and CSV are files of the run folder, so a resumed launch drops what a crashed one
  wrote after the checkpoint it resumes from (TensorBoard's purge_step; rewriting the CSV file)
  and they show points as they come.
- MLflow and W&B keep their history in a store that cannot drop points, so their points are held
  in memory and published once a committed checkpoint covers their step; a crash then loses only
  points that the resumed launch logs again.
Trackers start and write on the main process only (Accelerate's `main_process_only`).
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import soundfile
import torch
from accelerate.tracking import GeneralTracker, MLflowTracker, TensorBoardTracker, WandBTracker, on_main_process

from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.audio import metadata as audio_metadata
from tensorboard.util import tensor_util

from voicetrain.config import ConfigError, LoggerSettings


@dataclass(frozen=True)
class TrackerStart:
    """Where this launch starts: what a tracker needs to begin or continue its run."""

    run_name: str
    run_folder: Path
    tensorboard_dir: Path
    start_step: int  # points a crashed launch logged after this step are dropped
    run_ids: dict[str, str]  # tracker name -> the tracker run to continue (from the checkpoint)


def flat_parameters(config: dict[str, Any], prefix: str = "") -> dict[str, bool | int | float | str | None]:
    """The composed config as `section.key` parameters (trackers store flat key-value pairs)."""
    flat: dict[str, bool | int | float | str | None] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_parameters(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            flat[name] = str(list(value))
        else:
            flat[name] = value
    return flat


def wav_bytes(wave: torch.Tensor, sample_rate: int) -> bytes:
    """A 16-bit WAV file's bytes."""
    buffer = io.BytesIO()
    samples = wave.detach().to("cpu", torch.float32).clamp(-1, 1).numpy()
    soundfile.write(buffer, samples, sample_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def local_tracking_uri(uri: str) -> str:
    """A URI with a scheme (sqlite:, http:, file:, s3:) as given; a plain path as the absolute file:
    URI of that folder (MLflow would read a relative path against its own working folder)."""
    # A one-letter scheme is a Windows drive (C:\\runs), not a URI.
    if len(urlparse(uri).scheme) > 1:
        return uri
    return Path(uri).resolve().as_uri()


NO_LABEL = b""


def audio_summary(tag: str, wave: torch.Tensor, sample_rate: int) -> Summary:
    """One clip as TensorBoard's audio plugin writes it itself: a 16-bit WAV blob whose metadata
    says WAV. SummaryWriter.add_audio writes the older form, which the default (fast) loader
    serves as application/octet-stream; this one both loaders serve as audio/wav."""
    metadata = audio_metadata.create_summary_metadata(display_name="", description="",
                                                      encoding=audio_metadata.Encoding.Value("WAV"))
    # The plugin's layout: [clips, 2] strings, each clip's encoded audio and its label.
    tensor = tensor_util.make_tensor_proto(np.array([[wav_bytes(wave, sample_rate), NO_LABEL]], dtype=object))
    return Summary(value=[Summary.Value(tag=tag, metadata=metadata, tensor=tensor)])


class HeldPoints:
    """Points held until a committed checkpoint covers their step, published in logging order."""

    def __init__(self) -> None:
        self.held: list[tuple[int, Callable[[], None]]] = []

    def hold(self, step: int, publish: Callable[[], None]) -> None:
        self.held.append((step, publish))

    def publish_through(self, step: int) -> int:
        """Publishes the points up to `step`; returns how many."""
        ready = [publish for held_step, publish in self.held if held_step <= step]
        self.held = [(held_step, publish) for held_step, publish in self.held if held_step > step]
        for publish in ready:
            publish()
        return len(ready)


class VoiceTracker:
    """What the Reporter calls besides Accelerate's `log`: set before `init_trackers` starts it."""

    start_point: TrackerStart
    holds_points = False  # True: points wait for a committed checkpoint (publish_through)

    def begin(self, start: TrackerStart) -> None:
        self.start_point = start

    @property
    def run_id(self) -> str | None:
        """The id saved in checkpoints so that a resumed launch continues this run (None: not needed)."""
        return None

    def log_audio(self, clips: dict[str, torch.Tensor], sample_rate: int, step: int) -> None:
        """Validation audio by tag."""

    def log_mel_images(self, images: dict[str, np.ndarray], step: int) -> None:
        """Mel images (height x width x 3, uint8) by tag."""

    def publish_through(self, step: int) -> None:
        """A checkpoint at `step` is committed: points up to it may leave for good."""


class TensorBoardRunTracker(VoiceTracker, TensorBoardTracker):
    """Event files in the run folder's tb/ (or scratch's, when scratch mirrors TensorBoard)."""

    def __init__(self) -> None:
        TensorBoardTracker.__init__(self, run_name="", logging_dir="")

    def begin(self, start: TrackerStart) -> None:
        super().begin(start)
        self.logging_dir_param = str(start.tensorboard_dir)
        # purge_step drops points a crashed launch logged after its last checkpoint (steps after
        # start_step; start_step itself was logged before that checkpoint was saved).
        self.init_kwargs = {"purge_step": start.start_step + 1} if start.start_step > 0 else {}

    @on_main_process
    def store_init_configuration(self, values: dict) -> None:
        # Accelerate's version adds a second event file and a YAML copy in a folder named by the
        # clock; the run folder's .hydra/ and every checkpoint's config.yaml already hold the config.
        return

    @on_main_process
    def log_audio(self, clips: dict[str, torch.Tensor], sample_rate: int, step: int) -> None:
        for tag, wave in clips.items():
            self.writer.file_writer.add_summary(audio_summary(tag, wave, sample_rate), step)
        self.writer.flush()

    @on_main_process
    def log_mel_images(self, images: dict[str, np.ndarray], step: int) -> None:
        for tag, image in images.items():
            self.writer.add_image(tag, image, step, dataformats="HWC")
        self.writer.flush()


class CsvTracker(VoiceTracker, GeneralTracker):
    """`step,name,value` rows in one file of the run folder, for people without a tracker server."""

    name = "csv"
    requires_logging_directory = False
    HEADER = ["step", "name", "value"]

    def __init__(self, file_name: str) -> None:
        GeneralTracker.__init__(self)
        self.file_name = file_name
        self.path: Path | None = None
        self.handle: io.TextIOWrapper | None = None

    @property
    def tracker(self) -> Path | None:
        return self.path

    @on_main_process
    def start(self) -> None:
        self.path = self.start_point.run_folder / self.file_name
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # A resumed launch keeps the rows up to its checkpoint; a fresh start (step 0, which is
        # logged again) keeps none. Written whole, then renamed into place.
        start_step = self.start_point.start_step
        kept = rows_through(self.path, start_step) if self.path.is_file() else []  # refuses a foreign file
        kept = kept if start_step > 0 else []
        with tempfile.NamedTemporaryFile("w", newline="", dir=self.path.parent, prefix=f".{self.path.name}.",
                                         delete=False) as staged:
            writer = csv.writer(staged)
            writer.writerow(self.HEADER)
            writer.writerows(kept)
        os.replace(staged.name, self.path)
        self.handle = self.path.open("a", newline="")
        self.writer = csv.writer(self.handle)

    @on_main_process
    def store_init_configuration(self, values: dict) -> None:
        # One file of points; the config of the same run is in its .hydra/config.yaml.
        return

    @on_main_process
    def log(self, values: dict, step: int | None = None, **kwargs: Any) -> None:
        assert self.handle is not None, "CsvTracker.log before start"
        self.writer.writerows([step, name, value] for name, value in values.items()
                              if isinstance(value, (int, float)))
        self.handle.flush()

    @on_main_process
    def finish(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


def rows_through(path: Path, last_step: int) -> list[list[str]]:
    """The data rows of a CSV tracker file whose step is at most `last_step`."""
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows or rows[0] != CsvTracker.HEADER:
        raise ConfigError([f"logger.csv.file={path.name!r}: {path} is not a voicetrain metrics file (its first row "
                           f"is not {','.join(CsvTracker.HEADER)}); move it away or choose logger.csv.file=OTHER.csv"])
    return [row for row in rows[1:] if int(row[0]) <= last_step]


class MLflowRunTracker(VoiceTracker, MLflowTracker):
    """An MLflow run per voicetrain run (named like it); audio as artifacts, mel images as MLflow images."""

    holds_points = True

    def __init__(self, tracking_uri: str, experiment: str, artifacts: str) -> None:
        # logging_dir is the artifact location Accelerate gives an experiment it creates.
        MLflowTracker.__init__(self, experiment_name=experiment, logging_dir=local_tracking_uri(artifacts))
        self.tracking_uri = tracking_uri
        self.points = HeldPoints()

    def begin(self, start: TrackerStart) -> None:
        super().begin(start)
        self.run_name, self.run_id_to_continue = start.run_name, start.run_ids.get(self.name)

    @on_main_process
    def start(self) -> None:
        import mlflow

        mlflow.set_tracking_uri(local_tracking_uri(self.tracking_uri))
        self.run_id = self.run_id_to_continue  # MLflowTracker.start continues the run with this id
        MLflowTracker.start(self)

    @property
    def run_id(self) -> str | None:
        active = getattr(self, "active_run", None)
        return active.info.run_id if active is not None else self.__dict__.get("_run_id")

    @run_id.setter
    def run_id(self, value: str | None) -> None:
        self.__dict__["_run_id"] = value

    @on_main_process
    def store_init_configuration(self, values: dict) -> None:
        if self.run_id_to_continue is not None:
            return  # a continued run has its parameters; MLflow refuses to change one
        MLflowTracker.store_init_configuration(self, values)

    @on_main_process
    def log(self, values: dict, step: int | None = None, **kwargs: Any) -> None:
        self.points.hold(step or 0, lambda: MLflowTracker.log(self, values, step, **kwargs))

    @on_main_process
    def log_audio(self, clips: dict[str, torch.Tensor], sample_rate: int, step: int) -> None:
        import mlflow

        def publish() -> None:
            with tempfile.TemporaryDirectory() as folder:
                for tag, wave in clips.items():
                    file = Path(folder) / f"{tag.replace('/', '_')}.wav"
                    file.write_bytes(wav_bytes(wave, sample_rate))
                mlflow.log_artifacts(folder, artifact_path=f"audio/step_{step:08d}")

        self.points.hold(step, publish)

    @on_main_process
    def log_mel_images(self, images: dict[str, np.ndarray], step: int) -> None:
        import mlflow

        def publish() -> None:
            for tag, image in images.items():
                mlflow.log_image(image, key=tag.replace("/", "_"), step=step)

        self.points.hold(step, publish)

    def publish_through(self, step: int) -> None:
        self.points.publish_through(step)


class WandbRunTracker(VoiceTracker, WandBTracker):
    """A W&B run per voicetrain run, files under the run folder's wandb/; offline with WANDB_MODE=offline
    (or logger.wandb.mode=offline), synced later with `wandb sync`."""

    main_process_only = True  # Accelerate's W&B tracker runs everywhere; ours starts on the main process only

    holds_points = True

    def __init__(self, project: str, entity: str | None, mode: str | None) -> None:
        WandBTracker.__init__(self, run_name=project)
        self.entity, self.mode = entity, mode
        self.points = HeldPoints()
        self.chosen_id: str | None = None

    def begin(self, start: TrackerStart) -> None:
        super().begin(start)
        # A new run gets its id here, so the first checkpoint already records it.
        self.chosen_id = start.run_ids.get(self.name) or uuid.uuid4().hex[:16]
        start.run_folder.mkdir(parents=True, exist_ok=True)
        self.init_kwargs = {"id": self.chosen_id, "name": start.run_name, "resume": "allow",
                            "dir": str(start.run_folder), "entity": self.entity,
                            **({"mode": self.mode} if self.mode is not None else {})}

    @property
    def run_id(self) -> str | None:
        return self.chosen_id

    @on_main_process
    def store_init_configuration(self, values: dict) -> None:
        self.run.config.update(values, allow_val_change=True)

    @on_main_process
    def log(self, values: dict, step: int | None = None, **kwargs: Any) -> None:
        self.points.hold(step or 0, lambda: self.run.log(values, step=step, **kwargs))

    @on_main_process
    def log_audio(self, clips: dict[str, torch.Tensor], sample_rate: int, step: int) -> None:
        import wandb

        values = {tag: wandb.Audio(wave.detach().to("cpu", torch.float32).numpy(), sample_rate=sample_rate)
                  for tag, wave in clips.items()}
        self.points.hold(step, lambda: self.run.log(values, step=step))

    @on_main_process
    def log_mel_images(self, images: dict[str, np.ndarray], step: int) -> None:
        import wandb

        values = {tag: wandb.Image(image) for tag, image in images.items()}
        self.points.hold(step, lambda: self.run.log(values, step=step))

    @on_main_process
    def publish_through(self, step: int) -> None:
        if self.points.publish_through(step):
            # W&B keeps the newest step's row open until a later step arrives: commit it now, or a
            # crash before the next checkpoint would lose the checkpoint's own step.
            self.run.log({}, commit=True)


def missing_packages(settings: LoggerSettings) -> list[str]:
    """One problem per chosen tracker whose package is not installed."""
    import importlib.util

    return [f"logger={name}: the {name} package is not installed; pip install 'voicetrain[{name}]' (or choose "
            f"another logger, e.g. logger=[tensorboard])"
            for name in ("mlflow", "wandb")
            if getattr(settings, name) is not None and importlib.util.find_spec(name) is None]


def build_trackers(settings: LoggerSettings) -> list[VoiceTracker]:
    """The chosen trackers, not started (Accelerate starts them in `init_trackers`). Building is free
    of side effects, so every rank builds them and only the main process starts them."""
    problems = missing_packages(settings)
    if problems:
        raise ConfigError(problems)
    trackers: list[VoiceTracker] = []
    if settings.tensorboard is not None:
        trackers.append(TensorBoardRunTracker())
    if settings.mlflow is not None:
        trackers.append(MLflowRunTracker(settings.mlflow.tracking_uri, settings.mlflow.experiment,
                                         settings.mlflow.artifacts))
    if settings.wandb is not None:
        trackers.append(WandbRunTracker(settings.wandb.project, settings.wandb.entity, settings.wandb.mode))
    if settings.csv is not None:
        trackers.append(CsvTracker(settings.csv.file))
    return trackers
