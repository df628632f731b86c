"""`python -m voicetrain.demo`: the requests it builds are `python -m voicetrain.infer`'s own, its input
limits, and (in Debian's headless Chromium, driven by Selenium and chromedriver) the real page: load
it, upload a bundled recording, convert, and find an <audio> result with a non-zero duration. The
page's screenshot is kept in the test's folder and its path printed."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile

from voicetrain.data import BUNDLED_CORPUS
from voicetrain.demo import DEFAULT_VOCODER, DemoExport, describe, infer_arguments, input_problem
from voicetrain.export.infer import build_parser as infer_parser

from helpers import QUICK, TINY_MODEL, assert_ok, environment, run_cli

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# Guards against a hang, not a speed requirement: the page normally answers in seconds.
PATIENCE_SECONDS = 180
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory, bundled_cache: Path) -> Path:
    """A tiny VC run's export (two steps)."""
    root = tmp_path_factory.mktemp("demo")
    overrides = [item for item in TINY_MODEL if item != "export.enabled=false"]
    assert_ok(run_cli(f"run.root={root}", f"data.cache_dir={bundled_cache}", "trainer.max_steps=2",
                      "ckpt.every_n_steps=2", *overrides, *QUICK, cwd=root))
    return root / "default" / "export"


def a_recording() -> Path:
    return sorted(BUNDLED_CORPUS.glob("*/*.flac"))[0]


def test_describe_reads_task_step_speakers(export_dir: Path) -> None:
    export = describe(export_dir, [])
    assert export.task == "VoiceConversionTask" and export.step == 2
    assert export.inputs == ("audio", "speaker", "vocoder") and export.speakers
    assert f"{export_dir}" in export.metadata() and "step 2" in export.metadata()


def test_a_request_is_the_infer_command_line(tmp_path: Path) -> None:
    svc = DemoExport(Path("runs/bob/export"), "SingingVoiceConversionTask", ("audio", "speaker", "transpose", "vocoder"),
                     ["bob"], 10, {})
    argv = infer_arguments(svc, "in.wav", "ignored text", "bob", "auto", DEFAULT_VOCODER, tmp_path / "out.wav",
                           ["mymodel"])
    assert argv == ["runs/bob/export", "--output", str(tmp_path / "out.wav"), "--input", "in.wav", "--speaker", "bob",
                    "--transpose", "auto", "--trust-code", "mymodel"]
    parsed = infer_parser().parse_args(argv)  # what voicetrain.infer's own parser makes of it
    assert parsed.transpose == "auto" and parsed.trust_code == ["mymodel"] and parsed.vocoder is None
    with_vocoder = infer_arguments(svc, "in.wav", None, "bob", "12", "runs/voc/export", tmp_path / "out.wav", [])
    assert with_vocoder[-4:] == ["--transpose", "12", "--vocoder", "runs/voc/export"]


def test_a_recording_longer_than_the_limit_is_refused(tmp_path: Path) -> None:
    vc = DemoExport(Path("runs/alice/export"), "VoiceConversionTask", ("audio", "speaker"), ["alice"], 10, {})
    long = tmp_path / "long.wav"
    soundfile.write(long, np.zeros(16000 * 3, dtype=np.float32), 16000)
    assert input_problem(str(long), None, vc, max_seconds=5) is None
    assert "lasts 3.0 s" in input_problem(str(long), None, vc, max_seconds=2)
    assert input_problem(None, None, vc, max_seconds=5) == "upload or record a recording first"
    tts = DemoExport(Path("runs/tts/export"), "TextToSpeechTask", ("text", "speaker", "vocoder"), ["slt"], 10, {})
    assert input_problem(None, "  ", tts, max_seconds=5) == "type a sentence first"
    assert "at most 1000" in input_problem(None, "a" * 1001, tts, max_seconds=5)


def test_an_unverifiable_export_is_one_line_exit_2(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "voicetrain.demo", str(tmp_path)], capture_output=True, text=True,
                            env=environment(), timeout=300)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("python -m voicetrain.demo: error: ") and "Traceback" not in result.stderr


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_page(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + PATIENCE_SECONDS
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            with OPENER.open(url, timeout=5):
                return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"the demo did not answer on {url} within {PATIENCE_SECONDS} s:\n{log.read_text()}")


RESULT_AUDIO = """
return [0, 1].map(index => document.querySelector(`#output-${index} audio`)).map(audio =>
  audio && audio.currentSrc ? {src: audio.currentSrc, readyState: audio.readyState, duration: audio.duration,
                               error: audio.error && audio.error.code} : null);
"""


# Skipped on a developer's machine without Chromium; never in CI (CI=true), where .ci/run installs it.
@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists() and not os.environ.get("CI"),
                    reason=f"{CHROMIUM} is absent (Debian: apt-get install chromium chromium-driver)")
def test_the_page_converts_an_uploaded_recording_in_chromium(export_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("gradio")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    port = free_port()
    log = tmp_path / "demo.log"
    with log.open("w") as output:
        # The same export twice: two columns side by side, converting one input.
        process = subprocess.Popen([sys.executable, "-m", "voicetrain.demo", str(export_dir), str(export_dir),
                                    "--port", str(port),
                                    "--outputs", str(tmp_path / "results")], stdout=output, stderr=subprocess.STDOUT,
                                   env=environment(GRADIO_ANALYTICS_ENABLED="False"))
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for switch in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                   "--no-first-run", "--disable-background-networking", "--disable-component-update",
                   "--disable-sync", "--no-proxy-server", "--window-size=1280,1024",
                   f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(switch)
    driver = None
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_for_page(url, process, log)
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        driver.set_page_load_timeout(PATIENCE_SECONDS)
        driver.get(url)
        upload = wait_until(lambda: driver.find_elements(By.CSS_SELECTOR, "#input-audio input[type=file]"), "upload input")
        upload[0].send_keys(str(a_recording()))
        wait_until(lambda: driver.find_elements(By.CSS_SELECTOR, "#input-audio audio"), "the uploaded recording")
        assert "step 2" in driver.find_element(By.ID, "metadata-0").text
        driver.find_element(By.ID, "convert").click()
        results = wait_until(lambda: (found := driver.execute_script(RESULT_AUDIO)) and
                             all(item and (item["readyState"] >= 1 or item["error"]) for item in found) and found,
                             "converted <audio> in both columns")
        screenshot = tmp_path / "demo.png"
        driver.save_screenshot(str(screenshot))
        print(f"demo page screenshot: {screenshot}")
    finally:
        if driver is not None:
            driver.quit()
        process.terminate()
        process.wait(timeout=60)
    for result in results:
        assert result["error"] is None and result["duration"] > 0, (results, log.read_text())
    written = sorted((tmp_path / "results").glob("*.wav"))
    assert len(written) == 2, written
    for path in written:
        assert soundfile.info(path).duration == pytest.approx(results[0]["duration"], abs=0.05)
    assert screenshot.stat().st_size > 0


def wait_until(probe, what: str):
    deadline = time.monotonic() + PATIENCE_SECONDS
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.25)
    pytest.fail(f"no {what} on the demo page within {PATIENCE_SECONDS} s")
