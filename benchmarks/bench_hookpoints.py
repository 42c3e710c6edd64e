"""Cost of the per-scale hook points on SmolLM2-135M (CPU, 1 thread), measured as ratios in one run.

    python benchmarks/bench_hookpoints.py [--docs 16] [--batch-size 8] [--repeats 5] [--new-tokens 16]

* forward pass with the points attached but unused vs the same model without them (the "costs nothing" claim);
* capture through the points (``msma.{scale}.hook_resid``, the layer mean) vs caching every block's
  ``hook_resid_post`` and averaging (the pre-hook-point implementation, still used as a fallback);
* KV-cached greedy generation with the points attached vs without.

Modes are interleaved within each repeat; the median of per-repeat ratios is reported (CPU process time).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _timed(fn) -> float:
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=16)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    import msma_lens as ml
    from msma_lens import tl as _tl
    from msma_lens.capture import capture

    model = ml.load_model("smollm2-135m")
    texts = ml.load_corpus().texts[: args.docs]
    scales = ml.Scales.default(_tl.n_layers(model))
    lens = ml.MSMA(model, scales)
    batches = [_tl.to_tokens(model, texts[i:i + args.batch_size])[:2] for i in range(0, len(texts), args.batch_size)]
    prompts = ["The weather today is", "My favourite food is"]

    def forward() -> None:
        with torch.no_grad():
            for toks, mask in batches:
                model(toks, attention_mask=mask)

    def cap_points() -> None:
        lens.capture(texts, batch_size=args.batch_size, progress=False)

    def cap_blocks() -> None:  # every block hook cached and averaged here: the fallback path
        other = ml.MSMA(model, {"all": range(0, _tl.n_layers(model))}).attach()
        try:
            capture(model, scales, texts, batch_size=args.batch_size, progress=False)
        finally:
            other.detach()

    def gen() -> None:
        lens.generate(prompts, max_new_tokens=args.new_tokens)

    forward(), gen()  # warm-up
    ratios: dict[str, list[float]] = {"forward: attached unused / plain": [], "capture: points / block hooks": [],
                                      "generate: attached unused / plain": []}
    times: dict[str, list[float]] = {k: [] for k in ("forward plain", "forward attached", "capture points", "capture blocks",
                                                     "generate plain", "generate attached")}
    for _ in range(args.repeats):
        t_plain = _timed(forward)
        t_gen_plain = _timed(gen)
        with lens:
            t_att = _timed(forward)
            t_gen_att = _timed(gen)
            t_cap_points = _timed(cap_points)
        t_cap_blocks = _timed(cap_blocks)
        ratios["forward: attached unused / plain"].append(t_att / t_plain)
        ratios["capture: points / block hooks"].append(t_cap_points / t_cap_blocks)
        ratios["generate: attached unused / plain"].append(t_gen_att / t_gen_plain)
        for k, v in zip(times, (t_plain, t_att, t_cap_points, t_cap_blocks, t_gen_plain, t_gen_att)):
            times[k].append(v)
    print(f"SmolLM2-135M, {args.docs} docs in batches of {args.batch_size}, {args.repeats} interleaved repeats, "
          f"generation: {len(prompts)} prompts x {args.new_tokens} tokens (KV cache)")
    for k, v in times.items():
        print(f"  {k:<22} median {statistics.median(v):7.3f} s")
    for k, v in ratios.items():
        print(f"  {k:<36} median {statistics.median(v):.3f}  (min {min(v):.3f}, max {max(v):.3f})")


if __name__ == "__main__":
    main()
