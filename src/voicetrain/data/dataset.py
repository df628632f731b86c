"""The training dataset: each utterance's features, read from the store, cut into an example by the task.

Elements arrive from `StepBatchSampler` as (index, example seed); the crop (or any other random
choice) uses a generator seeded from that, so workers and resumes see identical examples.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import Dataset

from voicetrain.data.readers import Utterance
from voicetrain.features.reading import CorpusFeatures

MakeExample = Callable[[Utterance, dict[str, torch.Tensor], torch.Generator], dict[str, torch.Tensor]]


class TrainingExamples(Dataset):
    def __init__(self, utterances: list[Utterance], features: CorpusFeatures, make_example: MakeExample):
        self.utterances = utterances
        self.features = features
        self.make_example = make_example

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, element: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, seed = element
        generator = torch.Generator().manual_seed(seed)
        return self.make_example(self.utterances[index], self.features.example(index), generator)
