"""The suite's report: one self-contained HTML page (plotly's JavaScript inlined once), JSON and CSV beside it.

Figures: per-layer profiles against relative depth (held-out probe accuracy, attention span, adjacent-layer
information, residual norm) with every model's discovered boundaries marked, and the cross-model CKA matrices.
Tables: the three tables of :mod:`msma_lens.compare.tables` plus the cross-model and timing tables.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..io.artifacts import write_csv_atomic, write_json_atomic, write_text_atomic

PROFILE_PANELS = (("probe", "held-out probe balanced accuracy (mean over probes)"),
                  ("attn_span", "attention span (mean |t − i|)"),
                  ("adj_info", "adjacent-layer information I(l; l+1)"), ("norm", "mean residual norm (log scale)"))


def profile_figure(discoveries: Sequence[dict]):
    """Per-layer profiles of every model vs relative depth (layer / (n_layers − 1)); dashed lines: discovered cuts."""
    import plotly.graph_objects as go
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=len(PROFILE_PANELS), cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=[t for _, t in PROFILE_PANELS])
    for i, res in enumerate(discoveries):
        color = qualitative.Plotly[i % len(qualitative.Plotly)]
        L = res["n_layers"]
        x = np.arange(L) / max(L - 1, 1)
        P = {k: np.asarray(v, dtype=float) for k, v in res["profiles"].items()}
        probes = [v for k, v in P.items() if k.startswith("probe.")]
        ys = {"probe": np.nanmean(np.stack(probes), 0) if probes else np.full(L, np.nan), "attn_span": P.get("attn_span"),
              "adj_info": P.get("adj_info"), "norm": P.get("norm")}
        for row, (key, _) in enumerate(PROFILE_PANELS, 1):
            y = ys[key]
            if y is None:
                continue
            fig.add_trace(go.Scatter(x=x, y=np.where(np.isfinite(y), y, None), mode="lines+markers", name=res["model"],
                                     legendgroup=res["model"], showlegend=row == 1, line={"color": color},
                                     hovertext=[f"{res['model']} layer {j}" for j in range(L)]), row, 1)
            for b in res["boundaries"]:
                fig.add_vline(x=(b - 0.5) / max(L - 1, 1), line_dash="dash", line_color=color, row=row, col=1)
    fig.update_yaxes(type="log", row=len(PROFILE_PANELS), col=1)
    fig.update_xaxes(title_text="relative depth (layer / (n_layers − 1)); dashed: discovered scale boundaries",
                     row=len(PROFILE_PANELS), col=1)
    fig.update_layout(height=1100, title="per-layer profiles against depth")
    return fig


def cka_figure(cross: dict):
    """Heatmap of one cross-model debiased CKA matrix (rows: model a's layers, columns: model b's)."""
    import plotly.graph_objects as go

    a, b = cross["models"]
    fig = go.Figure(go.Heatmap(z=cross["matrix"], colorscale="Viridis", zmin=0, zmax=1, colorbar={"title": "CKA"}))
    fig.update_layout(title=f"debiased CKA, {a} (rows) × {b} (columns), on {cross['n_rows']} {cross['align_on']}",
                      xaxis_title=f"{b} layer", yaxis_title=f"{a} layer", height=520)
    return fig


def _cell(v: object) -> str:
    if isinstance(v, float):
        return "" if not math.isfinite(v) else f"{v:.4g}"
    return html.escape("" if v is None else str(v))


def html_table(rows: Sequence[dict], title: str, note: str = "") -> str:
    if not rows:
        return f"<h2>{html.escape(title)}</h2><p>(no rows: task not run)</p>"
    cols = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{_cell(r.get(c))}</td>" for c in cols) + "</tr>" for r in rows)
    return (f"<h2>{html.escape(title)}</h2>" + (f"<p>{html.escape(note)}</p>" if note else "")
            + f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


NOTES = {
    "layers": "Discovered partitions (MSPGT boundary method, analysis.discovery) with the 95% bootstrap CI over documents of "
              "each scale's first layer; thirds of the depth; the published GPT-2 / BERT partitions are of OTHER models "
              "(12 layers) and are shown for reference only.",
    "alignment": "Held-out documents. baseline = identity (source scale vs target scale), closed_form = Procrustes, trained = "
                 "the map of lens.fit's default objective. kl_diag: diagonal-Gaussian KL(prediction ‖ target) in nats. "
                 "kl_floor: split-half KL of the target with itself at the same n and d (a KL at the floor is "
                 "indistinguishable from perfect). MI: Gaussian MI on the top 32 principal components (nats). "
                 "Mean over seeds with the 95% Student-t CI (ci_lo, ci_hi); one seed: no CI.",
    "interventions": "Paired effect size d_z (steered vs unsteered, same prompt and sampling seed) with its 95% CI, p-values "
                     "Holm-corrected over each model's whole grid. level=text: generated-text metrics (decoders); "
                     "level=representation: last-layer embedding metrics (encoders).",
    "crossmodel": "Mean debiased CKA between the layers of two scales of two models (rows aligned on words or documents); "
                  "best_for_a marks, for each scale of model a, the scale of model b it matches best.",
    "timing": "Per work unit: wall and CPU seconds, and the peak resident memory of the process while the unit ran "
              "(with the sequential executor this includes memory the allocator kept from earlier units and models).",
}
TITLES = {"layers": "(a) semantic layer distribution", "alignment": "(b) cross-scale alignment",
          "interventions": "(c) intervention effects", "crossmodel": "cross-model alignment (scale level)",
          "timing": "where the time goes"}


def write_report(out: str | Path, tables: dict[str, list[dict]], records: Sequence[dict], summary: str,
                 meta: dict | None = None) -> dict[str, Path]:
    """Write ``report.html`` (self-contained), ``compare.json`` and one CSV per table into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figs = []
    disc = [r["result"] for r in records if r["unit"]["task"] == "discovery"]
    if disc:
        figs.append(profile_figure(disc))
    figs += [cka_figure(r["result"]) for r in records if r["unit"]["task"] == "crossmodel"]
    parts = [f.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, f in enumerate(figs)]
    style = ("<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;font-size:12px;margin-bottom:1em}"
             "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}th{background:#eee}</style>")
    body = ["<h1>msma-lens model comparison</h1>", f"<pre>{html.escape(summary)}</pre>", *parts]
    body += [html_table(tables[k], TITLES[k], NOTES[k]) for k in ("layers", "alignment", "interventions", "crossmodel")]
    for r in tables.get("plugins", []):
        body.append(f"<h2>plugin {html.escape(r['plugin'])} on {html.escape(r['model'])}</h2><pre>"
                    + html.escape(r["summary"] or f"error: {r['error']}") + "</pre>")
    body.append(html_table(tables["timing"], TITLES["timing"], NOTES["timing"]))
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>msma-lens compare</title>{style}</head><body>"
            + "".join(body) + "</body></html>")
    paths = {"html": write_text_atomic(out / "report.html", page),
             "json": write_json_atomic(out / "compare.json", {"format": "msma_lens.Compare", "meta": meta or {}, "tables": tables,
                                                              "units": records})}
    for k, rows in tables.items():
        if rows:
            paths[k] = write_csv_atomic(out / f"{k}.csv", rows)
    paths["summary"] = write_text_atomic(out / "summary.txt", summary + "\n")
    return paths
