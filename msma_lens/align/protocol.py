"""Cross-scale alignment experiments on ScaleActivations: fit maps, evaluate on held-out documents, ablate.

Data flow: ScaleActivations → split by document (train / early-stopping validation / held-out test) → per-scale
centring and RMS normalisation (train statistics) → maps (closed form, then geoopt) → metrics on the held-out
test documents → :class:`AlignmentResult` / :class:`AblationResult`.

What changes with the map (Procrustes residual, Gaussian KL) is reported before/after; what a square orthogonal
map cannot change (CKA, dCor, CCA, mutual-kNN, MI) is a property of the layer pair (methods.md §0) and is
reported once, with the map's value beside it only as a check.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..align.maps import PUBLISHED_OBJECTIVE, CrossScaleMap, MapTrainConfig, fit_map, geo_loss
from ..align.procrustes import procrustes
from ..analysis import metrics as M
from ..analysis.mi import ESTIMATORS as MI_ESTIMATORS
from ..analysis.mi import MIN_MI_SAMPLES, estimate_mi
from ..analysis.stats import mean_ci, paired_t_test
from ..capture.activations import DEFAULT_OUTLIER_FACTOR, ScaleActivations, check_outlier_factor
from ..capture.scales import Scales
from ..errors import ArtifactError, ConfigError
from ..io.artifacts import load_artifact, restore_nan, save_artifact, write_csv_atomic, write_json_atomic, write_text_atomic

KIND = "msma_lens.AlignmentResult"
SELECTIONS: tuple[str, ...] = ("trained", "closed_form")
SELECTION_RTOL = 1e-6  # the trained map must beat the closed form's validation residual by more than this
SELECTION_KL: tuple[str, ...] = ("kl_diag", "kl_full")  # ... and be no worse on these validation KLs (select_map)
DEFAULT_PAIRS: tuple[tuple[str, str], ...] = (("global", "intermediate"), ("intermediate", "local"))
VARIANTS: tuple[str, ...] = ("baseline", "closed_form", "full", "published", "no_geometry", "no_information", "no_curvature")
ABLATION_SEEDS: tuple[int, ...] = (0, 1, 2, 3, 4)
MAP_METRICS: tuple[str, ...] = ("residual", "kl_diag", "kl_full")  # change with the map
PAIR_METRICS: tuple[str, ...] = ("cka_debiased", "dcor2_u", "svcca", "pwcca", "mutual_knn", "mi_gaussian")  # invariant
# the default objective of lens.fit, chosen on validation documents (README "Cross-scale alignment"): geometry with
# the curvature penalty in relative units and no MI term in the map's loss (the MI head is trained separately for
# the report). On SmolLM2 (seed 0, 300 steps) adding λ_info = 0.01 raised the held-out residual 0.452 → 0.514 (G→I)
# and 0.505 → 0.642 (I→L); the published objective never beats the closed form.
DEFAULT_OBJECTIVE: dict[str, float | str] = {"lambda_geo": 1.0, "lambda_info": 0.0, "lambda_curv": 0.01, "curv_scale": "relative"}
OBJECTIVES: tuple[str, ...] = ("default", "published")
DEFAULT_MANIFOLD = "euclidean"  # the Stiefel metric of the default objective (see default_train_config)
_ABLATE = {"no_geometry": "lambda_geo", "no_information": "lambda_info", "no_curvature": "lambda_curv"}


def pair_key(src: str, dst: str) -> str:
    return f"{src}->{dst}"


@dataclass
class AlignConfig:
    """Experiment settings around :class:`~msma_lens.align.maps.MapTrainConfig` (validated on construction)."""

    pairs: tuple[tuple[str, str], ...] = DEFAULT_PAIRS
    held_out: float = 0.2
    val_fraction: float = 0.1
    max_train_rows: int | None = 20000
    max_eval_rows: int = 2048
    normalise: bool = True
    outlier_factor: float | None = DEFAULT_OUTLIER_FACTOR  # massive-activation rows dropped: norm > factor × median
    map_metrics: tuple[str, ...] = MAP_METRICS
    pair_metrics: tuple[str, ...] = PAIR_METRICS
    seed: int = 0
    train: MapTrainConfig = field(default_factory=lambda: default_train_config())
    # per-pair overrides of `train`, keyed by pair_key(src, dst) (e.g. from msma_lens.align.tuning)
    pair_train: dict[str, MapTrainConfig] = field(default_factory=dict)
    # held-out MI: a fresh critic trained on the selected map's train predictions, early-stopped on validation,
    # read on test (metrics[pair]["mi_test"]); at most mi_test_steps steps, 0 switches it off; mi_test_critics
    # averaged critics (estimate_mi's calibrated default is 3, at 3x the time; 1 keeps the main job cheap)
    mi_test_steps: int = 2000
    mi_test_estimator: str = "infonce"
    mi_test_critics: int = 1

    @classmethod
    def published(cls, **kw) -> AlignConfig:
        """The paper's objective λ = (0.1, 0.1, 0.01) (absolute curvature penalty) with this protocol's other defaults."""
        return cls(**{"train": default_train_config("published"), **kw})

    def __post_init__(self) -> None:
        self.pairs = tuple((str(a), str(b)) for a, b in self.pairs)
        if not self.pairs:
            raise ConfigError("AlignConfig.pairs is empty: name at least one (source, target) pair")
        for a, b in self.pairs:
            if a == b:
                raise ConfigError(f"AlignConfig.pairs: a map from scale {a!r} to itself is meaningless")
        for name, v in (("held_out", self.held_out), ("val_fraction", self.val_fraction)):
            if not (isinstance(v, (int, float)) and 0 < v < 1):
                raise ConfigError(f"AlignConfig.{name} must be a fraction in (0, 1), got {v!r}")
        if self.held_out + self.val_fraction >= 0.9:
            raise ConfigError(f"held_out + val_fraction = {self.held_out + self.val_fraction} leaves too little training data")
        if self.max_train_rows is not None and self.max_train_rows < 16:
            raise ConfigError(f"AlignConfig.max_train_rows must be None or >= 16, got {self.max_train_rows}")
        check_outlier_factor(self.outlier_factor, "AlignConfig.outlier_factor")
        if self.max_eval_rows < 16:
            raise ConfigError(f"AlignConfig.max_eval_rows must be >= 16, got {self.max_eval_rows}")
        for m in (*self.map_metrics, *self.pair_metrics):
            M._lookup(m)  # ConfigError listing the valid names
        if not isinstance(self.train, MapTrainConfig):
            raise ConfigError(f"AlignConfig.train must be a MapTrainConfig, got {type(self.train).__name__}")
        if isinstance(self.mi_test_steps, bool) or not isinstance(self.mi_test_steps, int) or self.mi_test_steps < 0:
            raise ConfigError(f"AlignConfig.mi_test_steps must be an int >= 0 (0: no held-out MI), got {self.mi_test_steps!r}")
        if isinstance(self.mi_test_critics, bool) or not isinstance(self.mi_test_critics, int) or self.mi_test_critics < 1:
            raise ConfigError(f"AlignConfig.mi_test_critics must be an int >= 1, got {self.mi_test_critics!r}")
        if self.mi_test_estimator not in MI_ESTIMATORS:
            raise ConfigError(f"AlignConfig.mi_test_estimator must be one of {', '.join(MI_ESTIMATORS)}, got {self.mi_test_estimator!r}")
        if not isinstance(self.pair_train, dict):
            raise ConfigError(f"AlignConfig.pair_train must be a dict of pair key -> MapTrainConfig, got {type(self.pair_train).__name__}")
        keys = [pair_key(a, b) for a, b in self.pairs]
        for k, v in self.pair_train.items():
            if k not in keys:
                raise ConfigError(f"AlignConfig.pair_train: unknown pair {k!r}; the configured pairs are {keys}")
            if not isinstance(v, MapTrainConfig):
                raise ConfigError(f"AlignConfig.pair_train[{k!r}] must be a MapTrainConfig, got {type(v).__name__}")

    def train_for(self, key: str) -> MapTrainConfig:
        """The training config of pair ``key`` (``"src->dst"``): its ``pair_train`` entry, else ``train``."""
        return self.pair_train.get(key, self.train)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["train"] = dataclasses.asdict(self.train)
        d["pair_train"] = {k: dataclasses.asdict(v) for k, v in self.pair_train.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> AlignConfig:
        d = dict(d)
        train = MapTrainConfig(**d.pop("train", {}))
        d["pair_train"] = {k: MapTrainConfig(**v) for k, v in (d.get("pair_train") or {}).items()}
        d["pairs"] = tuple(tuple(p) for p in d.get("pairs", DEFAULT_PAIRS))
        for k in ("map_metrics", "pair_metrics"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d, train=train)


def default_train_config(objective: str = "default", **overrides) -> MapTrainConfig:
    """The training config of ``lens.fit``: ``"default"`` (:data:`DEFAULT_OBJECTIVE`, on the Euclidean-metric Stiefel
    manifold) or ``"published"`` (:data:`~msma_lens.align.maps.PUBLISHED_OBJECTIVE`, on geoopt's default canonical
    metric, as the authors ran it), with a residual g of width 64, 600 steps, evaluation every 50.

    The default's manifold: on SmolLM2 (global → intermediate, 300 steps, 3 seeds) a step takes 0.68× the canonical
    metric's time at an equal or lower held-out residual, with ‖WᵀW − I‖ < 1e-6 (``benchmarks/RESULTS.md``)."""
    if objective not in OBJECTIVES:
        raise ConfigError(f"unknown objective {objective!r}; valid: {list(OBJECTIVES)}")
    lam = DEFAULT_OBJECTIVE if objective == "default" else PUBLISHED_OBJECTIVE
    manifold = DEFAULT_MANIFOLD if objective == "default" else "canonical"
    return MapTrainConfig(**{"residual_hidden": 64, "steps": 600, "eval_every": 50, "manifold": manifold, **lam, **overrides})


# ----- data preparation ----------------------------------------------------------------------------------
@dataclass
class _Split:
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor


def split_documents(acts: ScaleActivations, held_out: float, val_fraction: float, seed: int) -> _Split:
    """Row indices with whole documents in exactly one of train / validation / test
    (:meth:`ScaleActivations.document_split`: test documents first, then validation, from one seeded permutation)."""
    parts = acts.document_split({"held_out": held_out, "val_fraction": val_fraction}, seed, what="alignment")
    return _Split(parts["train"], parts["val_fraction"], parts["held_out"])


def massive_rows(acts: ScaleActivations, scales, factor: float | None) -> torch.Tensor:
    """Deprecated: use ``acts.massive_rows(scales, factor)`` (:func:`msma_lens.capture.activations.massive_rows`)."""
    warnings.warn("msma_lens.align.protocol.massive_rows is deprecated and goes in the next release; use "
                  "ScaleActivations.massive_rows(scales, factor)", DeprecationWarning, stacklevel=2)
    return acts.massive_rows(scales, factor)


def _cap(idx: torch.Tensor, n: int | None, seed: int) -> torch.Tensor:
    if n is None or idx.numel() <= n:
        return idx
    return idx[torch.randperm(idx.numel(), generator=torch.Generator().manual_seed(seed))[:n]].sort().values


def _norm_stats(x: torch.Tensor) -> tuple[torch.Tensor, float]:
    mu = x.double().mean(0)
    s = float((x.double() - mu).square().sum(1).mean().div(x.shape[1]).sqrt())
    return mu.float(), (s if s > 0 else 1.0)


# ----- the result ----------------------------------------------------------------------------------------
@dataclass
class AlignmentResult:
    """Fitted cross-scale maps with held-out metrics, training curves, config and provenance.

    ``maps[pair_key(src, dst)]`` is the selected map (see :attr:`selected`) and acts on normalised activations;
    :meth:`predict` and :meth:`linear_map` work in raw residual units. ``metrics[pair]`` has ``before`` (identity:
    source vs target), ``closed_form``, ``trained`` and ``after`` (the selected map) values of the map-dependent
    metrics on held-out documents, ``selected`` with ``val_residual`` (the validation residuals it was chosen
    on), ``pair`` (invariant dependence metrics of the layer pair), ``floor`` (split-half KL floors of the
    target at the same n and d), ``n_test``, ``mi_test`` (held-out MI in nats: a fresh critic trained on
    the selected map's train predictions only, early-stopped on validation, read on the test documents; with
    ``mi_test_estimator``, ``mi_test_steps``, ``mi_test_best_step``, ``mi_test_cap`` = log B for InfoNCE; NaN when
    ``AlignConfig.mi_test_steps`` is 0) and ``mi_val_joint`` (the jointly trained critic's bound on the validation
    split that chose its step: not held out; older artifacts call it ``mi_heldout``).
    """

    maps: dict[str, CrossScaleMap]
    norms: dict[str, tuple[torch.Tensor, float]]
    metrics: dict[str, dict]
    history: dict[str, list[dict]]
    config: dict
    provenance: dict

    @property
    def selected(self) -> dict[str, str]:
        """Per pair, which map won on the validation split: ``"trained"`` or ``"closed_form"`` (results saved
        before the selection existed hold trained maps)."""
        return {k: m.get("selected", "trained") for k, m in self.metrics.items()}

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return [tuple(k.split("->")) for k in self.maps]

    def map(self, src: str, dst: str) -> CrossScaleMap:
        k = pair_key(src, dst)
        if k not in self.maps:
            raise ConfigError(f"no map {k!r} was fitted; fitted maps: {list(self.maps)}")
        return self.maps[k]

    def _norm(self, scale: str) -> tuple[torch.Tensor, float]:
        if scale not in self.norms:
            raise ConfigError(f"unknown scale {scale!r}; this result has {list(self.norms)}")
        return self.norms[scale]

    @torch.no_grad()
    def predict(self, x: torch.Tensor, src: str, dst: str) -> torch.Tensor:
        """Map raw source-scale activations ``[n, d_src]`` to raw target-scale predictions."""
        f = self.map(src, dst)
        (mu_s, s_s), (mu_t, s_t) = self._norm(src), self._norm(dst)
        z = (x.float() - mu_s.to(x.device)) / s_s
        return f.to(x.device)(z) * s_t + mu_t.to(x.device)

    @torch.no_grad()
    def linear_map(self, src: str, dst: str) -> torch.Tensor:
        """The raw-unit linear part ``[d_src, d_dst]`` of the map (or chain of fitted maps) from src to dst.

        A direction v at ``src`` is carried to ``v @ linear_map(src, dst)`` at ``dst``; the nonlinear residual
        g is ignored (it has no single direction image).
        """
        path = self._path(src, dst)
        out = None
        for a, b in path:
            f = self.map(a, b)
            lin = (self._norm(b)[1] / self._norm(a)[1]) * f.gain.detach() * f.weight.detach()
            out = lin if out is None else out @ lin
        return out

    def transfer_direction(self, v: torch.Tensor, src: str, dst: str) -> torch.Tensor:
        """Carry a direction defined at ``src`` into ``dst`` through the fitted maps (linear part)."""
        M_ = self.linear_map(src, dst)
        if v.shape[-1] != M_.shape[0]:
            raise ConfigError(f"direction has width {v.shape[-1]}, scale {src!r} has width {M_.shape[0]}")
        return v.to(M_) @ M_

    def _path(self, src: str, dst: str) -> list[tuple[str, str]]:
        """Chain of fitted maps from src to dst (breadth-first search)."""
        edges = self.pairs
        frontier, seen = [[src]], {src}
        while frontier:
            nxt = []
            for p in frontier:
                if p[-1] == dst:
                    return list(zip(p[:-1], p[1:]))
                for a, b in edges:
                    if a == p[-1] and b not in seen:
                        seen.add(b)
                        nxt.append([*p, b])
            frontier = nxt
        raise ConfigError(f"no chain of fitted maps leads from {src!r} to {dst!r}; fitted: {[pair_key(*e) for e in edges]}")

    def check_matches(self, model_id: str | None = None, scales: Scales | None = None, what: str = "this use") -> None:
        mine = self.provenance.get("model_id")
        if model_id is not None and mine is not None and model_id != mine:
            raise ArtifactError(f"maps were fitted on model {mine!r}, but {what} uses {model_id!r}")
        spec = self.provenance.get("scales")
        if scales is not None and spec and not Scales.from_dict(spec).same_partition(scales):
            raise ArtifactError(f"maps were fitted with scales {Scales.from_dict(spec)!r}, but {what} uses {scales!r}")

    def table(self) -> str:
        """Held-out metrics per pair as a fixed-width text table."""
        lines = []
        for k, m in self.metrics.items():
            lines.append(f"{k}  (held-out rows: {m['n_test']}, training rows: {m['n_train']}, best step: {m['best_step']}, "
                         f"massive-activation rows excluded: {m.get('n_massive_excluded', 0)})")
            if "selected" in m:
                vr = m["val_residual"]
                kl = "".join(f"; {n} {v['trained']:.4g} vs {v['closed_form']:.4g}" for n, v in m.get("val_kl", {}).items())
                lines.append(f"  selected map: {m['selected']} (validation, trained vs closed form: residual {vr['trained']:.4g} "
                             f"vs {vr['closed_form']:.4g}{kl}; 'after' is the selected map)")
            trained = m.get("trained", m["after"])
            lines.append(f"  {'metric':<14}{'before':>12}{'closed form':>13}{'trained':>12}{'after':>12}{'floor':>10}")
            for name in m["after"]:
                fl = m["floor"].get(name)
                lines.append(f"  {name:<14}{m['before'][name]:>12.4g}{m['closed_form'][name]:>13.4g}{trained[name]:>12.4g}"
                             f"{m['after'][name]:>12.4g}{'' if fl is None else f'{fl:.4g}':>10}")
            lines.append(_mi_line(m))
            lines.append("  layer-pair dependence (invariant under orthogonal maps): "
                         + ", ".join(f"{n}={v:.3f}" for n, v in m["pair"].items()))
        return "\n".join(lines)

    # ----- persistence -------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        tensors = {}
        specs = {}
        for k, f in self.maps.items():
            specs[k] = {"d_in": f.d_in, "d_out": f.d_out, "residual_hidden": f.residual_hidden, "manifold": f.manifold_name}
            for n, t in f.state_dict().items():
                tensors[f"maps.{k}.{n}"] = t.detach().as_subclass(torch.Tensor)
        scales_s = {}
        for s, (mu, sd) in self.norms.items():
            tensors[f"norms.{s}.mu"] = mu
            scales_s[s] = sd
        cfg = {"map_specs": specs, "norm_scales": scales_s, "metrics": self.metrics, "history": self.history,
               "config": self.config, "provenance": self.provenance}
        return save_artifact(path, KIND, tensors, cfg)

    @classmethod
    def load(cls, path: str | os.PathLike, *, model_id: str | None = None, scales: Scales | None = None,
             device: str = "cpu") -> AlignmentResult:
        """Load a saved result; with ``model_id``/``scales`` it must have been fitted on them (ArtifactError)."""
        tensors, cfg = load_artifact(path, KIND, device=device)
        try:
            maps = {}
            for k, spec in cfg["map_specs"].items():
                f = CrossScaleMap(**spec)
                sd = {n[len(f"maps.{k}."):]: t for n, t in tensors.items() if n.startswith(f"maps.{k}.")}
                f.load_state_dict(sd)
                maps[k] = f.eval()
            norms = {s: (tensors[f"norms.{s}.mu"], float(sd)) for s, sd in cfg["norm_scales"].items()}
        except (KeyError, RuntimeError, TypeError, ConfigError) as e:
            raise ArtifactError(f"{path}: inconsistent AlignmentResult artifact ({e})") from e
        # cfg.json stores NaN (e.g. "before" between different widths, mi_val_joint with lambda_info = 0) as null
        out = cls(maps, norms, restore_nan(cfg["metrics"]), restore_nan(cfg["history"]), cfg["config"], cfg["provenance"])
        out.check_matches(model_id, scales, what="loading")
        return out


# ----- fitting -------------------------------------------------------------------------------------------
def _check_pairs(acts: ScaleActivations, pairs) -> None:
    for a, b in pairs:
        for s in (a, b):
            if s not in acts.acts:
                raise ConfigError(f"pair {pair_key(a, b)!r}: unknown scale {s!r}; the activations have {acts.scale_names}")
    if acts.meta.get("pooling") not in (None, "token"):
        warnings.warn(f"activations use pooling={acts.meta['pooling']!r}: one row per document gives few samples for "
                      "alignment; capture with pooling='token' for paired token samples", stacklevel=3)


def _metric_values(names, X, Y) -> dict[str, float]:
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", M.SampleSizeWarning)
        for n in names:
            out[n] = float(M.compute(n, X, Y))
    return out


@dataclass
class _Prepared:
    X: dict[str, torch.Tensor]  # split -> normalised source rows
    Y: dict[str, torch.Tensor]


def _pair_scales(cfg: AlignConfig) -> set[str]:
    return {x for p in cfg.pairs for x in p}


def _prepare(acts: ScaleActivations, cfg: AlignConfig, seed: int):
    split = split_documents(acts, cfg.held_out, cfg.val_fraction, seed)
    bad = acts.massive_rows(_pair_scales(cfg), cfg.outlier_factor)
    split = _Split(*(i[~bad[i]] for i in (split.train, split.val, split.test)))
    idx = {"train": _cap(split.train, cfg.max_train_rows, seed), "val": _cap(split.val, cfg.max_eval_rows, seed + 1),
           "test": _cap(split.test, cfg.max_eval_rows, seed + 2)}
    norms = {}
    for s in _pair_scales(cfg):
        norms[s] = _norm_stats(acts[s][split.train]) if cfg.normalise else (torch.zeros(acts.width(s)), 1.0)
    data = {}
    for a, b in cfg.pairs:
        (mu_a, s_a), (mu_b, s_b) = norms[a], norms[b]
        data[(a, b)] = _Prepared({k: (acts[a][i] - mu_a) / s_a for k, i in idx.items()},
                                 {k: (acts[b][i] - mu_b) / s_b for k, i in idx.items()})
    return norms, data


def prepare_pairs(acts: ScaleActivations, cfg: AlignConfig | None = None) -> dict[str, dict[str, dict[str, torch.Tensor]]]:
    """Per pair key, ``{"X": {split: rows}, "Y": {split: rows}}`` for splits ``train`` / ``val`` / ``test``: the
    document split, outlier filter, row caps and normalisation :func:`fit_alignment` uses (same ``cfg.seed``)."""
    cfg = cfg or AlignConfig()
    _check_pairs(acts, cfg.pairs)
    acts.check_finite()
    _, data = _prepare(acts, cfg, cfg.seed)
    return {pair_key(a, b): {"X": d.X, "Y": d.Y} for (a, b), d in data.items()}


def _variant_cfg(train: MapTrainConfig, variant: str, seed: int) -> MapTrainConfig:
    changes: dict = {"seed": seed}
    if variant == "published":
        changes.update(PUBLISHED_OBJECTIVE)
    if variant in _ABLATE:
        changes[_ABLATE[variant]] = 0.0
    return dataclasses.replace(train, **changes)


def fit_alignment(acts: ScaleActivations, cfg: AlignConfig | None = None, *, checkpoint_dir: str | os.PathLike | None = None,
                  progress: bool = True) -> AlignmentResult:
    """Fit the configured cross-scale maps (default f_GI and f_IL) and evaluate them on held-out documents.

    Per pair, the trained map (its best step chosen by validation residual) and the closed-form map are compared
    on the validation split, never the held-out test split (:func:`select_map`: the trained map must have a lower
    residual, by more than a relative 1e-6, and no higher diagonal or full KL); the winner is kept and recorded in
    ``metrics[pair]["selected"]`` / :attr:`AlignmentResult.selected`, with the validation values it was chosen on.
    ``progress``: tqdm bars on stderr over the maps and each map's training steps.
    """
    from tqdm.auto import tqdm

    cfg = cfg or AlignConfig()
    _check_pairs(acts, cfg.pairs)
    acts.check_finite()
    norms, data = _prepare(acts, cfg, cfg.seed)
    maps, mets, hist = {}, {}, {}
    for (a, b), d in tqdm(data.items(), desc="fit", unit="map", leave=False, disable=not progress):
        k = pair_key(a, b)
        train_cfg = _variant_cfg(cfg.train_for(k), "full", cfg.seed)
        if checkpoint_dir is not None:
            train_cfg = dataclasses.replace(train_cfg, checkpoint_dir=str(Path(checkpoint_dir) / k.replace("->", "_to_")))
        out = fit_map(d.X["train"], d.Y["train"], d.X["val"], d.Y["val"], train_cfg, progress=progress, desc=k)
        trained = out.map.cpu().eval()
        cf = out.closed_form or procrustes(d.X["train"], d.Y["train"])
        Xv, Yv, Xt, Yt = d.X["val"], d.Y["val"], d.X["test"], d.Y["test"]
        selected, val = select_map(trained, cf, Xv, Yv)
        val_res = val["residual"]
        with torch.no_grad():
            pred_trained, pred_cf = trained(Xt), cf.apply(Xt)
        f = trained if selected == "trained" else _closed_form_map(d.X["train"], d.Y["train"], train_cfg.manifold)
        with torch.no_grad():
            pred = f(Xt)
        mets[k] = {
            # no identity map between different widths: "before" is undefined there
            "before": _metric_values(cfg.map_metrics, Xt, Yt) if Xt.shape[1] == Yt.shape[1]
            else {n: float("nan") for n in cfg.map_metrics},
            "closed_form": _metric_values(cfg.map_metrics, pred_cf, Yt),
            "trained": _metric_values(cfg.map_metrics, pred_trained, Yt),
            "after": _metric_values(cfg.map_metrics, pred, Yt),
            "selected": selected,
            "val_residual": val_res,
            "val_kl": {n: val[n] for n in SELECTION_KL},
            "pair": _metric_values(cfg.pair_metrics, Xt, Yt),
            "pair_after_map": _metric_values(cfg.pair_metrics, pred, Yt),
            "floor": {n: float(M.kl_floor(Yt, kind="diag" if n == "kl_diag" else "full")) for n in cfg.map_metrics
                      if n in ("kl_diag", "kl_full")},
            "n_test": int(Xt.shape[0]),
            "n_train": int(d.X["train"].shape[0]),
            # the rows _prepare dropped: flagged in any scale of any configured pair (all splits)
            "n_massive_excluded": int(acts.massive_rows(_pair_scales(cfg), cfg.outlier_factor).sum()),
            "best_step": out.best_step,
            # the jointly trained critic's bound on the *validation* split at the step that split chose (nats; NaN
            # if λ_info = 0): not a held-out value (artifacts before 0.x called it "mi_heldout")
            "mi_val_joint": next((float(h["val_info"]) for h in out.history if h["step"] == out.best_step), float("nan")),
            "mi_estimator": train_cfg.estimator,
            **_test_mi(f, d, cfg),
            "orthogonality_error": f.orthogonality_error(),
        }
        maps[k], hist[k] = f, out.history
    return AlignmentResult(maps, norms, mets, hist, cfg.to_dict(), dict(acts.meta))


def _test_mi(f: CrossScaleMap, d: _Prepared, cfg: AlignConfig) -> dict:
    """Held-out MI of the selected map: ``cfg.mi_test_critics`` fresh critics (:func:`msma_lens.analysis.mi.estimate_mi`)
    trained on (f(X_train), Y_train), early-stopped on the validation documents, read once on the test documents in
    batches of up to ``max_eval_rows`` (InfoNCE cap log B). Independent of λ_info. NaN when ``cfg.mi_test_steps`` is 0."""
    off = {"mi_test": float("nan"), "mi_test_estimator": None, "mi_test_steps": 0, "mi_test_best_step": 0}
    if cfg.mi_test_steps == 0:
        return {**off, "mi_test_note": "AlignConfig.mi_test_steps = 0"}
    small = {k: int(d.X[k].shape[0]) for k in ("train", "val", "test") if d.X[k].shape[0] < MIN_MI_SAMPLES}
    if small:
        note = ", ".join(f"{k} split has {n} rows" for k, n in small.items()) + f" (< {MIN_MI_SAMPLES})"
        warnings.warn(f"held-out MI not computed: {note}", UserWarning, stacklevel=3)
        return {**off, "mi_test_note": note}
    with torch.no_grad():
        P = {k: f(d.X[k]) for k in ("train", "val", "test")}
    r = estimate_mi(P["train"], d.Y["train"], P["test"], d.Y["test"], cfg.mi_test_estimator, x_val=P["val"], y_val=d.Y["val"],
                    steps=cfg.mi_test_steps, seed=cfg.seed, n_critics=cfg.mi_test_critics, eval_batch_size=cfg.max_eval_rows)
    return {"mi_test": float(r.estimate), "mi_test_estimator": r.estimator, "mi_test_steps": r.steps_run,
            "mi_test_best_step": r.best_step, "mi_test_val": float(r.heldout_curve[r.eval_steps.index(r.best_step)])
            if r.best_step in r.eval_steps else float("nan"),
            # InfoNCE never exceeds log B (B = the test batch): a value near it means "at least this much"
            "mi_test_cap": float(r.log_batch_cap) if math.isfinite(r.log_batch_cap) else float("nan")}


def _mi_line(m: dict) -> str:
    """The MI line(s) of :meth:`AlignmentResult.table`: the held-out value, and the joint critic's validation value."""
    joint = m.get("mi_val_joint", m.get("mi_heldout", float("nan")))  # "mi_heldout": artifacts before the rename
    out = []
    if "mi_test" in m:
        if m.get("mi_test_estimator"):
            out.append(f"  held-out MI (critic trained on train only): {m['mi_test']:.3f} nats ({m['mi_test_estimator']} "
                       f"bound of a fresh critic on the selected map's predictions, early-stopped on validation at step "
                       f"{m['mi_test_best_step']} of {m['mi_test_steps']}, read on the test documents; a lower bound on "
                       "I(f(X); Y) <= I(X; Y): no map creates information"
                       + (f"; InfoNCE cannot exceed log B = {m['mi_test_cap']:.2f}" if math.isfinite(m.get("mi_test_cap", math.nan))
                          else "") + ")")
        else:
            out.append(f"  held-out MI: not computed ({m.get('mi_test_note', 'AlignConfig.mi_test_steps = 0')})")
    out.append(f"  {m.get('mi_estimator', 'MI')} bound of the jointly trained critic on the validation split at the step it "
               f"chose: {joint:.3f} nats (not held out; its rise during training is the critic learning, not alignment)")
    return "\n".join(out)


@torch.no_grad()
def select_map(trained: CrossScaleMap, cf, X_val: torch.Tensor, Y_val: torch.Tensor) -> tuple[str, dict]:
    """``("trained" | "closed_form", validation values)``: the trained map is kept only if its validation residual
    is lower than the closed form's by more than :data:`SELECTION_RTOL` (a tie, such as a map that never left its
    closed-form initialisation, goes to the closed form) *and* neither validation KL (:data:`SELECTION_KL`) is
    higher. A map can lower the residual by shrinking its predictions towards the mean, which raises the KL
    between predicted and target distributions; the selection refuses that trade."""
    pt, pc = trained(X_val).double(), cf.apply(X_val).double()
    Y = Y_val.double()
    val = {"residual": {"trained": float(geo_loss(pt, Y)), "closed_form": float(geo_loss(pc, Y))}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", M.SampleSizeWarning)
        for n in SELECTION_KL:
            val[n] = {"trained": float(M.compute(n, pt, Y)), "closed_form": float(M.compute(n, pc, Y))}
    better = val["residual"]["trained"] < val["residual"]["closed_form"] * (1 - SELECTION_RTOL)
    no_worse = all(val[n]["trained"] <= val[n]["closed_form"] * (1 + SELECTION_RTOL) for n in SELECTION_KL)
    return ("trained" if better and no_worse else "closed_form"), val


def _closed_form_map(X: torch.Tensor, Y: torch.Tensor, manifold: str) -> CrossScaleMap:
    """An affine :class:`CrossScaleMap` equal to the closed-form Procrustes fit of Y on X."""
    m = CrossScaleMap(X.shape[1], Y.shape[1], manifold=manifold)
    m.init_from_procrustes(X, Y)
    return m.eval()


# ----- ablations -----------------------------------------------------------------------------------------
def _inert_note(variant: str, train: MapTrainConfig, d_in: int, d_out: int) -> str:
    if variant == "selected":
        return "the kept map: full where it beat the closed form on validation, else the closed form"
    if variant in _ABLATE and getattr(train, _ABLATE[variant]) == 0:
        return f"identical to full: the configured {_ABLATE[variant]} is already 0"
    affine_square = d_in == d_out and train.residual_hidden == 0
    if variant == "no_information" and affine_square:
        return "inert by theory: a square orthogonal affine map is invertible, so MI cannot change (methods.md §0)"
    if variant == "no_curvature" and train.residual_hidden == 0:
        return "inert by theory: the curvature penalty of an affine map is identically 0"
    if variant == "no_geometry" and affine_square:
        return "without L_geo only the (inert) MI term drives the map: expect drift from the closed form, no gain"
    return ""


@dataclass
class AblationResult:
    """Per-seed held-out metrics for each variant and pair (``rows``) and their summary (``summary``)."""

    rows: list[dict]
    summary: list[dict]
    config: dict
    provenance: dict
    curves: dict[str, list[dict]] = field(default_factory=dict)

    def table(self) -> str:
        def fp(v):
            return "" if v is None or math.isnan(v) else f"{v:.3g}"

        lines = [f"{'pair':<22}{'variant':<16}{'metric':<10}{'mean':>11}{'95% CI':>28}{'p vs base':>11}{'p vs CF':>9}"
                 f"{'p vs full':>11}{'won':>6}  note"]
        for r in self.summary:
            ci = f"[{r['ci_low']:.4g}, {r['ci_high']:.4g}]"
            won = "" if r.get("n_trained_selected") is None else f"{r['n_trained_selected']}/{r['n_seeds']}"
            lines.append(f"{r['pair']:<22}{r['variant']:<16}{r['metric']:<10}{r['mean']:>11.4g}{ci:>28}"
                         f"{fp(r['p_vs_baseline']):>11}{fp(r.get('p_vs_closed_form')):>9}{fp(r.get('p_vs_full')):>11}{won:>6}"
                         f"  {r['note']}")
        lines.append("won: seeds on which the trained map beat the closed form on the validation split (what fit keeps); "
                     "p: paired t-tests over seeds")
        return "\n".join(lines)

    def save(self, path: str | os.PathLike) -> Path:
        """``path/ablation.json`` (everything) and ``path/ablation.csv`` (the summary), written atomically."""
        path = Path(path)
        write_json_atomic(path / "ablation.json", dataclasses.asdict(self))
        write_csv_atomic(path / "ablation.csv", self.summary)
        return path

    def figures(self) -> dict:
        """Plotly figures: metric bars with CIs per variant (one per pair × metric) and training curves."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        figs = {}
        pairs = sorted({r["pair"] for r in self.summary})
        mets = sorted({r["metric"] for r in self.summary})
        fig = make_subplots(rows=len(pairs), cols=len(mets), subplot_titles=[f"{p}: {m}" for p in pairs for m in mets])
        for i, p in enumerate(pairs, 1):
            for j, m in enumerate(mets, 1):
                rs = [r for r in self.summary if r["pair"] == p and r["metric"] == m]
                fig.add_trace(go.Bar(x=[r["variant"] for r in rs], y=[r["mean"] for r in rs], showlegend=False,
                                     error_y={"type": "data", "symmetric": False,
                                              "array": [_clamped_bar_length(r["ci_high"] - r["mean"]) for r in rs],
                                              "arrayminus": [_clamped_bar_length(r["mean"] - r["ci_low"]) for r in rs]}), i, j)
        fig.update_layout(title="held-out metrics per ablation (mean and 95% CI over seeds)", height=350 * len(pairs))
        figs["ablation_bars"] = fig
        curve = go.Figure()
        for key, hist in self.curves.items():
            curve.add_trace(go.Scatter(x=[h["step"] for h in hist], y=[h["val_objective"] for h in hist], mode="lines", name=key))
        curve.update_layout(title="held-out objective during training", xaxis_title="step", yaxis_title="objective")
        figs["training_curves"] = curve
        return figs

    def write_html(self, path: str | os.PathLike) -> Path:
        parts = [f.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, f in enumerate(self.figures().values())]
        return write_text_atomic(path, "<html><head><meta charset='utf-8'><title>msma-lens ablations</title></head><body>"
                                 + "".join(parts) + "</body></html>")


def _paired_p(a: list[float], b: list[float]) -> float:
    """Paired t-test p-value; 1.0 when every pair is identical (an inert ablation) instead of NaN."""
    if all(x == y for x, y in zip(a, b)):
        return 1.0
    return paired_t_test(a, b)


def _clamped_bar_length(v: float) -> float:
    """An error-bar half-length that plotly can draw: ``v`` clamped to ``[0, ∞)``, NaN/±inf → 0.

    (Unlike ``steer.experiment._finite_or_zero``, which keeps the sign: a bootstrap CI may exclude its estimate.)"""
    return 0.0 if not math.isfinite(v) else max(v, 0.0)


def run_ablations(acts: ScaleActivations, cfg: AlignConfig | None = None, *, variants: tuple[str, ...] = VARIANTS,
                  seeds: tuple[int, ...] = ABLATION_SEEDS, level: float = 0.95, progress: bool = True) -> AblationResult:
    """Baseline / closed form / full / published / no-geometry / no-information / no-curvature over seeds, held out.

    ``full`` is ``cfg``'s objective (per pair: ``cfg.train_for(pair)``), ``published`` the paper's λ = (0.1, 0.1,
    0.01) with the absolute curvature penalty, ``no_*`` the full objective with one λ set to 0. Each trained
    variant reports its trained map (best step by validation residual), whether it beat the closed form on the
    validation split (``selected`` in the rows, ``n_trained_selected`` in the summary: what ``fit_alignment`` would
    keep), and paired t-tests against the baseline, the closed form and ``full``. Each seed draws its own document
    split and training seed; variants share the split and the batch / curvature random streams of their seed, so
    an ablation differs from ``full`` only by its term. With ``full``, a ``selected`` row reports the map
    ``fit_alignment`` keeps (full's trained map where it won on validation, else the closed form). Rows whose term is inert by theory (or already 0) carry a
    note; equal numbers there are the expected null result, not a bug. ``progress``: tqdm bars on stderr.
    """
    from tqdm.auto import tqdm

    cfg = cfg or AlignConfig()
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise ConfigError(f"unknown ablation variant(s) {bad}; valid: {list(VARIANTS)}")
    if len(seeds) < 1 or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds must be distinct integers, got {seeds}")
    _check_pairs(acts, cfg.pairs)
    acts.check_finite()
    rows, curves = [], {}
    bar = tqdm(total=len(seeds) * len(cfg.pairs) * len(variants), desc="ablate", unit="fit", leave=False, disable=not progress)
    for seed in seeds:
        _, data = _prepare(acts, cfg, seed)
        for (a, b), d in data.items():
            k = pair_key(a, b)
            Xt, Yt = d.X["test"], d.Y["test"]
            cf = None
            fitted: dict = {}  # variant config -> fit output: a variant whose config equals another's is not refitted
            for v in variants:
                bar.set_postfix_str(f"seed {seed} {k} {v}", refresh=False)
                if v == "baseline":
                    pred = Xt
                elif v == "closed_form":
                    cf = cf or procrustes(d.X["train"], d.Y["train"])
                    pred = cf.apply(Xt)
                else:
                    vcfg = _variant_cfg(cfg.train_for(k), v, seed)
                    key = repr(vcfg)
                    if key not in fitted:  # training is deterministic under its seed: equal configs, equal maps
                        fitted[key] = fit_map(d.X["train"], d.Y["train"], d.X["val"], d.Y["val"], vcfg, progress=progress,
                                              desc=f"{k} {v}")
                    out = fitted[key]
                    cf = cf or procrustes(d.X["train"], d.Y["train"])
                    trained = out.map.eval()
                    with torch.no_grad():
                        pred = trained(Xt)
                    sel = select_map(trained, cf, d.X["val"], d.Y["val"])[0] == "trained"
                    curves[f"{k} {v} seed{seed}"] = [{"step": h["step"], "val_objective": h["val_objective"],
                                                      "val_geo": h.get("val_geo")} for h in out.history]
                bar.update()
                if pred.shape[1] != Yt.shape[1]:
                    continue  # baseline between different widths: no identity map
                for name, val in _metric_values(cfg.map_metrics, pred, Yt).items():
                    row = {"seed": seed, "pair": k, "variant": v, "metric": name, "value": val}
                    if v not in ("baseline", "closed_form"):
                        row.update(selected=bool(sel), best_step=int(out.best_step))
                    rows.append(row)
                if v == "full":  # what fit_alignment returns: the full objective's map or, if it lost, the closed form
                    kept = pred if sel else cf.apply(Xt)
                    rows += [{"seed": seed, "pair": k, "variant": "selected", "metric": name, "value": val, "selected": bool(sel)}
                             for name, val in _metric_values(cfg.map_metrics, kept, Yt).items()]
    bar.close()
    widths = {pair_key(a, b): (acts.width(a), acts.width(b)) for a, b in cfg.pairs}
    return AblationResult(rows, summarise_ablation(rows, cfg, variants, widths, level), cfg.to_dict(), dict(acts.meta), curves)


def summarise_ablation(rows: list[dict], cfg: AlignConfig, variants: tuple[str, ...], widths: dict[str, tuple[int, int]],
                       level: float = 0.95) -> list[dict]:
    """The summary of per-seed ablation ``rows`` (mean, CI, paired p-values, wins): :func:`run_ablations`'s, and the
    way to merge runs over disjoint seeds (``summarise_ablation(a.rows + b.rows, ...)``)."""
    summary = []
    reported = [*variants, *(["selected"] if "full" in variants else [])]
    for k in [pair_key(a, b) for a, b in cfg.pairs]:
        for v in reported:
            for name in cfg.map_metrics:
                vals = [r["value"] for r in rows if r["pair"] == k and r["variant"] == v and r["metric"] == name]
                if not vals:
                    continue
                mean, lo, hi = mean_ci(vals, level)
                p = {}
                for ref in ("baseline", "closed_form", "full"):
                    other = [r["value"] for r in rows if r["pair"] == k and r["variant"] == ref and r["metric"] == name]
                    p[ref] = None if v in ("baseline", ref) or len(other) != len(vals) else _paired_p(vals, other)
                sel = [r["selected"] for r in rows if r["pair"] == k and r["variant"] == v and r["metric"] == name and "selected" in r]
                summary.append({"pair": k, "variant": v, "metric": name, "mean": mean, "ci_low": lo, "ci_high": hi,
                                "n_seeds": len(vals), "p_vs_baseline": p["baseline"], "p_vs_closed_form": p["closed_form"],
                                "p_vs_full": p["full"], "n_trained_selected": sum(sel) if sel else None,
                                "note": _inert_note(v, cfg.train_for(k), *widths[k])})
    return summary
