"""Benchmark msma_lens.analysis.metrics at n=4096, d=576 (single thread, CPU process time) against the ``dcor`` package.

Usage: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_metrics.py [--n 4096 --d 576 --n-small 512 --repeats 3 --no-write]``

Every timing is of warm calls: one untimed call on the same inputs first (numba compilation, array-API dispatch
and allocator warm-up in ``dcor``; the same for ours), then ``--repeats`` timed calls, reported as min and median.

The ``dcor`` calls run in a child process with a 16 GiB address-space limit: dcor 0.7 takes its naive broadcasting
path for multivariate inputs and tries to allocate n·n·d float64 (72 GiB at n=4096, d=576), which must fail with
MemoryError instead of exhausting a shared machine. The speed ratio is measured at ``--n-small`` in the same run.
Prints a table and replaces the "## metrics" section of benchmarks/RESULTS.md (other sections are left alone).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from msma_lens.analysis import metrics as M  # noqa: E402

RESULTS = Path(__file__).with_name("RESULTS.md")
MEM_LIMIT = 16 * 2**30

CHILD = r"""
import json, statistics, sys, time
import numpy as np
import dcor
out = {"dcor_version": dcor.__version__}
repeats = int(sys.argv[5])
for tag, px, py in (("large", sys.argv[1], sys.argv[2]), ("small", sys.argv[3], sys.argv[4])):
    x, y = np.load(px), np.load(py)
    t = time.process_time()
    try:
        v = float(dcor.u_distance_correlation_sqr(x, y))  # untimed warm-up call on these very inputs
        times = []
        for _ in range(repeats):
            t = time.process_time()
            dcor.u_distance_correlation_sqr(x, y)
            times.append(time.process_time() - t)
        out[tag] = {"value": v, "cpu_s": min(times), "cpu_s_median": statistics.median(times)}
    except BaseException as e:  # MemoryError expected at n=4096, d=576
        out[tag] = {"error": f"{type(e).__name__}: {e}"[:200], "cpu_s": time.process_time() - t}
print(json.dumps(out))
"""


def _limit_memory() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (MEM_LIMIT, MEM_LIMIT))


def run_dcor_child(large: tuple[np.ndarray, np.ndarray], small: tuple[np.ndarray, np.ndarray], repeats: int = 3) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, a in enumerate((*large, *small)):
            p = os.path.join(tmp, f"a{i}.npy")
            np.save(p, a)
            paths.append(p)
        env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        try:
            r = subprocess.run(
                [sys.executable, "-c", CHILD, *paths, str(repeats)],
                capture_output=True,
                text=True,
                env=env,
                preexec_fn=_limit_memory,
                timeout=1800,
            )
        except subprocess.TimeoutExpired:
            return {"error": "timeout"}
        if r.returncode != 0:
            return {"error": f"child exited {r.returncode}: {r.stderr.strip()[-300:]}"}
        return json.loads(r.stdout.strip().splitlines()[-1])


REPEATS = 3


def timed3(fn, *a, **kw) -> tuple[float, float, float]:
    """``(value, min CPU s, median CPU s)`` over ``REPEATS`` warm calls (one untimed call first)."""
    v = fn(*a, **kw)
    times = []
    for _ in range(REPEATS):
        t = time.process_time()
        fn(*a, **kw)
        times.append(time.process_time() - t)
    return float(v), min(times), statistics.median(times)


def timed(fn, *a, **kw) -> tuple[float, float]:
    """``(value, min CPU s)`` over ``REPEATS`` warm calls."""
    return timed3(fn, *a, **kw)[:2]


def data(n: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Anisotropic X (std 0.2 … 3), an aligned Y = (X + 0.5·noise) Q, an independent Z."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.linspace(0.2, 3.0, d, dtype=torch.float64)
    Q = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0]
    Y = (X + 0.5 * torch.randn(n, d, generator=g, dtype=torch.float64)) @ Q
    return X, Y, torch.randn(n, d, generator=g, dtype=torch.float64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--d", type=int, default=576)
    ap.add_argument("--n-small", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3, help="timed warm calls per measurement (min and median reported)")
    ap.add_argument("--no-write", action="store_true", help="do not update benchmarks/RESULTS.md")
    args = ap.parse_args()
    global REPEATS
    REPEATS = max(1, args.repeats)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", M.SampleSizeWarning)
    n, d, ns = args.n, args.d, args.n_small
    X, Y, Z = data(n, d)
    lines = [f"torch {torch.__version__}, {platform.processor() or platform.machine()}, 1 thread, CPU process time (s) of "
             f"warm calls: min of {REPEATS} after one untimed call (median in brackets where shown)", ""]

    # 1. bias-corrected dCor: ours vs dcor at n and at n_small
    ours_big, t_big, med_big = timed3(M.dcor_u, X, Y)
    ours_small, t_small, med_small = timed3(M.dcor_u, X[:ns], Y[:ns])
    child = run_dcor_child((X.numpy(), Y.numpy()), (X[:ns].numpy(), Y[:ns].numpy()), REPEATS)
    lines += [f"### dcor_u (bias-corrected dCor²) vs dcor {child.get('dcor_version', '?')} (warm calls, same process each)", ""]
    lines += ["| n | d | msma_lens value | msma_lens s (median) | dcor value | dcor s (median) | speed-up (min/min) |",
              "|---|---|---|---|---|---|---|"]
    for tag, nn, v, t, tm in (("large", n, ours_big, t_big, med_big), ("small", ns, ours_small, t_small, med_small)):
        c = child.get(tag, {"error": child.get("error", "?")})
        if "error" in c:
            lines.append(f"| {nn} | {d} | {v:.6f} | {t:.3f} ({tm:.3f}) | failed: {c['error']} | {c.get('cpu_s', float('nan')):.2f} | – |")
        else:
            lines.append(f"| {nn} | {d} | {v:.6f} | {t:.3f} ({tm:.3f}) | {c['value']:.6f} | {c['cpu_s']:.3f} "
                         f"({c['cpu_s_median']:.3f}) | {c['cpu_s'] / t:.1f}× |")

    # 2. all metrics at n, d: value on the aligned pair, value on an independent pair, CPU time
    lines += ["", f"### metrics at n={n}, d={d} (aligned Y = (X + 0.5·noise)Q; independent Z)", ""]
    lines += ["| metric | aligned | independent | CPU s |", "|---|---|---|---|"]
    rows = [(name, {}) for name in M.METRICS if name not in ("mi_neural", "mi_ksg")]
    rows.append(("kl_full", {"shrinkage": "ledoit_wolf"}))
    for name, kw in rows:
        v, t = timed(M.compute, name, X, Y, **kw)
        vz = M.compute(name, X, Z, **kw) if name not in M.LOWER_IS_CLOSER else float("nan")
        label = name + ("(LW)" if kw else "")
        lines.append(f"| {label} | {v:.4f} | {vz:.4f} | {t:.3f} |")
    g = torch.Generator().manual_seed(1)
    A, E = (torch.randn(n, 2, generator=g, dtype=torch.float64) for _ in range(2))
    v, t = timed(M.mi_ksg, A, 0.6 * A + 0.8 * E)
    lines.append(f"| mi_ksg (d=2 each, ρ=0.6, truth {-np.log(1 - 0.36):.4f}) | {v:.4f} | {M.mi_ksg(A, E):.4f} | {t:.3f} |")
    v, t = timed(M.kl_floor, X, "diag")
    lines.append(f"| kl_floor diag (5 splits; 2d/n = {2 * d / n:.4f}) | {v:.4f} | | {t:.3f} |")
    v, t = timed(M.kl_floor, X, "full")
    lines.append(f"| kl_floor full (5 splits, α = 0.1) | {v:.4f} | | {t:.3f} |")
    t0 = time.process_time()
    r = M.evaluate("cka_debiased", X, Y, n_perm=20, n_boot=20, seed=0)
    lines.append(
        f"| evaluate(cka_debiased, n_perm=20, n_boot=20) | p={r.p_value:.3f} CI [{r.ci_low:.4f}, {r.ci_high:.4f}] | | {time.process_time() - t0:.3f} |"
    )
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        cmd = "PYTHONPATH=. .venv/bin/python benchmarks/bench_metrics.py" + "".join(
            f" --{k.replace('_', '-')} {v}" for k, v in (("n", n), ("d", d), ("n_small", ns)) if v != ap.get_default(k)
        )
        write_section(f"## metrics\n\n`{cmd}`\n\n{text}\n")


def write_section(section: str) -> None:
    """Replace (or append) the "## metrics" section of RESULTS.md, leaving other sections untouched."""
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    pat = re.compile(r"^## metrics\n.*?(?=^## |\Z)", re.S | re.M)
    new = pat.sub(lambda _: section + "\n", old, count=1) if pat.search(old) else old.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(new)


if __name__ == "__main__":
    main()
