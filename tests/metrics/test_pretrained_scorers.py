"""Local stronger scorers (`--asr-model`, `--speaker-model`): the real loading code on tiny HuBERT-CTC and
WavLM x-vector models that the test builds from random configs and saves with `save_pretrained` (nothing is
downloaded), and the refusal of a folder without safetensors weights. Slow: importing transformers alone takes
tens of seconds on a shared CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from voicetrain.audio_files import load_audio
from voicetrain.data import BUNDLED_CORPUS
from voicetrain.evaluate.command import scoring_models
from voicetrain.metrics.pretrained import CtcRecogniser, PretrainedModelError, XVectorSpeakerModel

pytestmark = pytest.mark.slow
CHARACTERS = "abcdefghijklmnopqrstuvwxyz'"
# The smallest convolutional front end and transformer these architectures accept.
TINY = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, conv_dim=(8, 8),
            conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)


def feature_extractor():  # noqa: ANN201  (a transformers object)
    from transformers import Wav2Vec2FeatureExtractor

    return Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                                    return_attention_mask=False)


@pytest.fixture(scope="module")
def recogniser_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import HubertConfig, HubertForCTC, Wav2Vec2CTCTokenizer, Wav2Vec2Processor

    folder = tmp_path_factory.mktemp("hubert-ctc")
    vocabulary = {"<pad>": 0, "<unk>": 1, "|": 2, **{character: index + 3 for index, character in enumerate(CHARACTERS)}}
    (folder / "vocab.json").write_text(json.dumps(vocabulary))
    tokenizer = Wav2Vec2CTCTokenizer(str(folder / "vocab.json"), unk_token="<unk>", pad_token="<pad>",
                                     word_delimiter_token="|")
    torch.manual_seed(0)
    HubertForCTC(HubertConfig(**TINY, vocab_size=len(vocabulary), pad_token_id=0)).save_pretrained(folder)
    Wav2Vec2Processor(feature_extractor=feature_extractor(), tokenizer=tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def speaker_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import WavLMConfig, WavLMForXVector

    folder = tmp_path_factory.mktemp("wavlm-sv")
    torch.manual_seed(0)
    config = WavLMConfig(**TINY, tdnn_dim=(8, 8), tdnn_kernel=(3, 1), tdnn_dilation=(1, 1), xvector_output_dim=12,
                         num_buckets=16, max_bucket_distance=32)
    WavLMForXVector(config).save_pretrained(folder)
    feature_extractor().save_pretrained(folder)
    return folder


def test_a_local_ctc_recogniser_transcribes_with_its_own_vocabulary(recogniser_folder: Path) -> None:
    recogniser = CtcRecogniser(recogniser_folder)
    # At 24 kHz: resampled to the model's 16 kHz first.
    words = recogniser(load_audio(BUNDLED_CORPUS / "slt" / "h01_09.flac", 24000), 24000)
    assert isinstance(words, str) and words
    assert set(words) <= set(CHARACTERS) | {" ", "<", ">"}  # "<unk>" included


def test_a_local_xvector_model_embeds_the_same_voice_alike(speaker_folder: Path) -> None:
    model = XVectorSpeakerModel(speaker_folder)
    wave = load_audio(BUNDLED_CORPUS / "awb" / "h01_09.flac", 16000)
    first, again = model(wave, 16000), model(wave, 16000)
    assert first.shape == (12,) and np.linalg.norm(first) == pytest.approx(1.0)
    assert float(np.dot(first, again)) == pytest.approx(1.0)


def test_the_evaluation_uses_the_local_models_by_name(recogniser_folder: Path, speaker_folder: Path) -> None:
    models = scoring_models(recogniser_folder, speaker_folder)
    assert models.asr_name == f"the CTC model in {recogniser_folder}"
    assert models.speaker_name == f"the x-vector model in {speaker_folder}"
    assert isinstance(models.transcriber(np.zeros(16000, dtype=np.float32) + 0.01, 16000), str)


def test_a_folder_without_safetensors_is_refused(tmp_path: Path, speaker_folder: Path) -> None:
    (tmp_path / "config.json").write_text((speaker_folder / "config.json").read_text())
    (tmp_path / "pytorch_model.bin").write_bytes(b"a pickle would be here")
    with pytest.raises(PretrainedModelError, match="no .safetensors weights"):
        XVectorSpeakerModel(tmp_path)
    with pytest.raises(PretrainedModelError, match="no config.json"):
        CtcRecogniser(tmp_path / "missing")
