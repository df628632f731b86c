"""`python -m voicetrain.preprocess` into an output folder that someone else wrote or is writing:
records under `.preprocess/` edited to name files outside the corpus (`../x`, an absolute path, a
link leading out), a second launch into the same output, and `layout=ljspeech` recordings whose
names hold the metadata.csv separators. Each test asserts that nothing outside was touched and that
the message is one line."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile

from helpers import environment, output_of
from lock_helpers import lock_held
from voicetrain.data import BUNDLED_CORPUS, read_ljspeech
from voicetrain.preprocess.journal import RECORDS_FOLDER, record_path, remove_files
from voicetrain.preprocess.pipeline import LOCK_FILE, PREPROCESSING, preprocess
from voicetrain.preprocess.settings import STATE_FOLDER, validate
from voicetrain.run.lock import RunLockedError


def bundled_utterance(index: int) -> tuple[object, int]:
    wave, rate = soundfile.read(sorted((BUNDLED_CORPUS / "slt").glob("*.flac"))[index], dtype="float32")
    return wave, rate


def make_input(root: Path, names: list[str], transcripts: bool = False) -> Path:
    """One speaker's folder `root/alice` with a bundled utterance per name (and its .txt)."""
    for index, name in enumerate(names):
        wave, rate = bundled_utterance(index)
        (root / "alice").mkdir(parents=True, exist_ok=True)
        soundfile.write(root / "alice" / f"{name}.wav", wave, rate)
        if transcripts:
            (root / "alice" / f"{name}.txt").write_text(f"Sentence number {index + 1}.")
    return root


def settings(source: Path, target: Path, **changes: object):
    return validate({"input": str(source), "output": str(target), "workers": 1, "progress": False,
                     "slice": {"min_seconds": 1.0}, "loudness": {}, **changes})


@pytest.fixture
def victims(tmp_path: Path) -> list[Path]:
    """Files of the user's, outside the output folder."""
    found = []
    for name in ("victim.txt", "absolute-victim.txt", "linked-victim.txt"):
        path = tmp_path / name
        path.write_text(f"the user's own {name}")
        found.append(path)
    return found


def test_records_naming_files_outside_the_output_never_delete_them(tmp_path: Path, victims: list[Path],
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    raw, out = make_input(tmp_path / "raw", ["one", "two"]), tmp_path / "out"
    preprocess(settings(raw, out), "")
    relative, absolute, linked = victims
    (out / "alice" / "link.wav").symlink_to(linked)
    state = out / STATE_FOLDER
    hostile = {"../victim.txt": 5, str(absolute): 5, "alice/link.wav": 5}
    # A recording that is still in the input, with an outdated key: its rerun would remove the
    # files its old record lists that it does not write again.
    redone = json.loads(record_path(state, "alice/one.wav").read_text())
    redone["key"] = "outdated"
    redone["files"].update(hostile)
    record_path(state, "alice/one.wav").write_text(json.dumps(redone))
    # A recording no longer in the input: its record's files would all be removed.
    gone = {**redone, "source": "alice/gone.wav", "files": hostile, "clips": []}
    record_path(state, "alice/gone.wav").write_text(json.dumps(gone))
    with caplog.at_level(logging.WARNING, logger="voicetrain.preprocess"):
        outcome = preprocess(settings(raw, out), "")
    assert [victim.read_text() for victim in victims] == [f"the user's own {victim.name}" for victim in victims]
    assert (out / "alice" / "link.wav").is_symlink(), "the link itself is not a file this command wrote"
    assert outcome.processed == 1
    # The rerun replaced the edited record of a current recording with its own, whose clips are there.
    (record,) = [record for record in outcome.records if record.source == "alice/one.wav"]
    assert record.files and all((out / name).is_file() and not (out / name).is_symlink() for name in record.files)
    assert "../victim.txt" not in record_path(state, "alice/one.wav").read_text()
    warnings = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    assert any("ignoring" in message and str(record_path(state, "alice/gone.wav")) in message
               and "not a file of the corpus" in message for message in warnings), warnings
    assert all("\n" not in message for message in warnings)
    assert sorted(path.name for path in (state / RECORDS_FOLDER).iterdir()) == sorted(
        [record_path(state, "alice/one.wav").name, record_path(state, "alice/two.wav").name,
         record_path(state, "alice/gone.wav").name])


def test_remove_files_refuses_names_outside_the_corpus(tmp_path: Path, victims: list[Path],
                                                       caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "out"
    (out / STATE_FOLDER / RECORDS_FOLDER).mkdir(parents=True)
    (out / STATE_FOLDER / "config.yaml").write_text("kept")
    (out / "alice").mkdir()
    (out / "alice" / "link.wav").symlink_to(victims[2])
    (out / "alice" / "mine.wav").write_bytes(b"RIFF")
    names = ["../victim.txt", str(victims[1]), "alice/link.wav", f"{STATE_FOLDER}/config.yaml", "alice/mine.wav"]
    with caplog.at_level(logging.WARNING, logger="voicetrain.preprocess"):
        remove_files(out, names)
    assert all(victim.exists() for victim in victims) and (out / STATE_FOLDER / "config.yaml").exists()
    assert not (out / "alice" / "mine.wav").exists(), "a file of the corpus the record names is removed"
    assert len([record for record in caplog.records if "not deleting" in record.getMessage()]) == 4


def test_a_second_launch_into_the_same_output_refuses_naming_the_first(tmp_path: Path) -> None:
    raw, out = make_input(tmp_path / "raw", ["one"]), tmp_path / "out"
    preprocess(settings(raw, out), "")
    live_temporary = out / "alice" / ".tmp-two.wav.abcdefgh"  # what the first launch is writing right now
    live_temporary.write_bytes(b"half a clip")
    with lock_held(out, PREPROCESSING, f"{STATE_FOLDER}/{LOCK_FILE}") as holder:
        with pytest.raises(RunLockedError, match=f"pid {holder.pid}"):
            preprocess(settings(raw, out), "")
        result = subprocess.run([sys.executable, "-m", "voicetrain.preprocess", f"input={raw}", f"output={out}",
                                 "progress=false", "workers=1"], capture_output=True, text=True, env=environment(),
                                timeout=300)
        assert live_temporary.read_bytes() == b"half a clip", "the refused launch removed the other's temporary file"
    text = result.stdout + result.stderr
    assert result.returncode == 2, output_of(result)
    assert "Traceback" not in text and f"pid {holder.pid}" in text, output_of(result)
    (line,) = [line for line in text.splitlines() if f"pid {holder.pid}" in line]
    assert str(out) in line and "being written (voicetrain.preprocess)" in line
    preprocess(settings(raw, out), "")  # once the first is done, the leftover of its launch goes
    assert not live_temporary.exists()


@pytest.mark.parametrize("name, identifier", [("take|one", "take_one"), ("take\nbreak", "take_break"),
                                              (" spaced\r", "spaced_")])
def test_ljspeech_names_with_separators_still_read_back(tmp_path: Path, name: str, identifier: str) -> None:
    raw, out = make_input(tmp_path / "raw", [name, "plain"], transcripts=True), tmp_path / "out"
    preprocess(settings(raw / "alice", out, layout="ljspeech"), "")
    corpus = read_ljspeech(out, val_fraction=0)
    assert sorted((item.utterance_id, item.text) for item in corpus) == [
        ("plain", "Sentence number two."), (identifier, "Sentence number one.")]
    assert all(item.path.is_file() for item in corpus)
