"""The suite's tables, per model and side by side, built from the store's unit records.

(a) :func:`layer_distribution`: each model's discovered partition (layers, % of depth, bootstrap CI of each
boundary) next to thirds of its depth and the published GPT-2 / BERT partitions (other models, 12 layers).
(b) :func:`alignment_table`: per model and scale pair, baseline / closed form / trained map with diagonal KL (and
its floor), Gaussian MI, dCor² and debiased CKA on held-out documents, mean and Student-t CI over seeds.
(c) :func:`intervention_table`: scale × intervention effects (d_z with CI, Holm-corrected p), text metrics for
decoders, representation-level metrics for encoders. :func:`crossmodel_table`: the scale-level CKA matrices.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..analysis.stats import mean_ci
from ..capture.scales import Scales

PRESETS = {"gpt2": "GPT-2 small (published, other model)", "bert": "BERT-base (published, other model)"}
ALIGN_COLUMNS = ("kl_diag", "kl_floor", "mi_gaussian", "dcor2_u", "cka_debiased")


def _by_task(records: Sequence[dict], task: str) -> list[dict]:
    return [r for r in records if r["unit"]["task"] == task]


def _scale_rows(model: str, kind: str, scales: Scales, n_layers: int, cis: dict | None = None) -> list[dict]:
    rows = []
    for s, layers in scales.items():
        ci = (cis or {}).get(s)
        rows.append({"model": model, "partition": kind, "scale": s, "first": layers[0], "last": layers[-1],
                     "n_layers": n_layers, "pct_depth": round(100.0 * len(layers) / n_layers, 1),
                     "start_pct": round(100.0 * layers[0] / n_layers, 1),
                     "boundary_ci": None if ci is None else f"[{ci[0]}, {ci[1]}]"})
    return rows


def layer_distribution(records: Sequence[dict]) -> list[dict]:
    rows = []
    for r in _by_task(records, "discovery"):
        res = r["result"]
        L = res["n_layers"]
        sc = Scales.from_dict(res["scales"])
        cis = {name: ci for name, ci in zip(sc.names[1:], res["boundary_ci"])}  # CI of the scale's first layer
        rows += _scale_rows(res["model"], "discovered", sc, L, cis)
        rows += _scale_rows(res["model"], "thirds", Scales.default(L), L)
    for name, label in PRESETS.items():
        rows += _scale_rows(label, f"preset {name}", Scales.preset(name), 12)
    return rows


def _num(v: object) -> float:
    """A float for display: None (NaN written to JSON as null) becomes NaN."""
    return float("nan") if v is None else float(v)


def _fmt_ci(m: float, lo: float, hi: float) -> str:
    if m is None or not math.isfinite(m):
        return "n/a"
    if lo is None or not math.isfinite(lo):
        return f"{m:.4g}"
    return f"{m:.4g} ± {(hi - lo) / 2:.2g}"


def alignment_table(records: Sequence[dict], level: float = 0.95) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in _by_task(records, "alignment"):
        res = r["result"]
        for row in res["rows"]:
            groups.setdefault((res["model"], row["pair"], row["method"]), []).append(row)
    out = []
    for (model, pair, method), rows in groups.items():
        d = {"model": model, "pair": pair, "method": method, "n_seeds": len(rows), "n_test": rows[0]["n_test"]}
        for c in ALIGN_COLUMNS:
            vals = [x[c] for x in rows if x.get(c) is not None and math.isfinite(x[c])]
            m, lo, hi = mean_ci(vals, level) if vals else (float("nan"),) * 3
            d[c], d[f"{c}_ci_lo"], d[f"{c}_ci_hi"] = m, lo, hi
        out.append(d)
    return out


def intervention_table(records: Sequence[dict]) -> list[dict]:
    out = []
    for r in _by_task(records, "steering"):
        res = r["result"]
        for row in res.get("table", []):
            out.append({"model": res["model"], "level": res["level"], **{k: row.get(k) for k in (
                "scale", "intervention", "strength", "metric", "n", "baseline_mean", "steered_mean", "pct_change", "effect",
                "effect_ci_lo", "effect_ci_hi", "p_value", "p_holm", "significant")}})
    return out


def crossmodel_table(records: Sequence[dict]) -> list[dict]:
    out = []
    for r in _by_task(records, "crossmodel"):
        res = r["result"]
        sm = res["scale_matrix"]
        for i, a in enumerate(sm["rows"]):
            for j, b in enumerate(sm["cols"]):
                out.append({"model_a": res["models"][0], "model_b": res["models"][1], "scale_a": a, "scale_b": b,
                            "cka": sm["values"][i][j], "best_for_a": sm["a_to_b"][a] == b, "align_on": res["align_on"],
                            "n_rows": res["n_rows"]})
    return out


def plugin_table(records: Sequence[dict]) -> list[dict]:
    return [{"model": r["result"]["model"], "plugin": k, "version": v["version"], "summary": v["summary"], "error": v["error"]}
            for r in _by_task(records, "plugins") for k, v in r["result"]["plugins"].items()]


def timing_table(records: Sequence[dict]) -> list[dict]:
    return [{"unit": "--".join([r["unit"]["task"], "+".join(r["unit"]["models"]), f"seed{r['unit']['seed']}"]),
             "task": r["unit"]["task"], "models": "+".join(r["unit"]["models"]), "seed": r["unit"]["seed"],
             "wall_s": r["timing"]["wall_s"], "cpu_s": r["timing"].get("cpu_s"), "peak_rss_mb": r["timing"]["peak_rss_mb"]}
            for r in records]


def all_tables(records: Sequence[dict]) -> dict[str, list[dict]]:
    return {"layers": layer_distribution(records), "alignment": alignment_table(records),
            "interventions": intervention_table(records), "crossmodel": crossmodel_table(records),
            "plugins": plugin_table(records), "timing": timing_table(records)}


def format_tables(tables: dict[str, list[dict]], max_effects: int = 12) -> str:
    """A short text summary of the tables for the terminal."""
    lines = ["(a) semantic layer distribution (layers first-last, % of depth; discovered cuts with 95% bootstrap CI)"]
    models = list(dict.fromkeys(r["model"] for r in tables["layers"]))
    for m in models:
        for kind in dict.fromkeys(r["partition"] for r in tables["layers"] if r["model"] == m):
            rs = [r for r in tables["layers"] if r["model"] == m and r["partition"] == kind]
            body = "  ".join(f"{r['scale']} {r['first']}-{r['last']} ({r['pct_depth']:.0f}%"
                             + (f", cut CI {r['boundary_ci']}" if r["boundary_ci"] else "") + ")" for r in rs)
            lines.append(f"  {m:<38}{kind:<16}{body}")
    if tables["alignment"]:
        lines.append("(b) alignment on held-out documents: mean ± CI half-width over seeds")
        lines.append(f"  {'model':<16}{'pair':<26}{'method':<13}{'KL diag':>18}{'floor':>18}{'MI gauss':>18}{'dCor2':>18}"
                     f"{'CKA':>18}")
        for r in tables["alignment"]:
            lines.append(f"  {r['model']:<16}{r['pair']:<26}{r['method']:<13}"
                         + "".join(f"{_fmt_ci(r[c], r[c + '_ci_lo'], r[c + '_ci_hi']):>18}"
                                   for c in ALIGN_COLUMNS) + f"  (seeds {r['n_seeds']})")
    if tables["interventions"]:
        lines.append(f"(c) intervention effects: the {max_effects} largest |d_z| (95% CI, Holm p; * p_holm < 0.05)")
        rows = sorted(tables["interventions"], key=lambda r: -abs(_num(r["effect"])) if math.isfinite(_num(r["effect"]))
                      else 0.0)[:max_effects]
        for r in rows:
            lo, hi = r["effect_ci_lo"], r["effect_ci_hi"]
            ci = "[n/a]" if lo is None or not math.isfinite(lo) else f"[{lo:.2f}, {hi:.2f}]"
            ph, eff = _num(r["p_holm"]), _num(r["effect"])
            lines.append(f"  {r['model']:<16}{r['scale']:<14}{r['intervention']:<11}{r['strength']:>5g}  {r['metric']:<21}"
                         f" d_z {eff:>7.2f} {ci:<16} p_holm {ph:.3g}{' *' if r['significant'] else ''}")
    for r in tables["crossmodel"]:
        if r["best_for_a"]:
            lines.append(f"  cross-model CKA: {r['model_a']}:{r['scale_a']} best matches {r['model_b']}:{r['scale_b']} "
                         f"(debiased CKA {r['cka']:.3f}, {r['n_rows']} {r['align_on']})")
    for r in tables.get("plugins", []):
        first = (r["summary"] or "").strip().splitlines()[:1]
        text = f"error: {r['error']}" if r["error"] else (first[0] if first else "")
        lines.append(f"  plugin {r['plugin']} on {r['model']}: {text}")
    if tables["timing"]:
        tot = sum(r["wall_s"] for r in tables["timing"])
        cpu = sum(r["cpu_s"] or 0.0 for r in tables["timing"])
        peak = max(r["peak_rss_mb"] for r in tables["timing"])
        lines.append(f"time in units: {tot:.0f} s wall, {cpu:.0f} s CPU; peak RSS {peak:.0f} MiB")
        by_task: dict[str, float] = {}
        for r in tables["timing"]:
            by_task[r["task"]] = by_task.get(r["task"], 0.0) + r["wall_s"]
        lines.append("  wall time by task: " + ", ".join(f"{k} {v:.0f} s" for k, v in by_task.items()))
    return "\n".join(lines)
