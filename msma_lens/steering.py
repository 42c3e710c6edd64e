"""Steered generation and the intervention experiment runner (MSPGT §B.4–B.6).

:func:`generate` runs ``model.generate`` (KV cache by default: each step is one ``[B, 1, d]`` pass, never a
re-run of the sequence) under :mod:`msma_lens.interventions` hooks, with positions computed per row from the
left padding, a seeded RNG shared by baseline and steered runs, and optional capture of the steered
trajectory's per-scale activations.

:func:`run_experiment` sweeps prompts × scales × intervention kinds × strengths × seeds and compares text
metrics (:mod:`msma_lens.text`) with the unsteered baseline: % change, Cohen's d / Hedges' g with bootstrap
CIs, and Holm-corrected p-values across the whole grid; results save as JSON + CSV and plot with plotly.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import _tl, stats
from .activations import POOLINGS, ScaleActivations
from .artifacts import write_csv_atomic, write_json_atomic, write_text_atomic
from .errors import ArtifactError, ConfigError, DegenerateBaselineError
from .guard import kv_cache_usable
from .interventions import (
    AT_MODES,
    DEFAULT_AT,
    AttentionEdit,
    GaussianNoise,
    Intervention,
    Rescale,
    SteeringRecord,
    Translate,
    _deprecated,
    _flatten,
    _mix,
    _Sequence,
    _steer,
    random_direction,
)
from .scales import Scales

__all__ = [
    "BASELINE_MAX_PPL_RATIO",
    "DEFAULT_METRICS",
    "DEFAULT_STRENGTHS",
    "INTERVENTION_KINDS",
    "KIND_ALIASES",
    "canonical_kind",
    "ExperimentResult",
    "check_baseline",
    "corpus_perplexity",
    "GenerationCapture",
    "GenerationResult",
    "generate",
    "run_experiment",
]


# ----- generation ------------------------------------------------------------------------------------------
@dataclass
class GenerationCapture:
    """Per-scale activations of a steered trajectory (after the edits), at ``site`` of each scale's layers.

    ``acts[scale]`` is ``[B, T, d]``, the mean over the scale's layers, for every column the model processed:
    the left-padded prompt and the generated tokens fed back in (the last sampled token is never fed back,
    so ``T = P + n − 1``). ``mask`` ``[B, T]`` marks real tokens (no padding, nothing after a row's EOS);
    ``positions`` ``[B, T]`` are absolute positions (−1 on padding); ``prompt_mask`` marks prompt columns.
    """

    acts: dict[str, torch.Tensor]
    mask: torch.Tensor
    positions: torch.Tensor
    prompt_mask: torch.Tensor
    layers: dict[str, tuple[int, ...]]
    meta: dict = field(default_factory=dict)

    def to_scale_activations(self, pooling: str = "token", part: str = "all", exclude_bos: bool = True) -> ScaleActivations:
        """Rows paired across scales (``doc_ids`` = batch row). ``part``: ``all``, ``prompt`` or ``generated``."""
        if pooling not in POOLINGS:
            raise ConfigError(f"unknown pooling {pooling!r}; valid: {list(POOLINGS)}")
        if part not in ("all", "prompt", "generated"):
            raise ConfigError(f"part must be 'all', 'prompt' or 'generated', got {part!r}")
        keep = self.mask.clone()
        if part == "prompt":
            keep &= self.prompt_mask
        elif part == "generated":
            keep &= ~self.prompt_mask
        if exclude_bos and self.meta.get("prepend_bos"):
            keep &= self.positions >= 1
        if not keep.any():
            raise ConfigError(f"no {part} positions to pool (generation too short, or everything is BOS/padding)")
        B = keep.shape[0]
        rows = torch.arange(B)
        if pooling == "token":
            bi, col = torch.nonzero(keep, as_tuple=True)
            acts = {s: a[bi, col].float().cpu() for s, a in self.acts.items()}
            doc_ids, pos = bi, self.positions[bi, col]
        else:
            has = keep.any(1)
            if not has.all():
                raise ConfigError(f"row(s) {torch.nonzero(~has).flatten().tolist()} have no {part} positions")
            if pooling == "mean":
                w = keep.float()[..., None]
                acts = {s: ((a.float().cpu() * w).sum(1) / w.sum(1)) for s, a in self.acts.items()}
                pos = torch.full((B,), -1, dtype=torch.long)
            else:
                last = (keep.long() * torch.arange(keep.shape[1])).argmax(1)
                acts = {s: a[rows, last].float().cpu() for s, a in self.acts.items()}
                pos = self.positions[rows, last]
            doc_ids = rows
        meta = {**self.meta, "pooling": pooling, "part": part}
        return ScaleActivations(acts, doc_ids.long(), pos.long(), meta)


@dataclass
class GenerationResult:
    """Output of :func:`generate`.

    ``texts[i]`` is the continuation of ``prompts[i]`` (cut at the first EOS when ``stop_at_eos``);
    ``generated[i]`` its token ids; ``tokens`` the model's ``[B, P + n]`` output (left-padded prompts,
    generated ids, EOS after a row finished); ``record`` the :class:`SteeringRecord`.
    """

    prompts: list[str]
    texts: list[str]
    generated: list[list[int]]
    tokens: torch.Tensor
    prompt_lengths: list[int]
    record: SteeringRecord
    capture: GenerationCapture | None = None
    settings: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        st = self.settings
        head = ", ".join(f"{k}={st[k]!r}" for k in ("model_id", "max_new_tokens", "do_sample", "seed") if k in st)
        n_new = [len(g) for g in self.generated]
        first = self.texts[0] if self.texts else ""
        first = repr(first if len(first) <= 60 else first[:57] + "...")
        cap = f", captured scales {list(self.capture.acts)}" if self.capture is not None else ""
        return (f"GenerationResult({head + ', ' if head else ''}prompts={len(self.prompts)}, tokens={list(self.tokens.shape)},\n"
                f"    new tokens {min(n_new, default=0)}-{max(n_new, default=0)}, interventions={len(self.record.interventions)}"
                f"{cap}, texts[0]={first})")


def _check_prompts(prompts: Any) -> list[str]:
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, Sequence) or not prompts:
        raise ConfigError("prompts must be a non-empty list of strings")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise ConfigError(f"prompt {i} is a {type(p).__name__}, expected str")
    return list(prompts)


def _check_int(v: Any, name: str, lo: int) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < lo:
        raise ConfigError(f"{name} must be an int >= {lo}, got {v!r}")
    return v


class _Seeded:
    """Seed the global RNG (used by ``model.generate`` for sampling) and restore it afterwards."""

    def __init__(self, seed: int, device: torch.device) -> None:
        self.seed = int(seed)
        devices = [device] if device.type == "cuda" else []
        self.fork = torch.random.fork_rng(devices=devices)

    def __enter__(self) -> None:
        self.fork.__enter__()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc: Any) -> Any:
        return self.fork.__exit__(*exc)


def _capture_scale_names(capture_scales: Any, scales: Scales) -> list[str]:
    if capture_scales is None or capture_scales is False:
        return []
    if capture_scales is True:
        return list(scales.names)
    names = [capture_scales] if isinstance(capture_scales, str) else list(capture_scales)
    for n in names:
        scales[n]  # ConfigError naming an unknown scale
    return names


def generate(
    model: Any,
    prompts: str | Sequence[str],
    interventions: Intervention | Sequence[Intervention] | None = (),
    *,
    max_new_tokens: int = 20,
    do_sample: bool = False,
    attention_mask: torch.Tensor | None = None,
    seed: int = 0,
    scales: Any = None,
    phase: str = "both",
    positions: Any = None,
    schedule: Any = None,
    use_past_kv_cache: bool = True,
    capture_scales: bool | str | Sequence[str] | None = None,
    capture_site: str = "resid_post",
    stop_at_eos: bool = True,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> GenerationResult:
    """Generate continuations of ``prompts`` (batched, left-padded) under ``interventions``.

    Pass no interventions for the baseline: it runs the same code path with the same seed, so baseline and
    steered samples are paired. The global RNG is seeded with ``seed`` for the call and restored afterwards;
    noise interventions use their own generators. ``capture_scales`` (``True`` for all scales, or names)
    records the steered activations (:class:`GenerationCapture`). Encoder models raise ConfigError.
    """
    _tl.check_model(model)
    if _tl.is_encoder(model):
        raise ConfigError(f"{_tl.provenance(model)['model_id']} is an encoder (BERT-style) model and cannot generate; "
                          "apply interventions to its forward passes with steer() instead")
    if isinstance(prompts, torch.Tensor):  # token ids [B, P] (+ attention_mask), used as they are (no BOS added)
        rows, _ = _tl.token_rows(model, prompts, attention_mask, arg="prompts")
        prompt_input: Any = rows
        prompts = [_tl.decode(model, r) if getattr(model, "tokenizer", None) is not None else "" for r in rows]
        lengths = [len(r) for r in rows]
    else:
        if attention_mask is not None:
            raise ConfigError("attention_mask goes with token-id prompts ([batch, pos] tensor), not with text")
        prompts = _check_prompts(prompts)
        prompt_input = prompts
        lengths = _tl.prompt_lengths(model, prompts)
    _check_int(max_new_tokens, "max_new_tokens", 1)
    if not isinstance(do_sample, bool):
        raise ConfigError(f"do_sample must be True or False, got {do_sample!r}")
    _check_int(seed, "seed", 0)
    if not isinstance(interventions, (list, tuple)):
        interventions = [interventions]
    ivs = _flatten(tuple(interventions))
    n_layers = _tl.n_layers(model)
    sc = Scales.coerce(scales, n_layers)
    cap_names = _capture_scale_names(capture_scales, sc)
    cap_layers = sorted({x for s in cap_names for x in sc[s]})
    B, P = len(prompts), max(lengths)
    kv_ok = kv_cache_usable(model)
    use_past_kv_cache = bool(use_past_kv_cache and kv_ok)
    mask = torch.zeros(B, P, dtype=torch.bool)
    for i, n in enumerate(lengths):
        mask[i, P - n:] = True
    bos = _tl.default_prepend_bos(model)
    seq = _Sequence(mask, bos)
    with _steer(model, ivs, scales=sc, phase=phase, positions=positions, schedule=schedule, sequence=seq,
                capture_layers=cap_layers, capture_site=capture_site, max_steps=max_new_tokens,
                prompt_lengths=lengths) as (record, session):
        with _Seeded(seed, _tl.model_device(model)):
            tokens = _tl.generate_tokens(model, prompt_input, max_new_tokens=max_new_tokens, do_sample=do_sample,
                                         use_past_kv_cache=use_past_kv_cache, stop_at_eos=stop_at_eos,
                                         temperature=temperature, top_k=top_k, top_p=top_p)
    tokens = tokens.detach().cpu()
    eos = _tl.eos_token_id(model) if stop_at_eos else None
    generated, texts = [], []
    for b in range(B):
        ids = tokens[b, P:].tolist()
        if eos is not None and eos in ids:
            ids = ids[: ids.index(eos)]
        generated.append(ids)
        texts.append(_tl.decode(model, ids))
    settings = {"max_new_tokens": max_new_tokens, "do_sample": do_sample, "seed": seed, "use_past_kv_cache": use_past_kv_cache,
                "stop_at_eos": stop_at_eos, "temperature": temperature, "top_k": top_k, "top_p": top_p, "phase": phase,
                "scales": sc.to_dict(), "input": "token_ids" if prompt_input is not prompts else "text",
                "kv_cache_fallback": not kv_ok, **_tl.provenance(model)}
    capture = None
    if cap_names:
        capture = _assemble_capture(session, sc, cap_names, tokens, P, eos, settings, capture_site, bos)
    return GenerationResult(prompts, texts, generated, tokens, lengths, record, capture, settings)


def _assemble_capture(session: Any, sc: Scales, names: list[str], tokens: torch.Tensor, P: int, eos: int | None,
                      settings: dict, site: str, bos: bool) -> GenerationCapture:
    per_layer = {x: torch.cat(chunks, dim=1) for x, chunks in session.captured.items()}
    acts = {s: torch.stack([per_layer[x] for x in sc[s]]).float().mean(0) for s in names}
    B, T = next(iter(acts.values())).shape[:2]
    cols = torch.arange(T)
    prompt_cols = cols < P
    offsets = session.mask.long().argmax(1)
    real = torch.where(prompt_cols[None], session.mask[:, cols.clamp(max=P - 1)], torch.ones(1, dtype=torch.bool))
    if eos is not None:  # nothing after a row's first generated EOS
        is_eos = tokens[:, P:T] == eos
        after = (is_eos.long().cumsum(1) - is_eos.long()) > 0
        real[:, P:] &= ~after[:, : T - P]
    positions = torch.where(real | ~prompt_cols[None], cols[None] - offsets[:, None], torch.full((1,), -1))
    meta = {**{k: settings[k] for k in ("model_id", "backend", "tl_version", "compatibility_mode", "n_layers", "d_model", "dtype")},
            "scales": sc.to_dict(), "site": site, "layer_agg": "mean", "prepend_bos": bos,
            "source": "msma_lens.steering.generate", "interventions": session.record.interventions,
            "generation": {k: settings[k] for k in ("max_new_tokens", "do_sample", "seed", "use_past_kv_cache")}}
    return GenerationCapture(acts, real, positions, prompt_cols[None].expand(B, T).clone(),
                             {s: tuple(sc[s]) for s in names}, meta)


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
EFFECTS = {"hedges_g": stats.hedges_g, "cohens_d": stats.cohens_d}
TESTS = {"paired": stats.paired_t_test, "welch": stats.welch_t_test}

Factory = Callable[[str, float, int], "Intervention | Sequence[Intervention]"]


def canonical_kind(kind: str) -> str:
    """A built-in intervention kind's current name (``"scale"`` → ``"rescale"`` with a DeprecationWarning)."""
    if kind in KIND_ALIASES:
        _deprecated(f"intervention kind {kind!r} is deprecated; use {KIND_ALIASES[kind]!r}")
        return KIND_ALIASES[kind]
    return kind


def _builtin_factory(kind: str, directions: dict[str, torch.Tensor], at: str) -> Callable[..., Any]:
    def make(scale: str, strength: float, seed: int, rows: list[int]):
        if kind == "translate":
            return Translate(scale, directions[scale], strength=strength, relative=True, at=at)
        if kind == "rescale":
            return Rescale(scale, strength, at=at)
        if kind == "noise":  # one noise stream per (seed, prompt): independent rows, batch-invariant
            return GaussianNoise(scale, strength, relative=True, seed=[_mix(seed, i) % (2**62) for i in rows], at=at)
        return AttentionEdit(scale, strength, mode="query")

    return make


def _modes(ivs: Any) -> set[str]:
    """The ``at`` of each intervention a factory built (AttentionEdit and per-layer custom edits: ``"every"``)."""
    ivs = ivs if isinstance(ivs, (list, tuple)) else [ivs]
    return {str(getattr(iv, "at", "every")) for iv in _flatten(tuple(ivs))}


def _user_factory(fn: Factory) -> Callable[..., Any]:
    if not callable(fn):
        raise ConfigError(f"intervention factories must be callables (scale, strength, seed) -> Intervention, got {fn!r}")
    return lambda scale, strength, seed, rows: fn(scale, strength, seed)


def _directions(direction: Any, sc: Scales, used: Sequence[str], d: int, seed: int) -> dict[str, torch.Tensor]:
    if direction is None:  # seeded per scale index, so a scale's direction does not depend on use_scales
        return {s: random_direction(d, seed=_mix(seed, i)) for i, s in enumerate(sc.names) if s in used}
    if isinstance(direction, Mapping):
        missing = [s for s in used if s not in direction]
        if missing:
            raise ConfigError(f"direction mapping has no vector for scale(s) {missing}")
        return {s: direction[s] for s in used}
    return {s: direction for s in used}


@dataclass
class ExperimentResult:
    """Tidy results of :func:`run_experiment`.

    ``table``: one row per (scale, intervention, strength, metric) with ``n``, ``baseline_mean``,
    ``steered_mean``, ``pct_change``, ``effect`` (+ ``effect_ci_lo``/``effect_ci_hi``), ``p_value``, ``p_holm``
    (Holm over the whole grid) and ``significant``. ``samples``: one row per generated text (baseline rows have
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
        head = (f"{'scale':<13}{'intervention':<13}{'strength':>9}  {'metric':<22}{'baseline':>9}{'steered':>9}"
                f"{'%change':>9}{'effect':>8}{'95% CI':>17}{'p_holm':>9}")
        lines = [head]
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
                         f"{_fmt(r['effect']):>8}{ci:>17}{_fmt(r['p_holm']):>9}{' *' if r.get('significant') else ''}")
        return "\n".join(lines)

    def save(self, directory: str | os.PathLike, *, figures: bool = False) -> Path:
        """Write ``results.json``, ``table.csv`` and ``samples.csv`` (each atomically); optionally HTML figures."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "results.json", _json_safe({"format": "msma_lens.ExperimentResult", "format_version": 1,
                                                            "config": self.config, "table": self.table,
                                                            "samples": self.samples}))
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
                        err = dict(type="data", symmetric=False, array=[_nz(r["effect_ci_hi"] - r["effect"]) for r in rs],
                                   arrayminus=[_nz(r["effect"] - r["effect_ci_lo"]) for r in rs])
                    fig.add_trace(go.Scatter(x=[r["strength"] for r in rs], y=y, error_y=err, mode="lines+markers", name=s,
                                             legendgroup=s, showlegend=(i == 1 and j == 1),
                                             line=dict(color=palette[c % len(palette)])), row=i, col=j)
        label = {"hedges_g": "Hedges' g", "cohens_d": "Cohen's d"}.get(self.config.get("effect"), "effect") if value == "effect" else "% change"
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


def _nz(v: float) -> float:
    return v if isinstance(v, (int, float)) and math.isfinite(v) else 0.0


def _fmt(v: Any) -> str:
    return "nan" if v is None or not math.isfinite(v) else f"{v:.2g}"


def _json_safe(o: Any) -> Any:
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_json_safe(v) for v in o]
    return o


def _compare(steered: list[float], base: list[float], effect: str, test: str, n_boot: int, boot_seed: int) -> dict:
    import numpy as np

    a, b = np.asarray(steered, dtype=float), np.asarray(base, dtype=float)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    nan = float("nan")
    out = {"n": int(ok.sum()), "baseline_mean": float(b.mean()) if b.size else nan, "steered_mean": float(a.mean()) if a.size else nan}
    if a.size < 2:
        return {**out, "pct_change": nan, "effect": nan, "effect_ci_lo": nan, "effect_ci_hi": nan, "p_value": nan}
    fn = EFFECTS[effect]
    lo, hi = stats.bootstrap_ci(fn, a, b, n_boot=n_boot, paired=(test == "paired"), seed=boot_seed) if n_boot else (nan, nan)
    p = TESTS[test](a, b)
    if np.array_equal(a, b):  # no change at all: no evidence against the null, and the test still counts in Holm's m
        p = 1.0
    return {**out, "pct_change": stats.percent_change(a, b), "effect": fn(a, b), "effect_ci_lo": lo, "effect_ci_hi": hi,
            "p_value": p}


BASELINE_MAX_PPL_RATIO = 5.0


def corpus_perplexity(model: Any, n_docs: int = 8, prompt_words: int = 6, continuation_words: int = 40) -> float:
    """Median perplexity of the model on bundled-corpus text: ``n_docs`` documents spread over the topics, each
    split into a ``prompt_words`` prompt and the next ``continuation_words`` words (one uncached forward pass each)."""
    from .corpus import load_corpus
    from .text import continuation_perplexity

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
    from .text import continuation_perplexity

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
            f"versions {_tl.library_versions()}.")
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
    effect: str = "hedges_g",
    test: str = "paired",
    n_boot: int = 1000,
    alpha: float = 0.05,
    progress: bool = True,
    baseline_check: float | None = BASELINE_MAX_PPL_RATIO,
) -> ExperimentResult:
    """prompts × scales × interventions × strengths × seeds → per-metric changes vs the unsteered baseline.

    ``interventions``: built-in kinds (``translate``: relative strength along ``direction`` — default a seeded
    random unit direction per scale; ``rescale``: factor; ``noise``: relative σ, independent per prompt;
    ``attention``: temperature via ``hook_q``) or ``{name: factory(scale, strength, seed)}`` returning
    interventions. ``strengths`` defaults to :data:`DEFAULT_STRENGTHS`. ``at``: where the built-in residual kinds
    act (``"held"``, ``"entry"`` or ``"every"``, see :mod:`msma_lens.interventions`; factories set their own); the
    mode of each kind is recorded in ``config["at"]`` and in every table and sample row. Each (seed, prompt) pair gets the
    same sampling seed in the baseline and every steered run, so samples are paired (``test="paired"``; or
    ``"welch"``). ``metrics``: names from :data:`msma_lens.text.TEXT_METRICS` (default :data:`DEFAULT_METRICS`).
    ``progress``: a tqdm bar on stderr over the grid cells (baseline per seed, then scale × kind × strength × seed).
    ``baseline_check``: before any steered run, :func:`check_baseline` compares the unsteered samples' median
    perplexity with the model's on corpus text and raises DegenerateBaselineError above this ratio (None: skip).
    """
    from .text import TEXT_METRICS, text_metrics

    _tl.check_model(model)
    prompts = _check_prompts(prompts)
    sc = Scales.coerce(scales, _tl.n_layers(model))
    scale_names = list(use_scales) if use_scales is not None else list(sc.names)
    for s in scale_names:
        sc[s]
    metric_names = list(metrics) if metrics is not None else list(DEFAULT_METRICS)
    unknown = [m for m in metric_names if m not in TEXT_METRICS]
    if unknown or not metric_names:
        raise ConfigError(f"unknown text metric(s) {unknown}; valid: {list(TEXT_METRICS)}")
    if effect not in EFFECTS:
        raise ConfigError(f"effect must be one of {list(EFFECTS)}, got {effect!r}")
    if test not in TESTS:
        raise ConfigError(f"test must be one of {list(TESTS)}, got {test!r}")
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha must be in (0, 1), got {alpha!r}")
    _check_int(batch_size, "batch_size", 1)
    _check_int(max_new_tokens, "max_new_tokens", 1)
    if not isinstance(n_boot, int) or (n_boot != 0 and n_boot < 10):
        raise ConfigError(f"n_boot must be 0 (no CIs) or an int >= 10, got {n_boot!r}")
    seeds = [_check_int(s, "seed", 0) for s in seeds]
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
        dirs = _directions(direction, sc, scale_names, _tl.d_model(model), direction_seed) if "translate" in kinds else {}
        factories = {k: _builtin_factory(k, dirs, at) for k in kinds}
    grid_strengths = {}
    for k in factories:
        st = (strengths or {}).get(k, DEFAULT_STRENGTHS.get(k))
        if st is None:
            raise ConfigError(f"no strengths for intervention {k!r}: pass strengths={{{k!r}: [...]}}")
        grid_strengths[k] = [float(v) for v in st]

    gen_kw = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, scales=sc, phase=phase, positions=positions,
                  schedule=schedule, use_past_kv_cache=use_past_kv_cache, temperature=temperature, top_p=top_p, top_k=top_k)
    chunks = [list(range(i, min(i + batch_size, len(prompts)))) for i in range(0, len(prompts), batch_size)]
    want_model = "perplexity" in metric_names

    def run(make: Callable[[int, int], Any] | None, seed: int) -> list[tuple[int, str, dict]]:
        out = []
        for c, idx in enumerate(chunks):
            ivs = make(seed, idx) if make is not None else []
            res = generate(model, [prompts[i] for i in idx], ivs, seed=_mix(seed, c) % (2**31), **gen_kw)
            vals = text_metrics(res.texts, prompts=[prompts[i] for i in idx], model=model if want_model else None,
                                metrics=metric_names)
            out.extend(zip(idx, res.texts, vals))
        return out

    jobs = [(s, k, st, seed) for s in scale_names for k in factories for st in grid_strengths[k] for seed in seeds]
    total = len(seeds) + len(jobs)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="steering", unit="cell", leave=False)
    samples: list[dict] = []
    base: dict[tuple[int, int], dict] = {}
    for seed in seeds:
        for i, text, vals in run(None, seed):
            base[(seed, i)] = vals
            samples.append({"seed": seed, "prompt_index": i, "scale": None, "intervention": "baseline", "at": None,
                            "strength": None, "text": text, **vals})
        if bar is not None:
            bar.update()
    sanity = None
    if baseline_check is not None:
        base_rows = [r for r in samples if r["intervention"] == "baseline"]
        ppl = [r["perplexity"] for r in base_rows] if want_model else None
        try:
            sanity = check_baseline(model, [prompts[r["prompt_index"]] for r in base_rows], [r["text"] for r in base_rows],
                                    max_ratio=baseline_check, perplexities=ppl)
        except BaseException:
            if bar is not None:
                bar.close()
            raise
    steered: dict[tuple, dict[tuple[int, int], dict]] = {}
    modes: dict[str, set[str]] = {}  # the ``at`` of what each kind's factory built

    def mode(k: str) -> str | None:
        return "/".join(sorted(modes[k])) if modes.get(k) else None

    for s, k, st, seed in jobs:
        fac = factories[k]

        def make(sd: int, idx: list[int], fac=fac, s=s, st=st, k=k) -> Any:
            ivs = fac(s, st, sd, idx)
            modes.setdefault(k, set()).update(_modes(ivs))
            return ivs

        for i, text, vals in run(make, seed):
            steered.setdefault((s, k, st), {})[(seed, i)] = vals
            samples.append({"seed": seed, "prompt_index": i, "scale": s, "intervention": k, "at": mode(k), "strength": st,
                            "text": text, **vals})
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()

    table = []
    keys = sorted(base)
    for (s, k, st), vals in steered.items():
        for m in metric_names:
            a = [vals[key][m] for key in keys]
            b = [base[key][m] for key in keys]
            row = {"scale": s, "intervention": k, "at": mode(k), "strength": st, "metric": m}
            row.update(_compare(a, b, effect, test, n_boot, boot_seed=_mix(len(table)) % (2**31)))
            table.append(row)
    adj = stats.holm([r["p_value"] for r in table])
    for r, p in zip(table, adj):
        r["p_holm"] = float(p)
        r["significant"] = bool(math.isfinite(p) and p < alpha)
    config = {"baseline_check": sanity, "prompts": prompts, "scales": sc.to_dict(), "scales_used": scale_names, "interventions": list(factories),
              "at": {k: mode(k) for k in factories}, "strengths": grid_strengths, "seeds": seeds, "metrics": metric_names, "effect": effect, "test": test,
              "n_boot": n_boot, "alpha": alpha, "max_new_tokens": max_new_tokens, "do_sample": do_sample,
              "temperature": temperature, "top_p": top_p, "top_k": top_k, "phase": phase, "batch_size": batch_size,
              "use_past_kv_cache": use_past_kv_cache, "direction_seed": direction_seed if direction is None else None,
              "provenance": _tl.provenance(model)}
    return ExperimentResult(table, samples, config)
