"""Capture time and peak memory vs TransformerLens on a real model (CPU, 1 thread).

    python benchmarks/bench_capture.py [--model smollm2-135m] [--docs 240] [--batch-size 8] [--repeats 3]

Time (CPU process time, ``--repeats`` interleaved repeats after a warm-up, min and median) on the same
length-sorted batches:

* ``plain``: ``model(tokens, attention_mask=...)``, TransformerLens' forward pass with logits;
* ``tl_cache``: ``model.run_with_cache`` of every block's ``hook_resid_post`` (TransformerLens' own caching; logits
  computed and discarded);
* ``capture``: ``capture`` with the default scales (all layers, token pooling: pooled, moved to the CPU and
  assembled in document order); the pass stops right after the last block (no final norm, no unembedding);
* ``capture_mean``: the same with mean pooling.

Peak memory: each stage runs in its own child process that loads the model, warms up on one batch, resets the
kernel's peak-RSS counter (``/proc/self/clear_refs``; where that is unavailable the child reports its peak over
the loaded model's RSS instead, which is +0 when loading peaks higher than the stage), runs the stage once and
reports ``VmHWM − RSS before the stage``. ``capture_sharded`` streams to a temporary ``shard_dir`` and iterates
the shards (:func:`msma_lens.capture.capture_shards`) without assembling them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

STAGES = ("plain", "tl_cache", "capture", "capture_mean", "capture_sharded")


def _setup(model_name: str, n_docs: int):
    import torch

    torch.set_num_threads(1)
    import msma_lens as ml

    model = ml.load_model(model_name)
    texts = ml.load_corpus().texts[:n_docs]
    return ml, model, texts


def _batches(model, texts, bs):
    from msma_lens import tl as _tl

    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for i in range(0, len(order), bs):
        toks, mask, _ = _tl.to_tokens(model, [texts[j] for j in order[i:i + bs]])
        yield toks, mask


def run_stage(stage: str, ml, model, texts, bs: int, shard_dir: str | None = None):
    import torch

    scales = ml.Scales.default(model.cfg.n_layers)
    if stage == "plain":
        with torch.no_grad():
            for toks, mask in _batches(model, texts, bs):
                model(toks, attention_mask=mask)
    elif stage == "tl_cache":
        names = {f"blocks.{i}.hook_resid_post" for i in range(model.cfg.n_layers)}
        with torch.no_grad():
            for toks, mask in _batches(model, texts, bs):
                model.run_with_cache(toks, attention_mask=mask, names_filter=lambda n: n in names)
    elif stage in ("capture", "capture_mean"):
        from msma_lens.capture import capture

        return capture(model, scales, texts, batch_size=bs, progress=False, pooling="mean" if stage == "capture_mean" else "token")
    elif stage == "capture_sharded":
        from msma_lens.capture import capture_shards

        for _ in capture_shards(model, scales, texts, shard_dir, batch_size=bs, progress=False):
            pass
    else:
        raise SystemExit(f"unknown stage {stage!r}")
    return None


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(key + r":\s+(\d+)", f.read()).group(1)) * 1024


def child(stage: str, model_name: str, n_docs: int, bs: int) -> None:
    import resource

    ml, model, texts = _setup(model_name, n_docs)
    run_stage("plain", ml, model, texts[:bs], bs)  # warm-up on one batch
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak-RSS counter to the current RSS
        method, base = "clear_refs", _status("VmRSS")
    except OSError:
        method, base = "ru_maxrss", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with tempfile.TemporaryDirectory() as tmp:
        acts = run_stage(stage, ml, model, texts, bs, shard_dir=os.path.join(tmp, "shards"))
        peak = (_status("VmHWM") if method == "clear_refs" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) - base
    out_mib = sum(a.numel() * a.element_size() for a in acts.acts.values()) / 2**20 if acts is not None else 0.0
    print(json.dumps({"peak_mib": peak / 2**20, "method": method, "acts_mib": out_mib}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--docs", type=int, default=240)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats (0: memory only)")
    ap.add_argument("--no-memory", action="store_true", help="skip the per-stage peak-memory children")
    ap.add_argument("--child", default=None)
    a = ap.parse_args()
    if a.child:
        return child(a.child, a.model, a.docs, a.batch_size)
    ml, model, texts = _setup(a.model, a.docs)
    from msma_lens import tl as _tl

    n_tok = sum(n - 1 for n in _tl.token_lengths(model, texts))
    if a.repeats > 0:
        _timings(a, ml, model, texts, n_tok)
    if not a.no_memory:
        _memory(a)


def _timings(a: argparse.Namespace, ml, model, texts: list[str], n_tok: int) -> None:
    timed = ("plain", "tl_cache", "capture", "capture_mean")
    run_stage("plain", ml, model, texts[:a.batch_size], a.batch_size)  # warm-up
    times: dict[str, list[float]] = {s: [] for s in timed}
    for r in range(a.repeats):
        for s in (timed if r % 2 == 0 else timed[::-1]):
            t = time.process_time()
            run_stage(s, ml, model, texts, a.batch_size)
            times[s].append(time.process_time() - t)
    print(f"{a.model}, {a.docs} docs, {n_tok} content tokens, batch {a.batch_size}, default scales "
          f"({model.cfg.n_layers} layers), 1 thread; CPU s over {a.repeats} interleaved repeats")
    p = min(times["plain"])
    print(f"{'stage':16s} {'min s':>8s} {'median s':>9s} {'tok/s':>8s} {'vs plain (min)':>15s}")
    for s in timed:
        m = min(times[s])
        print(f"{s:16s} {m:8.2f} {statistics.median(times[s]):9.2f} {n_tok / m:8.0f} {m / p:14.3f}x")


def _memory(a: argparse.Namespace) -> None:
    print(f"{a.model}, {a.docs} docs, batch {a.batch_size}: peak memory per stage (own process, peak counter reset after "
          "loading and a one-batch warm-up):")
    for s in STAGES:
        res = subprocess.run([sys.executable, __file__, "--child", s, "--model", a.model, "--docs", str(a.docs),
                              "--batch-size", str(a.batch_size)], capture_output=True, text=True)
        if res.returncode != 0:
            print(f"  {s:16s} failed: {res.stderr.strip()[-300:]}")
            continue
        r = json.loads(res.stdout.strip().splitlines()[-1])
        extra = (f"  activations returned {r['acts_mib']:.1f} MiB, peak / activations {r['peak_mib'] / r['acts_mib']:.2f}"
                 if r["acts_mib"] else "")
        print(f"  {s:16s} +{r['peak_mib']:7.1f} MiB ({r['method']}){extra}")


if __name__ == "__main__":
    main()
