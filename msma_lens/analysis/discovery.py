"""Data-driven scale discovery: the published layer-boundary method (MSPGT, papers.md §B.2) on a model and a corpus.

:func:`discover_scales` runs one pass over a labelled corpus (:func:`collect_features`: every block's residual
pooled per sampled token / per sentence / per document, and every block's attention pattern reduced to its
span), then :func:`discover_from_features` computes per-layer profiles (attention span, adjacent-layer
information, cross-validated linear probes at three levels, residual norm), fuses them into cut points and
bootstraps documents for confidence intervals. The result is a :class:`ScaleDiscovery`. The pure-feature path
(:class:`LayerFeatures`) is public so the algorithm can be tested on planted profiles without a model.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import tl
from ..capture.scales import DEFAULT_NAMES, Scales
from ..errors import ConfigError
from ..io.artifacts import load_artifact, save_artifact, sha256_texts, write_text_atomic
from ..io.corpus import Corpus

__all__ = ["KIND", "LEVELS", "PROBES", "LayerFeatures", "ScaleDiscovery", "adjacent_cka", "attention_span", "boundary_candidates",
           "collect_features", "discover_from_features", "discover_scales", "optimal_cuts", "scale_names"]

KIND = "msma_lens.ScaleDiscovery"
#: probe name -> level (token / sentence / document); the labels come from spaCy (pos) or the bundled corpus
PROBES: dict[str, str] = {"pos": "token", "sentence_type": "sentence", "sentiment": "sentence",
                          "topic": "document", "register": "document"}
LEVELS = ("token", "sentence", "document")
_SENT_ATTR = {"sentence_type": "type", "sentiment": "sentiment"}


# ============================================================================================ features
@dataclass
class LayerFeatures:
    """Per-layer features of a set of documents: everything :func:`discover_from_features` needs.

    * ``token``: ``[L, n_tok, d]`` residuals of a seeded sample of content tokens (the token probe and the
      adjacent-layer information); ``token_doc`` ``[n_tok]`` their document index; ``info_rows`` the rows (a subset
      of the sample) used for the adjacent-layer information.
    * ``sentence``: ``[L, n_sent, d]`` mean residual over each sentence's tokens; ``sentence_doc`` ``[n_sent]``.
    * ``document``: ``[L, n_doc, d]`` mean residual over each document's content tokens.
    * ``labels``: probe name -> labels aligned with the rows of its level (``pos`` with ``token``, ...).
    * ``attn_span_sum`` / ``attn_uniform_sum`` / ``attn_queries``: ``[n_doc, L]`` per-document sums over content
      queries of the head-mean attention span, of the span of uniform attention over the same keys, and the
      number of queries (sums, so a bootstrap over documents re-weights them exactly).
    * ``norm_sum``: ``[n_doc, L]`` per-document sum of content-token residual norms (divided by ``norm_count``).

    Arrays may be numpy or torch; any of ``token`` / ``sentence`` / ``document`` may be ``None`` when no probe
    needs it (``token`` is always needed: the adjacent-layer information is computed on it).
    """

    n_layers: int
    token: Any
    token_doc: Any
    document: Any = None
    sentence: Any = None
    sentence_doc: Any = None
    labels: dict[str, Any] = field(default_factory=dict)
    attn_span_sum: Any = None
    attn_uniform_sum: Any = None
    attn_queries: Any = None
    norm_sum: Any = None
    norm_count: Any = None
    info_rows: Any = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        L = self.n_layers
        if not isinstance(L, int) or isinstance(L, bool) or L < 1:
            raise ConfigError(f"n_layers must be a positive int, got {L!r}")
        self.token = _arr3(self.token, "token", L)
        self.token_doc = np.asarray(self.token_doc, dtype=np.int64)
        if self.token_doc.shape != (self.token.shape[1],):
            raise ConfigError(f"token_doc has shape {self.token_doc.shape}, expected ({self.token.shape[1]},)")
        if self.document is not None:
            self.document = _arr3(self.document, "document", L)
        if self.sentence is not None:
            self.sentence = _arr3(self.sentence, "sentence", L)
            self.sentence_doc = np.asarray(self.sentence_doc, dtype=np.int64)
            if self.sentence_doc.shape != (self.sentence.shape[1],):
                raise ConfigError(f"sentence_doc has shape {self.sentence_doc.shape}, expected ({self.sentence.shape[1]},)")
        self.n_docs = int(self.document.shape[1]) if self.document is not None else int(self.token_doc.max()) + 1
        for k in ("attn_span_sum", "attn_uniform_sum", "attn_queries", "norm_sum", "norm_count"):
            v = getattr(self, k)
            if v is not None:
                v = np.asarray(v.detach().cpu() if hasattr(v, "detach") else v, dtype=np.float64)
                if k == "norm_count" and v.ndim == 1:
                    v = np.repeat(v[:, None], L, 1)
                if v.shape != (self.n_docs, L):
                    raise ConfigError(f"{k} has shape {v.shape}, expected (n_docs, n_layers) = ({self.n_docs}, {L})")
                setattr(self, k, v)
        self.info_rows = (np.arange(self.token.shape[1]) if self.info_rows is None
                          else np.asarray(self.info_rows, dtype=np.int64))
        rows = {"token": self.token.shape[1], "sentence": None if self.sentence is None else self.sentence.shape[1],
                "document": self.n_docs}
        for name, y in list(self.labels.items()):
            if name not in PROBES:
                raise ConfigError(f"unknown probe {name!r} in labels; valid: {list(PROBES)}")
            y = np.asarray(y)
            want = rows[PROBES[name]]
            if want is None or y.shape != (want,):
                raise ConfigError(f"labels for probe {name!r} have shape {y.shape}, expected ({want},) "
                                  f"(one per {PROBES[name]} row)")
            self.labels[name] = y

    def rows_doc(self, level: str) -> np.ndarray:
        """Document index of each row of ``level``."""
        return {"token": self.token_doc, "sentence": self.sentence_doc, "document": np.arange(self.n_docs)}[level]

    def level_x(self, level: str) -> torch.Tensor:
        return {"token": self.token, "sentence": self.sentence, "document": self.document}[level]


def _arr3(x: Any, name: str, L: int) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    t = t.detach().float().cpu()
    if t.ndim != 3 or t.shape[0] != L:
        raise ConfigError(f"{name} features must be [n_layers={L}, rows, d], got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ConfigError(f"{name} features contain NaN or Inf")
    return t


# ============================================================================================ capture
def _labelled(corpus: Any, probes: Sequence[str]) -> tuple[list[str], Corpus | None]:
    """Texts and the labelled Corpus (or None for plain texts); ConfigError names a probe that needs labels."""
    if isinstance(corpus, Corpus):
        return corpus.texts, corpus
    if isinstance(corpus, str) or not isinstance(corpus, Sequence):
        raise ConfigError(f"corpus must be a labelled Corpus (msma_lens.load_corpus()) or a list of texts, got "
                          f"{type(corpus).__name__}")
    texts = list(corpus)
    if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise ConfigError("corpus must hold non-empty texts")
    need = [p for p in probes if p != "pos"]
    if need:
        raise ConfigError(f"probe {need[0]!r} needs corpus labels, but corpus is a list of {len(texts)} texts without "
                          f"labels: pass a labelled Corpus (msma_lens.load_corpus()), or probes=('pos',) / probes=()")
    return texts, None


def _select_docs(corpus: Any, max_docs: int | None, seed: int) -> Any:
    """At most ``max_docs`` documents, round-robin over (topic, register) cells after a seeded shuffle."""
    n = len(corpus)
    if max_docs is None or max_docs >= n:
        return corpus
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    if isinstance(corpus, Corpus):
        cells: dict[tuple, list[int]] = {}
        for i in perm:
            cells.setdefault((corpus[int(i)].topic, corpus[int(i)].register), []).append(int(i))
        order, queues = [], [cells[k] for k in sorted(cells)]
        while len(order) < n:
            for q in queues:
                if q:
                    order.append(q.pop(0))
        keep = sorted(order[:max_docs])
        return Corpus([corpus[i] for i in keep], corpus.source)
    return [corpus[int(i)] for i in sorted(perm[:max_docs])]


def _offsets(model: Any, texts: list[str], seqs: list[list[int]]) -> list[list[tuple[int, int]]]:
    """Character span of every token of ``seqs`` (specials get (0, 0)); needs a fast tokenizer."""
    tok = model.tokenizer
    encoder = tl.is_encoder(model)
    out = []
    for i, (t, ids) in enumerate(zip(texts, seqs)):
        try:
            enc = tok(t, add_special_tokens=encoder, return_offsets_mapping=True)
        except (NotImplementedError, ValueError, TypeError) as e:
            raise ConfigError(f"probe 'pos' and the sentence probes need token character offsets, which this tokenizer "
                              f"cannot give ({e}); use a fast tokenizer or probes=('topic', 'register')") from None
        off = [tuple(o) for o in enc["offset_mapping"]]
        if len(off) == len(ids) - 1:  # the BOS tl.encode prepended
            off = [(0, 0), *off]
        if len(off) != len(ids):
            raise ConfigError(f"document {i}: the tokenizer's offsets ({len(off)}) do not match its tokens ({len(ids)})")
        out.append(off)
    return out


def _span_of(off: tuple[int, int], text: str) -> int:
    """First non-space character of a token span (-1 for an empty span)."""
    a, b = off
    while a < b and text[a].isspace():
        a += 1
    return a if a < b else -1


def collect_features(model: Any, corpus: Any = None, *, probes: Sequence[str] = tuple(PROBES), max_docs: int | None = None,
                     max_tokens: int = 3000, info_tokens: int = 1024, batch_size: int = 8, seed: int = 0,
                     progress: bool = True) -> LayerFeatures:
    """One forward pass over ``corpus`` collecting what scale discovery needs from every block.

    Reads ``blocks.N.hook_resid_post`` and ``blocks.N.attn.hook_pattern`` of all blocks. Residuals are pooled
    per document (mean over content tokens), per sentence (mean over the tokens whose first character lies in
    the sentence), and kept for a seeded sample of ``max_tokens`` content tokens (POS-tagged ones when the
    ``pos`` probe is on: spaCy tag of the word holding the token's first non-space character);
    ``info_tokens`` of them feed the adjacent-layer information. BOS / [CLS] / [SEP] / padding are never
    queries, rows or samples. Attention span per query ``t`` is ``Σ_i A_{t,i}|t−i|`` averaged over heads
    (keys: every attended position, BOS included, as in the published formula), summed per document.
    """
    tl.check_model(model)
    probes = _check_probes(probes)
    texts, labelled = _labelled(corpus, probes)
    for name, v in (("max_tokens", max_tokens), ("info_tokens", info_tokens), ("batch_size", batch_size)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"{name} must be a positive int, got {v!r}")
    if max_docs is not None and (not isinstance(max_docs, int) or isinstance(max_docs, bool) or max_docs < 2):
        raise ConfigError(f"max_docs must be an int >= 2 or None, got {max_docs!r}")
    src = _select_docs(labelled if labelled is not None else texts, max_docs, seed)
    texts = src.texts if isinstance(src, Corpus) else list(src)
    labelled = src if isinstance(src, Corpus) else None
    L, n_docs = tl.n_layers(model), len(texts)
    seqs, specials = tl.encode(model, texts)
    need_spans = (labelled is not None and any(PROBES[p] == "sentence" for p in probes)) or "pos" in probes
    offs = _offsets(model, texts, seqs) if need_spans else None
    ctx = tl.context_length(model)  # longer documents are truncated (the bundled corpus fits every model's context)
    seqs, specials = [s[:ctx] for s in seqs], [sp[:ctx] for sp in specials]
    offs = [o[:ctx] for o in offs] if offs is not None else None

    # per content token: its sentence index and POS label
    sent_of: list[np.ndarray] = []
    sent_rows: list[tuple[int, int]] = []  # (doc, sentence-in-doc) for each global sentence row
    sent_labels: dict[str, list[str]] = {p: [] for p in probes if PROBES[p] == "sentence"}
    pos_of: list[list[str | None]] = []
    tags = None
    if "pos" in probes:
        from ..io.corpus import token_labels

        tags = token_labels(texts)
    for d, (ids, sp) in enumerate(zip(seqs, specials)):
        content = [j for j in range(len(ids)) if not sp[j]]
        starts = [(_span_of(offs[d][j], texts[d]) if offs is not None else -1) for j in range(len(ids))]
        if sent_labels:
            bounds, c = [], 0
            for s in labelled[d].sentences:
                bounds.append((c, c + len(s.text)))
                c += len(s.text) + 1
            idx = np.full(len(ids), -1, dtype=np.int64)
            used = {}
            for j in content:
                k = next((k for k, (a, b) in enumerate(bounds) if a <= starts[j] < b + 1), -1)
                if k >= 0:
                    if k not in used:
                        used[k] = len(sent_rows)
                        sent_rows.append((d, k))
                        for p in sent_labels:
                            sent_labels[p].append(getattr(labelled[d].sentences[k], _SENT_ATTR[p]))
                    idx[j] = used[k]
            sent_of.append(idx)
        if tags is not None:
            pos: list[str | None] = [None] * len(ids)
            tt = tags[d]
            first = [t.start for t in tt]
            for j in content:
                s = starts[j]
                k = bisect.bisect_right(first, s) - 1
                if s >= 0 and k >= 0 and s < tt[k].end:
                    pos[j] = tt[k].pos
            pos_of.append(pos)
    # the token sample: (doc, position) pairs
    pool = [(d, j) for d, sp in enumerate(specials) for j in range(len(sp)) if not sp[j]
            and (tags is None or pos_of[d][j] is not None)]
    if not pool:
        raise ConfigError("the corpus has no content tokens to sample (all are special tokens or untagged)")
    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(pool))[:max_tokens]
    sample = sorted(pool[i] for i in pick)
    info_rows = np.sort(rng.permutation(len(sample))[:info_tokens])
    where = {dj: r for r, dj in enumerate(sample)}

    d_model = tl.d_model(model)
    tok_x = torch.zeros(L, len(sample), d_model)
    doc_x = torch.zeros(L, n_docs, d_model)
    sen_x = torch.zeros(L, len(sent_rows), d_model) if sent_labels else None
    span_sum, unif_sum = np.zeros((n_docs, L)), np.zeros((n_docs, L))
    n_q, norm_sum = np.zeros((n_docs, L)), np.zeros((n_docs, L))
    resid = [tl.resid_name(model, x) for x in range(L)]
    patt = [tl.attn_hook_name(model, x, "pattern") for x in range(L)]
    causal = not tl.is_encoder(model)
    order = sorted(range(n_docs), key=lambda i: len(seqs[i]))
    batches = [order[i:i + batch_size] for i in range(0, n_docs, batch_size)]
    it: Any = batches
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(batches, desc="discover: capture", unit="batch", leave=False)
    dev = tl.model_device(model)
    with torch.no_grad():
        for idx in it:
            toks, mask, content = tl.pad_batch(model, [seqs[i] for i in idx], [specials[i] for i in idx])
            cache = tl.run_with_cache(model, toks.to(dev), mask.to(dev), resid + patt, stop_at_layer=None)
            cm = content.double()
            for x in range(L):
                h = cache[resid[x]].float().cpu()
                span, unif = attention_span(cache[patt[x]], mask, causal=causal)
                nrm = h.norm(dim=-1).double()
                w = content.float()[..., None]
                dm = (h * w).sum(1) / w.sum(1).clamp(min=1)
                for b, d in enumerate(idx):
                    doc_x[x, d] = dm[b]
                    span_sum[d, x] = float((span[b] * cm[b]).sum())
                    unif_sum[d, x] = float((unif[b] * cm[b]).sum())
                    n_q[d, x] = float(cm[b].sum())
                    norm_sum[d, x] = float((nrm[b] * cm[b]).sum())
                    n = len(seqs[d])
                    for j in range(n):
                        r = where.get((d, j))
                        if r is not None:
                            tok_x[x, r] = h[b, j]
                    if sen_x is not None:
                        si = torch.as_tensor(sent_of[d][:n])
                        for k in torch.unique(si[si >= 0]).tolist():
                            sen_x[x, k] = h[b, :n][si == k].mean(0)
            del cache
    labels: dict[str, Any] = {}
    if "pos" in probes:
        labels["pos"] = np.array([pos_of[d][j] for d, j in sample])
    for p, ys in sent_labels.items():
        labels[p] = np.array(ys)
    if labelled is not None:
        if "topic" in probes:
            labels["topic"] = np.array(labelled.topics)
        if "register" in probes:
            labels["register"] = np.array(labelled.registers)
    meta = {**tl.provenance(model), "corpus_sha256": sha256_texts(texts), "n_docs": n_docs,
            "doc_ids": labelled.ids if labelled is not None else list(range(n_docs)), "causal": causal,
            "hooks": {"resid": "blocks.N.hook_resid_post", "attention": "blocks.N.attn.hook_pattern"}}
    return LayerFeatures(L, tok_x, np.array([d for d, _ in sample]), document=doc_x, sentence=sen_x,
                         sentence_doc=np.array([d for d, _ in sent_rows]) if sen_x is not None else None,
                         labels=labels, attn_span_sum=span_sum, attn_uniform_sum=unif_sum, attn_queries=n_q,
                         norm_sum=norm_sum, norm_count=n_q, info_rows=info_rows, meta=meta)


def attention_span(pattern: torch.Tensor, mask: torch.Tensor, *, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-query attention span and its uniform-attention reference, both ``[B, T]`` (float64, on CPU).

    ``span[b, t] = (1/H) Σ_h Σ_i A[b, h, t, i]·|t − i|`` for a pattern ``[B, H, T, T]`` (papers.md §B.2);
    ``uniform[b, t]`` is the span of uniform attention over the keys query t can see (attended keys, and
    ``i ≤ t`` when ``causal``): ``t/2`` for a causal unpadded row, ``(1/n)Σ_i|t − i|`` for a bidirectional one.
    """
    a = pattern.detach().double().cpu()
    if a.ndim != 4 or a.shape[-1] != a.shape[-2]:
        raise ConfigError(f"attention pattern must be [batch, heads, query, key], got shape {tuple(a.shape)}")
    T = a.shape[-1]
    pos = torch.arange(T, dtype=torch.float64)
    dist = (pos[:, None] - pos[None, :]).abs()
    span = (a.mean(1) * dist).sum(-1)
    keys = mask.detach().cpu().bool()[:, None, :].expand(-1, T, -1)
    if causal:
        keys = keys & torch.ones(T, T, dtype=torch.bool).tril()[None]
    kf = keys.double()
    return span, (kf * dist).sum(-1) / kf.sum(-1).clamp(min=1)


# ============================================================================================ profiles
def _check_probes(probes: Sequence[str]) -> tuple[str, ...]:
    if isinstance(probes, str):
        probes = (probes,)
    probes = tuple(probes)
    for p in probes:
        if p not in PROBES:
            raise ConfigError(f"unknown probe {p!r}; valid: {list(PROBES)}")
    if len(set(probes)) != len(probes):
        raise ConfigError(f"probes lists a name twice: {list(probes)}")
    return probes


def _grams(X: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``[L, n, n]`` linear Gram matrices of the per-layer standardised, centred features, diagonal zeroed (float64)."""
    out = []
    for x in X:
        x = x.to(device, torch.float64)
        x = x - x.mean(0)
        sd = x.std(0)
        x = x / torch.where(sd > 0, sd, torch.ones_like(sd))
        out.append((x @ x.T).fill_diagonal_(0.0).cpu())
    return torch.stack(out)


def adjacent_cka(grams: torch.Tensor, weights: np.ndarray | None = None) -> np.ndarray:
    """Debiased linear CKA between layers l and l+1 (``[L-1]``) from per-layer zero-diagonal Grams ``[L, n, n]``.

    The unbiased HSIC (Song et al. 2012) as in :func:`msma_lens.analysis.metrics.cka_debiased`. ``weights``
    (``[n]`` non-negative integers, default all 1) are row multiplicities, as a bootstrap draws them: the
    estimate is that of the sample holding row a ``weights[a]`` times, with pairs of copies of one row left
    out like the diagonal. Computed from Gram entries and matrix-vector products, without forming that sample.
    """
    n_rows = grams.shape[-1]
    c = torch.ones(n_rows, dtype=torch.float64) if weights is None else torch.as_tensor(np.asarray(weights, dtype=np.float64))
    n = float(c.sum())
    if n < 4:
        raise ConfigError(f"adjacent-layer CKA needs at least 4 tokens, got {n:g}")
    cc = c[:, None] * c[None, :]

    def terms(layer: int) -> tuple:
        K = grams[layer]
        Kc = K @ c  # row sums over the other rows of the sample (per distinct row)
        return K, K * cc, Kc, float(c @ Kc)

    def hsic(a: tuple, b: tuple) -> float:
        (_, KAc, ra, sa), (KB, _, rb, sb) = a, b
        tr = float((KAc * KB).sum())
        return (tr + sa * sb / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * float((c * ra * rb).sum())) / (n * (n - 3))

    out, prev = [], terms(0)
    h_prev = hsic(prev, prev)
    for layer in range(1, grams.shape[0]):
        cur = terms(layer)
        h_cur = hsic(cur, cur)
        den = h_prev * h_cur
        out.append(hsic(prev, cur) / math.sqrt(den) if den > 0 else 0.0)
        prev, h_prev = cur, h_cur
    return np.asarray(out, dtype=np.float64)


def _probe_oof(X: torch.Tensor, y: np.ndarray, groups: np.ndarray, n_folds: int, probe_dim: int, seed: int,
               name: str, progress: bool) -> np.ndarray:
    """Out-of-fold correctness ``[L, n]`` of a per-layer linear probe (StandardScaler → PCA → LogisticRegression,
    GroupKFold by document)."""
    from sklearn.decomposition import PCA
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = list(GroupKFold(n_splits=n_folds).split(np.zeros(len(y)), y, groups))
    out = np.zeros((X.shape[0], len(y)), dtype=bool)
    it: Any = range(X.shape[0])
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=f"discover: probe {name}", unit="layer", leave=False)
    for layer in it:
        x = X[layer].numpy().astype(np.float64)
        for tr, te in folds:
            if len(np.unique(y[tr])) < 2:
                out[layer, te] = y[te] == y[tr][0]
                continue
            k = max(1, min(probe_dim, len(tr) - 1, x.shape[1]))
            clf = make_pipeline(StandardScaler(), PCA(n_components=k, random_state=seed),
                                LogisticRegression(max_iter=300, class_weight="balanced"))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                clf.fit(x[tr], y[tr])
            out[layer, te] = clf.predict(x[te]) == y[te]
    return out


def _balanced_acc(correct: np.ndarray, y_codes: np.ndarray, n_classes: int, w: np.ndarray) -> np.ndarray:
    """Weighted balanced accuracy per layer: mean over present classes of the weighted recall."""
    tot = np.bincount(y_codes, weights=w, minlength=n_classes)
    present = tot > 0
    rec = np.stack([np.bincount(y_codes, weights=w * c, minlength=n_classes) for c in correct])  # [L, C]
    return (rec[:, present] / tot[present]).mean(1)


# ============================================================================================ cut points
def boundary_candidates(adj_info: np.ndarray, n_sd: float = 2.0) -> tuple[list[int], np.ndarray]:
    """Published rule (§B.2): ΔI(l) = I(l;l+1) − I(l−1;l) for l = 1..L−2; a boundary is proposed where ΔI(l) falls more
    than ``n_sd`` (population) standard deviations below its mean over layers. A drop at ΔI(l) means block l+1
    differs from block l, so the candidate cut is layer l+1 (the first layer of the next scale).

    Returns (candidate cut layers, ΔI z-scores indexed by cut layer ``[L]``, NaN where undefined).
    """
    info = np.asarray(adj_info, dtype=np.float64)
    L = info.shape[0] + 1
    z = np.full(L, np.nan)
    if info.shape[0] < 2:
        return [], z
    dI = np.diff(info)  # dI[l-1] = I(l; l+1) - I(l-1; l), l = 1..L-2
    sd = dI.std()
    if sd > 0:
        z[2:] = (dI - dI.mean()) / sd
    return [int(b) for b in range(2, L) if z[b] < -n_sd], z


def optimal_cuts(Z: np.ndarray, weights: np.ndarray, bonus: np.ndarray, n_segments: int,
                 allowed: Sequence[int] | None = None) -> tuple[tuple[int, ...], float, np.ndarray]:
    """Exact dynamic programme: split layers ``0..L−1`` into ``n_segments`` contiguous segments minimising
    ``Σ_segments Σ_columns w_c·SSE_c(segment) − Σ_cuts bonus[cut]``; cuts (first layer of a segment) only in
    ``allowed`` (default all of 1..L−1).

    Returns (cuts, objective, forced) where ``forced[b]`` is the best objective with a cut at ``b`` and the
    other cuts from ``allowed`` (``n_segments`` ≥ 2; +inf where impossible, NaN at b = 0).
    """
    Z = np.asarray(Z, dtype=np.float64)
    L = Z.shape[0]
    if not 1 <= n_segments <= L:
        raise ConfigError(f"n_scales must be between 1 and the number of layers ({L}), got {n_segments}")
    ok = np.zeros(L + 1, dtype=bool)
    ok[list(range(1, L)) if allowed is None else [int(b) for b in allowed]] = True
    c1 = np.vstack([np.zeros((1, Z.shape[1])), np.cumsum(Z, 0)])
    c2 = np.vstack([np.zeros((1, Z.shape[1])), np.cumsum(Z * Z, 0)])

    def cost(i: int, j: int) -> float:
        n = j - i
        s1, s2 = c1[j] - c1[i], c2[j] - c2[i]
        return float((weights * (s2 - s1 * s1 / n)).sum())

    inf = math.inf
    # F[k, j]: best split of [0, j) into k segments (its internal cuts allowed); G[k, i]: of [i, L)
    F = np.full((n_segments + 1, L + 1), inf)
    argF = np.zeros((n_segments + 1, L + 1), dtype=np.int64)
    G = np.full((n_segments + 1, L + 1), inf)
    for j in range(1, L + 1):
        F[1, j] = cost(0, j)
    for i in range(L):
        G[1, i] = cost(i, L)
    for k in range(2, n_segments + 1):
        for j in range(k, L + 1):
            best, arg = inf, 0
            for i in range(k - 1, j):
                if ok[i] and F[k - 1, i] < inf:
                    v = F[k - 1, i] + cost(i, j) - bonus[i]
                    if v < best:
                        best, arg = v, i
            F[k, j], argF[k, j] = best, arg
        for i in range(L - k, -1, -1):
            best = inf
            for j in range(i + 1, L - k + 2):
                if ok[j] and G[k - 1, j] < inf:
                    best = min(best, cost(i, j) + G[k - 1, j] - bonus[j])
            G[k, i] = best
    obj = F[n_segments, L]
    if obj == inf:
        raise ConfigError(f"no {n_segments}-segment split uses only the allowed cuts {sorted(np.flatnonzero(ok))}")
    cuts, j = [], L
    for k in range(n_segments, 1, -1):
        j = int(argF[k, j])
        cuts.append(j)
    forced = np.full(L, inf)
    forced[0] = np.nan
    m = max(n_segments, 2)
    for b in range(1, L):
        forced[b] = min((F[k1, b] + G[m - k1, b] - bonus[b] for k1 in range(1, m) if k1 <= b and m - k1 <= L - b),
                        default=inf) if m <= n_segments else cost(0, b) + cost(b, L) - bonus[b]
    return tuple(sorted(cuts)), float(obj), forced


def scale_names(n_scales: int) -> tuple[str, ...]:
    """``local / intermediate / global`` for 3 scales, ``scale_0 … scale_{k-1}`` otherwise."""
    return DEFAULT_NAMES if n_scales == 3 else tuple(f"scale_{i}" for i in range(n_scales))


# ============================================================================================ result
@dataclass
class ScaleDiscovery:
    """The outcome of :func:`discover_scales`.

    ``scales`` (a :class:`Scales`), ``boundaries`` (cut layers: the first layer of every scale but the first),
    ``boundary_ci`` (percentile bootstrap CI over documents of each cut, at ``config['level']``),
    ``boundary_samples`` (``[n_boot, n_cuts]``), ``candidates`` (the 2-SD rule's cuts), ``profiles`` (per-layer
    arrays ``[L]``: ``attn_span``, ``attn_span_rel``, ``adj_info`` (I(l; l+1), NaN at the last layer),
    ``adj_info_dz`` (z-score of ΔI at cut layer l), ``norm``, ``probe.<name>`` (held-out balanced accuracy),
    ``level.<token|sentence|document>`` (chance-corrected level score)), ``profile_ci`` (bootstrap
    ``[2, L]`` per profile), ``fused`` (``[L]``: the fused objective gain of the best split with a cut at layer
    l, so the chosen cuts are its maxima among allowed cuts; NaN at layer 0), ``probe_info`` (classes, chance,
    majority floor, rows per probe), ``config`` and ``provenance``.
    """

    scales: Scales
    boundaries: tuple[int, ...]
    boundary_ci: list[tuple[int, int]]
    boundary_samples: np.ndarray
    candidates: tuple[int, ...]
    profiles: dict[str, np.ndarray]
    profile_ci: dict[str, np.ndarray]
    fused: np.ndarray
    probe_info: dict[str, dict]
    config: dict
    provenance: dict

    @property
    def n_layers(self) -> int:
        return int(self.fused.shape[0])

    @property
    def stability(self) -> float:
        """Fraction of bootstrap replicates whose cuts equal ``boundaries`` exactly (NaN without replicates)."""
        s = self.boundary_samples
        if s.shape[0] == 0:
            return float("nan")
        return float((s == np.asarray(self.boundaries)[None]).all(1).mean()) if s.shape[1] else 1.0

    def table(self) -> str:
        """Header (partition, cuts with CIs, stability) and one row per layer of the profiles."""
        lvl = self.config.get("level", 0.95)
        cuts = ", ".join(f"{b} [{lo}, {hi}]" for b, (lo, hi) in zip(self.boundaries, self.boundary_ci)) or "none"
        lines = [f"discovered {self.scales!r} ({self.provenance.get('model_id', '?')}, {self.config.get('n_docs')} documents)",
                 f"cuts (first layer of a scale) with {lvl:.0%} bootstrap CI over documents: {cuts}; "
                 f"stability {self.stability:.2f} over {self.boundary_samples.shape[0]} replicates",
                 f"2-SD adjacent-information candidates: {list(self.candidates) or 'none'}; adjacent information = "
                 f"{self.config.get('adjacent')}; fusion weights (probe, attention, information) = {self.config.get('weights')}"]
        probes = [k for k in self.profiles if k.startswith("probe.")]
        head = f"{'layer':>5} {'scale':<14}{'span':>8}{'I(l;l+1)':>10}{'dI z':>7}{'norm':>9}"
        head += "".join(f"{k[6:][:11]:>12}" for k in probes) + f"{'fused':>9}"
        lines.append(head)
        P = self.profiles
        for layer in range(self.n_layers):
            mark = "|" if layer in self.boundaries else ("*" if layer in self.candidates else " ")
            row = (f"{layer:>4}{mark} {self.scales.scale_of(layer) or '':<14}{P['attn_span'][layer]:>8.2f}"
                   f"{_f(P['adj_info'][layer], 10, 4)}{_f(P['adj_info_dz'][layer], 7, 2)}{P['norm'][layer]:>9.2f}")
            row += "".join(_f(P[k][layer], 12, 3) for k in probes) + _f(self.fused[layer], 9, 3)
            lines.append(row)
        for k in self.config.get("probes", list(self.probe_info)):
            info = self.probe_info[k]
            lines.append(f"probe {k}: {info['level']} level, {info['n']} rows, {info['n_classes']} classes, chance "
                         f"{info['chance']:.3f}, majority-class accuracy {info['majority']:.3f}")
        lines.append("'|' = chosen cut, '*' = 2-SD candidate; probe columns = held-out balanced accuracy (GroupKFold by document)")
        return "\n".join(lines)

    def figures(self) -> dict:
        """``{"profiles": fig}``: probe, attention, information and fused profiles vs depth, cuts and CIs marked."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        L = np.arange(self.n_layers)
        P = self.profiles
        fig = make_subplots(rows=4, cols=1, shared_xaxes=True, vertical_spacing=0.05,
                            subplot_titles=["probe balanced accuracy (held out)", "attention span (mean |t − i|)",
                                            "adjacent-layer information I(l; l+1)", "fused score (cut at layer l)"])

        def band(key: str, row: int, name: str) -> None:
            ci = self.profile_ci.get(key)
            fig.add_trace(go.Scatter(x=L, y=P[key], mode="lines+markers", name=name, legendgroup=name,
                                     error_y=None if ci is None else {"type": "data", "symmetric": False,
                                                                       "array": np.maximum(ci[1] - P[key], 0),
                                                                       "arrayminus": np.maximum(P[key] - ci[0], 0)}),
                          row, 1)

        for k in P:
            if k.startswith("probe."):
                band(k, 1, k[6:])
        band("attn_span", 2, "attention span")
        band("adj_info", 3, "I(l; l+1)")
        fig.add_trace(go.Scatter(x=L, y=self.fused, mode="lines+markers", name="fused"), 4, 1)
        for b, (lo, hi) in zip(self.boundaries, self.boundary_ci):
            fig.add_vrect(x0=lo - 0.5, x1=hi - 0.5 + 1e-9, fillcolor="grey", opacity=0.15, line_width=0)
            fig.add_vline(x=b - 0.5, line_dash="dash", line_color="black")
        for b in self.candidates:
            fig.add_vline(x=b - 0.5, line_dash="dot", line_color="red", row=3, col=1)
        fig.update_layout(title=f"scale discovery: {self.scales!r} (dashed: cuts, grey: {self.config.get('level', 0.95):.0%} "
                                "CI, red dotted: 2-SD candidates)", height=1000)
        fig.update_xaxes(title_text="layer", row=4, col=1)
        return {"profiles": fig}

    def write_html(self, path: str | os.PathLike) -> Path:
        return write_text_atomic(path, self.figures()["profiles"].to_html(include_plotlyjs=True, full_html=True))

    def save(self, path: str | os.PathLike) -> Path:
        """An artifact (safetensors + cfg.json with provenance and checksums)."""
        tensors = {f"profile.{k}": torch.as_tensor(np.asarray(v, dtype=np.float64)) for k, v in self.profiles.items()}
        tensors.update({f"ci.{k}": torch.as_tensor(np.asarray(v, dtype=np.float64)) for k, v in self.profile_ci.items()})
        tensors["fused"] = torch.as_tensor(np.asarray(self.fused, dtype=np.float64))
        tensors["boundary_samples"] = torch.as_tensor(np.asarray(self.boundary_samples, dtype=np.int64))
        cfg = {"scales": self.scales.to_dict(), "boundaries": list(self.boundaries),
               "boundary_ci": [list(x) for x in self.boundary_ci], "candidates": list(self.candidates),
               "probe_info": self.probe_info, "config": self.config, "provenance": self.provenance,
               "profile_order": list(self.profiles)}
        return save_artifact(path, KIND, tensors, cfg)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ScaleDiscovery:
        tensors, cfg = load_artifact(path, KIND)
        prof = {k: tensors[f"profile.{k}"].numpy() for k in cfg["profile_order"]}
        cis = {k[3:]: tensors[k].numpy() for k in tensors if k.startswith("ci.")}
        return cls(Scales.from_dict(cfg["scales"]), tuple(cfg["boundaries"]), [tuple(x) for x in cfg["boundary_ci"]],
                   tensors["boundary_samples"].numpy(), tuple(cfg["candidates"]), prof, cis, tensors["fused"].numpy(),
                   cfg["probe_info"], cfg["config"], cfg["provenance"])


def _f(v: float, w: int, p: int) -> str:
    return f"{'':>{w}}" if v is None or not np.isfinite(v) else f"{v:>{w}.{p}f}"


# ============================================================================================ algorithm
def _check_weights(weights: Any) -> np.ndarray:
    try:
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ConfigError(f"weights must be three numbers (probe, attention, information), got {weights!r}") from None
    if w.shape != (3,) or not np.all(np.isfinite(w)) or (w < 0).any() or not math.isclose(float(w.sum()), 1.0, abs_tol=1e-9):
        raise ConfigError(f"weights must be three non-negative numbers (probe, attention, information) summing to 1, "
                          f"got {weights!r}")
    return w


def _zscore(v: np.ndarray) -> np.ndarray:
    sd = v.std()
    return (v - v.mean()) / sd if sd > 0 else np.zeros_like(v)


class _Profiles:
    """Everything the fusion needs, computed from features for one set of document weights (a bootstrap replicate)."""

    def __init__(self, feats: LayerFeatures, probes: tuple[str, ...], oof: dict[str, np.ndarray], codes: dict,
                 grams: torch.Tensor, info_rows: np.ndarray):
        self.f, self.probes, self.oof, self.codes, self.grams = feats, probes, oof, codes, grams
        self.info_doc = feats.token_doc[info_rows]

    def compute(self, docs: np.ndarray | None) -> dict[str, np.ndarray]:
        """Profiles for documents ``docs`` (indices with repeats; None = all once)."""
        f, L = self.f, self.f.n_layers
        w_doc = (np.ones(f.n_docs) if docs is None else np.bincount(docs, minlength=f.n_docs).astype(np.float64))
        out: dict[str, np.ndarray] = {}
        if f.attn_span_sum is not None:
            q = (w_doc[:, None] * f.attn_queries).sum(0)
            out["attn_span"] = (w_doc[:, None] * f.attn_span_sum).sum(0) / np.maximum(q, 1e-300)
            out["attn_span_rel"] = out["attn_span"] / np.maximum((w_doc[:, None] * f.attn_uniform_sum).sum(0) / q, 1e-300)
        else:
            out["attn_span"] = out["attn_span_rel"] = np.full(L, np.nan)
        if f.norm_sum is not None:
            out["norm"] = (w_doc[:, None] * f.norm_sum).sum(0) / np.maximum((w_doc[:, None] * f.norm_count).sum(0), 1e-300)
        else:
            out["norm"] = np.full(L, np.nan)
        info = adjacent_cka(self.grams, None if docs is None else w_doc[self.info_doc]) if L > 1 else np.zeros(0)
        out["adj_info"] = np.append(info, np.nan)
        _, z = boundary_candidates(info)
        out["adj_info_dz"] = z
        levels: dict[str, list[np.ndarray]] = {}
        for p in self.probes:
            codes, ncls = self.codes[p]
            w = w_doc[f.rows_doc(PROBES[p])]
            bacc = _balanced_acc(self.oof[p], codes, ncls, w)
            out[f"probe.{p}"] = bacc
            present = int((np.bincount(codes, weights=w, minlength=ncls) > 0).sum())
            chance = 1.0 / max(present, 1)
            levels.setdefault(PROBES[p], []).append((bacc - chance) / (1.0 - chance) if chance < 1 else np.zeros(L))
        for lv in LEVELS:
            if lv in levels:
                out[f"level.{lv}"] = np.mean(levels[lv], 0)
        return out


def _fuse(prof: dict[str, np.ndarray], n_scales: int, weights: np.ndarray, n_sd: float
          ) -> tuple[tuple[int, ...], list[int], np.ndarray]:
    """Cuts, 2-SD candidates and the fused score from one set of profiles (see :func:`discover_from_features`)."""
    L = prof["norm"].shape[0]
    lv = [prof[f"level.{x}"] for x in LEVELS if f"level.{x}" in prof]
    cols, w = [], []
    if lv:
        P = np.stack(lv, 1)
        P = P - P.mean(0)
        pooled = math.sqrt(float((P * P).mean()))  # one scale for all levels: a flat level stays flat
        cols.append(P / pooled if pooled > 0 else P)
        w += [weights[0] / len(lv)] * len(lv)
    span = prof["attn_span"]
    if np.all(np.isfinite(span)):
        cols.append(_zscore(span)[:, None])
        w.append(weights[1])
    Z = np.hstack(cols) if cols else np.zeros((L, 0))
    cands, z = boundary_candidates(prof["adj_info"][:-1], n_sd)
    bonus = np.zeros(L)
    if L > 1:
        bonus = weights[2] * L * np.nan_to_num(np.maximum(0.0, -z), nan=0.0) / n_sd
    n_cuts = n_scales - 1
    allowed = cands if len(cands) >= n_cuts else None
    if L == 1:
        return (), cands, np.full(1, np.nan)
    cuts, _, forced = optimal_cuts(Z, np.asarray(w), bonus, n_scales, allowed)
    base = optimal_cuts(Z, np.asarray(w), bonus, 1)[1]
    fused = (base - forced) / L
    fused[0] = np.nan
    return cuts, cands, fused


def discover_from_features(features: LayerFeatures, *, n_scales: int = 3, probes: Sequence[str] | None = None,
                           n_boot: int = 100, seed: int = 0, n_folds: int = 5, probe_dim: int = 64,
                           weights: Sequence[float] = (0.6, 0.2, 0.2), n_sd: float = 2.0, level: float = 0.95,
                           device: str | torch.device | None = None, progress: bool = True) -> ScaleDiscovery:
    """Scale discovery from precomputed per-layer features (the algorithm of :func:`discover_scales`).

    Profiles (per layer l of L): attention span ``d_attn(l) = mean_t Σ_i A_{t,i}|t−i|`` (heads averaged; pooled over
    all content queries of all documents); adjacent-layer information ``I(l; l+1)`` = **debiased linear CKA**
    (unbiased HSIC) between the standardised token residuals of blocks l and l+1; held-out balanced accuracy of
    linear probes (StandardScaler → PCA(``probe_dim``) → class-balanced LogisticRegression, out-of-fold over
    ``GroupKFold(n_folds)`` by document); mean residual norm.

    Cut-point rule (the paper gives the ingredients, α·S_probe + β·S_attn + γ·S_MI, but no weights, thresholds or
    search: the following is **our** decision):

    1. Candidates (published rule): ΔI(l) = I(l;l+1) − I(l−1;l); a cut before layer l+1 is a candidate when ΔI(l)
       is more than ``n_sd`` population SDs below the mean of ΔI over layers (:func:`boundary_candidates`).
    2. Feature matrix Z ``[L, m]``: one column per probe level (token / sentence / document), the level's
       chance-corrected balanced accuracy ``(bacc − 1/C)/(1 − 1/C)`` averaged over its probes, centred per level and
       divided by *one* pooled SD over all levels (so a level whose accuracy is flat adds nothing), each weighted
       α/(number of levels); and the attention span, z-scored, weighted β.
    3. Cuts = the exact optimum, by dynamic programming (:func:`optimal_cuts`), of
       ``Σ_segments Σ_columns w_c·SSE_c − Σ_cuts bonus(cut)`` over splits into ``n_scales`` contiguous segments
       (a piecewise-constant fit of the profiles), with ``bonus(b) = γ·L·max(0, −z_ΔI(b))/n_sd``, so a drop at
       the 2-SD threshold is worth explaining all the variance of a column of weight γ. When rule 1 gives at least
       ``n_scales − 1`` candidates the cuts are restricted to them; otherwise every layer may be a cut.
    4. ``fused[b]`` = (objective without cuts − best objective with a cut at b, other cuts from the allowed set) / L:
       its maxima among the allowed cuts are the chosen cuts.

    Stability: ``n_boot`` replicates resample documents with replacement; each recomputes every profile from the
    cached per-document quantities (attention sums, norms, the Gram matrices of the info tokens of the drawn
    documents, and the probes' **out-of-fold** predictions of the drawn documents' rows; the probes are not refit)
    and reruns steps 1–3. ``boundary_ci[k]`` is the percentile interval (``level``) of the k-th cut.
    """
    f = features
    L = f.n_layers
    if not isinstance(n_scales, int) or isinstance(n_scales, bool) or not 1 <= n_scales <= L:
        raise ConfigError(f"n_scales must be an int between 1 and the number of layers ({L}), got {n_scales!r}")
    probes = _check_probes(tuple(f.labels) if probes is None else probes)
    missing = [p for p in probes if p not in f.labels]
    if missing:
        raise ConfigError(f"probe {missing[0]!r} has no labels in these features (labelled: {sorted(f.labels)})")
    w = _check_weights(weights)
    for name, v, lo in (("n_boot", n_boot, 0), ("n_folds", n_folds, 2), ("probe_dim", probe_dim, 1)):
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise ConfigError(f"{name} must be an int >= {lo}, got {v!r}")
    if not 0 < level < 1:
        raise ConfigError(f"level must be in (0, 1), got {level!r}")
    if not n_sd > 0:
        raise ConfigError(f"n_sd must be > 0, got {n_sd!r}")
    if f.n_docs < n_folds:
        raise ConfigError(f"{f.n_docs} documents are too few for GroupKFold with n_folds={n_folds}: use more documents "
                          f"(max_docs) or a smaller n_folds")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    t0 = time.perf_counter()
    oof, codes, info = {}, {}, {}
    for p in probes:
        y = f.labels[p]
        classes, code = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ConfigError(f"probe {p!r} needs at least 2 classes, but its labels hold only {[str(c) for c in classes]}")
        lv = PROBES[p]
        groups = f.rows_doc(lv)
        oof[p] = _probe_oof(f.level_x(lv), code, groups, n_folds, probe_dim, seed, p, progress)
        codes[p] = (code, len(classes))
        counts = np.bincount(code)
        info[p] = {"level": lv, "n": int(len(y)), "n_classes": int(len(classes)), "chance": 1.0 / len(classes),
                   "majority": float(counts.max() / counts.sum()), "classes": [str(c) for c in classes]}
    info_rows = f.info_rows
    grams = _grams(f.token[:, info_rows], dev)
    calc = _Profiles(f, probes, oof, codes, grams, info_rows)
    prof = calc.compute(None)
    cuts, cands, fused = _fuse(prof, n_scales, w, n_sd)
    rng = np.random.default_rng(seed)
    samples = np.zeros((n_boot, n_scales - 1), dtype=np.int64)
    boots: dict[str, list[np.ndarray]] = {k: [] for k in prof}
    it: Any = range(n_boot)
    if progress and n_boot:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="discover: bootstrap", unit="rep", leave=False)
    for r in it:
        docs = rng.integers(0, f.n_docs, f.n_docs)
        pb = calc.compute(docs)
        samples[r] = _fuse(pb, n_scales, w, n_sd)[0]
        for k, v in pb.items():
            boots[k].append(v)
    a = (1 - level) / 2
    ci = [(int(np.quantile(samples[:, k], a, method="inverted_cdf")), int(np.quantile(samples[:, k], 1 - a, method="inverted_cdf")))
          if n_boot else (b, b) for k, b in enumerate(cuts)]
    pci = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns (I(l; l+1) at the last layer)
        for k, v in boots.items():
            if v and np.isfinite(np.stack(v)).any():
                pci[k] = np.nanquantile(np.stack(v), [a, 1 - a], axis=0)
    names = scale_names(n_scales)
    edges = [0, *cuts, L]
    scales = Scales({n: range(lo, hi) for n, lo, hi in zip(names, edges[:-1], edges[1:])}, n_layers=L,
                    source=f"discovered (cuts {list(cuts)})")
    config = {"n_scales": n_scales, "probes": list(probes), "n_boot": n_boot, "seed": seed, "n_folds": n_folds,
              "probe_dim": probe_dim, "weights": [float(x) for x in w], "n_sd": n_sd, "level": level,
              "adjacent": "debiased linear CKA of standardised token residuals", "n_docs": f.n_docs,
              "n_tokens": int(f.token.shape[1]), "n_info_tokens": int(len(info_rows)),
              "allowed_cuts": "2-SD candidates" if len(cands) >= n_scales - 1 else "all layers",
              "seconds_analysis": round(time.perf_counter() - t0, 2)}
    return ScaleDiscovery(scales, tuple(int(c) for c in cuts), ci, samples, tuple(cands), prof, pci, fused, info, config,
                          json.loads(json.dumps(f.meta, default=str)))


def discover_scales(model: Any, corpus: Any = None, *, n_scales: int = 3, max_docs: int | None = None,
                    probes: Sequence[str] = tuple(PROBES), n_boot: int = 100, seed: int = 0,
                    device: str | torch.device | None = None, progress: bool = True, max_tokens: int = 3000,
                    info_tokens: int = 1024, batch_size: int = 8, n_folds: int = 5, probe_dim: int = 64,
                    weights: Sequence[float] = (0.6, 0.2, 0.2), n_sd: float = 2.0, level: float = 0.95) -> ScaleDiscovery:
    """Discover a model's scales from data (MSPGT's layer-boundary method, papers.md §B.2; encoders and decoders).

    ``corpus``: a labelled :class:`~msma_lens.io.corpus.Corpus` (default: the bundled one, ``load_corpus()``), or a
    list of texts with ``probes=('pos',)`` or ``()``. ``max_docs`` balances topics × registers. One forward pass
    (:func:`collect_features`), then :func:`discover_from_features`, whose docstring states the profiles, the
    cut-point rule and the bootstrap. ``device`` moves the model there for the pass and computes the Gram
    matrices there. Returns a :class:`ScaleDiscovery` (``.scales``, ``.boundaries``, ``.boundary_ci``,
    ``.profiles``, ``.fused``, ``table()``, ``figures()``, ``save``/``load``).
    """
    tl.check_model(model)
    L = tl.n_layers(model)
    if not isinstance(n_scales, int) or isinstance(n_scales, bool) or not 1 <= n_scales <= L:
        raise ConfigError(f"n_scales must be an int between 1 and the number of layers ({L}), got {n_scales!r}")
    probes = _check_probes(probes)
    _check_weights(weights)
    if corpus is None:
        from ..io.corpus import load_corpus

        corpus = load_corpus()
    if isinstance(corpus, Mapping):
        raise ConfigError("corpus must be a labelled Corpus or a list of texts, got a mapping")
    if device is not None:
        model.to(device)
    t0 = time.perf_counter()
    feats = collect_features(model, corpus, probes=probes, max_docs=max_docs, max_tokens=max_tokens,
                             info_tokens=info_tokens, batch_size=batch_size, seed=seed, progress=progress)
    t1 = time.perf_counter()
    res = discover_from_features(feats, n_scales=n_scales, probes=probes, n_boot=n_boot, seed=seed, n_folds=n_folds,
                                 probe_dim=probe_dim, weights=weights, n_sd=n_sd, level=level,
                                 device=device if device is not None else tl.model_device(model), progress=progress)
    res.config["seconds_capture"] = round(t1 - t0, 2)
    res.config["max_docs"] = max_docs
    return res
