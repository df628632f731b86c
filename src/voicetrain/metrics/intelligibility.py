"""Intelligibility: the text normaliser that WER and CER compare through, and the two error rates.

`scoring_text` is the one normaliser, applied to the reference sentence and to the recogniser's hypothesis alike:
numbers, currencies, ordinals and abbreviations are spelled out exactly as the TTS transcripts spell them
(`voicetrain.transcripts`, which `python -m voicetrain.preprocess` applies), then lower case and ASCII
(`voicetrain.text.normalize_text`), then every punctuation mark becomes a space except an apostrophe inside a
word ("it's"), which the recogniser's dictionary keeps. The error rates are jiwer's: word (or character) edit
distance divided by the reference length. CER counts the spaces between words as characters, as jiwer does.

Imports only the pure text leaves of voicetrain (no model, no torch).
"""

from __future__ import annotations

import re

from voicetrain.transcripts import normalise_transcript
from voicetrain.text import normalize_text

# Anything but a letter, a digit or an apostrophe separates words; an apostrophe only counts inside a word.
NOT_WORD = re.compile(r"[^a-z0-9']+")
LOOSE_APOSTROPHE = re.compile(r"(?<![a-z0-9])'|'(?![a-z0-9])")


def scoring_text(text: str) -> str:
    """`text` as WER and CER compare it: numbers spelled out, lower case, ASCII, no punctuation, one space
    between words (see the module docstring)."""
    spoken = normalize_text(normalise_transcript(text))
    words = NOT_WORD.sub(" ", LOOSE_APOSTROPHE.sub(" ", spoken))
    return " ".join(words.split())


def edit_distance(reference: list[str], hypothesis: list[str]) -> int:
    """Levenshtein distance between two token sequences: substitutions + deletions + insertions."""
    previous = list(range(len(hypothesis) + 1))
    for row, expected in enumerate(reference, start=1):
        current = [row]
        for column, produced in enumerate(hypothesis, start=1):
            current.append(min(previous[column] + 1, current[column - 1] + 1,
                               previous[column - 1] + (expected != produced)))
        previous = current
    return previous[-1]


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word edit distance between the `scoring_text` of both, divided by the reference's word count.

    0.0 for a perfect hypothesis, 1.0 for an empty one; above 1.0 when the hypothesis inserts words.
    """
    expected = scoring_text(reference).split()
    if not expected:
        raise ValueError(f"word_error_rate: the reference {reference!r} holds no words after normalisation; "
                         "WER is undefined for it, leave the utterance out.")
    return edit_distance(expected, scoring_text(hypothesis).split()) / len(expected)


def character_error_rate(reference: str, hypothesis: str) -> float:
    """Character edit distance between the `scoring_text` of both (spaces count), divided by the reference's
    length; 0.0 for a perfect hypothesis, 1.0 for an empty one."""
    expected = scoring_text(reference)
    if not expected:
        raise ValueError(f"character_error_rate: the reference {reference!r} holds no characters after "
                         "normalisation; CER is undefined for it, leave the utterance out.")
    return edit_distance(list(expected), list(scoring_text(hypothesis))) / len(expected)
