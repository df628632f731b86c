"""The optional extra `eval` (`pip install 'voicetrain[eval]'`): importing its scorers with one error line.

Every scorer of `python -m voicetrain.evaluate` ships its model inside its wheel (pocketsphinx's English acoustic
model, dictionary and language model; speechmos's DNSMOS ONNX files; Resemblyzer's speaker encoder), so nothing
is downloaded; `pesq` is an algorithm. A missing one is refused with the install command.
"""

from __future__ import annotations

import importlib
import warnings
from types import ModuleType

EVAL_INSTALL = "pip install 'voicetrain[eval]'"


class MissingExtraError(ModuleNotFoundError):
    """A scorer's package is not installed; the message gives the install command."""


def import_scorer(module: str, scorer: str) -> ModuleType:
    """`importlib.import_module(module)`, or a MissingExtraError naming the scorer and the install command."""
    try:
        with warnings.catch_warnings():
            # webrtcvad (Resemblyzer's) imports pkg_resources, which warns that it is deprecated; nothing to act on.
            warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
            return importlib.import_module(module)
    except ModuleNotFoundError as error:
        raise MissingExtraError(f"{scorer} needs the optional extra 'eval' ({error.name} is not installed): "
                                f"{EVAL_INSTALL}") from error
