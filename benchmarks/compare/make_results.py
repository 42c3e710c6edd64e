"""Write benchmarks/compare/RESULTS.md from a finished `msma-lens compare` run (its compare.json), next to the
published GPT-2 / BERT numbers (papers.md §A.8, §B.3, §B.6; other models, labelled as such).

    .venv/bin/python benchmarks/compare/make_results.py cmp "<the command that produced cmp>" [--wall SECONDS]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
from pathlib import Path

PUBLISHED_LAYERS = """| model (published, NOT measured here) | local | intermediate | global | source |
|---|---|---|---|---|
| GPT-2 small (12 blocks) | hidden 0-2 → blocks 0-1 (17%) | 3-8 → 2-7 (50%) | 9-12 → 8-11 (33%) | MSPGT README, §B.3 (*) |
| BERT-base (12 blocks) | hidden 0-4 → blocks 0-3 (33%) | 5-8 → 4-7 (33%) | 9-12 → 8-11 (33%) | MSPGT README (*) |
| GPT-2 small, MSMA code | blocks 0-3 | 4-7 | 8-11 | MSMA authors' code (papers.md §A.2) |

(*) percentages recomputed from the published ranges (`Scales.preset`); the README's own percentages (GPT-2
25/50/25, BERT 42/29/29) do not match its ranges."""

PUBLISHED_ALIGN = """| model (published, NOT measured here) | method | KL ↓ | MI ↑ | dCor |
|---|---|---:|---:|---:|
| GPT-2 | baseline | 6,955 | 0.23 | 0.97 |
| GPT-2 | full MSMA | 33 | 1.25 | 1.00 |
| BERT | baseline | 403 | 0.06 | 0.87 |
| BERT | full MSMA | 0.51 | 2.89 | 1.00 |

(MSMA README, global → intermediate, last epoch, one run, no CIs; their KL is the authors' diagonal-Gaussian KL
on unnormalised states, their MI a histogram estimate and their dCor a biased V-statistic on a 1024-row subsample,
so the scales are not comparable with ours: papers.md §A.6, §A.8.)"""

PUBLISHED_EFFECTS = """| model (published, NOT measured here) | scale | intervention | impact | δ |
|---|---|---|---|---:|
| GPT-2 | global | amplify | +7.4% lexical diversity | +0.23 |
| GPT-2 | global | amplify | −24% coherence | −0.24 |
| GPT-2 | intermediate | scale | +25% sentence count | +0.24 |
| GPT-2 | intermediate | scale | −19% mean sentence length | −0.27 |
| GPT-2 | local | amplify | +34% lexical variation | +0.34 |

(MSPGT README, papers.md §B.6: no CIs, no n, no multiple-comparison correction published.)"""


def f(v, p=3):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.{p}g}" if isinstance(v, float) else str(v)


def ci(r, c):
    m, lo, hi = r.get(c), r.get(f"{c}_ci_lo"), r.get(f"{c}_ci_hi")
    if m is None or not math.isfinite(m):
        return "n/a"
    if lo is None or not math.isfinite(lo):
        return f(m, 4)
    return f"{m:.4g} [{lo:.4g}, {hi:.4g}]"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("command")
    ap.add_argument("--wall", type=float, default=None, help="wall seconds of the whole command")
    ap.add_argument("--note", default="")
    a = ap.parse_args()
    d = json.loads((Path(a.run) / "compare.json").read_text())
    t, meta = d["tables"], d["meta"]
    out = ["# Model comparison suite: measured results", "",
           f"Command: `{a.command}`", "",
           f"Machine: {platform.machine()}, {platform.system()}, CPU only, OMP_NUM_THREADS=1; models {', '.join(meta['models'])}; "
           f"seeds {meta['seeds']}; tasks {', '.join(meta['tasks'])}; executor {meta['executor']}. {a.note}", ""]
    tm = t["timing"]
    total = sum(r["wall_s"] for r in tm)
    out += ["## Time and memory", "",
            f"Whole command: {f(a.wall, 4) if a.wall else 'see below'} s wall; sum over units {total:.0f} s wall, "
            f"{sum(r.get('cpu_s') or 0 for r in tm):.0f} s CPU (this process; model loading included).", "",
            "| unit | wall s | CPU s | peak RSS MiB |", "|---|---:|---:|---:|"]
    out += [f"| {r['unit']} | {r['wall_s']:.0f} | {f(r.get('cpu_s'), 4)} | {r['peak_rss_mb']:.0f} |" for r in tm]
    by_model: dict[str, float] = {}
    by_task: dict[str, float] = {}
    for r in tm:
        by_task[r["task"]] = by_task.get(r["task"], 0) + r["wall_s"]
        if r["task"] != "crossmodel":
            by_model[r["models"]] = by_model.get(r["models"], 0) + r["wall_s"]
    out += ["", "Where the time goes (wall s): by task " + ", ".join(f"{k} {v:.0f}" for k, v in by_task.items())
            + "; by model (without cross-model units) " + ", ".join(f"{k} {v:.0f}" for k, v in by_model.items()) + ".", ""]
    out += ["## (a) Semantic layer distribution", "",
            "Measured: discovered partition (MSPGT boundary method, `Scales.discover`) with the 95% bootstrap CI over "
            "documents of each scale's first layer, next to thirds of the depth.", "",
            "| model | partition | local | intermediate | global |", "|---|---|---|---|---|"]
    rows = t["layers"]
    for m in dict.fromkeys(r["model"] for r in rows if "other model" not in r["model"]):
        for kind in ("discovered", "thirds"):
            rs = {r["scale"]: r for r in rows if r["model"] == m and r["partition"] == kind}
            cells = []
            for s in ("local", "intermediate", "global"):
                r = rs.get(s)
                cells.append("" if r is None else f"{r['first']}-{r['last']} ({r['pct_depth']:.0f}%)"
                             + (f", starts in {r['boundary_ci']}" if r["boundary_ci"] else ""))
            out.append(f"| {m} | {kind} | " + " | ".join(cells) + " |")
    out += ["", "Published (other models):", "", PUBLISHED_LAYERS, ""]
    out += ["## (b) Cross-scale alignment (held-out documents)", "",
            "Mean [95% Student-t CI] over seeds. KL = diagonal-Gaussian KL(prediction ‖ target) on normalised "
            "activations; floor = split-half KL of the target with itself at the same n, d (values near it are "
            "indistinguishable from perfect); MI = Gaussian MI on the top 32 principal components (nats); dCor² "
            "bias-corrected; CKA debiased. The closed form is a similarity transform, so its CKA / dCor / MI equal the "
            "baseline's by construction.", "",
            "| model | pair | method | KL diag | KL floor | MI (nats) | dCor² | CKA | seeds |", "|---|---|---|---|---|---|---|---|---:|"]
    for r in t["alignment"]:
        out.append(f"| {r['model']} | {r['pair']} | {r['method']} | {ci(r, 'kl_diag')} | {ci(r, 'kl_floor')} | "
                   f"{ci(r, 'mi_gaussian')} | {ci(r, 'dcor2_u')} | {ci(r, 'cka_debiased')} | {r['n_seeds']} |")
    out += ["", "Published (other models, other estimators):", "", PUBLISHED_ALIGN, ""]
    out += ["## (c) Intervention effects", "",
            "Paired d_z (steered vs unsteered; same prompt and sampling seed) with the exact noncentral-t 95% CI; p Holm-"
            "corrected over each model's grid. Decoders: text metrics of generated continuations; encoders "
            "(minilm-l6): last-layer embedding metrics (topic-probe probability of the true topic, embedding norm). "
            "Rows with Holm p < 0.05:", "",
            "| model | scale | intervention | strength | metric | baseline | steered | % change | d_z [95% CI] | p Holm |",
            "|---|---|---|---:|---|---:|---:|---:|---|---:|"]
    sig = [r for r in t["interventions"] if r.get("significant")]
    for r in sorted(sig, key=lambda r: (r["model"], -abs(r["effect"] if r["effect"] is not None else 0.0))):
        out.append(f"| {r['model']} | {r['scale']} | {r['intervention']} | {r['strength']:g} | {r['metric']} | "
                   f"{f(r['baseline_mean'])} | {f(r['steered_mean'])} | {f(r['pct_change'])} | "
                   f"{f(r['effect'])} [{f(r['effect_ci_lo'])}, {f(r['effect_ci_hi'])}] | {f(r['p_holm'])} |")
    n_all = len(t["interventions"])
    out += ["", f"{len(sig)} of {n_all} cells significant after Holm; the full grid is in `interventions.csv` of the run.", "",
            "Published (other model):", "", PUBLISHED_EFFECTS, ""]
    out += ["## Cross-model alignment (scale level)", "", "Mean debiased CKA over the layer blocks of two scales; ✓ = the best "
            "match of model a's scale.", "", "| model a | scale a | model b | scale b | CKA | best |", "|---|---|---|---|---:|---|"]
    out += [f"| {r['model_a']} | {r['scale_a']} | {r['model_b']} | {r['scale_b']} | {r['cka']:.3f} | {'✓' if r['best_for_a'] else ''} |"
            for r in t["crossmodel"]]
    Path(__file__).with_name("RESULTS.md").write_text("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
