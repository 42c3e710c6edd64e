"""One prepared device check: capture, map fit and dCor on ``--device`` next to the CPU, with the ratio.

    python benchmarks/gpu_check.py --device cuda              # SmolLM2, 64 docs, 100 fit steps, dCor at n = 4096
    python benchmarks/gpu_check.py --device cpu --quick       # smoke test (tiny-gpt2, seconds): CPU only

Each stage runs once untimed (warm-up: CUDA context, kernels, allocator) and then ``--repeats`` times, timed
by wall clock with ``torch.cuda.synchronize()`` around the timed region; the table shows min and median,
the speed-up CPU min / device min, and how far the device result is from the CPU one:

* ``capture``: :func:`msma_lens.capture.capture` of ``--docs`` corpus documents (default scales, token pooling,
  batch ``--batch-size``) with the model loaded on that device; agreement = max |Δ| of the activations
  relative to their max |x|;
* ``fit``: :func:`msma_lens.align.maps.fit_map` (default objective, residual g of width 64, batch 512,
  ``--steps`` steps, no early stopping, evaluation every 50 steps) on the captured global → intermediate pair
  when it has ≥ 1024 rows, else on a synthetic planted rotation at the model's width; ``cfg.device`` set;
  agreement = |Δ| of the held-out residual;
* ``dcor``: :func:`msma_lens.analysis.metrics.dcor2_u` at ``--n`` rows of width ``--d`` (float64), tensors on the
  device; agreement = |Δ| of the value.

With ``--device cpu`` only the CPU column is measured (the ratio is 1): a smoke test that the script runs.
One CPU thread (``OMP_NUM_THREADS=1``) unless ``--threads`` says otherwise.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _sync(dev: str) -> None:
    import torch

    if dev.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, dev: str, repeats: int) -> tuple[object, list[float]]:
    out = fn()  # warm-up
    times = []
    for _ in range(repeats):
        _sync(dev)
        t = time.perf_counter()
        out = fn()
        _sync(dev)
        times.append(time.perf_counter() - t)
    return out, times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="tiny-gpt2, 8 docs, 10 fit steps, n = 512: a smoke test")
    ap.add_argument("--model", default=None)
    ap.add_argument("--docs", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--d", type=int, default=576)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    model_name = a.model or ("tiny-gpt2" if a.quick else "smollm2-135m")
    docs = a.docs or (8 if a.quick else 64)
    steps = a.steps or (10 if a.quick else 100)
    n = a.n or (512 if a.quick else 4096)
    d = 64 if a.quick and a.d == 576 else a.d
    repeats = a.repeats or (1 if a.quick else 3)

    import torch

    torch.set_num_threads(a.threads)
    import msma_lens as ml
    from msma_lens.align.maps import MapTrainConfig, fit_map, geo_loss
    from msma_lens.analysis.metrics import dcor2_u
    from msma_lens.capture import capture

    devices = ["cpu"] if a.device == "cpu" else ["cpu", a.device]
    texts = ml.load_corpus().texts[:docs]
    rows: dict[str, dict[str, tuple]] = {"capture": {}, "fit": {}, "dcor": {}}
    info = []
    for dev in devices:
        model = ml.load_model(model_name, device=dev)
        scales = ml.Scales.default(model.cfg.n_layers)
        acts, t = _timed(lambda m=model, sc=scales: capture(m, sc, texts, batch_size=a.batch_size, progress=False),
                         dev, repeats)
        rows["capture"][dev] = (t, acts)
        if dev == devices[0]:
            info.append(f"capture: {model_name}, {docs} docs, {len(acts)} rows, {model.cfg.n_layers} layers in "
                        f"{len(scales.names)} scales, batch {a.batch_size}")
        del model
        if dev.startswith("cuda"):
            torch.cuda.empty_cache()
        names = acts.scale_names
        if len(acts) >= 1024:
            parts = acts.document_split({"val": 0.2}, seed=0)
            X, Y = acts[names[-1]].float(), acts[names[len(names) // 2]].float()
            mu_x, mu_y = X[parts["train"]].mean(0), Y[parts["train"]].mean(0)
            X, Y = X - mu_x, Y - mu_y
            X, Y = X / X.square().sum(1).mean().sqrt(), Y / Y.square().sum(1).mean().sqrt()
            Xt, Yt, Xv, Yv = X[parts["train"]], Y[parts["train"]], X[parts["val"]], Y[parts["val"]]
            src = f"{names[-1]} -> {names[len(names) // 2]} of the capture"
        else:
            g = torch.Generator().manual_seed(0)
            w = acts.width(names[0])
            Q, _ = torch.linalg.qr(torch.randn(w, w, generator=g))
            Xa = torch.randn(4096, w, generator=g)
            Ya = Xa @ Q + 0.3 * torch.randn(4096, w, generator=g)
            Xt, Yt, Xv, Yv = Xa[:3072], Ya[:3072], Xa[3072:], Ya[3072:]
            src = f"synthetic planted rotation, d={w}"
        cfg = MapTrainConfig(residual_hidden=64, batch_size=512, steps=steps, eval_every=50, patience=None, device=dev)
        out, t = _timed(lambda d4=(Xt, Yt, Xv, Yv), c=cfg: fit_map(*d4, c, progress=False), dev, repeats)
        with torch.no_grad():
            held = float(geo_loss(out.map.cpu()(Xv).double(), Yv.double()))
        rows["fit"][dev] = (t, held)
        if dev == devices[0]:
            info.append(f"fit: {src}, {len(Xt)} train rows, {steps} steps, manifold {cfg.manifold}")
        g = torch.Generator().manual_seed(1)
        Xd = torch.randn(n, d, generator=g, dtype=torch.float64)
        Yd = (Xd + 0.5 * torch.randn(n, d, generator=g, dtype=torch.float64)).to(dev)
        Xd = Xd.to(dev)
        v, t = _timed(lambda x=Xd, y=Yd: dcor2_u(x, y), dev, repeats)
        rows["dcor"][dev] = (t, v)
        if dev == devices[0]:
            info.append(f"dcor: dcor2_u at n={n}, d={d}, float64")

    print(f"torch {torch.__version__}; device {a.device}"
          + (f" ({torch.cuda.get_device_name(torch.device(a.device))})" if a.device.startswith("cuda") else "")
          + f"; {a.threads} CPU thread(s); wall s, warm, min (median) of {repeats}")
    for line in info:
        print("  " + line)
    dev = devices[-1]
    print(f"{'stage':8s} {'cpu s':>16s} {dev + ' s':>16s} {'speed-up':>9s}  agreement")
    for stage, r in rows.items():
        tc, rc = r["cpu"]
        td, rd = r[dev]
        if stage == "capture":
            scale = max(float(rc[s].abs().max()) for s in rc.scale_names)
            agree = max(float((rc[s] - rd[s].cpu()).abs().max()) for s in rc.scale_names) / scale
            agree_s = f"max |Δ| / max |x| = {agree:.1e}"
        elif stage == "fit":
            agree_s = f"held-out residual {rc:.4f} vs {rd:.4f}"
        else:
            agree_s = f"dCor² {rc:.6f} vs {rd:.6f}"
        print(f"{stage:8s} {min(tc):8.3f} ({statistics.median(tc):6.3f}) {min(td):8.3f} ({statistics.median(td):6.3f}) "
              f"{min(tc) / min(td):8.1f}x  {agree_s}")


if __name__ == "__main__":
    main()
