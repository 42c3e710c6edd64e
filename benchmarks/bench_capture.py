"""Capture throughput and overhead vs a plain forward pass, and peak memory, on SmolLM2-135M (CPU, 1 thread).

    python benchmarks/bench_capture.py [--docs 32] [--batch-size 8] [--repeats 3]

Overhead: `capture` with scales covering all 30 layers (every resid_post cached, pooled, moved to CPU) vs
`model(tokens, attention_mask=...)` on the same batches; median of interleaved repeats, CPU process time.
Peak memory: max RSS of a child process that loads the model and runs each mode once, minus a child that
only loads the model.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _setup(n_docs: int):
    import torch

    torch.set_num_threads(1)
    import msma_lens as ml
    from msma_lens import tl as _tl

    model = ml.load_model("smollm2-135m")
    texts = ml.load_corpus().texts[:n_docs]
    return torch, ml, _tl, model, texts


def _plain(torch, _tl, model, texts, bs):
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    with torch.no_grad():
        for i in range(0, len(order), bs):
            toks, mask, _ = _tl.to_tokens(model, [texts[j] for j in order[i:i + bs]])
            model(toks, attention_mask=mask)


def child(mode: str, n_docs: int, bs: int) -> None:
    torch, ml, _tl, model, texts = _setup(n_docs)
    if mode == "plain":
        _plain(torch, _tl, model, texts, bs)
    elif mode == "capture":
        lens = ml.MSMA(model, ml.Scales.default(30))
        lens.capture(texts, batch_size=bs, progress=False)
    print(json.dumps({"maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", default=None)
    a = ap.parse_args()
    if a.child:
        return child(a.child, a.docs, a.batch_size)
    torch, ml, _tl, model, texts = _setup(a.docs)
    lens = ml.MSMA(model, ml.Scales.default(30))
    n_tok = sum(n - 1 for n in _tl.token_lengths(model, texts))
    _plain(torch, _tl, model, texts, a.batch_size)  # warm-up
    plain, cap, cap_mean = [], [], []
    for _ in range(a.repeats):
        t = time.process_time(); _plain(torch, _tl, model, texts, a.batch_size); plain.append(time.process_time() - t)  # noqa: E702
        t = time.process_time(); acts = lens.capture(texts, batch_size=a.batch_size, progress=False); cap.append(time.process_time() - t)  # noqa: E702
        t = time.process_time(); lens.capture(texts, batch_size=a.batch_size, pooling="mean", progress=False); cap_mean.append(time.process_time() - t)  # noqa: E702
    p, c, cm = statistics.median(plain), statistics.median(cap), statistics.median(cap_mean)
    rss = {}
    for mode in ("load", "plain", "capture"):
        out = subprocess.run([sys.executable, __file__, "--child", mode, "--docs", str(a.docs), "--batch-size", str(a.batch_size)],
                             capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        rss[mode] = json.loads(out)["maxrss_mib"]
    act_mib = sum(v.numel() * 4 for v in acts.acts.values()) / 2**20
    print(f"SmolLM2-135M, {a.docs} docs, {n_tok} content tokens, batch {a.batch_size}, 30 layers in 3 scales, 1 thread")
    print(f"plain forward            {p:7.2f} s CPU   {n_tok / p:7.0f} tok/s")
    print(f"capture (token, 30 lay.) {c:7.2f} s CPU   {n_tok / c:7.0f} tok/s   overhead {100 * (c / p - 1):+.1f}%")
    print(f"capture (mean pooling)   {cm:7.2f} s CPU   {n_tok / cm:7.0f} tok/s   overhead {100 * (cm / p - 1):+.1f}%")
    print(f"peak RSS: model loaded {rss['load']:.0f} MiB; plain +{rss['plain'] - rss['load']:.0f} MiB; "
          f"capture +{rss['capture'] - rss['load']:.0f} MiB (pooled token activations kept: {act_mib:.1f} MiB)")


if __name__ == "__main__":
    main()
