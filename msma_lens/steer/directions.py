"""Steering directions built from captured activations (data flows model → capture → directions).

Builders take :class:`~msma_lens.capture.activations.ScaleActivations` captured with the partition and site you steer
with, and return vectors for :class:`~msma_lens.steer.edits.Translate` / ``Ablate``:

* :func:`contrastive_direction` — difference of means of two captures at a scale;
* :func:`principal_direction` — unit top principal component of a capture at a scale;
* :func:`transfer_direction` — carry a direction across scales through a fitted map;
* :func:`random_direction` — a seeded, norm-matched control.

The usual entry point is the lens, which captures with its own scales and site and calls these builders:
``lens.contrastive_direction(positive_texts, negative_texts, "global")``. With ``per_layer=True`` a builder
reads one single-layer group per layer of the scale, named :func:`layer_key` (``"global-7"``), as captured
with the partition :func:`layer_scales`.

The model-level form ``contrastive_direction(model, texts, ..., scales=...)`` (and the same for
:func:`principal_direction`) still works for one release with a DeprecationWarning.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ..capture.activations import DEFAULT_OUTLIER_FACTOR, ScaleActivations, check_outlier_factor, massive_rows
from ..capture.scales import Scales
from ..errors import ArtifactError, ConfigError

__all__ = [
    "as_direction",
    "contrastive_direction",
    "layer_key",
    "layer_scales",
    "principal_direction",
    "random_direction",
    "transfer_direction",
]

Direction = torch.Tensor | dict[int, torch.Tensor]


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def as_direction(v: Any, name: str = "direction") -> torch.Tensor:
    """``v`` as a float32 CPU tensor ``[d]`` or ``[B, d]``; ConfigError naming ``name`` if empty, non-finite or zero."""
    if not isinstance(v, torch.Tensor):
        try:
            v = torch.as_tensor(v, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError) as e:
            raise ConfigError(f"{name} must be a tensor [d] or [B, d], got {type(v).__name__}") from e
    v = v.detach().to(torch.float32).cpu()
    if v.ndim not in (1, 2) or v.shape[-1] == 0 or (v.ndim == 2 and v.shape[0] == 0):
        raise ConfigError(f"{name} must be a tensor [d] or [B, d], got shape {tuple(v.shape)}")
    if not torch.isfinite(v).all():
        raise ConfigError(f"{name} contains NaN or Inf")
    norms = v.norm(dim=-1)
    if (norms == 0).any():
        which = "" if v.ndim == 1 else f" (row(s) {torch.nonzero(norms == 0).flatten().tolist()})"
        raise ConfigError(f"{name} has zero norm{which}: a zero direction is no direction (use strength=0 for a no-op)")
    return v


# ----- per-layer groups ------------------------------------------------------------------------------------
def layer_key(scale: str, layer: int) -> str:
    """Name of the single-layer group of ``layer`` in :func:`layer_scales` (``"global-7"``)."""
    return f"{scale}-{int(layer)}"


def layer_scales(scales: Scales, scale: str) -> Scales:
    """One single-layer group per layer of ``scale`` (named :func:`layer_key`): capture with it for ``per_layer=True``."""
    return Scales({layer_key(scale, x): [x] for x in scales[scale]}, n_layers=scales.n_layers, source=f"layers of {scale}")


def _matrices(acts: ScaleActivations, scale: str, per_layer: bool) -> dict[int | None, torch.Tensor]:
    """``{None: acts[scale]}``, or ``{layer: acts[layer_key(scale, layer)]}`` with ``per_layer`` (float64)."""
    if not isinstance(acts, ScaleActivations):
        raise ConfigError(f"expected ScaleActivations (e.g. from lens.capture), got {type(acts).__name__}; "
                          "to build a direction from texts use lens.contrastive_direction / lens.principal_direction")
    if not per_layer:
        return {None: acts[scale].double()}
    prefix = f"{scale}-"
    out = {int(n[len(prefix):]): acts[n].double() for n in acts.scale_names
           if n.startswith(prefix) and n[len(prefix):].isdigit()}
    if not out:
        raise ConfigError(f"per_layer=True needs one group per layer of scale {scale!r} (named like {layer_key(scale, 0)!r}; "
                          f"capture with layer_scales(scales, {scale!r})), but these activations have {acts.scale_names}")
    return dict(sorted(out.items()))


def _where(scale: str, layer: int | None) -> str:
    return f"scale {scale!r}" + ("" if layer is None else f" layer {layer}")


def _result(out: dict[int | None, torch.Tensor], per_layer: bool) -> Direction:
    return out if per_layer else out[None]


# ----- the deprecated model-level form ---------------------------------------------------------------------
def _legacy_warn(model: Any, scales: Any, what: str) -> None:
    from .. import tl

    tl.check_model(model)
    msg = (f"{what}(model, texts, ...) is deprecated and will be removed in the next release: use "
           f"MSMA(model, scales).{what}(...), which captures with the lens's scales and site, or build from activations "
           f"with {what}(acts, ...)")
    if scales is None:
        n = tl.n_layers(model)
        msg += (f". No scales= was given, so this uses the default partition Scales.default({n}) = {Scales.default(n)!r}, "
                "not the partition of any lens")
    warnings.warn(msg, DeprecationWarning, stacklevel=4)


def _legacy_acts(model: Any, texts: Sequence[str], scale: str, scales: Any, *, pooling: str, per_layer: bool,
                 site: str, batch_size: int) -> ScaleActivations:
    """Capture for the deprecated ``builder(model, texts, ...)`` form (removed in the next release)."""
    from .. import tl
    from ..capture.collect import capture

    sc = Scales.coerce(scales, tl.n_layers(model))
    groups = layer_scales(sc, scale) if per_layer else sc.select(scale)
    return capture(model, groups, list(texts), pooling=pooling, layer_agg="mean", site=site, batch_size=batch_size,
                   progress=False)


def _accepts_model(legacy: Callable[..., Direction]) -> Callable[[Callable[..., Direction]], Callable[..., Direction]]:
    """Send ``builder(model, ...)`` (a model, not ScaleActivations, first) to the deprecated ``legacy`` form."""

    def deco(builder: Callable[..., Direction]) -> Callable[..., Direction]:
        @functools.wraps(builder)  # inspect.signature shows the builder's signature
        def dispatch(*args: Any, **kwargs: Any) -> Direction:
            first = args[0] if args else kwargs.get("model")
            if first is not None and not isinstance(first, (ScaleActivations, str, Sequence)) and hasattr(first, "cfg"):
                return legacy(*args, **kwargs)
            return builder(*args, **kwargs)

        return dispatch

    return deco


def _legacy_contrastive(model: Any, positive: Sequence[str], negative: Sequence[str], scale: str, *, scales: Any = None,
                        per_layer: bool = False, site: str = "resid_post", batch_size: int = 8) -> Direction:
    _legacy_warn(model, scales, "contrastive_direction")
    if isinstance(positive, str) or isinstance(negative, str):
        raise ConfigError("positive and negative must be lists of texts, not single strings")
    kw = {"pooling": "mean", "per_layer": per_layer, "site": site, "batch_size": batch_size}
    pos = _legacy_acts(model, positive, scale, scales, **kw)
    neg = _legacy_acts(model, negative, scale, scales, **kw)
    return contrastive_direction(pos, neg, scale, per_layer=per_layer)


def _legacy_principal(model: Any, texts: Sequence[str], scale: str, *, scales: Any = None, per_layer: bool = False,
                      site: str = "resid_post", batch_size: int = 8,
                      outlier_factor: float | None = DEFAULT_OUTLIER_FACTOR) -> Direction:
    _legacy_warn(model, scales, "principal_direction")
    check_outlier_factor(outlier_factor)
    if isinstance(texts, str):
        raise ConfigError("texts must be a list of texts, not a single string")
    acts = _legacy_acts(model, texts, scale, scales, pooling="token", per_layer=per_layer, site=site, batch_size=batch_size)
    return principal_direction(acts, scale, per_layer=per_layer, outlier_factor=outlier_factor)


# ----- builders --------------------------------------------------------------------------------------------
@_accepts_model(_legacy_contrastive)
def contrastive_direction(positive: ScaleActivations, negative: ScaleActivations, scale: str, *,
                          per_layer: bool = False) -> Direction:
    """Difference of means ``mean(positive[scale]) − mean(negative[scale])`` (a ``[d]`` tensor).

    Rows are averaged as given: capture with ``pooling="mean"`` for one row per text (what
    ``lens.contrastive_direction`` does), so every text weighs the same. ``per_layer=True`` returns
    ``{layer: [d]}`` (for :class:`~msma_lens.Translate`) from activations captured with :func:`layer_scales`.
    Not normalised: use it as Δ directly, or with ``relative=True`` for a norm-relative strength. Both captures
    must come from the same model and site (ArtifactError) with the same pooling (ConfigError).
    """
    pos, neg = _matrices(positive, scale, per_layer), _matrices(negative, scale, per_layer)
    _check_pair(positive, negative, [scale] if not per_layer else [layer_key(scale, x) for x in pos])
    if sorted(pos) != sorted(neg):
        raise ConfigError(f"positive and negative activations have different layers of scale {scale!r}: {sorted(pos)} vs {sorted(neg)}")
    out = {}
    for k in pos:
        if pos[k].shape[0] == 0 or neg[k].shape[0] == 0:
            raise ConfigError(f"contrastive direction at {_where(scale, k)} needs rows on both sides, got "
                              f"{pos[k].shape[0]} positive and {neg[k].shape[0]} negative")
        if pos[k].shape[1] != neg[k].shape[1]:
            raise ConfigError(f"positive and negative activations at {_where(scale, k)} have widths {pos[k].shape[1]} and {neg[k].shape[1]}")
        v = (pos[k].mean(0) - neg[k].mean(0)).float()
        if float(v.norm()) == 0.0:
            raise ConfigError(f"contrastive direction at {_where(scale, k)} is zero: the two text sets give identical mean activations")
        out[k] = v
    return _result(out, per_layer)


def _check_pair(a: ScaleActivations, b: ScaleActivations, names: list[str]) -> None:
    """Both captures from the same model, site and pooling, with the same layers in the groups ``names``."""
    for key, err in (("model_id", ArtifactError), ("site", ArtifactError), ("pooling", ConfigError)):
        x, y = a.meta.get(key), b.meta.get(key)
        if x is not None and y is not None and x != y:
            raise err(f"positive activations have {key} {x!r}, but negative activations have {y!r}")
    sa, sb = a.scales, b.scales
    if sa is not None and sb is not None:
        for n in names:
            la, lb = sa.groups.get(n), sb.groups.get(n)
            if la is not None and lb is not None and la != lb:
                raise ArtifactError(f"scale {n!r} has layers {list(la)} in the positive activations but {list(lb)} in the negative ones")


@_accepts_model(_legacy_principal)
def principal_direction(acts: ScaleActivations, scale: str, *, per_layer: bool = False,
                        outlier_factor: float | None = DEFAULT_OUTLIER_FACTOR) -> Direction:
    """Unit top principal direction of ``acts[scale]`` (capture with ``pooling="token"`` for token activations).

    Massive-activation rows (:func:`~msma_lens.capture.activations.massive_rows`: norm above ``outlier_factor`` ×
    the median row norm; ``None`` keeps them) are dropped first: a handful of them would otherwise be the top
    component. The sign is fixed so the mean activation projects positively (or, if it is orthogonal, so the
    largest coordinate is positive).
    ``per_layer=True``: ``{layer: [d]}`` from activations captured with :func:`layer_scales`.
    """
    check_outlier_factor(outlier_factor)
    out = {}
    for k, X in _matrices(acts, scale, per_layer).items():
        X = X[~massive_rows(X, outlier_factor)]
        if X.shape[0] < 2:
            raise ConfigError(f"principal_direction needs >= 2 content tokens at {_where(scale, k)}, got {X.shape[0]}")
        mu = X.mean(0)
        Xc = X - mu
        _, evecs = torch.linalg.eigh(Xc.T @ Xc)
        v = evecs[:, -1]
        proj = float(mu @ v)
        orthogonal = abs(proj) < 1e-12 * float(mu.norm() + 1)
        if (proj < 0 and not orthogonal) or (orthogonal and float(v[v.abs().argmax()]) < 0):
            v = -v
        out[k] = (v / v.norm()).float()
    return _result(out, per_layer)


def _map_model_id(fitted: Any) -> str | None:
    for obj in (fitted, getattr(fitted, "map", None)):
        if obj is None:
            continue
        meta = getattr(obj, "meta", None) or getattr(obj, "provenance", None)
        if isinstance(meta, Mapping) and meta.get("model_id"):
            return str(meta["model_id"])
        if isinstance(getattr(obj, "model_id", None), str):
            return obj.model_id
    return None


def _linear_part(fitted: Any) -> torch.Tensor:
    """The ``[d_in, d_out]`` linear part of a fitted map (``s·W``; bias and any non-linear residual dropped)."""
    if isinstance(fitted, torch.Tensor):
        return fitted.detach().double()
    if hasattr(fitted, "map") and not hasattr(fitted, "W"):  # FitOutput
        fitted = fitted.map
    lin = getattr(fitted, "linear", None)
    if isinstance(lin, torch.Tensor):
        return lin.detach().double()
    W = getattr(fitted, "weight", None)
    if not isinstance(W, torch.Tensor):
        W = getattr(fitted, "W", None)
    if not isinstance(W, torch.Tensor):
        raise ConfigError(f"cannot transfer through a {type(fitted).__name__}: expected a tensor W [d_in, d_out], an object "
                          "with .W / .weight / .linear, or one with .transfer_direction(direction)")
    s = getattr(fitted, "scale", 1.0)
    s = float(s.detach()) if isinstance(s, torch.Tensor) else float(s) if _is_num(s) else 1.0
    return s * W.detach().double()


def transfer_direction(direction: torch.Tensor, fitted_map: Any, *, model: Any = None, src: str | None = None,
                       dst: str | None = None) -> torch.Tensor:
    """Carry a direction across scales through a fitted map: ``v ↦ v·(s·W)``.

    With an :class:`~msma_lens.align.protocol.AlignmentResult` (any result holding several fitted ``maps``), name the
    scales: ``src="global", dst="local"`` follows the chain of fitted maps (f_GI then f_IL) in raw residual units
    (``lens.transfer_direction`` also checks that the result belongs to the lens's model and scales).

    ``fitted_map`` may define ``transfer_direction(v)`` (used as is), or expose its linear part: a tensor
    ``W [d_in, d_out]``, ``.linear`` (``ProcrustesFit``), ``.weight``/``.W`` with an optional scalar ``.scale``
    (``CrossScaleMap``; a ``FitOutput``'s ``.map``). Only the linear part is used: a direction is a difference
    of two points, so the bias cancels; a non-linear residual term of the map is ignored. The map maps source →
    target activations, e.g. a map fitted global → intermediate carries a global edit to the intermediate
    scale. With ``model=``, a map whose ``meta``/``model_id`` names another model raises ArtifactError.
    """
    v = as_direction(direction, "direction")
    if model is not None:
        from .. import tl

        mid, mine = _map_model_id(fitted_map), tl.provenance(model)["model_id"]
        if mid is not None and mid != mine:
            raise ArtifactError(f"the map was fitted on model {mid!r}, but the direction is for {mine!r}")
    maps = getattr(fitted_map, "maps", None)
    if isinstance(maps, Mapping) and hasattr(fitted_map, "transfer_direction"):  # AlignmentResult: several maps
        if src is None or dst is None:
            raise ConfigError(f"transfer through an AlignmentResult needs src= and dst= scale names; fitted maps: {list(maps)}")
        return as_direction(fitted_map.transfer_direction(v, src, dst).float(), "transferred direction")
    if hasattr(fitted_map, "transfer_direction"):
        return as_direction(fitted_map.transfer_direction(v), "transferred direction")
    W = _linear_part(fitted_map)
    if W.ndim != 2:
        raise ConfigError(f"map weight must be 2-d [d_in, d_out], got shape {tuple(W.shape)}")
    if v.shape[-1] != W.shape[0]:
        raise ConfigError(f"direction has width {v.shape[-1]}, but the map expects d_in={W.shape[0]} (maps {W.shape[0]} -> {W.shape[1]})")
    return as_direction((v.double() @ W).float(), "transferred direction")


def random_direction(like: torch.Tensor | int, *, seed: int = 0, norm: float | None = None) -> torch.Tensor:
    """A seeded random direction: the norm-matched control for a real direction.

    ``like`` a tensor ``[d]`` / ``[B, d]`` (the result has the same shape and per-row norms) or a width ``d``
    (unit norm unless ``norm`` is given).
    """
    if norm is not None and not (_is_num(norm) and math.isfinite(norm) and norm > 0):
        raise ConfigError(f"norm must be a positive finite number, got {norm!r}")
    g = torch.Generator().manual_seed(int(seed))
    if isinstance(like, int) and not isinstance(like, bool):
        if like < 1:
            raise ConfigError(f"random_direction width must be >= 1, got {like}")
        v = torch.randn(like, generator=g, dtype=torch.float64)
        target = torch.tensor(1.0 if norm is None else float(norm), dtype=torch.float64)
    else:
        ref = as_direction(like, "like")
        v = torch.randn(ref.shape, generator=g, dtype=torch.float64)
        target = ref.double().norm(dim=-1, keepdim=True) if norm is None else torch.tensor(float(norm), dtype=torch.float64)
    return (v / v.norm(dim=-1, keepdim=True) * target).float()
