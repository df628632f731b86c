"""What a checkpoint holds, without a pickle: state dicts as JSON + safetensors that read back
exactly, and the full training state captured, written and restored bit for bit (synchronously
or from a capture that later training steps cannot change)."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from torch.optim.lr_scheduler import LambdaLR

from voicetrain.checkpoint.loop_state import LoopState
from voicetrain.checkpoint.state_files import StateFileError, read_state, write_state
from voicetrain.checkpoint.training_state import (SnapshotBuffers, TrainingObjects, capture, restore, rng_state,
                                                  write_rank_files, write_shared_files)

from helpers import reset_accelerate


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    reset_accelerate()
    yield
    reset_accelerate()


def same(left: object, right: object) -> bool:
    """Deep equality that also compares types (a tuple is not a list) and tensors exactly."""
    if type(left) is not type(right):
        return False
    if isinstance(left, torch.Tensor):
        return left.dtype == right.dtype and left.shape == right.shape and torch.equal(left, right)
    if isinstance(left, np.ndarray):
        return left.dtype == right.dtype and np.array_equal(left, right)
    if isinstance(left, dict):
        return list(left) == list(right) and all(same(left[key], right[key]) for key in left)
    if isinstance(left, (list, tuple)):
        return len(left) == len(right) and all(same(a, b) for a, b in zip(left, right))
    if isinstance(left, float) and math.isnan(left):
        return math.isnan(right)
    return left == right


def test_state_files_read_back_exactly(tmp_path: Path) -> None:
    state = {
        "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(4, 2)}, 7: {"step": torch.tensor(1.0)}},
        "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.99), "params": [0, 7], "amsgrad": False, "eps": None}],
        "floats": [math.inf, -math.inf, math.nan, 0.1 + 0.2],
        "numpy": np.arange(5, dtype=np.uint32),
        "nested": {"__tensor__": "a user key that looks like a marker"},
        "half": torch.ones(3, dtype=torch.float16),
    }
    written = write_state(tmp_path, "sub/optimizer", state)
    assert sorted(path.name for path in written) == ["optimizer.json", "optimizer.safetensors"]
    assert same(read_state(tmp_path, "sub/optimizer"), state)
    assert not list(tmp_path.rglob("*.pkl")) and not list(tmp_path.rglob("*.bin"))


def test_a_state_that_needs_pickling_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StateFileError, match="without pickling"):
        write_state(tmp_path, "bad", {"callback": print})


def test_a_damaged_state_file_is_an_error_naming_it(tmp_path: Path) -> None:
    write_state(tmp_path, "loop", {"step": 3})
    (tmp_path / "loop.json").write_text('{"step": ')
    with pytest.raises(StateFileError, match="loop.json"):
        read_state(tmp_path, "loop")


def test_rng_state_round_trips(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    write_state(tmp_path, "rng", rng_state())
    expected = (random.random(), np.random.rand(), torch.rand(2))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    from voicetrain.checkpoint.training_state import set_rng_state

    set_rng_state(read_state(tmp_path, "rng"))
    assert (random.random(), np.random.rand()) == expected[:2] and torch.equal(torch.rand(2), expected[2])


def training_objects(seed: int = 0) -> TrainingObjects:
    torch.manual_seed(seed)
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, betas=(0.8, 0.99))
    scheduler = LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    model, optimizer = accelerator.prepare(model, optimizer)
    return TrainingObjects(accelerator, {"model": model}, {"model": optimizer}, {"model": scheduler}, LoopState())


def train_steps(objects: TrainingObjects, steps: int) -> None:
    model, optimizer, scheduler = objects.modules["model"], objects.optimizers["model"], objects.schedulers["model"]
    for _ in range(steps):
        loss = model(torch.randn(5, 4)).square().mean() + torch.nn.functional.dropout(torch.ones(3), 0.5).sum()
        objects.accelerator.backward(loss)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        objects.loop_state.step += 1
        objects.loop_state.samples_seen += 5


def save(objects: TrainingObjects, folder: Path, buffers: SnapshotBuffers | None = None) -> None:
    snapshot = capture(objects, buffers)
    write_rank_files(snapshot, folder, 0)
    write_shared_files(snapshot, folder)


def test_restore_continues_bit_for_bit(tmp_path: Path) -> None:
    straight = training_objects()
    train_steps(straight, 6)
    expected = [value.clone() for value in straight.modules["model"].state_dict().values()]

    interrupted = training_objects()
    train_steps(interrupted, 3)
    save(interrupted, tmp_path)
    reset_accelerate()
    resumed = training_objects(seed=123)  # another initialisation and RNG: everything must come from the files
    assert restore(resumed, tmp_path, rank=0)
    assert resumed.loop_state.step == 3 and resumed.loop_state.samples_seen == 15
    train_steps(resumed, 3)
    for actual, wanted in zip(resumed.modules["model"].state_dict().values(), expected):
        assert torch.equal(actual, wanted)
    assert resumed.schedulers["model"].get_last_lr() == straight.schedulers["model"].get_last_lr()
    assert isinstance(resumed.optimizers["model"].param_groups[0]["betas"], tuple)


def test_a_capture_for_a_background_write_does_not_see_later_steps(tmp_path: Path) -> None:
    objects = training_objects()
    train_steps(objects, 2)
    save(objects, tmp_path / "now")
    buffers = SnapshotBuffers()
    snapshot = capture(objects, buffers)
    train_steps(objects, 2)  # training goes on while the background thread would be writing
    write_rank_files(snapshot, tmp_path / "later", 0)
    write_shared_files(snapshot, tmp_path / "later")
    for name in ("modules/model.safetensors", "optimizers/model.safetensors", "optimizers/model.json",
                 "schedulers/model.json", "loop_state.json", "rng/rank0.json", "rng/rank0.safetensors"):
        assert (tmp_path / "now" / name).read_bytes() == (tmp_path / "later" / name).read_bytes(), name
    # The buffers are reused by the next capture, not reallocated.
    before = {key: buffer.data_ptr() for key, buffer in buffers.buffers.items()}
    capture(objects, buffers)
    assert {key: buffer.data_ptr() for key, buffer in buffers.buffers.items()} == before


def test_a_missing_rng_file_for_a_rank_is_reported_not_invented(tmp_path: Path) -> None:
    objects = training_objects()
    train_steps(objects, 1)
    save(objects, tmp_path)
    assert restore(objects, tmp_path, rank=0)
    assert not restore(objects, tmp_path, rank=1)
