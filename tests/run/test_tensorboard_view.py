"""What a person sees in TensorBoard: a tiny VC run's `tb/` served by the real `tensorboard` binary
with its default flags (the fast loader), read over its HTTP API as the web page reads it, and the
audio dashboard loaded in headless Chromium. Each kind has its own tag group, an audio clip is a
WAV at the features' sample rate, a mel image is a PNG, the recordings are written once and the
conversions of the same pair at every validation. In-process: the previews VC validation returns."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import soundfile
import torch

from voicetrain.audio import MelSpectrogram
from voicetrain.audio_files import load_audio
from voicetrain.data import read_bundled_corpus
from voicetrain.plots import DOTS_PER_INCH, FIGURE_WIDTH_INCHES, PANEL_HEIGHT_INCHES
from voicetrain.tasks.base import TaskContext, ValidationData, ValidationResult
from voicetrain.tasks.vc import VoiceConversionTask

from helpers import QUICK, TINY_MODEL, assert_ok, run_cli, standard_mel, task_settings

STEPS = 2
SAMPLE_RATE = 16000  # features.sample_rate in conf/config.yaml
RUN = "."  # TensorBoard's name for the run whose events lie in --logdir itself
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# Guards against a hang, not a speed requirement: the server and the page normally answer in seconds.
PATIENCE_SECONDS = 120
# Plain HTTP to localhost, never through a proxy the environment may name.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class Server:
    url: str
    process: subprocess.Popen
    log: Path

    def get(self, route: str, **query: str | int) -> tuple[bytes, str]:
        """The body and Content-Type of `route` (a path under the server, e.g. /data/runs)."""
        address = f"{self.url}{route}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        with OPENER.open(address, timeout=30) as response:
            return response.read(), response.headers.get("Content-Type", "")

    def json(self, route: str, **query: str | int):
        return json.loads(self.get(route, **query)[0])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, bundled_cache: Path) -> Path:
    """A tiny VC run that validates at step 0 (validate_at_start's default) and at its last step,
    previewing one pair."""
    root = tmp_path_factory.mktemp("tensorboard-view")
    result = run_cli(f"run.root={root / 'runs'}", f"data.cache_dir={bundled_cache}", *TINY_MODEL, *QUICK,
                     f"trainer.max_steps={STEPS}", f"trainer.val_every={STEPS}", f"ckpt.every_n_steps={STEPS}",
                     "trainer.audio_previews=1", "trainer.validate_at_start=true", cwd=root)
    assert_ok(result)
    return root / "runs" / "default"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(run_dir: Path) -> Iterator[Server]:
    """`tensorboard --logdir RUN/tb --port PORT`, nothing else, from this interpreter's environment;
    ready once its loader has read the run's audio, image and scalar tags. Stopped at teardown."""
    binary = Path(sys.executable).parent / "tensorboard"
    port = free_port()
    log = run_dir.parent / "tensorboard.log"
    with log.open("wb") as output:
        process = subprocess.Popen([str(binary), "--logdir", str(run_dir / "tb"), "--port", str(port)],
                                   stdout=output, stderr=subprocess.STDOUT)
    running = Server(f"http://localhost:{port}", process, log)
    try:
        wait_until_loaded(running)
        yield running
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until_loaded(server: Server) -> None:
    deadline = time.monotonic() + PATIENCE_SECONDS
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"tensorboard exited with status {server.process.returncode}:\n{server.log.read_text()}")
        try:
            if all(server.json(f"/data/plugin/{plugin}/tags").get(RUN) for plugin in ("audio", "images", "scalars")):
                return
        except OSError:
            pass  # not listening yet
        time.sleep(0.25)
    pytest.fail(f"tensorboard did not list the run's tags within {PATIENCE_SECONDS} s:\n{server.log.read_text()}")


def tags(server: Server, plugin: str) -> list[str]:
    return sorted(server.json(f"/data/plugin/{plugin}/tags")[RUN])


def pair_names(server: Server) -> list[str]:
    return [tag.removeprefix("mel/") for tag in tags(server, "images")]


def clips(server: Server, tag: str) -> list[dict]:
    return server.json("/data/plugin/audio/audio", run=RUN, tag=tag, sample=0)


def test_audio_images_and_scalars_have_their_own_tag_groups(server: Server) -> None:
    audio, images, scalars = tags(server, "audio"), tags(server, "images"), tags(server, "scalars")
    assert len(images) == 1 and images[0].startswith("mel/"), images  # trainer.audio_previews=1: one pair
    pair = pair_names(server)[0]
    assert audio == sorted(f"audio/{pair}/{role}" for role in ("source", "target", "converted"))
    for expected in ("train/mel/l1", "val/reconstruction_mcd", "val/mcd", "lr/model", "perf/steps_per_second"):
        assert expected in scalars, scalars
    assert not any(tag.startswith(("audio/", "mel/")) for tag in scalars), scalars


def test_recordings_once_and_the_same_pair_converted_at_every_validation(server: Server) -> None:
    pair = pair_names(server)[0]
    validations = [0, STEPS]  # validate_at_start, then trainer.val_every
    assert [clip["step"] for clip in clips(server, f"audio/{pair}/converted")] == validations
    for role in ("source", "target"):
        assert [clip["step"] for clip in clips(server, f"audio/{pair}/{role}")] == [0]
    images = server.json("/data/plugin/images/images", run=RUN, tag=f"mel/{pair}", sample=0)
    assert [image["step"] for image in images] == validations


def test_an_audio_clip_is_served_as_a_wav_at_the_sample_rate(server: Server) -> None:
    pair = pair_names(server)[0]
    for role in ("converted", "source"):
        query = clips(server, f"audio/{pair}/{role}")[0]["query"]
        body, content_type = server.get(f"/data/plugin/audio/individualAudio?{query}")
        assert content_type == "audio/wav", (role, content_type)
        wave, rate = soundfile.read(io.BytesIO(body), dtype="float32")
        assert rate == SAMPLE_RATE and wave.ndim == 1 and wave.size > SAMPLE_RATE // 10, (role, rate, wave.shape)
        assert np.all(np.isfinite(wave)) and np.abs(wave).max() > 0, role
    # The source clip is the recording itself (16-bit), not a resynthesis of its mel.
    source_id = pair.rsplit("_to_", 1)[0]
    utterance = next(utterance for utterance in read_bundled_corpus() if utterance.utterance_id == source_id)
    recording = load_audio(utterance.path, SAMPLE_RATE)
    assert wave.shape == recording.shape and np.abs(wave - recording).max() <= 1.5 / 32768


def test_a_mel_image_is_served_as_a_png(server: Server) -> None:
    pair = pair_names(server)[0]
    newest = server.json("/data/plugin/images/images", run=RUN, tag=f"mel/{pair}", sample=0)[-1]
    body, content_type = server.get(f"/data/plugin/images/individualImage?{newest['query']}")
    assert body.startswith(b"\x89PNG\r\n\x1a\n"), (content_type, body[:16])
    image = matplotlib.image.imread(io.BytesIO(body), format="png")
    # Source, target and converted one above the other in one figure.
    expected = (round(3 * PANEL_HEIGHT_INCHES * DOTS_PER_INCH), round(FIGURE_WIDTH_INCHES * DOTS_PER_INCH))
    assert image.shape[:2] == expected and image.shape[2] in (3, 4), image.shape
    assert image[..., :3].std() > 0.05, "a blank image"


AUDIO_ELEMENTS = """
function audioIn(root) {
  let found = [...root.querySelectorAll('audio')];
  for (const element of root.querySelectorAll('*')) {
    if (element.shadowRoot) found = found.concat(audioIn(element.shadowRoot));
  }
  return found;
}
return audioIn(document).map(audio => ({src: audio.currentSrc || audio.src, readyState: audio.readyState,
                                        duration: audio.duration, error: audio.error && audio.error.code}));
"""


# Skipped on a developer's machine without Chromium; never in CI (CI=true), where .ci/run installs it.
@pytest.mark.skipif(not CHROMIUM.exists() and not os.environ.get("CI"),
                    reason=f"{CHROMIUM} is absent (Debian: apt-get install chromium chromium-driver)")
def test_the_audio_dashboard_shows_playable_clips_in_chromium(server: Server, tmp_path: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    # Without the networking switches Chromium keeps calling home, which a closed network answers slowly.
    for switch in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                   "--no-first-run", "--disable-background-networking", "--disable-component-update",
                   "--disable-sync", "--no-proxy-server", "--window-size=1280,1024",
                   f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(switch)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        driver.set_page_load_timeout(PATIENCE_SECONDS)
        driver.get(f"{server.url}/#audio")
        # One player per clip tag, each showing its newest step.
        audio = loaded_audio_elements(driver, len(tags(server, "audio")))
    finally:
        driver.quit()
    for element in audio:
        assert element["error"] is None and element["readyState"] >= 1 and element["duration"] > 0, element
    source = urllib.parse.urlsplit(audio[0]["src"])
    body, content_type = server.get(f"{source.path}?{source.query}")
    wave, rate = soundfile.read(io.BytesIO(body), dtype="float32")
    assert content_type == "audio/wav" and rate == SAMPLE_RATE
    assert audio[0]["duration"] == pytest.approx(wave.size / SAMPLE_RATE, abs=0.01)


def loaded_audio_elements(driver, expected: int) -> list[dict]:
    """The page's <audio> elements (inside the dashboard's shadow roots) once `expected` of them
    are there and each has read its clip's header (readyState >= HAVE_METADATA) or failed."""
    deadline = time.monotonic() + PATIENCE_SECONDS
    found: list[dict] = []
    while time.monotonic() < deadline:
        found = driver.execute_script(AUDIO_ELEMENTS)
        if len(found) >= expected and all(element["readyState"] >= 1 or element["error"] for element in found):
            return found
        time.sleep(0.25)
    pytest.fail(f"no loaded <audio> element on the audio dashboard within {PATIENCE_SECONDS} s: {found}")


# --- what VC validation hands the Reporter, in-process ------------------------------------------


@pytest.fixture(scope="module")
def held_out() -> ValidationData:
    """Two sentences of the bundled corpus's held-out set, each read by its 4 speakers, and their log-mels."""
    utterances = [utterance for utterance in read_bundled_corpus() if utterance.split == "val"]
    sentences = sorted({utterance.sentence_id for utterance in utterances})[:2]
    utterances = [utterance for utterance in utterances if utterance.sentence_id in sentences]
    extractor = MelSpectrogram(standard_mel())
    return ValidationData(utterances, {"mel": [extractor(torch.from_numpy(load_audio(utterance.path, SAMPLE_RATE)))
                                               for utterance in utterances]})


def tiny_conversion_task(data: ValidationData) -> tuple[VoiceConversionTask, dict[str, torch.nn.Module]]:
    frames = torch.cat(data.mels, dim=1)
    speakers = sorted({utterance.speaker for utterance in data.utterances})
    context = TaskContext(standard_mel(), speakers, frames.mean(dim=1).tolist(), frames.std(dim=1).tolist())
    settings = task_settings("vc", hidden_channels=16, speaker_channels=8, encoder_layers=1, decoder_layers=1,
                             validation_pairs=4)
    torch.manual_seed(0)
    task = VoiceConversionTask(settings, context)
    return task, {name: module.eval() for name, module in task.build_modules().items()}


def preview_names(result: ValidationResult) -> list[str]:
    return sorted(result.images)


def test_conversion_previews_keep_their_pairs_as_the_model_changes(held_out: ValidationData) -> None:
    task, modules = tiny_conversion_task(held_out)
    first = task.validate(modules, held_out, previews=1)
    with torch.no_grad():
        for parameter in modules["model"].parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    second = task.validate(modules, held_out, previews=1)
    names = preview_names(first)
    assert len(names) == 1 and preview_names(second) == names
    by_id = {utterance.utterance_id: utterance for utterance in held_out.utterances}
    for result in (first, second):
        assert sorted(result.audio) == [f"{name}/converted" for name in names]
        assert sorted(result.reference_audio) == sorted(f"{name}/{role}" for name in names
                                                        for role in ("source", "target"))
    for name in names:
        source = by_id[name.rsplit("_to_", 1)[0]]
        assert torch.equal(first.reference_audio[f"{name}/source"],
                           torch.from_numpy(load_audio(source.path, SAMPLE_RATE)))
        # The target reads the source's sentence in the voice converted to.
        target = next(utterance for utterance in held_out.utterances if utterance.sentence_id == source.sentence_id
                      and name.endswith(f"_to_{utterance.speaker}"))
        assert target.speaker != source.speaker
        assert torch.equal(first.reference_audio[f"{name}/target"],
                           torch.from_numpy(load_audio(target.path, SAMPLE_RATE)))
        assert not torch.equal(first.audio[f"{name}/converted"], second.audio[f"{name}/converted"]), \
            "the converted preview must come from the current model"
    assert "val/mcd" in first.metrics and "val/reconstruction_mcd" in first.metrics


def test_without_parallel_sentences_previews_convert_to_another_voice_and_say_so_once(
        held_out: ValidationData, caplog: pytest.LogCaptureFixture) -> None:
    unpaired = ValidationData([dataclasses.replace(utterance, sentence_id=None) for utterance in held_out.utterances],
                              held_out.features)
    task, modules = tiny_conversion_task(unpaired)
    with caplog.at_level(logging.WARNING, logger="voicetrain"):
        results = [task.validate(modules, unpaired, previews=1) for _ in range(2)]
    assert sum("no parallel pairs" in record.getMessage() for record in caplog.records) == 1, caplog.text
    assert set(results[0].metrics) == {"val/reconstruction_mcd"}, "nothing stands in for val/mcd"
    speaker_of = {utterance.utterance_id: utterance.speaker for utterance in unpaired.utterances}
    for name in preview_names(results[0]):
        source_id, target_speaker = name.rsplit("_to_", 1)
        assert target_speaker in speaker_of.values() and target_speaker != speaker_of[source_id]
    assert len(results[0].images) == 1 and preview_names(results[1]) == preview_names(results[0])
