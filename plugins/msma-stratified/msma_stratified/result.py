""":class:`StratifiedResult`: per scale and seed held-out statistics of the mixture and the KMeans baseline."""

from __future__ import annotations

import math

import numpy as np
import torch

from msma_lens.plugins import AnalysisResult

from .stats import mean_ci

TENSORS = ("test_rows", "assign", "km_assign", "probs", "proj", "pca_dim", "twonn", "count", "km_pca_dim", "km_twonn",
           "angles", "key_dist", "sparsity")


class StratifiedResult(AnalysisResult):
    """``per[(scale_index, seed_index)]``: ``"scalars"`` (dict of held-out statistics) and tensors (``TENSORS``).

    ``scalar(name)`` is the ``[n_scales, n_seeds]`` array of one statistic; ``table()`` its mean and CI over seeds.
    The "most stratified" scale is the one whose expert strata have the highest held-out silhouette (the authors'
    separation statistic, computed on the mixture's strata rather than on KMeans clusters).
    """

    kind = "msma_stratified.StratifiedResult"

    def __init__(self, scales: list[str], seeds: list[int], per: dict[tuple[int, int], dict], labels: dict[str, list[str]],
                 config: dict) -> None:
        self.scales, self.seeds, self.per, self.labels, self.config = scales, seeds, per, labels, config
        self.provenance: dict = {}

    @property
    def label_names(self) -> list[str]:
        return list(self.config.get("label_names", []))

    def scalar(self, name: str) -> np.ndarray:
        return np.array([[float(self.per[si, ri]["scalars"].get(name, math.nan)) for ri in range(len(self.seeds))]
                         for si in range(len(self.scales))])

    def most_stratified(self, by: str = "silhouette") -> str:
        """The scale with the highest mean (over seeds) of statistic ``by``."""
        v = self.scalar(by)
        m = [float(row[np.isfinite(row)].mean()) if np.isfinite(row).any() else -math.inf for row in v]
        return self.scales[int(np.argmax(m))]

    def _overlap_note(self, by: str, top: str) -> str:
        """``"; its CI overlaps ..."`` when the top scale's CI over seeds overlaps another scale's (else ``""``)."""
        v = self.scalar(by)
        cis = {s: mean_ci(v[i]) for i, s in enumerate(self.scales)}
        lo = cis[top][1]
        if math.isnan(lo):
            return " (one seed: no CI)" if len(self.seeds) < 2 else ""
        close = [s for s, (_, _, hi) in cis.items() if s != top and hi >= lo]
        return f"; its 95% CI overlaps that of {', '.join(close)}: not distinguishable" if close else "; CIs do not overlap"

    def table(self, level: float = 0.95) -> list[dict]:
        """One row per scale: mean and CI over seeds of the main statistics (mixture vs KMeans)."""
        names = ["silhouette", "km_silhouette", "davies_bouldin", "km_davies_bouldin", "calinski_harabasz", "km_calinski_harabasz",
                 "entropy_norm_mean", "assignment_entropy_norm", "n_used_experts", "recon_mse"]
        for lab in self.label_names:
            names += [f"nmi_{lab}", f"km_nmi_{lab}", f"ari_{lab}", f"km_ari_{lab}", f"p_{lab}", f"km_p_{lab}"]
        rows = []
        for si, s in enumerate(self.scales):
            row = {"scale": s}
            for n in names:
                row[n] = mean_ci(self.scalar(n)[si], level)
            for lab in self.label_names:  # permutation p-values: the largest over seeds (no CI of a p-value)
                row[f"p_max_{lab}"] = float(np.max(self.scalar(f"p_{lab}")[si]))
                row[f"km_p_max_{lab}"] = float(np.max(self.scalar(f"km_p_{lab}")[si]))
            two = np.concatenate([self.per[si, ri]["twonn"].numpy() for ri in range(len(self.seeds))])
            pca = np.concatenate([self.per[si, ri]["pca_dim"].numpy() for ri in range(len(self.seeds))])
            row["twonn_range"] = (float(np.nanmin(two)), float(np.nanmax(two))) if np.isfinite(two).any() else (math.nan, math.nan)
            off = ~torch.eye(self.per[si, 0]["angles"].shape[0], dtype=torch.bool)
            row["angle_mean"] = float(np.mean([self.per[si, ri]["angles"][off].mean() for ri in range(len(self.seeds))]))
            row["key_dist_mean"] = float(np.mean([self.per[si, ri]["key_dist"][off].mean() for ri in range(len(self.seeds))]))
            row["pca_range"] = (float(np.nanmin(pca)), float(np.nanmax(pca))) if np.isfinite(pca).any() else (math.nan, math.nan)
            rows.append(row)
        return rows

    def summary(self) -> str:
        c = self.config
        gate = "trained" if c["train_gate"] else "untrained (authors' code)"
        lines = [f"stratified manifolds: {len(c['sparsity'])} sparse dictionary experts (sparsity {list(c['sparsity'])}, "
                 f"{c['code_dim']} atoms), PCA {c['pca_dim']}, objective {c['objective']}, gate {gate}; held-out "
                 f"statistics ({100 * c['test_fraction']:g}% of documents), mean [95% CI] over seeds {self.seeds}; "
                 f"KMeans (same K, same PCA) beside"]
        fmt = _fmt_ci
        for r in self.table():
            lines.append(f"[{r['scale']}] silhouette {fmt(r['silhouette'])} vs KMeans {fmt(r['km_silhouette'])}; "
                         f"Davies-Bouldin {fmt(r['davies_bouldin'])} vs {fmt(r['km_davies_bouldin'])}; "
                         f"gate entropy/logK {fmt(r['entropy_norm_mean'])}; experts used {fmt(r['n_used_experts'], 1)}; "
                         f"held-out recon MSE {fmt(r['recon_mse'], 3)}")
            lines.append(f"    per-expert dimension: TwoNN {r['twonn_range'][0]:.1f}-{r['twonn_range'][1]:.1f}, "
                         f"PCA{100 * c['variance']:g} {r['pca_range'][0]:.0f}-{r['pca_range'][1]:.0f}; mean principal angle between "
                         f"dictionaries {r['angle_mean']:.1f} deg; mean gate-key distance {r['key_dist_mean']:.2f}")
            for lab in self.label_names:
                lines.append(f"    {lab}: NMI {fmt(r[f'nmi_{lab}'])} (p <= {r[f'p_max_{lab}']:.3f}) vs KMeans {fmt(r[f'km_nmi_{lab}'])} "
                             f"(p <= {r[f'km_p_max_{lab}']:.3f}); ARI {fmt(r[f'ari_{lab}'])} vs {fmt(r[f'km_ari_{lab}'])}")
        top = self.most_stratified()
        lines.append(f"most stratified scale (highest held-out silhouette of the expert strata): {top}"
                     + self._overlap_note("silhouette", top))
        if self.label_names:
            lab = self.label_names[0]
            best = self.most_stratified(f"nmi_{lab}")
            lines.append(f"most {lab}-aligned strata (highest NMI with {lab}): {best}" + self._overlap_note(f"nmi_{lab}", best))
        return "\n".join(lines)

    # ----- figures ------------------------------------------------------------------------------------
    def figures(self, seed_index: int = 0) -> dict:
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        figs = {}
        n = len(self.scales)
        lab = self.label_names[0] if self.label_names else None
        if lab is not None:
            heat = make_subplots(1, n, subplot_titles=self.scales)
            for si in range(n):
                d = self.per[si, seed_index]
                vals = np.asarray(self.labels[lab], dtype=object)[d["test_rows"].numpy()]
                cats = sorted(set(vals))
                z = np.stack([d["probs"].numpy()[vals == v].mean(0) for v in cats])
                heat.add_trace(go.Heatmap(z=z, x=[f"e{j}" for j in range(z.shape[1])], y=cats, coloraxis="coloraxis"), 1, si + 1)
            heat.update_layout(title=f"Mean gate probability per {lab} × expert (held-out, seed {self.seeds[seed_index]})",
                               coloraxis={"colorscale": "Viridis"})
            figs["gate_by_label"] = heat
        proj = make_subplots(2 if lab else 1, n, subplot_titles=[f"{s}: expert" for s in self.scales]
                             + ([f"{s}: {lab}" for s in self.scales] if lab else []))
        for si in range(n):
            d = self.per[si, seed_index]
            p = d["proj"].numpy()
            for j in np.unique(d["assign"].numpy()):
                m = d["assign"].numpy() == j
                proj.add_trace(go.Scatter(x=p[m, 0], y=p[m, 1], mode="markers", name=f"{self.scales[si]} e{j}",
                                          legendgroup="expert", marker={"size": 4}), 1, si + 1)
            if lab:
                vals = np.asarray(self.labels[lab], dtype=object)[d["test_rows"].numpy()]
                for v in sorted(set(vals)):
                    m = vals == v
                    proj.add_trace(go.Scatter(x=p[m, 0], y=p[m, 1], mode="markers", name=f"{self.scales[si]} {v}",
                                              legendgroup=lab, marker={"size": 4}), 2, si + 1)
        proj.update_layout(title=f"Held-out points on the first two principal components (seed {self.seeds[seed_index]})")
        figs["projection"] = proj
        dims = go.Figure()
        x = [f"{s} e{j} (s={int(k)})" for si, s in enumerate(self.scales) for j, k in enumerate(self.per[si, seed_index]["sparsity"])]
        for key, label in (("twonn", "TwoNN"), ("pca_dim", f"PCA {100 * self.config['variance']:g}%")):
            dims.add_trace(go.Bar(name=label, x=x, y=np.concatenate([self.per[si, seed_index][key].numpy() for si in range(n)])))
        dims.update_layout(title="Intrinsic dimension per expert (held-out points routed to it)", barmode="group",
                           yaxis_title="dimension")
        figs["intrinsic_dimension"] = dims
        return figs

    # ----- persistence -------------------------------------------------------------------------------
    def to_artifact(self) -> tuple[dict[str, torch.Tensor], dict]:
        names = sorted({k for d in self.per.values() for k in d["scalars"]})
        tensors = {"scalars": torch.tensor([[[float(self.per[si, ri]["scalars"].get(k, math.nan)) for k in names]
                                             for ri in range(len(self.seeds))] for si in range(len(self.scales))], dtype=torch.float64)}
        for (si, ri), d in self.per.items():
            for t in TENSORS:
                tensors[f"s{si}.r{ri}.{t}"] = d[t].contiguous()
        return tensors, {"scales": self.scales, "seeds": self.seeds, "scalar_names": names, "labels": self.labels,
                         "config": self.config}

    @classmethod
    def from_artifact(cls, tensors: dict[str, torch.Tensor], cfg: dict) -> StratifiedResult:
        scales, seeds, names = cfg["scales"], cfg["seeds"], cfg["scalar_names"]
        sc = tensors["scalars"]
        if tuple(sc.shape) != (len(scales), len(seeds), len(names)):
            raise ValueError(f"scalars has shape {tuple(sc.shape)}, expected {(len(scales), len(seeds), len(names))}")
        per = {}
        for si in range(len(scales)):
            for ri in range(len(seeds)):
                d = {t: tensors[f"s{si}.r{ri}.{t}"] for t in TENSORS}
                d["scalars"] = dict(zip(names, sc[si, ri].tolist()))
                per[si, ri] = d
        return cls(list(scales), list(seeds), per, dict(cfg["labels"]), dict(cfg["config"]))


def _fmt_ci(v: tuple[float, float, float], digits: int = 2) -> str:
    m, lo, hi = v
    if math.isnan(m):
        return "nan"
    return f"{m:.{digits}f}" if math.isnan(lo) else f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
