"""Text input for TTS: normalisation and a character tokenizer.

The character set is a task setting (`task.characters`), so it travels with every checkpoint and
export config and an exported model always reads text the way it was trained. Id 0 is padding,
id 1 stands for any character outside the set (logged once per character by the caller, never
dropped), and the set's characters follow in order.
"""

from __future__ import annotations

import re
import unicodedata

PAD_ID = 0
UNKNOWN_ID = 1
RESERVED_IDS = 2

# Typographic variants that would otherwise all become the unknown id.
REPLACEMENTS = {"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": "-",
                "\u2026": "...", "\u00a0": " "}
WHITESPACE = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Lower case, accents stripped (é -> e), typographic quotes and dashes made ASCII, runs of
    whitespace collapsed to one space."""
    for original, replacement in REPLACEMENTS.items():
        text = text.replace(original, replacement)
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(character for character in decomposed if not unicodedata.combining(character))
    return WHITESPACE.sub(" ", stripped.lower()).strip()


class CharacterTokenizer:
    """Maps normalised text to ids: 0 padding, 1 unknown, then `characters` in order."""

    def __init__(self, characters: str):
        if len(set(characters)) != len(characters) or not characters:
            raise ValueError(f"characters={characters!r}: must be a non-empty string without repeated characters")
        self.characters = characters
        self.ids = {character: index + RESERVED_IDS for index, character in enumerate(characters)}

    @property
    def vocabulary_size(self) -> int:
        return len(self.characters) + RESERVED_IDS

    def encode(self, text: str) -> list[int]:
        return [self.ids.get(character, UNKNOWN_ID) for character in normalize_text(text)]

    def unknown_characters(self, text: str) -> list[str]:
        return sorted({character for character in normalize_text(text) if character not in self.ids})
