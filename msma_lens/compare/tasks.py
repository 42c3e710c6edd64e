"""What each work unit computes: scale discovery, cross-scale alignment, intervention effects, cross-model CKA.

Every task returns a JSON-able dict (the unit's ``result.json``) and may save artifacts into its unit
directory. Alignment and steering use the partition the model's discovery unit found (thirds of the depth when
discovery is not part of the run); the result records which.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import tl
from ..align.maps import fit_map
from ..align.procrustes import procrustes
from ..align.protocol import AlignConfig, default_train_config, pair_key, prepare_pairs
from ..analysis import metrics as M
from ..analysis.discovery import discover_scales
from ..capture.activations import ScaleActivations
from ..capture.collect import capture
from ..capture.scales import Scales
from ..errors import ArtifactError, ConfigError, DegenerateBaselineError
from ..io.artifacts import load_artifact, save_artifact, sha256_texts, write_json_atomic
from ..io.corpus import load_corpus
from ..io.models import load_model
from ..steer.experiment import run_experiment
from . import crossmodel, effects
from .config import CompareConfig
from .store import ResultStore
from .units import Unit

ALIGN_METHODS = ("baseline", "closed_form", "trained")
ALIGN_METRICS = ("kl_diag", "mi_gaussian", "dcor2_u", "cka_debiased")

_CACHE: dict[str, Any] = {}


def get_model(name: str, device: str | None = None) -> Any:
    """``load_model(name)``, keeping the last model loaded in this process (units are ordered by model)."""
    key = f"{name}@{device}"
    if key not in _CACHE:
        if _CACHE:
            _CACHE.clear()
            _release_memory()
        m = load_model(name, device=device or "cpu")
        m.eval()
        _CACHE[key] = m
    return _CACHE[key]


def _release_memory() -> None:
    """Free the previous model now and hand freed heap pages back to the OS (glibc ``malloc_trim``), so a suite's
    resident memory follows the current model rather than the sum of the models before it (measured on Gemma:
    after ``del`` + ``gc`` 789 MiB resident, after the trim 583 MiB)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        pass


def partition(store: ResultStore, model_name: str, n_layers: int) -> tuple[Scales, str]:
    """The partition of ``model_name`` found by its discovery unit in this store (the lowest seed, when several are),
    else thirds of the depth."""
    done = sorted(store.done_units("discovery", model_name), key=lambda u: u.seed)
    if done:
        return Scales.from_dict(store.load(done[0])["result"]["scales"]), f"discovered (seed {done[0].seed})"
    return Scales.default(n_layers), "thirds (no discovery unit in this run)"


def _docs(n: int, seed: int):
    """``n`` corpus documents spread over topics × registers (seeded)."""
    corpus = load_corpus()
    order = np.random.default_rng(seed).permutation(len(corpus))
    by_group: dict[tuple[str, str], list[int]] = {}
    for i in order:
        by_group.setdefault((corpus[int(i)].topic, corpus[int(i)].register), []).append(int(i))
    picked: list[int] = []
    while len(picked) < min(n, len(corpus)):
        for g in sorted(by_group):
            if by_group[g] and len(picked) < n:
                picked.append(by_group[g].pop())
    return [corpus[i] for i in sorted(picked)]


def run_task(unit: Unit, cfg: CompareConfig, store: ResultStore, work: Path) -> dict:
    fn = {"discovery": task_discovery, "alignment": task_alignment, "steering": task_steering,
          "crossmodel": task_crossmodel, "plugins": task_plugins}[unit.task]
    return fn(unit, cfg, store, work)


def _model_info(model: Any, name: str) -> dict:
    return {"model": name, "n_layers": tl.n_layers(model), "d_model": tl.d_model(model), "encoder": bool(tl.is_encoder(model))}


# ----- discovery -------------------------------------------------------------------------------------------
def task_discovery(unit: Unit, cfg: CompareConfig, store: ResultStore, work: Path) -> dict:
    name = unit.models[0]
    model = get_model(name, cfg.device)
    res = discover_scales(model, load_corpus(), max_docs=cfg.discovery_docs, n_boot=cfg.discovery_boot, seed=unit.seed,
                          max_tokens=cfg.discovery_tokens, probes=cfg.discovery_probes, batch_size=cfg.batch_size,
                          device=cfg.device, progress=cfg.progress,
                          n_folds=min(5, cfg.discovery_docs))
    res.save(work / "discovery")
    return {**_model_info(model, name), "scales": res.scales.to_dict(), "boundaries": list(res.boundaries),
            "boundary_ci": [list(x) for x in res.boundary_ci], "candidates": list(res.candidates), "stability": res.stability,
            "profiles": {k: np.asarray(v, dtype=float).tolist() for k, v in res.profiles.items()},
            "profile_ci": {k: np.asarray(v, dtype=float).tolist() for k, v in res.profile_ci.items()},
            "fused": np.asarray(res.fused, dtype=float).tolist(), "probe_info": res.probe_info,
            "config": res.config, "table": res.table()}


# ----- alignment -------------------------------------------------------------------------------------------
def task_alignment(unit: Unit, cfg: CompareConfig, store: ResultStore, work: Path) -> dict:
    """Per adjacent scale pair (top-down), on held-out documents: baseline (identity), closed-form Procrustes and the
    trained map (:func:`msma_lens.align.maps.fit_map` with ``lens.fit``'s default objective), each with diagonal KL,
    Gaussian MI, dCor² and debiased CKA against the target scale; the KL floor of the target at the same n and d."""
    name = unit.models[0]
    model = get_model(name, cfg.device)
    scales, source = partition(store, name, tl.n_layers(model))
    if len(scales) < 2:
        raise ConfigError(f"alignment needs >= 2 scales, the partition of {name} has {len(scales)}")
    texts = [d.text for d in _docs(cfg.align_docs, 0)]  # the same capture for every seed: seeds draw the splits
    shards = store.shard_dir(name, f"align-{scales.spec_hash()}-{len(texts)}")
    acts = capture(model, scales, texts, pooling="token", batch_size=cfg.batch_size, shard_dir=shards, progress=cfg.progress)
    names = list(scales.names)
    pairs = tuple((names[i + 1], names[i]) for i in range(len(names) - 1))[::-1]
    train = default_train_config(steps=cfg.align_steps, eval_every=max(1, cfg.align_steps // 5), seed=unit.seed,
                                 device=cfg.device)
    acfg = AlignConfig(pairs=pairs, seed=unit.seed, max_train_rows=cfg.align_rows, max_eval_rows=cfg.align_eval_rows,
                       train=train, mi_test_steps=0)
    data = prepare_pairs(acts, acfg)
    rows = []
    for a, b in pairs:
        k = pair_key(a, b)
        X, Y = data[k]["X"], data[k]["Y"]
        cf = procrustes(X["train"], Y["train"])
        out = fit_map(X["train"], Y["train"], X["val"], Y["val"], train, progress=cfg.progress, desc=k)
        f = out.map.cpu().eval()
        with torch.no_grad():
            preds = {"baseline": X["test"], "closed_form": cf.apply(X["test"]), "trained": f(X["test"])}
            val = {"closed_form": M.compute("residual", cf.apply(X["val"]), Y["val"]),
                   "trained": M.compute("residual", f(X["val"]), Y["val"])}
        floor = float(M.kl_floor(Y["test"], kind="diag"))
        for method, P in preds.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", M.SampleSizeWarning)
                vals = {m: float(M.compute(m, P, Y["test"])) for m in ALIGN_METRICS}
            rows.append({"pair": k, "method": method, **vals, "kl_floor": floor,
                         "residual": float(M.compute("residual", P, Y["test"])),
                         "n_test": int(Y["test"].shape[0]), "n_train": int(X["train"].shape[0]),
                         "best_step": int(out.best_step) if method == "trained" else None,
                         "val_residual": val.get(method)})
    return {**_model_info(model, name), "scales": scales.to_dict(), "partition": source, "seed": unit.seed,
            "n_docs": len(texts), "align_config": acfg.to_dict(), "rows": rows}


# ----- steering --------------------------------------------------------------------------------------------
def task_steering(unit: Unit, cfg: CompareConfig, store: ResultStore, work: Path) -> dict:
    """Decoders: :func:`msma_lens.steer.experiment.run_experiment` (text metrics, d_z with CIs, Holm); encoders:
    :func:`msma_lens.compare.effects.representation_effects` on the last-layer embedding."""
    name = unit.models[0]
    model = get_model(name, cfg.device)
    scales, source = partition(store, name, tl.n_layers(model))
    info = {**_model_info(model, name), "scales": scales.to_dict(), "partition": source, "seed": unit.seed}
    if tl.is_encoder(model):
        docs = _docs(cfg.encoder_docs, unit.seed)
        kinds = {k: v for k, v in cfg.strengths.items() if k != "attention"}
        out = effects.representation_effects(model, [d.text for d in docs], [d.topic for d in docs], scales, kinds,
                                             seed=unit.seed, batch_size=cfg.batch_size)
        return {**info, "level": "representation", **out}
    prompts = [d.sentences[0].text for d in _docs(cfg.steer_prompts, unit.seed)]
    kw = dict(scales=scales, strengths={k: (v,) for k, v in cfg.strengths.items()}, seeds=(unit.seed,),
              metrics=cfg.steer_metrics, max_new_tokens=cfg.max_new_tokens, baseline_check=cfg.baseline_check,
              progress=cfg.progress, batch_size=cfg.batch_size)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            res = run_experiment(model, prompts, interventions=tuple(cfg.strengths), **kw)
    except DegenerateBaselineError as e:  # a model whose unsteered samples are degenerate: recorded, not fatal
        return {**info, "level": "text", "table": [], "error": f"degenerate baseline: {e}"}
    res.save(work / "steering")
    return {**info, "level": "text", "table": res.table, "config": {k: res.config.get(k) for k in
            ("effect", "effect_label", "ci_method", "metrics", "strengths", "max_new_tokens", "baseline_check",
             "n_excluded_total")}, "n_prompts": len(prompts)}


# ----- cross-model CKA -------------------------------------------------------------------------------------
def task_crossmodel(unit: Unit, cfg: CompareConfig, store: ResultStore, work: Path) -> dict:
    na, nb = unit.models
    texts = [d.text for d in _docs(cfg.cka_docs, unit.seed)]
    # one model in memory at a time; each model's side is computed once and kept in the store's shards, so the
    # pairs of a 4-model suite run 4 forward passes, not 12
    sides, info = [], []
    for name in (na, nb):
        side, meta = _cka_side(name, texts, cfg, store, unit.seed)
        sides.append(side)
        info.append(meta)
    joined = crossmodel.join_sides(*sides, max_rows=cfg.cka_rows, seed=unit.seed)
    sa, sb = (Scales.from_dict(m["scales"]) for m in info)
    mat = crossmodel.cka_matrix(joined)
    return {"models": [na, nb], "encoders": [m["encoder"] for m in info], "align_on": cfg.align_on,
            "n_rows": len(joined), "n_docs": len(texts), "matrix": mat.tolist(), "best_match": crossmodel.best_match(mat),
            "scales": [sa.to_dict(), sb.to_dict()], "partitions": [m["partition"] for m in info],
            "scale_matrix": crossmodel.scale_matrix(mat, sa, sb)}


# ----- installed analysis plugins ---------------------------------------------------------------------------
def task_plugins(unit: Unit, cfg: CompareConfig, store: ResultStore, work: Path) -> dict:
    """Every installed plugin (:func:`msma_lens.plugins.available`) with its default options on the alignment task's
    token activations (same documents and partition; the capture shards are shared). A plugin that fails is
    recorded with its error; the others still run."""
    from .. import plugins

    name = unit.models[0]
    model = get_model(name, cfg.device)
    scales, source = partition(store, name, tl.n_layers(model))
    texts = [d.text for d in _docs(cfg.align_docs, 0)]
    acts = capture(model, scales, texts, pooling="token", batch_size=cfg.batch_size, progress=cfg.progress,
                   shard_dir=store.shard_dir(name, f"align-{scales.spec_hash()}-{len(texts)}"))
    out = {}
    for info in plugins.available():
        try:
            res = plugins.run(info.name, acts)
            res.save(work / info.name)
            out[info.name] = {"version": info.version, "summary": res.summary(), "error": None}
        except Exception as e:  # noqa: BLE001 - one broken plugin must not stop the suite; its error is reported
            out[info.name] = {"version": info.version, "summary": None, "error": f"{type(e).__name__}: {e}"}
    return {**_model_info(model, name), "scales": scales.to_dict(), "partition": source, "n_docs": len(texts), "plugins": out}


SIDE_KIND = "msma_lens.CompareCkaSide"


def _cka_side(name: str, texts: list[str], cfg: CompareConfig, store: ResultStore, seed: int) -> tuple[Any, dict]:
    """One model's per-layer rows for cross-model CKA, cached in ``<out>/shards/<model>/cka-...`` (an artifact)."""
    key = f"cka-{cfg.align_on}-{sha256_texts(texts)[:12]}-{cfg.cka_rows}-{seed}"
    path = store.shard_dir(name, key)
    if path.is_dir():
        try:
            if cfg.align_on == "documents":
                acts = ScaleActivations.load(path / "acts")
                return acts, json.loads((path / "meta.json").read_text(encoding="utf-8"))
            t, c = load_artifact(path / "words", SIDE_KIND)
            rows = {(int(d), int(w)): i for i, (d, w) in enumerate(t["keys"].tolist())}
            return (rows, t["acts"]), c["meta"]
        except (ArtifactError, OSError, KeyError, json.JSONDecodeError):
            shutil.rmtree(path, ignore_errors=True)  # damaged or partial: recompute
    model = get_model(name, cfg.device)
    sc, src = partition(store, name, tl.n_layers(model))
    meta = {"scales": sc.to_dict(), "partition": src, "encoder": bool(tl.is_encoder(model))}
    side = crossmodel.side_activations(model, texts, align_on=cfg.align_on, max_rows=cfg.cka_rows, seed=seed,
                                       batch_size=cfg.batch_size)
    path.mkdir(parents=True, exist_ok=True)
    if cfg.align_on == "documents":
        side.save(path / "acts")
        write_json_atomic(path / "meta.json", meta)
    else:
        rows, H = side
        keys = torch.tensor(sorted(rows, key=rows.get), dtype=torch.long).reshape(-1, 2)
        save_artifact(path / "words", SIDE_KIND, {"acts": H.contiguous(), "keys": keys}, {"meta": meta})
    return side, meta


__all__ = ["ALIGN_METHODS", "ALIGN_METRICS", "get_model", "partition", "run_task"]
