"""Benchmark msma_lens.align / maps at SmolLM2 width (d = 576), single thread, CPU process time.

Usage: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_align.py [--n 4096 --d 576 --budget 400 --no-write]``

1. closed-form Procrustes (scale + bias, float64) at n × d (goal ≤ 0.2 s), next to
   ``scipy.linalg.orthogonal_procrustes`` on the same inputs (interleaved warm calls, min and median of 5), for
   float32 inputs (scipy then works in float32; ours always in float64) and float64 inputs;
2. one joint training step of ``fit_map``'s loop: geo + MINE (EMA) + curvature, residual g (hidden 128),
   separable critic 576 → 256 → 256 → 64, the default (Euclidean-metric) Stiefel, B = 512 (goal ≤ 120 ms);
3. Riemannian-only fit (geo term only, identity init, full batch, RiemannianAdam, default manifold, Stiefel lr 3.0,
   Adam lr 3e-2 for scale and bias, cosine decay over ``--budget`` steps) to a 1e-4 relative gap vs the closed form, on an LLM-like power
   spectrum (per-dimension variance ∝ 1/i); the gap is evaluated in float64 every 5 steps outside the timed
   region. Reports the step and CPU time at which 1e-4 is reached, or the gap after the budget.

Prints the numbers and ratios from this run and replaces the "## alignment" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import geoopt  # noqa: E402
import torch  # noqa: E402

from msma_lens.align import procrustes  # noqa: E402
from msma_lens.align.maps import CrossScaleMap, curvature_loss, geo_loss  # noqa: E402
from msma_lens.analysis.mi import SeparableCritic, make_objective  # noqa: E402

RESULTS = Path(__file__).with_name("RESULTS.md")


def power_data(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """X with per-dimension variance ∝ 1/i (RMS-normalised), Y = X R + 0.3·σ_rms·N with R ∈ SO(d)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g) / torch.arange(1, d + 1).float().sqrt()
    X = X / X.square().mean().sqrt()
    R, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    if torch.linalg.slogdet(R)[0] < 0:
        R[:, 0] = -R[:, 0]
    Y = X @ R.float() + 0.3 * torch.randn(n, d, generator=g)
    return X, Y, R


def bench_closed_form(X: torch.Tensor, Y: torch.Tensor, reps: int = 5) -> tuple[float, float]:
    procrustes(X[:256], Y[:256])  # warm-up (LAPACK)
    ts = []
    for _ in range(reps):
        t = time.process_time()
        fit = procrustes(X, Y)
        ts.append(time.process_time() - t)
    return statistics.median(ts), fit.residual


def bench_vs_scipy(X: torch.Tensor, Y: torch.Tensor, reps: int = 5) -> dict[str, tuple[float, float]]:
    """(min, median) CPU s of ours and of scipy's orthogonal_procrustes, fp32 and fp64 inputs, interleaved warm calls."""
    import scipy.linalg

    runs = {}
    for dt in (torch.float32, torch.float64):
        Xt, Yt = X.to(dt), Y.to(dt)
        Xn, Yn = Xt.numpy(), Yt.numpy()
        fns = {"ours": lambda Xt=Xt, Yt=Yt: procrustes(Xt, Yt),
               "scipy": lambda Xn=Xn, Yn=Yn: scipy.linalg.orthogonal_procrustes(Xn, Yn)}
        ts: dict[str, list[float]] = {k: [] for k in fns}
        for f in fns.values():
            f()  # warm-up
        for _ in range(reps):
            for k, f in fns.items():
                t = time.process_time()
                f()
                ts[k].append(time.process_time() - t)
        for k, v in ts.items():
            runs[f"{k} {str(dt).removeprefix('torch.')}"] = (min(v), statistics.median(v))
    return runs


def bench_joint_step(X: torch.Tensor, Y: torch.Tensor, B: int = 512, reps: int = 15) -> tuple[float, float, float]:
    """Median CPU time of one step of fit_map's inner loop (same calls, same order), plus its orthogonality error."""
    d = X.shape[1]
    torch.manual_seed(0)
    m = CrossScaleMap(d, d, residual_hidden=128)
    m.init_from_procrustes(X, Y)
    with torch.no_grad():  # a non-zero g so the curvature term has a real backward pass
        m.residual[2].weight.normal_(0.0, 0.01)
    critic = SeparableCritic(d, d, hidden=256, embed=64)
    opt = geoopt.optim.RiemannianAdam(
        [{"params": m.stiefel_parameters(), "lr": 0.1}, {"params": m.euclidean_parameters() + list(critic.parameters()), "lr": 3e-4}],
        stabilize=100,
    )
    obj = make_objective("mine")
    gen = torch.Generator().manual_seed(0)
    n = X.shape[0]

    def step() -> None:
        j = torch.randperm(n, generator=gen)[:B]
        xb, yb = X[j], Y[j]
        pred = m(xb)
        loss = 0.1 * geo_loss(pred, yb) - 0.1 * obj(critic(pred, yb)) + 0.01 * curvature_loss(m.residual, xb, 0.5, generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    ts = []
    for _ in range(reps):
        t = time.process_time()
        step()
        ts.append(time.process_time() - t)
    return statistics.median(ts), min(ts), m.orthogonality_error()


def bench_riemannian_fit(
    X: torch.Tensor, Y: torch.Tensor, target: float, budget: int, stiefel_lr: float = 3.0, euclid_lr: float = 3e-2
) -> dict:
    """Geo-only fit from the identity, full batch; gap vs the closed form every 5 steps (not timed)."""
    d = X.shape[1]
    cf = procrustes(X, Y)
    m = CrossScaleMap(d, d)
    opt = geoopt.optim.RiemannianAdam(
        [{"params": m.stiefel_parameters(), "lr": stiefel_lr}, {"params": m.euclidean_parameters(), "lr": euclid_lr}], stabilize=100
    )
    Xd, Yd = X.double(), Y.double()
    den = float((Yd - Yd.mean(0)).square().sum())

    def gap() -> float:
        with torch.no_grad():
            W, s, b = m.weight.double(), float(m.gain), m.bias.double()
            return (float((s * Xd @ W + b - Yd).square().sum()) / den - cf.residual) / cf.residual

    cpu, reached, g_now = 0.0, None, gap()
    gaps = [(0, g_now)]
    for step in range(budget):
        for grp, base in zip(opt.param_groups, (stiefel_lr, euclid_lr)):
            grp["lr"] = base * 0.5 * (1 + math.cos(math.pi * step / budget))
        t = time.process_time()
        loss = geo_loss(m(X), Y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        cpu += time.process_time() - t
        if (step + 1) % 5 == 0:
            g_now = gap()
            gaps.append((step + 1, g_now))
            if reached is None and g_now < target:
                reached = (step + 1, cpu)
                break
    return {"reached": reached, "final_gap": g_now, "steps": gaps[-1][0], "cpu": cpu, "ms_per_step": 1000 * cpu / max(gaps[-1][0], 1),
            "ortho": m.orthogonality_error(), "stiefel_lr": stiefel_lr, "euclid_lr": euclid_lr, "gaps": gaps}


def write_section(section: str) -> None:
    """Replace (or append) the "## alignment" section of RESULTS.md, leaving other sections untouched."""
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    pat = re.compile(r"^## alignment\n.*?(?=^## |\Z)", re.S | re.M)
    new = pat.sub(lambda _: section + "\n", old, count=1) if pat.search(old) else old.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(new)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--d", type=int, default=576)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--budget", type=int, default=400, help="step budget of the Riemannian-only fit")
    ap.add_argument("--target", type=float, default=1e-4)
    ap.add_argument("--stiefel-lr", type=float, default=3.0)
    ap.add_argument("--euclid-lr", type=float, default=3e-2, help="Adam lr of the scale and bias (from the identity they must move)")
    ap.add_argument("--no-write", action="store_true", help="do not update benchmarks/RESULTS.md")
    args = ap.parse_args()
    torch.set_num_threads(1)

    X, Y, _ = power_data(args.n, args.d, seed=0)
    t_cf, res = bench_closed_form(X, Y)
    vs = bench_vs_scipy(X, Y)
    t_step, t_step_min, ortho_step = bench_joint_step(X, Y, B=args.batch)
    rf = bench_riemannian_fit(X, Y, args.target, args.budget, args.stiefel_lr, args.euclid_lr)
    m_name = CrossScaleMap(2, 2).manifold_name

    lines = [
        f"torch {torch.__version__}, geoopt {geoopt.__version__}, {platform.machine()}, 1 thread, CPU process time; "
        f"data: n={args.n}, d={args.d}, per-dimension variance ∝ 1/i, Y = XR + 0.3·N (R ∈ SO(d)); "
        f"load average at start {os.getloadavg()[0]:.1f}",
        "",
        "| measurement | value | goal | value / goal |",
        "|---|---|---|---|",
        f"| closed-form Procrustes (scale + bias, float64), median of 5 | {t_cf:.3f} s (residual {res:.4f}) | ≤ 0.2 s | {t_cf / 0.2:.2f} |",
        f"| joint step (geo + MINE-EMA + curvature, g hidden 128, critic 256/64), B={args.batch}, median of 15 (min) "
        f"| {1000 * t_step:.1f} ms ({1000 * t_step_min:.1f}); ‖WᵀW−I‖ {ortho_step:.1e} | ≤ 120 ms | {1000 * t_step / 120:.2f} |",
    ]
    for dt in ("float32", "float64"):
        (o, om), (sp, spm) = vs[f"ours {dt}"], vs[f"scipy {dt}"]
        lines.append(f"| closed form vs scipy.linalg.orthogonal_procrustes, {dt} inputs, min (median) of 5 interleaved | "
                     f"ours {o:.3f} s ({om:.3f}), scipy {sp:.3f} s ({spm:.3f}) | – | {o / sp:.2f}× scipy |")
    if rf["reached"] is not None:
        st, cpu = rf["reached"]
        lines.append(
            f"| Riemannian-only fit to a {args.target:g} gap (identity init, full batch, RAdam {m_name}, lr {rf['stiefel_lr']:g} / {rf['euclid_lr']:g}, "
            f"cosine over {args.budget}) | step {st}, {cpu:.1f} s ({rf['ms_per_step']:.0f} ms/step); ‖WᵀW−I‖ {rf['ortho']:.1e} "
            f"| – | {cpu / t_cf:.0f}× the closed form |"
        )
    else:
        lines.append(
            f"| Riemannian-only fit, {args.budget}-step budget (identity init, full batch, RAdam {m_name}, lr {rf['stiefel_lr']:g} / {rf['euclid_lr']:g}, cosine) "
            f"| gap {rf['final_gap']:.2e} after {rf['steps']} steps, {rf['cpu']:.1f} s ({rf['ms_per_step']:.0f} ms/step); "
            f"‖WᵀW−I‖ {rf['ortho']:.1e} | {args.target:g} gap | {rf['cpu'] / t_cf:.0f}× the closed form's time |"
        )
    lines += ["", "Gap trajectory (step: relative gap): " + ", ".join(f"{s}: {g:.1e}" for s, g in rf["gaps"][:: max(1, len(rf["gaps"]) // 12)])]
    text = "\n".join(lines)
    print(text)
    cmd = "PYTHONPATH=. .venv/bin/python benchmarks/bench_align.py" + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else "")
    if not args.no_write:
        write_section(f"## alignment\n\n`{cmd}`\n\n{text}\n")


if __name__ == "__main__":
    main()
