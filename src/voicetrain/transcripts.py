"""Transcripts for TTS: the text as it is spoken (English).

A model reads characters, so "$5", "21st" and "Dr." must be written as they are said. This
module expands, in order: currencies ($ £ € ¥, with cents or pence and a scale word such as
million), percentages, ordinals (21st), numbers with thousands separators, decimals (3.14 is
"three point one four"), years (four-digit numbers from 1100 to 2099 read as years), other whole
numbers, a minus sign before a number, "&", "No." before a number, and common abbreviations
(Mr., Dr., St., etc.).
Case and punctuation are kept; the training side lower-cases (voicetrain.text). The original
text is kept beside the result by the caller, never replaced.
"""

from __future__ import annotations

import re

from num2words import num2words

# symbol: (unit, units, hundredth, hundredths)
CURRENCIES = {
    "$": ("dollar", "dollars", "cent", "cents"),
    "£": ("pound", "pounds", "penny", "pence"),
    "€": ("euro", "euros", "cent", "cents"),
    "¥": ("yen", "yen", "sen", "sen"),
}
ABBREVIATIONS = {
    "mr": "mister", "mrs": "missus", "ms": "miss", "dr": "doctor", "drs": "doctors", "st": "saint",
    "jr": "junior", "sr": "senior", "prof": "professor", "rev": "reverend", "gen": "general",
    "col": "colonel", "lt": "lieutenant", "capt": "captain", "sgt": "sergeant", "maj": "major",
    "gov": "governor", "hon": "honorable", "co": "company", "corp": "corporation", "inc": "incorporated",
    "ltd": "limited", "vs": "versus", "etc": "et cetera", "approx": "approximately",
    "dept": "department", "ft": "fort", "mt": "mount",
}
NUMBER_SIGN = re.compile(r"\b(No|no)\.\s?(?=\d)")  # "No. 5", never the word "no." ending a sentence
SPELLED = {"e.g.": "for example", "i.e.": "that is", "&": " and "}
SCALES = r"(?:\s(thousand|million|billion|trillion))?"

CURRENCY = re.compile(r"([$£€¥])\s?(\d[\d,]*)(?:\.(\d+))?" + SCALES)
PERCENT = re.compile(r"(\d[\d,]*(?:\.\d+)?)\s?%")
ORDINAL = re.compile(r"\b(\d+)(st|nd|rd|th)\b", re.IGNORECASE)
GROUPED = re.compile(r"\b\d{1,3}(?:,\d{3})+\b")
DECIMAL = re.compile(r"\b(\d+)\.(\d+)\b")
MINUS = re.compile(r"(?<![\w.])-(?=\d)")
WHOLE = re.compile(r"\b\d+\b")
ABBREVIATION = re.compile(r"\b(" + "|".join(ABBREVIATIONS) + r")\.", re.IGNORECASE)
WHITESPACE = re.compile(r"\s+")


def words(number: int) -> str:
    # num2words writes "one thousand, two hundred"; a comma would read as a pause.
    return num2words(number).replace(",", "")


def spell_whole(digits: str) -> str:
    number = int(digits)
    if len(digits) == 4 and 1100 <= number <= 2099:
        return num2words(number, to="year")
    return words(number)


def spell_decimal(whole: str, fraction: str) -> str:
    return f"{words(int(whole))} point {' '.join(words(int(digit)) for digit in fraction)}"


def spell_currency(match: re.Match[str]) -> str:
    symbol, whole, fraction, scale = match.groups()
    unit, units, hundredth, hundredths = CURRENCIES[symbol]
    whole_number = int(whole.replace(",", ""))
    if scale:
        amount = spell_decimal(whole.replace(",", ""), fraction) if fraction else words(whole_number)
        return f"{amount} {scale} {units}"
    if fraction and len(fraction) > 2:
        return f"{spell_decimal(whole.replace(',', ''), fraction)} {units}"
    cents = int(fraction.ljust(2, "0")) if fraction else 0
    parts = [f"{words(whole_number)} {unit if whole_number == 1 else units}"] if whole_number or not cents else []
    if cents:
        parts.append(f"{words(cents)} {hundredth if cents == 1 else hundredths}")
    return " and ".join(parts)


def spell_percent(match: re.Match[str]) -> str:
    number = match.group(1).replace(",", "")
    whole, _, fraction = number.partition(".")
    return f"{spell_decimal(whole, fraction) if fraction else words(int(whole))} percent"


def expand_abbreviation(match: re.Match[str]) -> str:
    written = match.group(1)
    spoken = ABBREVIATIONS[written.lower()]
    return spoken.capitalize() if written[0].isupper() else spoken


def normalise_transcript(text: str) -> str:
    """`text` with numbers, currencies, ordinals and abbreviations written out as words."""
    for written, spoken in SPELLED.items():
        text = text.replace(written, spoken)
    text = NUMBER_SIGN.sub(lambda match: "Number " if match.group(1) == "No" else "number ", text)
    text = CURRENCY.sub(spell_currency, text)
    text = PERCENT.sub(spell_percent, text)
    text = ORDINAL.sub(lambda match: num2words(int(match.group(1)), to="ordinal"), text)
    text = GROUPED.sub(lambda match: words(int(match.group(0).replace(",", ""))), text)
    text = DECIMAL.sub(lambda match: spell_decimal(match.group(1), match.group(2)), text)
    text = MINUS.sub("minus ", text)
    text = WHOLE.sub(lambda match: spell_whole(match.group(0)), text)
    text = ABBREVIATION.sub(expand_abbreviation, text)
    return WHITESPACE.sub(" ", text).strip()
