"""Representation-level intervention effects, for encoders (which cannot generate text).

Per document, one forward pass without and one with each intervention (scale × kind at one strength) reads the
last layer's residual, mean-pooled over content tokens (the sentence embedding). Two paired per-document metrics:
``probe_p_true`` (a topic probe's probability of the document's true topic: logistic regression on the
unsteered embeddings, 2-fold cross-fitted so each document is read by a probe that never saw it) and
``embedding_norm``. Each row reports the paired effect d_z with the exact noncentral-t CI, a paired t-test,
Holm's correction over the whole grid (as :func:`msma_lens.steer.experiment.run_experiment` does for text
metrics), and the mean cosine between steered and unsteered embeddings (descriptive).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .. import tl
from ..analysis import stats
from ..capture.collect import capture
from ..capture.scales import Scales
from ..errors import ConfigError
from ..steer.directions import random_direction
from ..steer.edits import AttentionEdit, GaussianNoise, Rescale, Translate, mix_seed
from ..steer.session import steer

METRICS = ("probe_p_true", "embedding_norm")


def _embed(model: Any, texts: list[str], batch_size: int) -> torch.Tensor:
    L = tl.n_layers(model)
    acts = capture(model, Scales({"last": [L - 1]}, n_layers=L), texts, pooling="mean", batch_size=batch_size, progress=False)
    return acts["last"].double()


def _probe_readout(E: np.ndarray, y: np.ndarray, fits: list) -> np.ndarray:
    out = np.zeros(len(y))
    for test_idx, clf, classes in fits:
        p = clf.predict_proba(E[test_idx])
        col = {c: i for i, c in enumerate(classes)}
        out[test_idx] = [p[r, col[c]] if c in col else 0.0 for r, c in enumerate(y[test_idx])]
    return out


def _fit_probes(E: np.ndarray, y: np.ndarray, seed: int) -> list:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    perm = np.random.default_rng(seed).permutation(len(y))
    folds = [np.sort(perm[: len(y) // 2]), np.sort(perm[len(y) // 2:])]
    fits = []
    for k in (0, 1):
        train, test = folds[1 - k], folds[k]
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500, C=0.1)).fit(E[train], y[train])
        fits.append((test, clf, list(clf.classes_)))
    return fits


def intervention(kind: str, scale: str, strength: float, d_model: int, seed: int, index: int) -> Any:
    """The built-in intervention ``kind`` on ``scale`` (the kinds of run_experiment, at their default ``at``)."""
    if kind == "translate":
        return Translate(scale, random_direction(d_model, seed=mix_seed(seed, index)), strength=strength, relative=True)
    if kind == "rescale":
        return Rescale(scale, strength)
    if kind == "noise":
        return GaussianNoise(scale, strength, relative=True, seed=mix_seed(seed, index) % (2**62))
    if kind == "attention":
        return AttentionEdit(scale, strength, mode="query")
    raise ConfigError(f"unknown intervention kind {kind!r}; valid: translate, rescale, noise, attention")


def representation_effects(model: Any, texts: Sequence[str], labels: Sequence[str], scales: Scales,
                           strengths: Mapping[str, float], *, seed: int = 0, batch_size: int = 8, alpha: float = 0.05) -> dict:
    """``{"table": rows, "config": ...}``: scale × intervention effects on the last-layer embedding (see module doc)."""
    texts, y = list(texts), np.asarray(labels)
    if len(texts) != len(y):
        raise ConfigError(f"{len(texts)} texts but {len(y)} labels")
    if len(set(y.tolist())) < 2:
        raise ConfigError("representation effects need documents of at least 2 topics")
    d = tl.d_model(model)
    E0 = _embed(model, texts, batch_size)
    fits = _fit_probes(E0.numpy(), y, seed)
    base = {"probe_p_true": _probe_readout(E0.numpy(), y, fits), "embedding_norm": E0.norm(dim=1).numpy()}
    rows = []
    for si, s in enumerate(scales.names):
        for ki, (kind, strength) in enumerate(strengths.items()):
            iv = intervention(kind, s, float(strength), d, seed, si * 16 + ki)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                with steer(model, iv, scales=scales):
                    E = _embed(model, texts, batch_size)
            cos = float(torch.nn.functional.cosine_similarity(E, E0, dim=1).mean())
            vals = {"probe_p_true": _probe_readout(E.numpy(), y, fits), "embedding_norm": E.norm(dim=1).numpy()}
            for m in METRICS:
                a, b = vals[m], base[m]
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    eff = stats.cohens_dz(a, b)
                    lo, hi = stats.paired_effect_ci(a, b, "d_z")
                    p = stats.paired_t_test(a, b)
                bm = float(np.mean(b))
                rows.append({"scale": s, "intervention": kind, "strength": float(strength), "metric": m, "n": len(a),
                             "baseline_mean": bm, "steered_mean": float(np.mean(a)),
                             "pct_change": 100.0 * (float(np.mean(a)) - bm) / abs(bm) if bm else float("nan"),
                             "effect": float(eff), "effect_ci_lo": float(lo), "effect_ci_hi": float(hi), "p_value": float(p),
                             "mean_cos_to_baseline": cos})
    for r, p in zip(rows, stats.holm([r["p_value"] for r in rows])):
        r["p_holm"] = float(p)
        r["significant"] = bool(math.isfinite(p) and p < alpha)
    return {"table": rows, "config": {"effect": "d_z", "ci_method": stats.PAIRED_CI_METHODS["nct"], "metrics": list(METRICS),
                                      "n_docs": len(texts), "readout": "last-layer mean-pooled embedding; topic probe 2-fold "
                                      "cross-fitted on unsteered embeddings", "strengths": dict(strengths)}}
