"""A full default alignment fit on SmolLM2 activations (CPU, 1 thread, process time).

    python benchmarks/bench_fit_smollm2.py [--acts out/activations]

Captures the bundled corpus (token pooling, default scales) unless --acts points at a saved ScaleActivations,
then runs `fit_alignment` with the default AlignConfig (f_GI and f_IL; geoopt RiemannianAdam, MINE critic,
residual g of width 64, curvature penalty, 600 steps with early stopping) and reports time per pair, steps run,
time per step and the held-out residual / KL before and after.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    import torch

    torch.set_num_threads(1)
    import msma_lens as ml
    from msma_lens.align.protocol import AlignConfig, fit_alignment

    ap = argparse.ArgumentParser()
    ap.add_argument("--acts", default=None)
    a = ap.parse_args()
    t0 = time.process_time()
    if a.acts:
        acts = ml.ScaleActivations.load(a.acts)
    else:
        acts = ml.MSMA(ml.load_model("smollm2-135m")).capture(ml.load_corpus().texts, pooling="token", progress=False)
    t_cap = time.process_time() - t0
    cfg = AlignConfig()
    t0 = time.process_time()
    res = fit_alignment(acts, cfg)
    t_fit = time.process_time() - t0
    print(f"rows {len(acts)}, capture/load {t_cap:.1f} s CPU; default fit of {len(res.maps)} maps: {t_fit:.1f} s CPU")
    for k, m in res.metrics.items():
        steps = max(h["step"] for h in res.history[k])
        print(f"{k:22s} steps run {steps:4d} (best {m['best_step']}), train rows {m['n_train']}, "
              f"held-out residual {m['before']['residual']:.3f} -> closed form {m['closed_form']['residual']:.3f} -> "
              f"trained {m['after']['residual']:.3f}; KL_diag {m['before']['kl_diag']:.1f} -> {m['after']['kl_diag']:.1f} "
              f"(floor {m['floor']['kl_diag']:.2f})")
    print(f"time per training step (both maps, incl. evaluations): {1000 * t_fit / sum(max(h['step'] for h in res.history[k]) for k in res.maps):.0f} ms")


if __name__ == "__main__":
    main()
