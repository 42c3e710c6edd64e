"""Command line: ``msma-lens models | capture | fit | steer | run`` (``--help`` on each)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from . import _tl
from .artifacts import write_text_atomic
from .errors import MSMAError


def _threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def _parse_scales(spec: str | None):
    """``None``/``default``, a preset name, or ``name=first-last,...`` (inclusive layer ranges)."""
    from .scales import Scales

    if spec is None or spec == "default":
        return None
    if "=" not in spec:
        return spec
    ranges = {}
    for part in spec.split(","):
        name, _, rng = part.partition("=")
        lo, _, hi = rng.partition("-")
        try:
            ranges[name.strip()] = (int(lo), int(hi or lo))
        except ValueError as e:
            raise SystemExit(f"error: cannot parse scale range {part!r} (expected name=first-last)") from e
    return Scales.from_ranges(ranges)


def _texts(source: str, max_docs: int | None) -> tuple[list[str], str]:
    from . import corpus

    if source == "corpus":
        docs = corpus.load_corpus().texts
        label = "bundled corpus"
    else:
        docs = corpus.load_texts(source)
        label = source
    return (docs[:max_docs] if max_docs else docs), label


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m", help="offline name, HF id, local dir or .gguf (default: smollm2-135m)")
    p.add_argument("--backend", default="auto", choices=["auto", "bridge", "hooked"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--scales", default=None, help="'default', a preset (gpt2, bert, ...) or 'local=0-9,intermediate=10-19,...'")
    p.add_argument("--texts", default="corpus", help="'corpus' (bundled) or a .txt/.jsonl file")
    p.add_argument("--max-docs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on small shared CPUs)")


def cmd_models(args: argparse.Namespace) -> int:
    from .models import cache_dir, list_models

    rows = list_models()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        state = "available" if r["available"] else f"missing ({r['install']})"
        cached = "" if r["cached"] is None else (", converted copy cached" if r["cached"] else ", not yet converted")
        print(f"{r['name']:<14} {state}{cached}\n    {r['description']}")
    print(f"cache: {cache_dir()}")
    return 0


def cmd_capture(args: argparse.Namespace) -> int:
    from .lens import MSMA
    from .models import load_model

    _threads(args.threads)
    texts, label = _texts(args.texts, args.max_docs)
    model = load_model(args.model, device=args.device, backend=args.backend)
    lens = MSMA(model, _parse_scales(args.scales))
    acts = lens.capture(texts, pooling=args.pooling, batch_size=args.batch_size, shard_dir=args.shard_dir)
    path = acts.save(args.out)
    print(f"captured {len(acts)} rows x {len(acts.scale_names)} scales from {len(texts)} documents ({label}) -> {path}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """The main job: capture per-scale activations of the corpus and write a summary + HTML report."""
    from .lens import MSMA
    from .models import load_model
    from .report import format_summary, scale_statistics, write_html

    _threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    texts, label = _texts(args.texts, args.max_docs)
    model = load_model(args.model, device=args.device, backend=args.backend)
    lens = MSMA(model, _parse_scales(args.scales))
    print(f"{lens!r}: {len(texts)} documents from the {label}")
    acts = lens.capture(texts, pooling="token", batch_size=args.batch_size)
    acts.save(out / "activations")
    stats = scale_statistics(acts)
    summary = format_summary(stats, acts.meta)
    write_text_atomic(out / "summary.txt", summary + "\n")
    from .artifacts import write_json_atomic

    write_json_atomic(out / "scale_stats.json", {"stats": stats, "meta": acts.meta})
    write_html(stats, out / "scales.html")
    print(summary)
    if not args.skip_fit:
        _fit_and_report(lens, acts, args, out)
    if not args.skip_steer:
        if _tl.is_encoder(model):
            print("steering skipped: encoder models do not generate")
        else:
            _steer_and_report(lens, args, out)
    print(f"wrote {out} in {time.time() - t0:.0f} s")
    return 0


def _align_cfg(args: argparse.Namespace):
    from .alignment import AlignConfig
    from .maps import MapTrainConfig

    pairs = tuple(tuple(p.split(":")) for p in args.pairs.split(",")) if args.pairs else None
    train = MapTrainConfig(steps=args.steps, residual_hidden=args.residual_hidden, estimator=args.estimator,
                           lambda_geo=args.lambda_geo, lambda_info=args.lambda_info, lambda_curv=args.lambda_curv,
                           eval_every=max(1, min(50, args.steps // 4)))
    kw = {"pairs": pairs} if pairs else {}
    return AlignConfig(train=train, max_train_rows=args.max_train_rows, **kw)


def _fit_and_report(lens, acts, args, out: Path) -> None:
    """Fit maps, run the ablations, write artifacts + tables + HTML into ``out``."""
    cfg = _align_cfg(args)
    result = lens.fit(acts, cfg)
    result.save(out / "alignment")
    write_text_atomic(out / "alignment.txt", result.table() + "\n")
    print(result.table())
    if args.seeds:
        seeds = tuple(int(x) for x in args.seeds.split(","))
        ab = lens.ablate(acts, cfg, seeds=seeds)
        ab.save(out / "ablation")
        ab.write_html(out / "ablation.html")
        write_text_atomic(out / "ablation.txt", ab.table() + "\n")
        print(ab.table())


def cmd_fit(args: argparse.Namespace) -> int:
    from .activations import ScaleActivations
    from .lens import MSMA
    from .models import load_model

    _threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.acts:
        acts = ScaleActivations.load(args.acts)
        model = load_model(acts.meta.get("model_id") or args.model, backend=args.backend)
        lens = MSMA(model, acts.scales)
    else:
        texts, _ = _texts(args.texts, args.max_docs)
        model = load_model(args.model, device=args.device, backend=args.backend)
        lens = MSMA(model, _parse_scales(args.scales))
        acts = lens.capture(texts, pooling="token", batch_size=args.batch_size)
    _fit_and_report(lens, acts, args, out)
    return 0


def _prompts(source: str, n: int) -> list[str]:
    """``corpus``: the first sentence of ``n`` documents spread over topics and registers; else a text file."""
    from . import corpus

    if source == "corpus":
        docs = corpus.load_corpus()
        step = max(1, len(docs) // n)
        return [docs[i].sentences[0].text for i in range(0, len(docs), step)][:n]
    return corpus.load_texts(source)[:n]


def _parse_strengths(spec: str | None) -> dict[str, tuple[float, ...]] | None:
    """``translate=1,2;scale=0.5,1.5`` → {"translate": (1.0, 2.0), "scale": (0.5, 1.5)}."""
    if not spec:
        return None
    out = {}
    for part in spec.split(";"):
        kind, _, vals = part.partition("=")
        try:
            out[kind.strip()] = tuple(float(v) for v in vals.split(","))
        except ValueError as e:
            raise SystemExit(f"error: cannot parse strengths {part!r} (expected kind=v1,v2)") from e
    return out


def _steer_and_report(lens, args, out: Path) -> None:
    kinds = tuple(k.strip() for k in args.interventions.split(","))
    strengths = _parse_strengths(args.strengths) or {k: v for k, v in _MAIN_STRENGTHS.items() if k in kinds}
    prompts = _prompts(args.prompts, args.n_prompts)
    res = lens.experiment(prompts, interventions=kinds, strengths=strengths,
                          seeds=tuple(int(x) for x in args.gen_seeds.split(",")), max_new_tokens=args.max_new_tokens,
                          do_sample=not args.greedy, top_p=0.9 if not args.greedy else None, batch_size=args.gen_batch_size,
                          use_scales=args.use_scales.split(",") if args.use_scales else None)
    res.save(out / "steering", figures=True)
    text = res.format()
    write_text_atomic(out / "steering.txt", text + "\n")
    print(f"steering: {len(prompts)} prompts x {len(kinds)} interventions x scales {res.config.get('scales_used', '')}")
    print(text)


_MAIN_STRENGTHS = {"translate": (0.1,), "scale": (1.1,), "noise": (0.1,), "attention": (2.0,)}  # per layer: edits compound over a scale


def cmd_steer(args: argparse.Namespace) -> int:
    from .lens import MSMA
    from .models import load_model

    _threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = load_model(args.model, device=args.device, backend=args.backend)
    _steer_and_report(MSMA(model, _parse_scales(args.scales)), args, out)
    return 0


def _steer_args(p: argparse.ArgumentParser, n_prompts: int) -> None:
    g = p.add_argument_group("steering")
    g.add_argument("--prompts", default="corpus", help="'corpus' (first sentences of bundled documents) or a .txt/.jsonl file")
    g.add_argument("--n-prompts", type=int, default=n_prompts)
    g.add_argument("--interventions", default="translate,scale,noise,attention")
    g.add_argument("--strengths", default=None, help="e.g. 'translate=1,2;scale=0.5,1.5' (translate/noise relative to |h|)")
    g.add_argument("--use-scales", default=None, help="comma-separated scale names to steer (default: all)")
    g.add_argument("--gen-seeds", default="0", help="sampling seeds (baseline and steered runs share them)")
    g.add_argument("--max-new-tokens", type=int, default=32)
    g.add_argument("--gen-batch-size", type=int, default=8)
    g.add_argument("--greedy", action="store_true", help="greedy decoding instead of top-p 0.9 sampling")


def _fit_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("alignment")
    g.add_argument("--pairs", default=None, help="source:target pairs, default 'global:intermediate,intermediate:local'")
    g.add_argument("--steps", type=int, default=300, help="training steps per map (default 300)")
    g.add_argument("--residual-hidden", type=int, default=64, help="width of the nonlinear residual g (0: affine map)")
    g.add_argument("--estimator", default="mine", choices=["mine", "infonce", "nwj", "smile"])
    g.add_argument("--lambda-geo", type=float, default=0.1)
    g.add_argument("--lambda-info", type=float, default=0.1)
    g.add_argument("--lambda-curv", type=float, default=0.01)
    g.add_argument("--max-train-rows", type=int, default=8192)
    g.add_argument("--seeds", default="0,1,2", help="seeds for the ablation table ('' to skip ablations)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="msma-lens", description="Multi-Scale Manifold Alignment for TransformerLens models")
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("models", help="list offline and cached models")
    m.add_argument("--json", action="store_true")
    m.set_defaults(fn=cmd_models)
    c = sub.add_parser("capture", help="capture per-scale activations into an artifact (safetensors + cfg.json)")
    _common(c)
    c.add_argument("--pooling", default="token", choices=["token", "mean", "last"])
    c.add_argument("--shard-dir", default=None, help="stream batches to this directory; an interrupted run resumes")
    c.add_argument("--out", required=True, help="artifact directory to write")
    c.set_defaults(fn=cmd_capture)
    f = sub.add_parser("fit", help="fit cross-scale maps (geoopt Stiefel + MINE + curvature), held-out metrics, ablations")
    _common(f)
    f.add_argument("--acts", default=None, help="a ScaleActivations artifact (else capture --texts on --model)")
    f.add_argument("--out", required=True)
    _fit_args(f)
    f.set_defaults(fn=cmd_fit)
    st = sub.add_parser("steer", help="steering experiment: interventions x scales x strengths, text-metric effects")
    _common(st)
    st.add_argument("--out", required=True)
    _steer_args(st, n_prompts=16)
    st.set_defaults(fn=cmd_steer)
    r = sub.add_parser("run", help="main job: capture the corpus, per-scale report, cross-scale maps, steering effects")
    _common(r)
    r.add_argument("--out", default="out", help="output directory (default: out)")
    r.add_argument("--skip-fit", action="store_true")
    r.add_argument("--skip-steer", action="store_true")
    _fit_args(r)
    _steer_args(r, n_prompts=8)
    r.set_defaults(seeds="")
    r.set_defaults(fn=cmd_run)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    model = getattr(args, "model", "")
    if not ("/" in model and not Path(model).exists()):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # offline names and local paths never need the hub
    try:
        return int(args.fn(args) or 0)
    except MSMAError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
