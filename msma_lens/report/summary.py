"""Per-scale statistics of captured activations, as a dict summary and a self-contained plotly HTML page."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..capture.activations import ScaleActivations
from ..io.artifacts import write_text_atomic


def twonn_log_ratios(x: torch.Tensor, max_points: int = 2000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-point TwoNN statistics log(r2/r1) (float64) on a seeded subsample of at most ``max_points`` rows, and
    the indices of those rows in ``x``. r1, r2: distances to the first and second nearest neighbour in the
    subsample; points with a duplicate (r1 = 0) are dropped."""
    x = x.double()
    rows = torch.arange(x.shape[0])
    if x.shape[0] > max_points:
        g = torch.Generator().manual_seed(seed)
        rows = torch.randperm(x.shape[0], generator=g)[:max_points]
        x = x[rows]
    d = torch.cdist(x, x)
    d.fill_diagonal_(float("inf"))
    r = torch.topk(d, 2, largest=False).values
    ok = r[:, 0] > 0
    return (r[ok, 1] / r[ok, 0]).log(), rows[ok]


def twonn_dimension(x: torch.Tensor, max_points: int = 2000, seed: int = 0) -> float:
    """TwoNN intrinsic dimension (MLE form, (N-1)/Σ log(r2/r1)) on a subsample; duplicates are dropped."""
    mu, _ = twonn_log_ratios(x, max_points, seed)
    return float((mu.numel() - 1) / mu.sum()) if mu.numel() > 2 else float("nan")


def scale_statistics(acts: ScaleActivations, top_k: int = 20) -> dict[str, dict]:
    """Norms, anisotropy, PCA spectrum, participation ratio and TwoNN dimension per scale."""
    out = {}
    for s, a in acts.acts.items():
        a64 = a.double()
        norms = a64.norm(dim=1)
        mu = a64.mean(0)
        c = a64 - mu
        ev = torch.linalg.eigvalsh(c.T @ c / max(c.shape[0] - 1, 1)).flip(0).clamp(min=0)
        frac = ev / ev.sum() if ev.sum() > 0 else ev
        cos_to_mean = torch.nn.functional.cosine_similarity(a64, mu[None], dim=1) if mu.norm() > 0 else torch.zeros(1)
        out[s] = {
            "n_rows": int(a.shape[0]),
            "d": int(a.shape[1]),
            "norm_mean": float(norms.mean()),
            "norm_median": float(norms.median()),
            "norm_max": float(norms.max()),
            "mean_cosine_to_centroid": float(cos_to_mean.mean()),
            "participation_ratio": float(ev.sum() ** 2 / (ev**2).sum()) if ev.sum() > 0 else 0.0,
            "pca_explained": [float(v) for v in frac[:top_k]],
            "twonn_dimension": twonn_dimension(a),
        }
    return out


def write_html(stats: dict[str, dict], path: str | os.PathLike, title: str = "msma-lens: per-scale statistics") -> Path:
    """A self-contained HTML page (plotly.js inlined: works offline)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = list(stats)
    fig = make_subplots(rows=2, cols=2, subplot_titles=("token norm (mean / median)", "PCA spectrum (explained variance)",
                                                        "participation ratio and TwoNN dimension", "mean cosine to centroid"))
    fig.add_trace(go.Bar(x=names, y=[stats[s]["norm_mean"] for s in names], name="mean norm"), 1, 1)
    fig.add_trace(go.Bar(x=names, y=[stats[s]["norm_median"] for s in names], name="median norm"), 1, 1)
    for s in names:
        ev = stats[s]["pca_explained"]
        fig.add_trace(go.Scatter(x=list(range(1, len(ev) + 1)), y=ev, mode="lines+markers", name=f"{s} PCA"), 1, 2)
    fig.add_trace(go.Bar(x=names, y=[stats[s]["participation_ratio"] for s in names], name="participation ratio"), 2, 1)
    fig.add_trace(go.Bar(x=names, y=[stats[s]["twonn_dimension"] for s in names], name="TwoNN dimension"), 2, 1)
    fig.add_trace(go.Bar(x=names, y=[stats[s]["mean_cosine_to_centroid"] for s in names], name="cos to centroid"), 2, 2)
    fig.update_yaxes(type="log", row=1, col=2)
    fig.update_layout(title=title, height=800, barmode="group")
    return write_text_atomic(path, fig.to_html(include_plotlyjs=True, full_html=True))


def format_summary(stats: dict[str, dict], meta: dict) -> str:
    lines = [f"model {meta.get('model_id')} ({meta.get('backend')}, TransformerLens {meta.get('tl_version')}), "
             f"pooling={meta.get('pooling')}, {meta.get('n_docs')} documents",
             f"{'scale':<14}{'layers':>9}{'rows':>8}{'d':>6}{'|h| mean':>10}{'|h| med':>9}{'PR':>8}{'TwoNN':>8}{'cos':>7}"]
    groups = (meta.get("scales") or {}).get("groups", {})
    for s, st in stats.items():
        lr = groups.get(s, ["?", "?"])
        lines.append(f"{s:<14}{f'{lr[0]}-{lr[1]}':>9}{st['n_rows']:>8}{st['d']:>6}{st['norm_mean']:>10.1f}{st['norm_median']:>9.1f}"
                     f"{st['participation_ratio']:>8.1f}{st['twonn_dimension']:>8.1f}{st['mean_cosine_to_centroid']:>7.2f}")
    return "\n".join(lines)
