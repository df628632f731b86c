"""`python -m voicetrain.stream` with sound devices: PortAudio through a PulseAudio server of this
test's own with a null sink (the "speakers") and its monitor (the "microphone"), so a machine
without a sound card has devices. Skipped, with the reason, only where PulseAudio or PortAudio is
not installed (Debian: apt-get install pulseaudio libportaudio2)."""

from __future__ import annotations

import ctypes.util
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile

from voicetrain.data import BUNDLED_CORPUS

from helpers import environment, output_of

SINK = "voicetrain_null"
SOURCE = BUNDLED_CORPUS / "awb" / "h01_09.flac"


def missing_audio_stack() -> str | None:
    if shutil.which("pulseaudio") is None or shutil.which("pactl") is None or shutil.which("paplay") is None:
        return "no PulseAudio server to make devices with (apt-get install pulseaudio)"
    if ctypes.util.find_library("portaudio") is None:
        return "no PortAudio library (apt-get install libportaudio2)"
    return None


@pytest.fixture(scope="module")
def pulse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The environment of a private PulseAudio server whose default sink is a null sink and default
    source that sink's monitor: what is played to the "speakers" comes back from the "microphone"."""
    reason = missing_audio_stack()
    if reason:
        pytest.skip(reason)
    runtime = tmp_path_factory.mktemp("pulse")
    runtime.chmod(0o700)
    env = environment(XDG_RUNTIME_DIR=str(runtime), HOME=str(runtime), OMP_NUM_THREADS="1")
    server = subprocess.Popen(["pulseaudio", "--daemonize=no", "--exit-idle-time=-1", "-n", "--disallow-exit",
                               "--load=module-native-protocol-unix", f"--load=module-null-sink sink_name={SINK}",
                               "--log-target=stderr"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
    deadline = time.monotonic() + 30
    while subprocess.run(["pactl", "info"], env=env, capture_output=True).returncode != 0:
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            pytest.fail(f"the PulseAudio server did not start: {server.communicate()[1][-2000:]}")
        time.sleep(0.2)
    for command in (["pactl", "set-default-sink", SINK], ["pactl", "set-default-source", f"{SINK}.monitor"]):
        subprocess.run(command, env=env, check=True, capture_output=True)
    yield env
    server.terminate()
    server.wait(timeout=30)


def stream(env: dict[str, str], cwd: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "voicetrain.stream", *arguments], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_list_devices_names_portaudios_devices(pulse: dict[str, str], tmp_path: Path) -> None:
    result = stream(pulse, tmp_path, "--list-devices")
    assert result.returncode == 0, output_of(result)
    assert "pulse" in result.stdout and "(in " in result.stdout, output_of(result)


def test_microphone_to_file_carries_what_the_speakers_play(pulse: dict[str, str], svc_export: Path,
                                                          tmp_path: Path) -> None:
    output = tmp_path / "from-mic.wav"
    process = subprocess.Popen([sys.executable, "-m", "voicetrain.stream", str(svc_export), "--speaker", "slt",
                                "--input", "mic", "--input-device", "pulse", "--output", str(output), "--seconds",
                                "6"], env=pulse, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    assert process.stdout is not None
    first = process.stdout.readline() + process.stdout.readline()  # the latency, then "devices open: ..."
    assert "algorithmic latency" in first and "devices open: input pulse" in first, \
        first + process.communicate(timeout=60)[1]
    subprocess.run(["paplay", str(SOURCE)], env=pulse, check=True, timeout=60)
    rest, errors = process.communicate(timeout=120)
    assert process.returncode == 0, first + rest + errors
    assert "device latency as PortAudio reports it: input" in rest and "overruns (input dropped)" in rest, rest
    wave, rate = soundfile.read(output, dtype="float32")
    assert rate == 16000 and wave.shape[0] >= 6 * rate
    # The recording (2.2 s) went in at the start, silence after it: the converted speech stands out.
    levels = [float(np.sqrt(np.mean(wave[start:start + rate // 2] ** 2))) for start in range(0, 6 * rate, rate // 2)]
    assert max(levels) > 10 * min(levels) and max(levels) > 1e-3, levels


def test_microphone_to_speakers_reports_devices_and_runs(pulse: dict[str, str], svc_export: Path,
                                                         tmp_path: Path) -> None:
    result = stream(pulse, tmp_path, str(svc_export), "--speaker", "slt", "--input", "mic", "--output", "speakers",
                    "--seconds", "2")
    assert result.returncode == 0, output_of(result)
    assert "device latency as PortAudio reports it: input" in result.stdout and "output" in result.stdout
    assert "algorithmic latency" in result.stdout.splitlines()[0], output_of(result)


def test_device_by_unknown_name_is_refused_with_the_fix(pulse: dict[str, str], svc_export: Path,
                                                        tmp_path: Path) -> None:
    result = stream(pulse, tmp_path, str(svc_export), "--speaker", "slt", "--input", "mic", "--input-device",
                    "no-such-card", "--output", "speakers", "--seconds", "1")
    assert result.returncode == 2, output_of(result)
    assert "no input device's name contains it; see --list-devices" in result.stderr, output_of(result)
