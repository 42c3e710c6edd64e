"""Steered vs plain generation with the KV cache (goal: steering costs <= +10% time).

    python benchmarks/bench_steering.py [--model smollm2-135m] [--tokens 32] [--runs 5] [--scale global]

Variants, run interleaved, median wall time of ``--runs`` each (1 thread):
  plain        model.generate(...) with no hooks
  raw-hook     model.hooks with ``x + delta`` on every layer of the scale (what a hand-written hook costs)
  msma-base    msma_lens.steer.generate.generate with no intervention (tracker hook only)
  msma-steer   msma_lens.steer.generate.generate with Translate(scale, relative=True, at="every") on every layer of the scale
  msma-held    the same edit with the default at="held" (entry + every block, one application held)
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from msma_lens import tl as _tl  # noqa: E402
from msma_lens.capture.scales import Scales  # noqa: E402
from msma_lens.io.models import load_model  # noqa: E402
from msma_lens.steer.directions import random_direction
from msma_lens.steer.edits import Translate
from msma_lens.steer.generate import generate

PROMPT = "The city council met on Tuesday to discuss the new budget, and"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--scale", default="global")
    args = ap.parse_args()
    torch.set_num_threads(1)

    model = load_model(args.model, backend=args.backend)
    sc = Scales.default(_tl.n_layers(model))
    layers = sc[args.scale]
    v = random_direction(_tl.d_model(model), seed=0)
    iv = Translate(args.scale, v, strength=0.5, relative=True, at="every")  # the same hooks as raw-hook
    held = Translate(args.scale, v, strength=0.5, relative=True)  # the default: entry + every block, one edit held
    delta = (50.0 * v).to(_tl.model_dtype(model))
    raw = [(_tl.resid_name(model, x), lambda x, hook: x + delta) for x in layers]

    def plain():
        return model.generate(PROMPT, max_new_tokens=args.tokens, do_sample=False, stop_at_eos=False, verbose=False)

    def raw_hook():
        with model.hooks(fwd_hooks=raw):
            return plain()

    def msma_base():
        return generate(model, [PROMPT], [], max_new_tokens=args.tokens, do_sample=False, stop_at_eos=False)

    def msma_steer():
        return generate(model, [PROMPT], [iv], max_new_tokens=args.tokens, do_sample=False, stop_at_eos=False)

    def msma_held():
        return generate(model, [PROMPT], [held], max_new_tokens=args.tokens, do_sample=False, stop_at_eos=False)

    variants = {"plain": plain, "raw-hook": raw_hook, "msma-base": msma_base, "msma-steer": msma_steer, "msma-held": msma_held}
    for fn in variants.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.runs):
        for k, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"model={args.model} backend={_tl.backend(model)} TL={_tl.tl_version()} tokens={args.tokens} runs={args.runs} "
          f"scale={args.scale} layers={layers[0]}-{layers[-1]} threads={torch.get_num_threads()}")
    for k, m in med.items():
        print(f"  {k:<11} {1000 * m:8.0f} ms  ({m / med['plain']:.3f}x plain)")
    print(f"  steering overhead vs plain: {100 * (med['msma-steer'] / med['plain'] - 1):+.1f}%  "
          f"(vs raw hook: {100 * (med['msma-steer'] / med['raw-hook'] - 1):+.1f}%)")


if __name__ == "__main__":
    main()
