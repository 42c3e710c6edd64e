"""The intervention experiment runner (MSPGT §B.5–B.6): :func:`run_experiment` sweeps prompts × scales ×
intervention kinds × strengths × seeds and compares text metrics (:mod:`msma_lens.analysis.text`) with the
unsteered baseline: % change, a paired effect size (d_z with the exact noncentral-t CI of δ_z by default, or BCa
bootstrap CIs over pairs; Hedges' g / Cohen's d of independent groups for ``test="welch"``), and Holm-corrected
p-values across the whole grid. Pairs where a metric is NaN (e.g. coherence of a text with < 2 sentences) are
excluded pairwise and counted (``n_excluded``); results save as JSON + CSV and plot with plotly. A degenerate baseline stops it first
(:func:`check_baseline`)."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import tl
from ..analysis import stats
from ..capture.scales import Scales
from ..errors import ArtifactError, ConfigError, DegenerateBaselineError
from ..io.artifacts import write_csv_atomic, write_json_atomic, write_text_atomic
from .directions import random_direction
from .edits import (
    AT_MODES,
    DEFAULT_AT,
    AttentionEdit,
    GaussianNoise,
    Intervention,
    Rescale,
    Translate,
    mix_seed,
    warn_deprecated,
)
from .generate import check_int, check_prompts, generate
from .session import flatten_interventions

__all__ = [
    "BASELINE_MAX_PPL_RATIO",
    "DEFAULT_METRICS",
    "DEFAULT_STRENGTHS",
    "INTERVENTION_KINDS",
    "KIND_ALIASES",
    "ExperimentResult",
    "canonical_kind",
    "check_baseline",
    "corpus_perplexity",
    "run_experiment",
]


# ----- the experiment runner -------------------------------------------------------------------------------
INTERVENTION_KINDS = ("translate", "rescale", "noise", "attention")
KIND_ALIASES = {"scale": "rescale"}  # deprecated kind names, accepted with a DeprecationWarning for one release
# What the stream holds at each layer of the scale under the default at="held" (no stacking). at="every" stacks
# the residual edits over the scale's layers (rescale 1.5 -> 35x the unsteered norm over SmolLM2's 10-layer
# intermediate scale): give it much smaller strengths.
DEFAULT_STRENGTHS: dict[str, tuple[float, ...]] = {
    "translate": (0.5, 1.0, 2.0),  # × mean residual norm along the direction (relative=True)
    "rescale": (0.5, 1.5, 2.0),    # factor on the scale's stream
    "noise": (0.1, 0.5, 1.0),      # σ × RMS residual coordinate (relative=True)
    "attention": (0.5, 2.0),       # temperature via hook_q, at every layer of the scale
}
DEFAULT_METRICS = ("ttr", "distinct_2", "sentence_count", "mean_sentence_length", "max_dependency_depth", "coherence",
                   "sentiment_consistency", "repetition_rate", "compression_ratio", "perplexity")
EFFECTS = {**stats.PAIRED_EFFECTS, "hedges_g": stats.hedges_g, "cohens_d": stats.cohens_d}
EFFECT_LABELS = {"d_z": "Cohen's d_z (paired: mean / SD of differences)",
                 "g_z": "Hedges' g_z (paired d_z x small-sample J)",
                 "hedges_g": "Hedges' g (independent groups, pooled SD)",
                 "cohens_d": "Cohen's d (independent groups, pooled SD)"}
CI_METHODS = {"paired": "BCa bootstrap over pairs", "welch": "percentile bootstrap, groups resampled independently"}
"""CI label per test (``"paired"``: the label of ``paired_ci="bca"``; see :data:`msma_lens.analysis.stats.PAIRED_CI_METHODS`)."""
TESTS = {"paired": stats.paired_t_test, "welch": stats.welch_t_test}

Factory = Callable[[str, float, int], "Intervention | Sequence[Intervention]"]


def canonical_kind(kind: str) -> str:
    """A built-in intervention kind's current name (``"scale"`` → ``"rescale"`` with a DeprecationWarning)."""
    if kind in KIND_ALIASES:
        warn_deprecated(f"intervention kind {kind!r} is deprecated; use {KIND_ALIASES[kind]!r}")
        return KIND_ALIASES[kind]
    return kind


def _builtin_factory(kind: str, directions: dict[str, torch.Tensor], at: str) -> Callable[..., Any]:
    def make(scale: str, strength: float, seed: int, rows: list[int]):
        if kind == "translate":
            return Translate(scale, directions[scale], strength=strength, relative=True, at=at)
        if kind == "rescale":
            return Rescale(scale, strength, at=at)
        if kind == "noise":  # one noise stream per (seed, prompt): independent rows, batch-invariant
            return GaussianNoise(scale, strength, relative=True, seed=[mix_seed(seed, i) % (2**62) for i in rows], at=at)
        return AttentionEdit(scale, strength, mode="query")

    return make


def _modes(ivs: Any) -> set[str]:
    """The ``at`` of each intervention a factory built (AttentionEdit and per-layer custom edits: ``"every"``)."""
    ivs = ivs if isinstance(ivs, (list, tuple)) else [ivs]
    return {str(getattr(iv, "at", "every")) for iv in flatten_interventions(tuple(ivs))}


def _user_factory(fn: Factory) -> Callable[..., Any]:
    if not callable(fn):
        raise ConfigError(f"intervention factories must be callables (scale, strength, seed) -> Intervention, got {fn!r}")
    return lambda scale, strength, seed, rows: fn(scale, strength, seed)


def _directions(direction: Any, sc: Scales, used: Sequence[str], d: int, seed: int) -> dict[str, torch.Tensor]:
    if direction is None:  # seeded per scale index, so a scale's direction does not depend on use_scales
        return {s: random_direction(d, seed=mix_seed(seed, i)) for i, s in enumerate(sc.names) if s in used}
    if isinstance(direction, Mapping):
        missing = [s for s in used if s not in direction]
        if missing:
            raise ConfigError(f"direction mapping has no vector for scale(s) {missing}")
        return {s: direction[s] for s in used}
    return {s: direction for s in used}


@dataclass
class ExperimentResult:
    """Tidy results of :func:`run_experiment`.

    ``table``: one row per (scale, intervention, strength, metric) with ``n`` (= ``n_pairs``, the pairs used) and
    ``n_excluded`` (pairs dropped because the metric is NaN on either side), ``baseline_mean``,
    ``steered_mean``, ``pct_change``, ``effect`` (named by ``effect_name``, e.g. ``d_z``; + ``effect_ci_lo``/``effect_ci_hi``),
    ``p_value``, ``p_holm`` (Holm over the whole grid) and ``significant``. ``samples``: one row per generated text (baseline rows have
    ``intervention="baseline"``) with its metric values. ``config``: the grid and provenance.
    """

    table: list[dict]
    samples: list[dict]
    config: dict

    def rows(self, **where: Any) -> list[dict]:
        return [r for r in self.table if all(r.get(k) == v for k, v in where.items())]

    def format(self, metrics: Sequence[str] | None = None, max_rows: int | None = None) -> str:
        """Fixed-width text table: % change, effect size with its CI, Holm p (``*`` marks significance)."""
        rows = [r for r in self.table if metrics is None or r["metric"] in metrics]
        if max_rows is not None:
            rows = sorted(rows, key=lambda r: -abs(r["effect"]) if math.isfinite(r["effect"]) else 0.0)[:max_rows]
        name = self.config.get("effect") or "effect"
        head = (f"{'scale':<13}{'intervention':<13}{'strength':>9}  {'metric':<22}{'baseline':>9}{'steered':>9}"
                f"{'%change':>9}{name:>8}{'95% CI':>17}{'p_holm':>9}")
        label = self.config.get("effect_label") or EFFECT_LABELS.get(name, name)
        ci = self.config.get("ci_method") or "bootstrap"
        lines = [f"effect: {name} = {label}; 95% CI: {ci}", head]
        if any(r.get("n_excluded", 0) for r in rows):
            lines.insert(1, "[k of n pairs excluded]: pairs dropped because the metric is NaN on either side "
                            "(e.g. coherence of a text with < 2 sentences)")
        ats = {k: v for k, v in (self.config.get("at") or {}).items() if v}
        if ats:
            lines.insert(0, "applied at: " + ", ".join(f"{k} {v}" for k, v in ats.items())
                         + " (held/entry: one edit at a time; every: stacked over the scale's layers)")
        bc = self.config.get("baseline_check")
        if bc:
            lines.insert(0, f"baseline check: median perplexity of unsteered samples {bc['baseline_median_perplexity']:.1f} vs "
                            f"{bc['corpus_median_perplexity']:.1f} on corpus text (ratio {bc['ratio']:.2f}, limit {bc['max_ratio']:g})")
        for r in rows:
            ci = f"[{_fmt(r['effect_ci_lo'])}, {_fmt(r['effect_ci_hi'])}]"
            lines.append(f"{r['scale']:<13}{r['intervention']:<13}{r['strength']:>9g}  {r['metric']:<22}"
                         f"{_fmt(r['baseline_mean']):>9}{_fmt(r['steered_mean']):>9}{_fmt(r['pct_change']):>9}"
                         f"{_fmt(r['effect']):>8}{ci:>17}{_fmt(r['p_holm']):>9}{' *' if r.get('significant') else ''}"
                         + (f"  [{r['n_excluded']} of {r['n_excluded'] + r['n']} pairs excluded]" if r.get("n_excluded") else ""))
        return "\n".join(lines)

    def save(self, directory: str | os.PathLike, *, figures: bool = False) -> Path:
        """Write ``results.json``, ``table.csv`` and ``samples.csv`` (each atomically); optionally HTML figures."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        # write_json_atomic: strict JSON (NaN/Inf written as null, restored by load), atomic, umask modes
        write_json_atomic(out / "results.json", {"format": "msma_lens.ExperimentResult", "format_version": 1,
                                                 "config": self.config, "table": self.table, "samples": self.samples})
        write_csv_atomic(out / "table.csv", self.table)
        write_csv_atomic(out / "samples.csv", self.samples)
        if figures:
            write_text_atomic(out / "sweep.html", self.figure_sweep().to_html(include_plotlyjs=True))
            write_text_atomic(out / "heatmap.html", self.figure_heatmap().to_html(include_plotlyjs=True))
        return out

    @classmethod
    def load(cls, directory: str | os.PathLike) -> ExperimentResult:
        import json

        p = Path(directory) / "results.json"
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ArtifactError(f"{p}: cannot read experiment results ({e})") from e
        if d.get("format") != "msma_lens.ExperimentResult":
            raise ArtifactError(f"{p}: not an msma-lens experiment result (format {d.get('format')!r})")
        # NaN was written as null: restore it so format() and the figures work on loaded results
        table = [{k: (float("nan") if v is None and k in _FLOAT_COLUMNS else v) for k, v in r.items()} for r in d["table"]]
        return cls(table, d["samples"], d["config"])

    def figure_sweep(self, metrics: Sequence[str] | None = None, value: str = "effect"):
        """Strength sweeps: one panel per (metric row, intervention column), one line per scale."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        if value not in ("effect", "pct_change"):
            raise ConfigError(f"value must be 'effect' or 'pct_change', got {value!r}")
        metrics = list(metrics or self.config["metrics"])
        kinds, scales = self.config["interventions"], self.config["scales_used"]
        fig = make_subplots(rows=len(metrics), cols=len(kinds), shared_xaxes=False,
                            subplot_titles=[f"{m} · {k}" for m in metrics for k in kinds])
        palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
        for i, m in enumerate(metrics, 1):
            for j, k in enumerate(kinds, 1):
                for c, s in enumerate(scales):
                    rs = sorted(self.rows(metric=m, intervention=k, scale=s), key=lambda r: r["strength"])
                    if not rs:
                        continue
                    y = [r[value] for r in rs]
                    err = None
                    if value == "effect":
                        err = dict(type="data", symmetric=False, array=[_finite_or_zero(r["effect_ci_hi"] - r["effect"]) for r in rs],
                                   arrayminus=[_finite_or_zero(r["effect"] - r["effect_ci_lo"]) for r in rs])
                    fig.add_trace(go.Scatter(x=[r["strength"] for r in rs], y=y, error_y=err, mode="lines+markers", name=s,
                                             legendgroup=s, showlegend=(i == 1 and j == 1),
                                             line=dict(color=palette[c % len(palette)])), row=i, col=j)
        label = _effect_title(self.config.get("effect")) if value == "effect" else "% change"
        fig.update_layout(height=260 * len(metrics), title=f"Strength sweeps ({label} vs unsteered baseline)")
        return fig

    def figure_heatmap(self, intervention: str | None = None, strength: float | None = None, value: str = "effect"):
        """Effect-size heatmap: rows (intervention, strength, scale), columns metrics; text shows Holm p."""
        import plotly.graph_objects as go

        rows = [r for r in self.table if (intervention is None or r["intervention"] == intervention)
                and (strength is None or r["strength"] == strength)]
        if not rows:
            raise ConfigError(f"no results for intervention={intervention!r}, strength={strength!r}")
        metrics = [m for m in self.config["metrics"] if any(r["metric"] == m for r in rows)]
        keys = list(dict.fromkeys((r["intervention"], r["strength"], r["scale"]) for r in rows))
        z, text = [], []
        for key in keys:
            zr, tr = [], []
            for m in metrics:
                r = next((r for r in rows if (r["intervention"], r["strength"], r["scale"]) == key and r["metric"] == m), None)
                v = None if r is None else r[value]
                zr.append(v if v is not None and math.isfinite(v) else None)
                tr.append("" if r is None else f"{_fmt(v)}<br>p={_fmt(r['p_holm'])}")
            z.append(zr)
            text.append(tr)
        fig = go.Figure(go.Heatmap(z=z, x=metrics, y=[f"{k} {s:g} · {sc}" for k, s, sc in keys], text=text,
                                   texttemplate="%{text}", colorscale="RdBu", zmid=0, reversescale=True,
                                   colorbar=dict(title=value)))
        fig.update_layout(title=f"{value} vs unsteered baseline (Holm-corrected p)", height=120 + 28 * len(keys))
        return fig


_FLOAT_COLUMNS = frozenset({"baseline_mean", "steered_mean", "pct_change", "effect", "effect_ci_lo", "effect_ci_hi", "p_value",
                            "p_holm"})


def _finite_or_zero(v: Any) -> float:
    """``v`` if it is a finite number, else 0.0; the sign is kept (a bootstrap CI may exclude its own estimate).

    (Unlike ``align.protocol._clamped_bar_length``, which also clamps negative lengths to 0.)"""
    return v if isinstance(v, (int, float)) and math.isfinite(v) else 0.0


def _effect_title(effect: str | None) -> str:
    """Short plot label of an effect name: ``Cohen's d_z (paired)``, ``Hedges' g (independent groups)``, ..."""
    full = EFFECT_LABELS.get(effect or "", "effect")
    return full.split(" (")[0] + (" (paired)" if effect in stats.PAIRED_EFFECTS else " (independent groups)" if effect in EFFECT_LABELS else "")


def _fmt(v: Any) -> str:
    return "nan" if v is None or not math.isfinite(v) else f"{v:.2g}"


def _compare(steered: list[float], base: list[float], effect: str, test: str, n_boot: int, boot_seed: int,
             paired_ci: str = "nct") -> dict:
    import numpy as np

    a, b = np.asarray(steered, dtype=float), np.asarray(base, dtype=float)
    ok = np.isfinite(a) & np.isfinite(b)  # pairwise exclusion: a NaN on either side drops the pair
    a, b = a[ok], b[ok]
    nan = float("nan")
    out = {"effect_name": effect, "n": int(ok.sum()), "n_pairs": int(ok.sum()), "n_excluded": int(ok.size - ok.sum()),
           "baseline_mean": float(b.mean()) if b.size else nan, "steered_mean": float(a.mean()) if a.size else nan}
    if a.size < 2:
        return {**out, "pct_change": nan, "effect": nan, "effect_ci_lo": nan, "effect_ci_hi": nan, "p_value": nan}
    fn = EFFECTS[effect]
    if not n_boot:
        lo, hi = nan, nan
    elif test == "paired":
        lo, hi = stats.paired_effect_ci(a, b, effect, method=paired_ci, n_boot=n_boot, seed=boot_seed)
    else:
        lo, hi = stats.bootstrap_ci(fn, a, b, n_boot=n_boot, seed=boot_seed)
    p = TESTS[test](a, b)
    if np.array_equal(a, b):  # no change at all: no evidence against the null, and the test still counts in Holm's m
        p = 1.0
    return {**out, "pct_change": stats.percent_change(a, b), "effect": fn(a, b), "effect_ci_lo": lo, "effect_ci_hi": hi,
            "p_value": p}


BASELINE_MAX_PPL_RATIO = 5.0


def corpus_perplexity(model: Any, n_docs: int = 8, prompt_words: int = 6, continuation_words: int = 40) -> float:
    """Median perplexity of the model on bundled-corpus text: ``n_docs`` documents spread over the topics, each
    split into a ``prompt_words`` prompt and the next ``continuation_words`` words (one uncached forward pass each)."""
    from ..analysis.text import continuation_perplexity
    from ..io.corpus import load_corpus

    texts = load_corpus().texts
    step = max(1, len(texts) // n_docs)
    prompts, conts = [], []
    for t in texts[::step][:n_docs]:
        w = t.split()
        prompts.append(" ".join(w[:prompt_words]))
        conts.append(" " + " ".join(w[prompt_words:prompt_words + continuation_words]))
    return float(torch.tensor(continuation_perplexity(model, prompts, conts), dtype=torch.float64).median())


def check_baseline(model: Any, prompts: Sequence[str], texts: Sequence[str], *, max_ratio: float = BASELINE_MAX_PPL_RATIO,
                   perplexities: Sequence[float] | None = None) -> dict:
    """Refuse a degenerate unsteered baseline before any steering effect is computed against it.

    Compares the median perplexity of the baseline continuations (given their prompts, uncached forward passes)
    with :func:`corpus_perplexity`. A healthy model's own samples score at or below its corpus perplexity; broken
    generation (e.g. a corrupted KV cache: " Paris-----------") scores orders of magnitude above. Raises
    DegenerateBaselineError naming both numbers and showing samples when the ratio exceeds ``max_ratio`` or every
    continuation is empty; returns the numbers otherwise.
    """
    from ..analysis.text import continuation_perplexity

    if not (isinstance(max_ratio, (int, float)) and max_ratio > 0):
        raise ConfigError(f"baseline_check must be a positive ratio or None, got {max_ratio!r}")
    if perplexities is None:
        perplexities = continuation_perplexity(model, list(prompts), list(texts))
    vals = torch.tensor([float(v) for v in perplexities], dtype=torch.float64)
    finite = vals[torch.isfinite(vals)]
    ref = corpus_perplexity(model)
    base = float(finite.median()) if finite.numel() else math.inf
    ratio = base / ref
    info = {"baseline_median_perplexity": base, "corpus_median_perplexity": ref, "ratio": ratio, "max_ratio": float(max_ratio),
            "n_samples": len(texts), "n_empty": int(vals.numel() - finite.numel())}
    if not ratio <= max_ratio:
        shown = "; ".join(repr(t[:80]) for t in list(texts)[:3])
        raise DegenerateBaselineError(
            f"the unsteered baseline is degenerate: median perplexity {base:.1f} of its {len(texts)} samples vs {ref:.1f} on "
            f"corpus text (ratio {ratio:.1f} > {max_ratio:g}; {info['n_empty']} empty). Generation itself is broken, so no "
            f"steering effect is reported. Samples: {shown}. Check msma_lens.guard.check_kv_cache(model) and the installed "
            f"versions {tl.library_versions()}.")
    return info


def run_experiment(
    model: Any,
    prompts: Sequence[str],
    *,
    scales: Any = None,
    use_scales: Sequence[str] | None = None,
    interventions: Sequence[str] | Mapping[str, Factory] = INTERVENTION_KINDS,
    strengths: Mapping[str, Sequence[float]] | None = None,
    at: str = DEFAULT_AT,
    seeds: Sequence[int] = (0,),
    metrics: Sequence[str] | None = None,
    direction: torch.Tensor | Mapping[str, torch.Tensor] | None = None,
    direction_seed: int = 0,
    max_new_tokens: int = 32,
    do_sample: bool = True,
    temperature: float = 1.0,
    top_p: float | None = None,
    top_k: int | None = None,
    phase: str = "both",
    positions: Any = None,
    schedule: Any = None,
    use_past_kv_cache: bool = True,
    batch_size: int = 16,
    effect: str | None = None,
    test: str = "paired",
    n_boot: int = 1000,
    alpha: float = 0.05,
    progress: bool = True,
    baseline_check: float | None = BASELINE_MAX_PPL_RATIO,
    paired_ci: str = "nct",
) -> ExperimentResult:
    """prompts × scales × interventions × strengths × seeds → per-metric changes vs the unsteered baseline.

    ``interventions``: built-in kinds (``translate``: relative strength along ``direction`` — default a seeded
    random unit direction per scale; ``rescale``: factor; ``noise``: relative σ, independent per prompt;
    ``attention``: temperature via ``hook_q``) or ``{name: factory(scale, strength, seed)}`` returning
    interventions. ``strengths`` defaults to :data:`DEFAULT_STRENGTHS`. ``at``: where the built-in residual kinds
    act (``"held"``, ``"entry"`` or ``"every"``, see :mod:`msma_lens.steer.edits`; factories set their own); the
    mode of each kind is recorded in ``config["at"]`` and in every table and sample row. Each (seed, prompt) pair gets the
    same sampling seed in the baseline and every steered run, so samples are paired (``test="paired"``; or
    ``"welch"``). ``effect``: default ``"d_z"`` (paired; ``"g_z"`` adds the small-sample correction) with, when
    ``test="paired"``, the CI of ``paired_ci``: ``"nct"`` (default; exact noncentral-t CI of the population δ_z,
    exact coverage for normal differences) or ``"bca"`` (BCa bootstrap over pairs, ``n_boot``; undercovers at
    n = 16: ~0.91 at d_z = 1); fewer than 8 pairs: NaN bounds and a warning naming n. ``"hedges_g"``
    (independent groups, pooled SD; percentile bootstrap) for ``test="welch"``; recorded in ``config["effect"]``, each
    row's ``effect_name`` and :meth:`ExperimentResult.format`. Pairs where a metric is NaN on either side (e.g.
    ``coherence`` of a text with fewer than 2 sentences) are excluded for that metric and counted: each row has
    ``n_pairs`` and ``n_excluded``, and :meth:`ExperimentResult.format` shows the count when it is > 0. ``metrics``: names from :data:`msma_lens.analysis.text.TEXT_METRICS` (default :data:`DEFAULT_METRICS`).
    ``progress``: a tqdm bar on stderr over the grid cells (baseline per seed, then scale × kind × strength × seed).
    ``baseline_check``: before any steered run, :func:`check_baseline` compares the unsteered samples' median
    perplexity with the model's on corpus text and raises DegenerateBaselineError above this ratio (None: skip).
    """
    st = _validate(model, prompts, scales=scales, use_scales=use_scales, interventions=interventions, strengths=strengths,
                   at=at, seeds=seeds, metrics=metrics, direction=direction, direction_seed=direction_seed,
                   max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_p=top_p, top_k=top_k,
                   phase=phase, positions=positions, schedule=schedule, use_past_kv_cache=use_past_kv_cache,
                   batch_size=batch_size, effect=effect, test=test, n_boot=n_boot, alpha=alpha, paired_ci=paired_ci)
    grid = _run_grid(model, st, progress=progress, baseline_check=baseline_check)
    return _summarise(model, st, grid)


# ----- run_experiment's three steps: validate → grid → summarise ------------------------------------------
@dataclass(frozen=True)
class _Settings:
    """run_experiment's arguments, validated: the grid to run and everything its config records."""

    prompts: list[str]
    scales: Scales
    scale_names: list[str]
    metric_names: list[str]
    seeds: list[int]
    factories: dict[str, Callable[..., Any]]  # kind -> make(scale, strength, seed, rows) -> interventions
    strengths: dict[str, list[float]]
    gen_kw: dict[str, Any]  # generate() keywords shared by every cell
    batch_size: int
    effect: str
    test: str
    n_boot: int
    alpha: float
    direction_seed: int | None  # None when a direction was given
    paired_ci: str = "nct"

    @property
    def chunks(self) -> list[list[int]]:
        """Prompt indices in batches of ``batch_size``."""
        n = len(self.prompts)
        return [list(range(i, min(i + self.batch_size, n))) for i in range(0, n, self.batch_size)]

    @property
    def jobs(self) -> list[tuple[str, str, float, int]]:
        """The steered cells (scale, kind, strength, seed), in run order."""
        return [(s, k, v, seed) for s in self.scale_names for k in self.factories for v in self.strengths[k] for seed in self.seeds]


def _validate(model: Any, prompts: Sequence[str], *, scales: Any, use_scales: Sequence[str] | None,
              interventions: Sequence[str] | Mapping[str, Factory], strengths: Mapping[str, Sequence[float]] | None,
              at: str, seeds: Sequence[int], metrics: Sequence[str] | None, direction: Any, direction_seed: int,
              max_new_tokens: int, do_sample: bool, temperature: float, top_p: float | None, top_k: int | None, phase: str,
              positions: Any, schedule: Any, use_past_kv_cache: bool, batch_size: int, effect: str | None, test: str, n_boot: int,
              alpha: float, paired_ci: str = "nct") -> _Settings:
    """Check run_experiment's arguments (ConfigError naming the offending one) and build the intervention factories."""
    from ..analysis.text import TEXT_METRICS, check_metric_names

    tl.check_model(model)
    prompts = check_prompts(prompts)
    sc = Scales.coerce(scales, tl.n_layers(model))
    scale_names = list(use_scales) if use_scales is not None else list(sc.names)
    for s in scale_names:
        sc[s]  # ConfigError naming an unknown scale
    metric_names = check_metric_names(list(metrics) if metrics is not None else list(DEFAULT_METRICS), has_model=True)
    if not metric_names:
        raise ConfigError(f"metrics is empty; valid text metrics: {', '.join(TEXT_METRICS)}")
    if test not in TESTS:
        raise ConfigError(f"test must be one of {list(TESTS)}, got {test!r}")
    if effect is None:
        effect = "d_z" if test == "paired" else "hedges_g"
    if effect not in EFFECTS:
        raise ConfigError(f"effect must be one of {list(EFFECTS)}, got {effect!r}")
    if effect in stats.PAIRED_EFFECTS and test != "paired":
        raise ConfigError(f"effect {effect!r} is a paired effect size: use test='paired' (or effect='hedges_g' with {test!r})")
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha must be in (0, 1), got {alpha!r}")
    if paired_ci not in stats.PAIRED_CI_METHODS:
        raise ConfigError(f"paired_ci must be one of {list(stats.PAIRED_CI_METHODS)}, got {paired_ci!r}")
    check_int(batch_size, "batch_size", 1)
    check_int(max_new_tokens, "max_new_tokens", 1)
    if not isinstance(n_boot, int) or (n_boot != 0 and n_boot < 10):
        raise ConfigError(f"n_boot must be 0 (no CIs) or an int >= 10, got {n_boot!r}")
    seeds = [check_int(s, "seed", 0) for s in seeds]
    if not seeds:
        raise ConfigError("seeds is empty")
    if at not in AT_MODES:
        raise ConfigError(f"at must be one of {list(AT_MODES)}, got {at!r}")
    if isinstance(interventions, Mapping):
        factories = {k: _user_factory(f) for k, f in interventions.items()}
    else:
        kinds = [interventions] if isinstance(interventions, str) else list(interventions)
        kinds = list(dict.fromkeys(canonical_kind(k) for k in kinds))
        bad = [k for k in kinds if k not in INTERVENTION_KINDS]
        if bad or not kinds:
            raise ConfigError(f"unknown intervention kind(s) {bad}; valid: {list(INTERVENTION_KINDS)} (or pass {{name: factory}})")
        if strengths:
            strengths = {canonical_kind(k): v for k, v in strengths.items()}
        dirs = _directions(direction, sc, scale_names, tl.d_model(model), direction_seed) if "translate" in kinds else {}
        factories = {k: _builtin_factory(k, dirs, at) for k in kinds}
    grid_strengths = {}
    for k in factories:
        st = (strengths or {}).get(k, DEFAULT_STRENGTHS.get(k))
        if st is None:
            raise ConfigError(f"no strengths for intervention {k!r}: pass strengths={{{k!r}: [...]}}")
        grid_strengths[k] = [float(v) for v in st]
    gen_kw = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, scales=sc, phase=phase, positions=positions,
                  schedule=schedule, use_past_kv_cache=use_past_kv_cache, temperature=temperature, top_p=top_p, top_k=top_k)
    return _Settings(prompts, sc, scale_names, metric_names, seeds, factories, grid_strengths, gen_kw, batch_size, effect,
                     test, n_boot, alpha, direction_seed if direction is None else None, paired_ci)


@dataclass
class _Grid:
    """What the grid produced: one sample row per text, metric values by cell, the ``at`` each kind used."""

    samples: list[dict]
    base: dict[tuple[int, int], dict]  # (seed, prompt) -> metric values
    steered: dict[tuple[str, str, float], dict[tuple[int, int], dict]]  # (scale, kind, strength) -> (seed, prompt) -> values
    modes: dict[str, set[str]]  # the ``at`` of what each kind's factory built
    baseline_check: dict | None

    def mode(self, kind: str) -> str | None:
        return "/".join(sorted(self.modes[kind])) if self.modes.get(kind) else None


def _run_grid(model: Any, st: _Settings, *, progress: bool, baseline_check: float | None) -> _Grid:
    """Generate and score the baseline (per seed), check it, then every steered cell; a tqdm bar over the cells."""
    from ..analysis.text import text_metrics

    want_model = "perplexity" in st.metric_names
    chunks, jobs = st.chunks, st.jobs
    grid = _Grid([], {}, {}, {}, None)

    def run(make: Callable[[int, list[int]], Any] | None, seed: int) -> list[tuple[int, str, dict]]:
        out = []
        for c, idx in enumerate(chunks):
            ivs = make(seed, idx) if make is not None else []
            texts = generate(model, [st.prompts[i] for i in idx], ivs, seed=mix_seed(seed, c) % (2**31), **st.gen_kw).texts
            vals = text_metrics(texts, prompts=[st.prompts[i] for i in idx], model=model if want_model else None,
                                metrics=st.metric_names)
            out.extend(zip(idx, texts, vals))
        return out

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(st.seeds) + len(jobs), desc="steering", unit="cell", leave=False)
    try:
        for seed in st.seeds:
            for i, text, vals in run(None, seed):
                grid.base[(seed, i)] = vals
                grid.samples.append({"seed": seed, "prompt_index": i, "scale": None, "intervention": "baseline", "at": None,
                                     "strength": None, "text": text, **vals})
            if bar is not None:
                bar.update()
        if baseline_check is not None:
            base_rows = [r for r in grid.samples if r["intervention"] == "baseline"]
            grid.baseline_check = check_baseline(
                model, [st.prompts[r["prompt_index"]] for r in base_rows], [r["text"] for r in base_rows],
                max_ratio=baseline_check, perplexities=[r["perplexity"] for r in base_rows] if want_model else None)
        for s, k, strength, seed in jobs:
            fac = st.factories[k]

            def make(sd: int, idx: list[int], fac=fac, s=s, strength=strength, k=k) -> Any:
                ivs = fac(s, strength, sd, idx)
                grid.modes.setdefault(k, set()).update(_modes(ivs))
                return ivs

            for i, text, vals in run(make, seed):
                grid.steered.setdefault((s, k, strength), {})[(seed, i)] = vals
                grid.samples.append({"seed": seed, "prompt_index": i, "scale": s, "intervention": k, "at": grid.mode(k),
                                     "strength": strength, "text": text, **vals})
            if bar is not None:
                bar.update()
    finally:
        if bar is not None:
            bar.close()
    return grid


def _ci_label(st: _Settings) -> str:
    """What the effect CIs in the table are: the paired method's label, the welch bootstrap, or ``"none"``
    (``n_boot=0`` turns every CI off, the exact one included)."""
    if not st.n_boot:
        return "none"
    return stats.PAIRED_CI_METHODS[st.paired_ci] if st.test == "paired" else CI_METHODS[st.test]


def _summarise(model: Any, st: _Settings, grid: _Grid) -> ExperimentResult:
    """Compare every steered cell with the baseline per metric, Holm-correct over the whole table, record the config."""
    table = []
    keys = sorted(grid.base)
    with warnings.catch_warnings(record=True) as caught:  # one summary instead of a warning per cell
        warnings.simplefilter("always")
        for (s, k, strength), vals in grid.steered.items():
            for m in st.metric_names:
                a = [vals[key][m] for key in keys]
                b = [grid.base[key][m] for key in keys]
                row = {"scale": s, "intervention": k, "at": grid.mode(k), "strength": strength, "metric": m}
                row.update(_compare(a, b, st.effect, st.test, st.n_boot, boot_seed=mix_seed(len(table)) % (2**31),
                                    paired_ci=st.paired_ci))
                table.append(row)
    no_ci = [w for w in caught if "CI not computed" in str(w.message)]
    for w in caught:
        if w not in no_ci:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if no_ci:
        warnings.warn(f"paired CIs not computed for {len(no_ci)} of {len(table)} cells (n < "
                      f"{stats.MIN_PAIRS_FOR_CI} pairs, fewer than 2 non-zero differences, or all differences equal, "
                      f"e.g. a metric that never changed); their bounds are NaN. First: {no_ci[0].message}", UserWarning,
                      stacklevel=3)
    adj = stats.holm([r["p_value"] for r in table])
    for r, p in zip(table, adj):
        r["p_holm"] = float(p)
        r["significant"] = bool(math.isfinite(p) and p < st.alpha)
    g = st.gen_kw
    config = {"baseline_check": grid.baseline_check, "prompts": st.prompts, "scales": st.scales.to_dict(),
              "scales_used": st.scale_names, "interventions": list(st.factories), "at": {k: grid.mode(k) for k in st.factories},
              "strengths": st.strengths, "seeds": st.seeds, "metrics": st.metric_names, "effect": st.effect,
              "effect_label": EFFECT_LABELS[st.effect], "ci_method": _ci_label(st), "paired_ci": st.paired_ci if st.test == "paired" else None,
              "test": st.test, "n_excluded_total": sum(r["n_excluded"] for r in table),
              "n_boot": st.n_boot, "alpha": st.alpha, "max_new_tokens": g["max_new_tokens"], "do_sample": g["do_sample"],
              "temperature": g["temperature"], "top_p": g["top_p"], "top_k": g["top_k"], "phase": g["phase"],
              "batch_size": st.batch_size, "use_past_kv_cache": g["use_past_kv_cache"], "direction_seed": st.direction_seed,
              "provenance": tl.provenance(model)}
    return ExperimentResult(table, samples=grid.samples, config=config)
