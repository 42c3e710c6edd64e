"""msma-lens plugin ``intrinsic-dim``: per-scale intrinsic dimension of :class:`msma_lens.ScaleActivations`.

* **TwoNN** (Facco et al., Sci. Rep. 2017). For each point, μ = r2/r1 is the ratio of the distances to its second
  and first nearest neighbours. On a d-dimensional manifold with locally constant density μ is Pareto
  distributed, P(μ > x) = x^(-d), and the maximum-likelihood estimate is d = (n - 1) / Σ log μ_i (the n - 1
  makes 1/d unbiased). Computed by :func:`msma_lens.report.twonn_log_ratios` on a seeded subsample of at most
  ``max_points`` rows (the same rows for every scale when they have the same number of rows).
* **Bootstrap CI over documents.** Tokens of one document are correlated, so documents, not rows, are resampled
  with replacement (``n_boot`` times); each resample recomputes d from the log μ of the points of the drawn
  documents (a point counts as often as its document is drawn; neighbour distances are those of the full
  subsample). Percentile interval at level ``ci``. The same resamples are used for every scale, so
  ``p_highest[s]`` (the fraction of resamples in which scale ``s`` has the highest TwoNN dimension) answers
  "which scale has the highest intrinsic dimension" with its uncertainty.
* **PCA dimension**: the smallest k whose top-k principal components explain at least ``variance`` (default
  90%) of the total variance (covariance over all rows of the scale).

>>> from msma_lens import plugins
>>> res = plugins.run("intrinsic-dim", acts, variance=0.9, n_boot=200)
>>> print(res.summary()); res.highest(); res.save("intrinsic_dim")
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from msma_lens.capture.activations import ScaleActivations
from msma_lens.errors import ConfigError
from msma_lens.plugins import AnalysisResult
from msma_lens.report import twonn_log_ratios

__version__ = "0.1.0"
__all__ = ["IntrinsicDimension", "IntrinsicDimResult", "pca_dimension", "twonn_bootstrap"]


def pca_dimension(x: torch.Tensor, variance: float = 0.9) -> tuple[int, torch.Tensor]:
    """(k, explained): the fewest principal components explaining >= ``variance`` of the variance of the rows of
    ``x``, and the explained-variance ratio of every component (float64, descending). k = 0 for constant data."""
    c = x.double() - x.double().mean(0)
    if c.shape[0] < c.shape[1]:
        ev = torch.linalg.svdvals(c) ** 2
    else:
        ev = torch.linalg.eigvalsh(c.T @ c).flip(0).clamp(min=0)
    total = ev.sum()
    if total <= 0:
        return 0, torch.zeros_like(ev)
    frac = ev / total
    k = int((frac.cumsum(0) < variance - 1e-12).sum()) + 1
    return min(k, frac.numel()), frac


def twonn_bootstrap(mu: torch.Tensor, groups: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """TwoNN MLE (n - 1) / Σ log μ for each resample of groups: ``mu`` [n] per-point log(r2/r1), ``groups`` [n] the
    group (document) index of each point in ``0..G-1``, ``draws`` [B, G] group indices drawn with replacement."""
    n_groups = draws.shape[1]
    s = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, groups, mu.double())
    m = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, groups, torch.ones_like(mu, dtype=torch.float64))
    counts = torch.zeros(draws.shape, dtype=torch.float64).scatter_add_(1, draws, torch.ones(draws.shape, dtype=torch.float64))
    n, total = counts @ m, counts @ s
    return torch.where((n > 2) & (total > 0), (n - 1) / total, torch.full_like(n, float("nan")))


def _int(name: str, v: object, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ConfigError(f"IntrinsicDimension: {name} must be an integer >= {lo}, got {v!r}")
    return v


def _fraction(name: str, v: object, upper_closed: bool) -> float:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v and (v <= 1 if upper_closed else v < 1)
    if not ok:
        raise ConfigError(f"IntrinsicDimension: {name} must be a number in (0, {'1]' if upper_closed else '1)'}, got {v!r}")
    return float(v)


@dataclass
class IntrinsicDimension:
    """Per-scale intrinsic dimension: TwoNN with a bootstrap CI over documents, and PCA dimension at a variance threshold."""

    description = "Per-scale intrinsic dimension: TwoNN (bootstrap CI over documents) and PCA dimension at a variance threshold"

    variance: float = 0.9          # PCA dimension: fraction of variance the top-k components must explain
    max_points: int = 2000         # TwoNN subsample per scale (pairwise distances are O(max_points^2))
    n_boot: int = 200              # document resamples for the CI (0: no CI)
    ci: float = 0.95               # CI level
    seed: int = 0
    scales: list[str] | str | None = None  # a subset of the scales (names, or 'a,b'); default all

    def __post_init__(self) -> None:
        self.variance = _fraction("variance", self.variance, upper_closed=True)
        self.ci = _fraction("ci", self.ci, upper_closed=False)
        self.max_points = _int("max_points", self.max_points, 3)
        self.n_boot = _int("n_boot", self.n_boot, 0)
        self.seed = _int("seed", self.seed, 0)
        if isinstance(self.scales, str):
            self.scales = [s.strip() for s in self.scales.split(",")]
        if self.scales is not None:
            if not (isinstance(self.scales, (list, tuple)) and self.scales and all(isinstance(s, str) and s for s in self.scales)
                    and len(set(self.scales)) == len(self.scales)):
                raise ConfigError(f"IntrinsicDimension: scales must be distinct scale names, got {self.scales!r}")
            self.scales = list(self.scales)

    def fit(self, acts: ScaleActivations) -> IntrinsicDimResult:
        names = self.scales or acts.scale_names
        bad = [s for s in names if s not in acts.acts]
        if bad:
            raise ConfigError(f"IntrinsicDimension: unknown scale(s) {bad}; the activations have {acts.scale_names}")
        acts.check_finite()
        docs, doc_idx = torch.unique(acts.doc_ids, return_inverse=True)
        g = torch.Generator().manual_seed(self.seed)
        draws = torch.randint(0, docs.numel(), (self.n_boot, docs.numel()), generator=g)
        twonn, n_points, pca, explained, boot = {}, {}, {}, {}, []
        for s in names:
            x = acts[s]
            if x.shape[0] < 3:
                raise ConfigError(f"IntrinsicDimension: scale {s!r} has {x.shape[0]} rows; TwoNN needs at least 3")
            mu, rows = twonn_log_ratios(x, self.max_points, self.seed)
            n_points[s] = int(mu.numel())
            twonn[s] = float((mu.numel() - 1) / mu.sum()) if mu.numel() > 2 else math.nan
            boot.append(twonn_bootstrap(mu, doc_idx[rows], draws))
            pca[s], explained[s] = pca_dimension(x, self.variance)
        boot_t = torch.stack(boot, 1) if boot else torch.zeros(0, 0)
        return IntrinsicDimResult(list(names), twonn, pca, n_points, explained, boot_t, int(docs.numel()), asdict(self))



class IntrinsicDimResult(AnalysisResult):
    """TwoNN and PCA dimension per scale; ``boot`` [n_boot, n_scales] holds the TwoNN of each document resample."""

    kind = "msma_intrinsic_dim.IntrinsicDimResult"

    def __init__(self, scales: list[str], twonn: dict[str, float], pca_dim: dict[str, int], n_points: dict[str, int],
                 explained: dict[str, torch.Tensor], boot: torch.Tensor, n_docs: int, config: dict) -> None:
        self.scales, self.twonn, self.pca_dim, self.n_points = scales, twonn, pca_dim, n_points
        self.explained, self.boot, self.n_docs, self.config = explained, boot, n_docs, config
        self.provenance: dict = {}

    # ----- derived ---------------------------------------------------------------------------------------
    @property
    def twonn_ci(self) -> dict[str, tuple[float, float]]:
        """Percentile bootstrap interval of the TwoNN dimension per scale (NaN without resamples or < 2 documents)."""
        a = (1 - self.config["ci"]) / 2
        out = {}
        for j, s in enumerate(self.scales):
            b = self.boot[:, j] if self.boot.numel() else torch.zeros(0, dtype=torch.float64)
            b = b[torch.isfinite(b)]
            if b.numel() < 2 or self.n_docs < 2:
                out[s] = (math.nan, math.nan)
            else:
                lo, hi = torch.quantile(b, torch.tensor([a, 1 - a], dtype=b.dtype)).tolist()
                out[s] = (lo, hi)
        return out

    @property
    def p_highest(self) -> dict[str, float]:
        """Fraction of document resamples in which each scale has the highest TwoNN dimension."""
        if self.boot.numel() == 0 or self.n_docs < 2:
            return {s: math.nan for s in self.scales}
        b = torch.nan_to_num(self.boot, nan=-math.inf)
        wins = torch.bincount(b.argmax(1), minlength=len(self.scales)).double() / b.shape[0]
        return dict(zip(self.scales, wins.tolist()))

    def highest(self, by: str = "twonn") -> str:
        """The scale with the highest intrinsic dimension by ``"twonn"`` or ``"pca"``."""
        if by not in ("twonn", "pca"):
            raise ConfigError(f"highest(by=...): expected 'twonn' or 'pca', got {by!r}")
        vals = self.twonn if by == "twonn" else self.pca_dim
        finite = {s: v for s, v in vals.items() if not math.isnan(v)}
        if not finite:
            raise ConfigError(f"no scale has a finite {by} dimension")
        return max(finite, key=finite.get)

    def table(self) -> list[dict]:
        ci, ph = self.twonn_ci, self.p_highest
        return [{"scale": s, "rows": self.n_points[s], "twonn": self.twonn[s], "ci_low": ci[s][0], "ci_high": ci[s][1],
                 "p_highest": ph[s], "pca_dim": self.pca_dim[s], "width": int(self.explained[s].numel())} for s in self.scales]

    def summary(self) -> str:
        c = self.config
        pct = f"{100 * c['variance']:g}"
        lines = [f"intrinsic dimension per scale (TwoNN on <= {c['max_points']} rows; {100 * c['ci']:g}% CI over "
                 f"{self.n_docs} documents, {c['n_boot']} resamples; PCA at {pct}% variance)",
                 f"{'scale':<16}{'rows':>7}{'TwoNN':>8}{'CI':>18}{'P(highest)':>12}{f'PCA{pct}':>9}{'d':>6}"]
        for r in self.table():
            ci = f"[{r['ci_low']:.2f}, {r['ci_high']:.2f}]"
            lines.append(f"{r['scale']:<16}{r['rows']:>7}{r['twonn']:>8.2f}{ci:>18}{r['p_highest']:>12.2f}{r['pca_dim']:>9}{r['width']:>6}")
        top = self.highest("twonn")
        p = self.p_highest[top]
        lines.append(f"highest TwoNN dimension: {top} ({self.twonn[top]:.2f}"
                     + (f"; highest in {100 * p:.0f}% of document resamples)" if not math.isnan(p) else ")")
                     + f"; highest PCA dimension: {self.highest('pca')}")
        return "\n".join(lines)

    def figures(self) -> dict:
        import plotly.graph_objects as go

        rows, ci = self.table(), self.twonn_ci
        dim = go.Figure([
            go.Bar(name="TwoNN", x=self.scales, y=[self.twonn[s] for s in self.scales],
                   error_y={"type": "data", "symmetric": False,
                            "array": [ci[s][1] - self.twonn[s] for s in self.scales],
                            "arrayminus": [self.twonn[s] - ci[s][0] for s in self.scales]}),
            go.Bar(name=f"PCA dimension ({100 * self.config['variance']:g}% variance)", x=self.scales,
                   y=[r["pca_dim"] for r in rows]),
        ])
        dim.update_layout(title="Intrinsic dimension per scale", barmode="group", yaxis_title="dimension")
        spec = go.Figure([go.Scatter(name=s, x=list(range(1, self.explained[s].numel() + 1)),
                                     y=self.explained[s].cumsum(0).tolist(), mode="lines") for s in self.scales])
        spec.add_hline(y=self.config["variance"], line_dash="dash")
        spec.update_layout(title="Cumulative explained variance", xaxis_title="principal components", xaxis_type="log",
                           yaxis_title="fraction of variance")
        return {"intrinsic_dimension": dim, "pca_spectrum": spec}

    # ----- persistence ---------------------------------------------------------------------------------
    def to_artifact(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors = {f"explained.{s}": e for s, e in self.explained.items()}
        tensors["boot"] = self.boot.double()
        tensors["twonn"] = torch.tensor([self.twonn[s] for s in self.scales], dtype=torch.float64)
        tensors["pca_dim"] = torch.tensor([self.pca_dim[s] for s in self.scales], dtype=torch.int64)
        tensors["n_points"] = torch.tensor([self.n_points[s] for s in self.scales], dtype=torch.int64)
        return tensors, {"scales": self.scales, "n_docs": self.n_docs, "config": self.config}

    @classmethod
    def from_artifact(cls, tensors: dict[str, torch.Tensor], cfg: dict) -> IntrinsicDimResult:
        s = cfg["scales"]
        if any(t.numel() != len(s) for t in (tensors["twonn"], tensors["pca_dim"], tensors["n_points"])):
            raise ValueError(f"per-scale tensors do not have {len(s)} entries")
        return cls(s, dict(zip(s, tensors["twonn"].tolist())), dict(zip(s, tensors["pca_dim"].tolist())),
                   dict(zip(s, tensors["n_points"].tolist())), {x: tensors[f"explained.{x}"] for x in s},
                   tensors["boot"], int(cfg["n_docs"]), dict(cfg["config"]))
