"""The training dataset: cached features cut into examples by the task.

Elements arrive from `StepBatchSampler` as (index, example seed); the crop (or any other random
choice) uses a generator seeded from that, so workers and resumes see identical examples.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from voicetrain.data.readers import Utterance


class TrainingExamples(Dataset):
    def __init__(self, utterances: list[Utterance], mels: list[torch.Tensor], task: "object"):
        self.utterances = utterances
        self.mels = mels
        self.task = task

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, element: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, seed = element
        generator = torch.Generator().manual_seed(seed)
        return self.task.make_example(self.utterances[index], self.mels[index], generator)
