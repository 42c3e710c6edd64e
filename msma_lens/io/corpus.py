"""Text sources: the bundled labelled corpus, local ``.txt``/``.jsonl`` files, Hugging Face datasets, spaCy POS tags.

The bundled corpus (``msma_lens/data/corpus.jsonl``, described in ``data/CORPUS.md``, CC0 1.0) holds short English
documents written for msma-lens: 8 topics x 3 registers (news, narrative, instructions) x 10 documents, each
sentence labelled with a sentence ``type`` and a ``sentiment``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple, overload

from ..errors import ConfigError, ModelLoadError
from ..io.hub import env_true, hub_reachable

SENTENCE_TYPES = ("declarative", "interrogative", "imperative", "exclamatory")
SENTIMENTS = ("positive", "negative", "neutral")
TEXT_SUFFIXES = (".txt", ".jsonl")
BUNDLED_NAME = "corpus.jsonl"

_DOC_KEYS = ("id", "topic", "register", "text", "sentences")
_SENT_KEYS = ("text", "type", "sentiment")


@dataclass(frozen=True)
class Sentence:
    """One sentence with its labels (``type`` in SENTENCE_TYPES, ``sentiment`` in SENTIMENTS)."""

    text: str
    type: str
    sentiment: str


@dataclass(frozen=True)
class Document:
    """A labelled document; ``text`` is its sentences joined by single spaces."""

    id: str
    topic: str
    register: str
    text: str
    sentences: tuple[Sentence, ...]


class Corpus(Sequence[Document]):
    """An ordered, immutable list of documents with label accessors aligned to document order."""

    def __init__(self, docs: Iterable[Document], source: str = "<memory>") -> None:
        self._docs: tuple[Document, ...] = tuple(docs)
        self.source = source

    @overload
    def __getitem__(self, i: int) -> Document: ...
    @overload
    def __getitem__(self, i: slice) -> Corpus: ...

    def __getitem__(self, i: int | slice) -> Document | Corpus:
        if isinstance(i, slice):
            return Corpus(self._docs[i], self.source)
        return self._docs[i]

    def __len__(self) -> int:
        return len(self._docs)

    def __iter__(self) -> Iterator[Document]:
        return iter(self._docs)

    def __repr__(self) -> str:
        return f"Corpus({len(self)} docs, topics={sorted(set(self.topics))}, registers={sorted(set(self.registers))})"

    @property
    def ids(self) -> list[str]:
        return [d.id for d in self._docs]

    @property
    def texts(self) -> list[str]:
        return [d.text for d in self._docs]

    @property
    def topics(self) -> list[str]:
        """Per-document topic, aligned with ``texts`` (use ``sorted(set(...))`` for the distinct values)."""
        return [d.topic for d in self._docs]

    @property
    def registers(self) -> list[str]:
        """Per-document register, aligned with ``texts``."""
        return [d.register for d in self._docs]

    @property
    def sentences(self) -> list[Sentence]:
        """All sentences, flattened in document order."""
        return [s for d in self._docs for s in d.sentences]

    @property
    def sentence_texts(self) -> list[str]:
        return [s.text for s in self.sentences]

    def sentence_labels(self, kind: str) -> list[str]:
        """Per-sentence labels aligned with ``sentence_texts``.

        ``kind`` is ``"type"`` or ``"sentiment"`` (the sentence's own labels), or ``"topic"``/``"register"``/``"id"``
        (inherited from its document).
        """
        if kind in ("type", "sentiment"):
            return [getattr(s, kind) for s in self.sentences]
        if kind in ("topic", "register", "id"):
            return [getattr(d, kind) for d in self._docs for _ in d.sentences]
        raise ConfigError(f"unknown sentence label kind {kind!r}; choose one of 'type', 'sentiment', 'topic', 'register', 'id'")

    def filter(self, topic: str | Iterable[str] | None = None, register: str | Iterable[str] | None = None) -> Corpus:
        """Documents whose topic and register match (a value, a collection of values, or None for any)."""
        topics, registers = _wanted(topic, self.topics, "topic"), _wanted(register, self.registers, "register")
        return Corpus((d for d in self._docs if (topics is None or d.topic in topics)
                       and (registers is None or d.register in registers)), self.source)


def _wanted(value: str | Iterable[str] | None, present: list[str], what: str) -> set[str] | None:
    if value is None:
        return None
    wanted = {value} if isinstance(value, str) else set(value)
    unknown = sorted(wanted - set(present))
    if unknown:
        raise ConfigError(f"unknown {what} {', '.join(map(repr, unknown))}; this corpus has {sorted(set(present))}")
    return wanted


# --------------------------------------------------------------------------------------------- bundled corpus


def bundled_corpus_path() -> Path:
    """Path of the bundled ``corpus.jsonl``."""
    return Path(str(resources.files("msma_lens") / "data" / BUNDLED_NAME))


def load_corpus(path: str | os.PathLike | None = None) -> Corpus:
    """Load and validate the bundled corpus, or a corpus file with the same JSONL schema.

    Raises ConfigError naming the file and line of the first malformed document.
    """
    p = Path(path) if path is not None else bundled_corpus_path()
    docs: list[Document] = []
    seen: dict[str, int] = {}
    for lineno, line in _numbered_lines(p):
        if not line.strip():
            continue
        obj = _parse_json_line(p, lineno, line)
        doc = _parse_document(obj, f"{p}, line {lineno}")
        if doc.id in seen:
            raise ConfigError(f"{p}, line {lineno}: duplicate document id {doc.id!r} (first on line {seen[doc.id]})")
        seen[doc.id] = lineno
        docs.append(doc)
    if not docs:
        raise ConfigError(f"{p}: no documents found")
    return Corpus(docs, str(p))


def _parse_document(obj: Any, where: str) -> Document:
    if not isinstance(obj, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in _DOC_KEYS if k not in obj]
    if missing:
        raise ConfigError(f"{where}: missing field(s) {missing}")
    for k in ("id", "topic", "register", "text"):
        if not isinstance(obj[k], str) or not obj[k].strip():
            raise ConfigError(f"{where}: field {k!r} must be a non-empty string")
    raw = obj["sentences"]
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{where}: field 'sentences' must be a non-empty list")
    sents = []
    for j, s in enumerate(raw):
        w = f"{where}, sentence {j}"
        if not isinstance(s, dict) or any(k not in s for k in _SENT_KEYS):
            raise ConfigError(f"{w}: expected an object with fields {list(_SENT_KEYS)}")
        if not isinstance(s["text"], str) or not s["text"].strip():
            raise ConfigError(f"{w}: 'text' must be a non-empty string")
        if s["type"] not in SENTENCE_TYPES:
            raise ConfigError(f"{w}: type {s['type']!r} is not one of {list(SENTENCE_TYPES)}")
        if s["sentiment"] not in SENTIMENTS:
            raise ConfigError(f"{w}: sentiment {s['sentiment']!r} is not one of {list(SENTIMENTS)}")
        sents.append(Sentence(s["text"], s["type"], s["sentiment"]))
    if obj["text"] != " ".join(s.text for s in sents):
        raise ConfigError(f"{where}: 'text' is not the sentences joined by single spaces")
    return Document(obj["id"], obj["topic"], obj["register"], obj["text"], tuple(sents))


# ------------------------------------------------------------------------------------------------ local files


def _read_utf8(path: Path) -> str:
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ConfigError(f"{path}: not valid UTF-8 at byte offset {e.start} (line {line}): {e.reason}") from None


def _numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    return enumerate(_read_utf8(path).splitlines(), start=1)


def _parse_json_line(path: Path, lineno: int, line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}, line {lineno}: invalid JSON: {e.msg} (column {e.colno})") from None


def load_texts(path: str | os.PathLike, *, field: str = "text", paragraphs: bool = False) -> list[str]:
    """Documents from a local file.

    ``.txt``: one document per non-empty line (surrounding whitespace stripped); with ``paragraphs=True``, blocks
    separated by blank lines instead, each block's lines joined by single spaces. ``.jsonl``: one JSON object per
    non-blank line, the document being its ``field`` string. Raises ConfigError naming the file (and line) for
    unknown extensions, non-UTF-8 bytes, bad JSON, missing/non-string/empty fields, or a file with no documents.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in TEXT_SUFFIXES:
        raise ConfigError(f"{p}: unsupported file type {suffix or '(none)'!r}; supported: {', '.join(TEXT_SUFFIXES)}")
    if suffix == ".txt":
        texts = _txt_documents(p, paragraphs)
    else:
        texts = []
        for lineno, line in _numbered_lines(p):
            if not line.strip():
                continue
            obj = _parse_json_line(p, lineno, line)
            if not isinstance(obj, dict):
                raise ConfigError(f"{p}, line {lineno}: expected a JSON object, got {type(obj).__name__}")
            if field not in obj:
                raise ConfigError(f"{p}, line {lineno}: no field {field!r} (fields: {sorted(obj)})")
            text = obj[field]
            if not isinstance(text, str):
                raise ConfigError(f"{p}, line {lineno}: field {field!r} is {type(text).__name__}, not a string")
            if not text.strip():
                raise ConfigError(f"{p}, line {lineno}: empty document in field {field!r}")
            texts.append(text)
    if not texts:
        raise ConfigError(f"{p}: no documents found")
    return texts


def _txt_documents(path: Path, paragraphs: bool) -> list[str]:
    lines = [ln.strip() for _, ln in _numbered_lines(path)]
    if not paragraphs:
        return [ln for ln in lines if ln]
    docs, block = [], []
    for ln in [*lines, ""]:
        if ln:
            block.append(ln)
        elif block:
            docs.append(" ".join(block))
            block = []
    return docs


# ------------------------------------------------------------------------------------------ Hugging Face hub


def load_hf_dataset(name: str, split: str = "train", field: str = "text", limit: int | None = None, *,
                    config: str | None = None, streaming: bool = False, timeout: float = 3.0) -> list[str]:
    """Texts from a Hugging Face dataset (``datasets`` must be installed); empty rows are skipped.

    Fails fast with ModelLoadError when ``datasets`` is missing or the hub is unreachable: if ``HF_HUB_OFFLINE``
    is set only the local cache is used; otherwise the hub must answer an HTTP probe within ``timeout`` seconds.
    ``name`` may also be a local dataset directory, which needs no network.
    """
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be a positive integer or None, got {limit!r}")
    try:
        import datasets
    except ImportError:
        raise ModelLoadError(f"loading Hugging Face dataset {name!r} needs the 'datasets' package (pip install datasets); "
                             "or use load_texts(path) / load_corpus()") from None
    hint = "use load_texts(path) for a local .txt/.jsonl file or load_corpus() for the bundled corpus"
    offline = env_true("HF_HUB_OFFLINE") or env_true("HF_DATASETS_OFFLINE")
    if not offline and not Path(name).exists() and not hub_reachable(f"api/datasets/{name}", timeout):
        raise ModelLoadError(f"Hugging Face hub is unreachable (no answer within {timeout:g}s) while loading dataset "
                             f"{name!r}; {hint}, or set HF_HUB_OFFLINE=1 to use a cached copy")
    try:
        ds = datasets.load_dataset(name, config, split=split, streaming=streaming)
    except ConnectionError as e:
        why = "Hugging Face hub is unreachable (offline mode is set) and no cached copy exists" if offline \
            else "Hugging Face hub is unreachable"
        raise ModelLoadError(f"cannot load Hugging Face dataset {name!r}: {why}: {e}; {hint}") from None
    except OSError as e:  # includes datasets' DatasetNotFoundError
        raise ModelLoadError(f"cannot load Hugging Face dataset {name!r}: {e}; {hint}") from None
    except ValueError as e:  # unknown split or config
        raise ConfigError(f"Hugging Face dataset {name!r}: {e}") from None
    columns = getattr(ds, "column_names", None)
    if columns is not None and field not in columns:
        raise ConfigError(f"Hugging Face dataset {name!r} (split {split!r}) has no column {field!r}; columns: {columns}")
    texts: list[str] = []
    for row in ds:
        text = row.get(field)
        if isinstance(text, str) and text.strip():
            texts.append(text)
            if limit is not None and len(texts) >= limit:
                break
    if not texts:
        raise ConfigError(f"Hugging Face dataset {name!r} (split {split!r}) has no non-empty {field!r} texts")
    return texts


# ---------------------------------------------------------------------------------------------- spaCy labels


class TokenLabel(NamedTuple):
    """A spaCy token: its text, character span ``[start, end)`` in the input, and universal POS tag."""

    text: str
    start: int
    end: int
    pos: str


def token_labels(texts: str | Sequence[str], batch_size: int = 64) -> list[list[TokenLabel]]:
    """Universal POS tags with character offsets for each text (spaCy ``en_core_web_sm``, loaded lazily)."""
    if isinstance(texts, str):
        texts = [texts]
    from .nlp import spacy_pipeline  # one shared English pipeline per process

    nlp = spacy_pipeline()
    return [[TokenLabel(t.text, t.idx, t.idx + len(t.text), t.pos_) for t in doc]
            for doc in nlp.pipe(list(texts), batch_size=batch_size)]
