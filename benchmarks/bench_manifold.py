"""Time per map-training step on the two Stiefel metrics (``MapTrainConfig.manifold``), and the held-out geometry.

    python benchmarks/bench_manifold.py [--acts out/activations] [--steps 60] [--repeats 3] [--synthetic]
                                        [--objective default|published]

Default: SmolLM2-sized data (d = 576, batch 512) and the training config of ``lens.fit``
(:func:`msma_lens.align.protocol.default_train_config`: residual g of width 64, λ = (1, 0, 0.01), relative curvature;
``--objective published`` adds the MINE critic, λ = (0.1, 0.1, 0.01)). With ``--acts`` the global → intermediate pair of a saved ScaleActivations (token pooling) is used,
split by document (train / validation / held-out test); ``--synthetic`` uses a planted rotation plus a tanh
part at d = 576 instead (no model needed). For each repeat both manifolds, interleaved, (1) take ``--steps``
optimisation steps of a seeded ``MapTrainer`` (``MapTrainer.step`` only: no evaluation), timed per step, and
(2) run the same ``fit_map`` (seed = repeat index, early stopping off, evaluation every 20 steps) whose map is
scored on the held-out split. The script prints per-step wall time (min and median over repeats), the ratio euclidean /
canonical within each repeat, and the held-out normalised residual of each fitted map next to the closed
form's. One CPU thread (``OMP_NUM_THREADS=1``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _norm(a, ref):
    mu = ref.mean(0)
    rms = (ref - mu).pow(2).sum(1).mean().sqrt()
    return (a - mu) / rms


def _data(args):
    import torch

    if args.synthetic or not args.acts:
        g = torch.Generator().manual_seed(0)
        d = args.d
        Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
        scale = torch.linspace(0.5, 2.0, d)

        def make(m):
            X = torch.randn(m, d, generator=g) * scale
            return X, 1.3 * X @ Q + 0.5 * torch.tanh(X) + 0.3 * torch.randn(m, d, generator=g)

        (Xt, Yt), (Xv, Yv), (Xh, Yh) = make(args.rows), make(args.rows // 4), make(args.rows // 4)
        src = f"synthetic planted rotation + tanh, d={d}, {args.rows} train rows"
    else:
        import msma_lens as ml

        acts = ml.ScaleActivations.load(args.acts)
        parts = acts.document_split({"val": 0.15, "test": 0.15}, seed=0)
        names = acts.scale_names
        xs, ys = names[-1], names[len(names) // 2]
        X, Y = acts[xs].float(), acts[ys].float()
        tr = parts["train"]
        Xt, Yt = X[tr], Y[tr]
        Xv, Yv, Xh, Yh = X[parts["val"]], Y[parts["val"]], X[parts["test"]], Y[parts["test"]]
        Xv, Xh, Yv, Yh = _norm(Xv, Xt), _norm(Xh, Xt), _norm(Yv, Yt), _norm(Yh, Yt)
        Xt, Yt = _norm(Xt, Xt), _norm(Yt, Yt)
        src = f"{args.acts}: {xs} -> {ys}, {len(tr)} train rows, d={X.shape[1]}"
    return src, (Xt, Yt, Xv, Yv, Xh, Yh)


def main() -> None:
    import torch

    torch.set_num_threads(1)
    from msma_lens.align.maps import MANIFOLDS, MapTrainer, fit_map, geo_loss
    from msma_lens.align.procrustes import procrustes
    from msma_lens.align.protocol import default_train_config

    ap = argparse.ArgumentParser()
    ap.add_argument("--acts", default=None)
    ap.add_argument("--synthetic", action="store_true")
    ap.add_argument("--d", type=int, default=576)
    ap.add_argument("--rows", type=int, default=8192)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--objective", default="default", choices=("default", "published"))
    a = ap.parse_args()
    src, (Xt, Yt, Xv, Yv, Xh, Yh) = _data(a)
    print(f"{src}; objective {a.objective}, {a.steps} steps, {a.repeats} repeats")
    cf = procrustes(Xt, Yt)
    with torch.no_grad():
        cf_res = float(geo_loss(cf.apply(Xh).double(), Yh.double()))
    times: dict[str, list[float]] = {m: [] for m in MANIFOLDS}
    held: dict[str, list[float]] = {m: [] for m in MANIFOLDS}
    ortho: dict[str, float] = {}
    ratios = []
    for r in range(a.repeats):
        per = {}
        for m in (MANIFOLDS if r % 2 == 0 else MANIFOLDS[::-1]):
            cfg = default_train_config(a.objective, manifold=m, batch_size=512, steps=a.steps, eval_every=20,
                                       patience=None, device=a.device, seed=r)
            tr = MapTrainer(Xt, Yt, Xv, Yv, cfg)
            tr.step()  # warm-up (optimiser state, allocator)
            if a.device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(a.steps - 1):
                tr.step()
            if a.device.startswith("cuda"):
                torch.cuda.synchronize()
            per[m] = (time.perf_counter() - t0) / (a.steps - 1)
            times[m].append(per[m])
            out = fit_map(Xt, Yt, Xv, Yv, cfg, progress=False)
            with torch.no_grad():
                held[m].append(float(geo_loss(out.map.cpu()(Xh).double(), Yh.double())))
            ortho[m] = max(ortho.get(m, 0.0), out.map.orthogonality_error())
        ratios.append(per["euclidean"] / per["canonical"])
    print(f"{'manifold':10s} {'ms/step min':>12s} {'median':>8s} {'held-out residual (seed 0..)':>30s} {'max |WtW-I|':>12s}")
    for m in MANIFOLDS:
        hs = ", ".join(f"{h:.4f}" for h in held[m])
        print(f"{m:10s} {1000 * min(times[m]):12.1f} {1000 * statistics.median(times[m]):8.1f} {hs:>30s} {ortho[m]:12.1e}")
    diff = [e - c for e, c in zip(held["euclidean"], held["canonical"])]
    print(f"held-out residual euclidean - canonical, per seed: {', '.join(f'{x:+.4f}' for x in diff)} "
          f"(mean {statistics.mean(diff):+.4f})")
    print(f"closed form held-out residual {cf_res:.4f}")
    print(f"euclidean / canonical time per step, per repeat: {', '.join(f'{x:.3f}' for x in ratios)} "
          f"(median {statistics.median(ratios):.3f}; training steps only)")


if __name__ == "__main__":
    main()
