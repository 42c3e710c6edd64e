"""Cross-model alignment: a debiased linear CKA matrix over every layer pair of two models on the same inputs.

Two models with different tokenizers have no common token rows, so rows are aligned on **words** (default):
each whitespace-separated word of a document is one row, the mean of the residuals of the sub-tokens whose
first non-space character lies in it (offsets from the fast tokenizer; BOS / [CLS] / [SEP] / padding never
count); only words both models saw (not truncated away) are kept, then ``max_rows`` are sampled (seeded).
``align_on="documents"`` uses one row per document (mean over content tokens) instead: exact for any
tokenizer but few rows (CKA's small-n bias is why the debiased estimator is used). Per model the rows become
a :class:`~msma_lens.capture.activations.ScaleActivations` with one "scale" per layer (``L0`` … ``L{n-1}``); the
two are combined with :meth:`ScaleActivations.join` (which checks the rows are identical), and the matrix is
read from the joined activations.

``scale_matrix`` averages the layer matrix over the two models' partitions, showing which scale of one model
matches which scale of the other; ``best_match`` is the per-layer argmax.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .. import tl
from ..capture.activations import ScaleActivations
from ..capture.collect import capture
from ..capture.scales import Scales
from ..errors import ConfigError

PREFIXES = ("a", "b")


def _layer_scales(n_layers: int) -> Scales:
    return Scales({f"L{i}": [i] for i in range(n_layers)}, n_layers=n_layers, source="one scale per layer")


def _word_ids(model: Any, text: str, n_ids: int, specials: list[int]) -> list[int]:
    """Per token id of ``tl.encode``'s row: the index of the whitespace word holding its first non-space
    character, or -1 (special tokens, pure whitespace)."""
    tok = model.tokenizer
    enc = tok(text, add_special_tokens=tl.is_encoder(model), return_offsets_mapping=True)
    offs = list(enc["offset_mapping"])
    lead = n_ids - len(offs)  # a BOS that tl.encode prepended (decoders)
    if lead < 0:
        raise ConfigError(f"{tl.provenance(model).get('model_id')}: tokenizer offsets do not match its token ids")
    starts = [m.start() for m in re.finditer(r"\S+", text)]
    ends = [m.end() for m in re.finditer(r"\S+", text)]
    out = [-1] * n_ids
    for j, (a, b) in enumerate(offs):
        i = lead + j
        if specials[i] or b <= a:
            continue
        while a < b and text[a].isspace():
            a += 1
        if a >= b:
            continue
        w = bisect.bisect_right(starts, a) - 1
        if w >= 0 and a < ends[w]:
            out[i] = w
    return out


def candidate_words(texts: Sequence[str], max_rows: int, seed: int) -> set[tuple[int, int]]:
    """A seeded sample of ``(document, word)`` keys (whitespace words), a little over ``max_rows``, so that only
    those words are pooled and kept in memory; both models use the same sample."""
    keys = [(d, w) for d, t in enumerate(texts) for w in range(len(t.split()))]
    n = min(len(keys), int(max_rows * 1.25) + 8)
    pick = torch.randperm(len(keys), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    return {keys[i] for i in pick}


def word_activations(model: Any, texts: Sequence[str], *, batch_size: int = 8,
                     keep: set[tuple[int, int]] | None = None) -> tuple[dict[tuple[int, int], int], torch.Tensor]:
    """Every layer's residual mean-pooled per word: ``(row_of, acts)`` with ``row_of[(doc, word)]`` the row of
    ``acts [n_layers, n_words, d]`` (float32); only the words in ``keep`` when given. Documents longer than the
    context are truncated."""
    L, ctx = tl.n_layers(model), tl.context_length(model)
    seqs, specials = tl.encode(model, list(texts))
    wids = [_word_ids(model, t, len(s), sp)[:ctx] for t, s, sp in zip(texts, seqs, specials)]
    seqs, specials = [s[:ctx] for s in seqs], [sp[:ctx] for sp in specials]
    names = [tl.resid_name(model, layer) for layer in range(L)]
    row_of: dict[tuple[int, int], int] = {}
    chunks: list[torch.Tensor] = []
    with torch.no_grad():
        for lo in range(0, len(seqs), batch_size):
            idx = list(range(lo, min(lo + batch_size, len(seqs))))
            toks, mask, content = tl.pad_batch(model, [seqs[i] for i in idx], [specials[i] for i in idx],
                                                padding_side="right", max_length=ctx)
            dev = tl.model_device(model)
            cache = tl.run_with_cache(model, toks.to(dev), mask.to(dev), names, None)
            H = torch.stack([cache[n].float().cpu() for n in names])  # [L, B, T, d]
            del cache
            for bi, i in enumerate(idx):
                w = torch.tensor((wids[i] + [-1] * H.shape[2])[: H.shape[2]])
                ok = (w >= 0) & content[bi].cpu()
                if keep is not None:
                    ok &= torch.tensor([(i, int(x)) in keep for x in w.tolist()])
                if not ok.any():
                    continue
                uniq, inv = torch.unique(w[ok], return_inverse=True)
                sums = torch.zeros(L, len(uniq), H.shape[-1]).index_add_(1, inv, H[:, bi][:, ok])
                counts = torch.zeros(len(uniq)).index_add_(0, inv, torch.ones(len(inv)))
                for word in uniq.tolist():
                    row_of[(i, word)] = len(row_of)
                chunks.append(sums / counts[None, :, None])
    if not chunks:
        raise ConfigError("no words found in the texts")
    return row_of, torch.cat(chunks, 1)


def side_activations(model: Any, texts: Sequence[str], *, align_on: str = "words", max_rows: int = 1024, seed: int = 0,
                     batch_size: int = 8) -> Any:
    """One model's side of :func:`paired_activations` (so that one model at a time need be in memory)."""
    if align_on not in ("words", "documents"):
        raise ConfigError(f"align_on must be 'words' or 'documents', got {align_on!r}")
    if align_on == "documents":
        return capture(model, _layer_scales(tl.n_layers(model)), list(texts), pooling="mean", batch_size=batch_size,
                       progress=False)
    return word_activations(model, texts, batch_size=batch_size, keep=candidate_words(texts, max_rows, seed))


def join_sides(side_a: Any, side_b: Any, *, max_rows: int = 1024, seed: int = 0,
               names: tuple[str, str] = PREFIXES) -> ScaleActivations:
    """Join two :func:`side_activations` results on their common rows (words both models saw, or documents)."""
    if isinstance(side_a, ScaleActivations):
        return side_a.join(side_b, names)
    (ra, A), (rb, B) = side_a, side_b
    common = sorted(set(ra) & set(rb))
    if len(common) < 4:
        raise ConfigError(f"only {len(common)} words are shared by the two models' rows; cross-model CKA needs >= 4")
    if len(common) > max_rows:
        pick = torch.randperm(len(common), generator=torch.Generator().manual_seed(seed))[:max_rows].sort().values.tolist()
        common = [common[i] for i in pick]
    docs = torch.tensor([d for d, _ in common])
    words = torch.tensor([w for _, w in common])
    sides = []
    for rows, H in ((ra, A), (rb, B)):
        ix = torch.tensor([rows[k] for k in common])
        sides.append(ScaleActivations({f"L{i}": H[i, ix] for i in range(H.shape[0])}, docs, words,
                                      {"pooling": "word", "align_on": "words"}))
    return sides[0].join(sides[1], names)


def paired_activations(model_a: Any, model_b: Any, texts: Sequence[str], *, align_on: str = "words", max_rows: int = 1024,
                       seed: int = 0, batch_size: int = 8, names: tuple[str, str] = PREFIXES) -> ScaleActivations:
    """Both models' per-layer activations on the same rows (words or documents), joined with prefixes ``names``."""
    kw = dict(align_on=align_on, max_rows=max_rows, seed=seed, batch_size=batch_size)
    return join_sides(side_activations(model_a, texts, **kw), side_activations(model_b, texts, **kw), max_rows=max_rows,
                      seed=seed, names=names)


def _centred_gram(X: torch.Tensor) -> torch.Tensor:
    X = X.double()
    X = X - X.mean(0)
    K = X @ X.T
    K.fill_diagonal_(0.0)
    return K


def _hsic_gram(K: torch.Tensor, L: torch.Tensor) -> float:
    """Unbiased HSIC (Song et al. 2012) of two Gram matrices with zeroed diagonals."""
    n = K.shape[0]
    rk, rl = K.sum(1), L.sum(1)
    v = (K * L).sum() + rk.sum() * rl.sum() / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * (rk @ rl)
    return float(v / (n * (n - 3)))


def cka_matrix(joined: ScaleActivations, names: tuple[str, str] = PREFIXES) -> np.ndarray:
    """Debiased linear CKA ``[n_layers_a, n_layers_b]`` between every layer of ``names[0]`` and every layer of
    ``names[1]`` in joined per-layer activations (equal to :func:`msma_lens.analysis.metrics.cka_debiased` of each
    pair; computed from one Gram matrix per layer)."""
    la = [s for s in joined.scale_names if s.startswith(f"{names[0]}:")]
    lb = [s for s in joined.scale_names if s.startswith(f"{names[1]}:")]
    if not la or not lb:
        raise ConfigError(f"joined activations have no scales with prefixes {names}")
    if len(joined) < 4:
        raise ConfigError(f"debiased CKA needs >= 4 rows, got {len(joined)}")
    GB = [_centred_gram(joined[s]) for s in lb]
    hb = [_hsic_gram(G, G) for G in GB]
    out = np.zeros((len(la), len(lb)))
    for i, s in enumerate(la):
        G = _centred_gram(joined[s])
        ha = _hsic_gram(G, G)
        for j, H in enumerate(GB):
            den = ha * hb[j]
            out[i, j] = _hsic_gram(G, H) / np.sqrt(den) if den > 0 else 0.0
    return out


def best_match(matrix: np.ndarray) -> dict[str, list[int]]:
    """Per layer of either model, the layer of the other with the highest CKA."""
    m = np.asarray(matrix)
    return {"a_to_b": [int(x) for x in np.argmax(m, 1)], "b_to_a": [int(x) for x in np.argmax(m, 0)]}


def scale_matrix(matrix: np.ndarray, scales_a: Scales, scales_b: Scales) -> dict:
    """Mean CKA over the layer blocks of two partitions: ``{"rows", "cols", "values"}`` and each scale's best match."""
    m = np.asarray(matrix)
    vals = [[float(m[np.ix_(list(scales_a[a]), list(scales_b[b]))].mean()) for b in scales_b.names] for a in scales_a.names]
    v = np.asarray(vals)
    return {"rows": list(scales_a.names), "cols": list(scales_b.names), "values": vals,
            "a_to_b": {a: scales_b.names[int(np.argmax(v[i]))] for i, a in enumerate(scales_a.names)},
            "b_to_a": {b: scales_a.names[int(np.argmax(v[:, j]))] for j, b in enumerate(scales_b.names)}}
