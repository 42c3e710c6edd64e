"""The MSMA cross-scale map ``f(x) = s·x W + b + g(x)`` and its joint training (methods.md §5.3–5.4).

* ``W`` is a geoopt ``ManifoldParameter`` on the Stiefel manifold: orthogonal (square), a projection
  (``d_in > d_out``, orthonormal columns) or an isometric embedding (``d_in < d_out``; stored transposed, since
  geoopt needs ``shape[-1] <= shape[-2]``). The gain ``s = exp(a)`` is a scalar (``.gain``, ``.log_gain``; the
  old names ``.scale`` / ``.log_scale`` are deprecated: "scale" names a group of layers), ``b`` a bias, ``g`` an
  optional 2-layer MLP whose last layer starts at zero.
* Loss ``λ_geo·L_geo − λ_info·Î + λ_curv·L_curv``: normalised Procrustes residual, a neural MI lower bound
  on ``(f(x), y)`` (critic trained jointly; both maximise Î) and a second-difference curvature penalty on g.
* For a square map without g, f is invertible and affine: Î and L_curv cannot change with f (methods.md §0),
  so "w/o info" / "w/o curv" ablations equal the full model. Use ``residual_hidden > 0`` or ``d_out < d_in``
  to give those terms something to act on.

Initialise from the closed form (:meth:`CrossScaleMap.init_from_procrustes`): Riemannian steps never leave the
connected component of O(d) they start in, so an optimum with det = −1 is unreachable from the identity.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import geoopt
import torch
from torch import nn

from ..align.procrustes import ProcrustesFit, as_matrix, check_finite, procrustes
from ..analysis.mi import CRITICS, ESTIMATORS, heldout_mi, make_critic, make_objective
from ..analysis.stopping import EarlyStopping
from ..errors import ArtifactError, ConfigError, NumericsError

__all__ = [
    "CrossScaleMap",
    "geo_loss",
    "curvature_loss",
    "MapTrainConfig",
    "FitOutput",
    "fit_map",
    "MapTrainer",
    "MANIFOLDS",
    "CURV_SCALES",
    "CHECKPOINT_FILE",
]

MANIFOLDS: tuple[str, ...] = ("canonical", "euclidean")
INITS: tuple[str, ...] = ("procrustes", "identity")
CHECKPOINT_FILE = "fit_map.pt"
_CKPT_FORMAT = "msma_lens.fit_map.checkpoint"
_CKPT_VERSION = 2  # 2: best step chosen by validation residual; separate batch / curvature RNG streams
CURV_SCALES: tuple[str, ...] = ("absolute", "relative")
# the MSMA paper's objective: L = 0.1·L_geo − 0.1·Î + 0.01·L_curv with the absolute curvature penalty
PUBLISHED_OBJECTIVE: dict[str, float | str] = {"lambda_geo": 0.1, "lambda_info": 0.1, "lambda_curv": 0.01, "curv_scale": "absolute"}
# offsets from cfg.seed of the independent random streams (so that one term's draws never shift another's)
_SEED_BATCH, _SEED_EVAL_PERM, _SEED_EVAL_CURV, _SEED_CURV, _SEED_CURV_REF = 0, 1, 2, 3, 4


class CrossScaleMap(nn.Module):
    """``f(x) = exp(a)·x W + b + g(x)`` with ``W`` on the Stiefel manifold (geoopt).

    ``manifold="canonical"`` (``CanonicalStiefel``: the canonical metric's Cayley-type retraction and transport, a
    d×d solve per step; geoopt's default) or ``"euclidean"`` (geoopt ``EuclideanStiefel``: Euclidean metric, QR
    retraction, the optimiser's momentum projected onto the new tangent space; 0.68× the time per step on SmolLM2
    at d = 576 with an equal or lower held-out residual, ``benchmarks/RESULTS.md``; at equal ``stiefel_lr`` its steps
    are about 1/√2 as long). ``lens.fit`` uses ``"euclidean"``. ``residual_hidden > 0`` adds
    ``g = Linear → GELU → Linear`` with a zero-initialised last layer (so ``g ≡ 0`` at init).
    """

    def __init__(self, d_in: int, d_out: int, *, residual_hidden: int = 0, manifold: str = "canonical"):
        super().__init__()
        for name, v, lo in (("d_in", d_in, 1), ("d_out", d_out, 1), ("residual_hidden", residual_hidden, 0)):
            if isinstance(v, bool) or int(v) != v or v < lo:
                raise ConfigError(f"CrossScaleMap {name} must be an integer >= {lo}, got {v!r}")
        if manifold not in MANIFOLDS:
            raise ConfigError(f"unknown manifold {manifold!r}; valid manifolds: {', '.join(MANIFOLDS)}")
        self.d_in, self.d_out = int(d_in), int(d_out)
        self.residual_hidden = int(residual_hidden)
        self.manifold_name = manifold
        self.transposed = self.d_in < self.d_out
        self.manifold = geoopt.Stiefel(canonical=(manifold == "canonical"))
        shape = (self.d_out, self.d_in) if self.transposed else (self.d_in, self.d_out)
        self.W = geoopt.ManifoldParameter(torch.eye(*shape), manifold=self.manifold)
        self.log_gain = nn.Parameter(torch.zeros(()))
        self.bias = nn.Parameter(torch.zeros(self.d_out))
        self.residual: nn.Sequential | None = None
        if self.residual_hidden > 0:
            self.residual = nn.Sequential(
                nn.Linear(self.d_in, self.residual_hidden), nn.GELU(), nn.Linear(self.residual_hidden, self.d_out)
            )
            nn.init.zeros_(self.residual[2].weight)
            nn.init.zeros_(self.residual[2].bias)

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, d_out={self.d_out}, residual_hidden={self.residual_hidden}, manifold={self.manifold_name!r}"

    @property
    def weight(self) -> torch.Tensor:
        """The ``[d_in, d_out]`` Stiefel factor (orthonormal columns, or rows when ``d_in < d_out``)."""
        return self.W.T if self.transposed else self.W

    @property
    def gain(self) -> torch.Tensor:
        """The scalar gain ``s = exp(log_gain)``."""
        return self.log_gain.exp()

    @property
    def linear(self) -> torch.Tensor:
        """The ``[d_in, d_out]`` linear part ``s·W`` (what carries a direction across scales)."""
        return self.gain * self.weight

    @property
    def scale(self) -> torch.Tensor:
        """Deprecated alias of :attr:`gain`."""
        warnings.warn("CrossScaleMap.scale is deprecated; use .gain (a scale is a group of layers)", DeprecationWarning,
                      stacklevel=2)
        return self.gain

    @property
    def log_scale(self) -> torch.Tensor:
        """Deprecated alias of :attr:`log_gain`."""
        warnings.warn("CrossScaleMap.log_scale is deprecated; use .log_gain", DeprecationWarning, stacklevel=2)
        return self.log_gain

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        old = prefix + "log_scale"  # maps saved before the rename
        if old in state_dict and prefix + "log_gain" not in state_dict:
            state_dict[prefix + "log_gain"] = state_dict.pop(old)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def affine(self, x: torch.Tensor) -> torch.Tensor:
        """``s·x W + b`` (the map without g)."""
        return self.gain * (x @ self.weight) + self.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.affine(x)
        return out if self.residual is None else out + self.residual(x)

    def stiefel_parameters(self) -> list[nn.Parameter]:
        return [self.W]

    def euclidean_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if n != "W"]

    @torch.no_grad()
    def orthogonality_error(self) -> float:
        """‖WᵀW − I‖_F of the stored factor, in float64."""
        W = self.W.detach().double()
        return float(torch.linalg.matrix_norm(W.T @ W - torch.eye(W.shape[1], dtype=W.dtype, device=W.device)))

    @torch.no_grad()
    def det_sign(self) -> int | None:
        """sign det W for square maps (float64 slogdet; fp32 det underflows at d ≈ 576), else None."""
        if self.d_in != self.d_out:
            return None
        return int(torch.linalg.slogdet(self.W.detach().double())[0])

    @torch.no_grad()
    def init_from_procrustes(self, X, Y, *, allow_reflection: bool = True) -> ProcrustesFit:
        """Set (W, s, b) to the closed-form Procrustes fit of Y on X (:func:`msma_lens.align.procrustes`).

        Reflections are kept by default (det W = −1 is then the component training stays in). For a projection
        (``d_in > d_out``) the polar solution is only a heuristic under anisotropic X (methods.md §1.4): training
        refines it; whiten X upstream for an exact start. g is left unchanged.
        """
        X, Y = as_matrix(X, "X"), as_matrix(Y, "Y")
        if X.shape[1] != self.d_in:
            raise ConfigError(f"map expects source width {self.d_in}, got {X.shape[1]}")
        if Y.shape[1] != self.d_out:
            raise ConfigError(f"map expects target width {self.d_out}, got {Y.shape[1]}")
        fit = procrustes(X, Y, scale=True, bias=True, allow_reflection=allow_reflection)
        if not fit.scale > 0:
            raise NumericsError(f"closed-form scale is {fit.scale}: X and Y are uncorrelated; cannot take log(scale)")
        W = fit.W.T if self.transposed else fit.W
        self.W.data.copy_(W.to(self.W))  # .data: keep the ManifoldParameter (and its manifold) intact
        self.log_gain.fill_(math.log(fit.scale))
        self.bias.copy_(fit.bias.to(self.bias))
        return fit


def geo_loss(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Normalised Procrustes residual Σ‖f(x_i) − y_i‖² / Σ‖y_i − ȳ‖² (0 = perfect, ≈ 1 = as good as ȳ)."""
    den = (y - y.mean(0)).square().sum().clamp_min(torch.finfo(y.dtype).tiny)
    return (pred - y).square().sum() / den


def curvature_loss(
    g: nn.Module | None, x: torch.Tensor, eps: float = 0.5, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """E_x,v ‖g(x + εv) − 2g(x) + g(x − εv)‖² / ε⁴ with v uniform on the unit sphere (one v per row).

    A second-difference (directional Hessian) penalty on the nonlinear part: exactly 0 when ``g`` is None or
    identically 0, and for the affine part of the map, which is never passed here. ``v`` is drawn on the CPU
    from ``generator`` (reproducible, checkpointable) and moved to ``x``'s device.
    """
    if g is None:
        return x.new_zeros(())
    if not eps > 0:
        raise ConfigError(f"curvature eps must be > 0, got {eps}")
    v = torch.randn(x.shape, generator=generator, dtype=torch.float32)
    v = (v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)).to(device=x.device, dtype=x.dtype)
    B = x.shape[0]
    out = g(torch.cat([x + eps * v, x, x - eps * v]))
    d2 = out[:B] - 2.0 * out[B : 2 * B] + out[2 * B :]
    return d2.square().sum(-1).mean() / eps**4


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass
class MapTrainConfig:
    """Hyperparameters of :func:`fit_map`; validated on construction (ConfigError names the field and range).

    ``stiefel_lr`` is a Frobenius step length (geoopt's RiemannianAdam keeps one second moment per Stiefel
    matrix): 0.05–0.3 when fine-tuning from the closed form, 1–3 from scratch at d = 576. ``patience`` counts
    evaluations (``None`` disables early stopping). λ defaults are the published ones (0.1, 0.1, 0.01).
    ``critic="concat"`` evaluates an MLP on all B² pairs (expensive at B = 512). ``init`` is ``"procrustes"``
    (closed form; recommended) or ``"identity"``. ``device``, ``checkpoint_dir`` and ``checkpoint_every`` do not
    affect the result. ``manifold``: ``"canonical"`` (this class's default, the published setting) or ``"euclidean"``
    (QR retraction, momentum projected onto the tangent space; 0.68× the time per step on SmolLM2 at an equal or
    lower held-out residual, and the default of :func:`msma_lens.align.protocol.default_train_config`, i.e. of
    ``lens.fit``); checkpoints record it, and resuming with the other one is refused.

    ``curv_scale``: ``"absolute"`` (default, the published penalty E‖Δ²g‖²/ε⁴; at λ_curv = 0.01 on SmolLM2 it is
    ~1e-7 against ~0.06 for the geometry term, i.e. inert) or ``"relative"``: the penalty divided by that of a
    reference g (same first layer, a freshly initialised seeded last layer) on random directions at
    initialisation, so λ_curv·L_curv ≈ λ_curv for a g as curved as a generic random MLP of this width.
    The best step is chosen by the validation residual alone (never by the critic's Î, which rises as the
    critic learns); ``history`` reports each weighted term (``val_*_term``) beside it.
    """

    lambda_geo: float = 0.1
    lambda_info: float = 0.1
    lambda_curv: float = 0.01
    stiefel_lr: float = 0.1
    lr: float = 3e-4
    steps: int = 2000
    batch_size: int = 512
    eval_every: int = 50
    patience: int | None = 10
    seed: int = 0
    device: str | None = None
    checkpoint_dir: str | None = None
    checkpoint_every: int = 200
    estimator: str = "mine"
    residual_hidden: int = 0
    curvature_eps: float = 0.5
    manifold: str = "canonical"
    init: str = "procrustes"
    critic: str = "separable"
    critic_hidden: int = 256
    critic_embed: int = 64
    eval_batch_size: int = 1024
    mine_alpha: float = 0.01
    smile_tau: float = 5.0
    stabilize: int | None = 100
    curv_scale: str = "absolute"

    def __post_init__(self) -> None:
        def bad(name: str, rng: str) -> ConfigError:
            return ConfigError(f"MapTrainConfig.{name} must be {rng}, got {getattr(self, name)!r}")

        def num(v) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        for name in ("lambda_geo", "lambda_info", "lambda_curv"):
            if not (num(getattr(self, name)) and getattr(self, name) >= 0):
                raise bad(name, "a finite number >= 0")
        for name in ("stiefel_lr", "lr", "curvature_eps", "smile_tau"):
            if not (num(getattr(self, name)) and getattr(self, name) > 0):
                raise bad(name, "a finite number > 0")
        if not (num(self.mine_alpha) and 0 < self.mine_alpha <= 1):
            raise bad("mine_alpha", "in (0, 1]")
        for name, lo in (("steps", 1), ("batch_size", 2), ("eval_every", 1), ("checkpoint_every", 1),
                         ("residual_hidden", 0), ("critic_hidden", 1), ("critic_embed", 1), ("eval_batch_size", 2)):
            v = getattr(self, name)
            if not (_is_int(v) and v >= lo):
                raise bad(name, f"an integer >= {lo}")
        for name in ("patience", "stabilize"):
            v = getattr(self, name)
            if v is not None and not (_is_int(v) and v >= 1):
                raise bad(name, "None or an integer >= 1")
        if not _is_int(self.seed):
            raise bad("seed", "an integer")
        if self.estimator not in ESTIMATORS:
            raise bad("estimator", f"one of {', '.join(ESTIMATORS)}")
        if self.manifold not in MANIFOLDS:
            raise bad("manifold", f"one of {', '.join(MANIFOLDS)}")
        if self.init not in INITS:
            raise bad("init", f"one of {', '.join(INITS)}")
        if self.curv_scale not in CURV_SCALES:
            raise bad("curv_scale", f"one of {', '.join(CURV_SCALES)}")
        if self.critic not in CRITICS:
            raise bad("critic", f"one of {', '.join(CRITICS)}")
        if self.device is not None:
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError):
                raise bad("device", "None or a torch device string such as 'cpu' or 'cuda:0'") from None
            self.device = str(self.device)
        if self.checkpoint_dir is not None:
            if not isinstance(self.checkpoint_dir, (str, os.PathLike)):
                raise bad("checkpoint_dir", "None or a path")
            self.checkpoint_dir = str(self.checkpoint_dir)

    @classmethod
    def published(cls, **overrides) -> MapTrainConfig:
        """The published objective λ = (0.1, 0.1, 0.01) with the absolute curvature penalty (:data:`PUBLISHED_OBJECTIVE`);
        ``overrides`` set any other field."""
        return cls(**{**PUBLISHED_OBJECTIVE, **overrides})

    def result_fields(self) -> dict:
        """The fields that determine the result (everything but device and checkpointing)."""
        d = dataclasses.asdict(self)
        for k in ("device", "checkpoint_dir", "checkpoint_every"):
            d.pop(k)
        return d


@dataclass
class FitOutput:
    """Result of :func:`fit_map`: the trained map and critic (best held-out state unless stopped early via
    ``stop_after``), one history row per evaluation (step 0 = the initial map), and the best step: the one with
    the lowest validation residual ``best_geo``; ``best_objective`` is the full objective at that step."""

    map: CrossScaleMap
    critic: nn.Module
    history: list[dict]
    best_step: int
    best_objective: float
    steps_run: int
    completed: bool
    closed_form: ProcrustesFit | None = field(default=None, repr=False)
    config: MapTrainConfig | None = None
    best_geo: float = float("nan")


def _plain(obj):
    """Recursively copy tensors to plain CPU tensors (no geoopt subclasses) for ``torch.load(weights_only=True)``."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True).as_subclass(torch.Tensor)
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    return obj


def _fingerprint(*ts: torch.Tensor) -> list:
    out = []
    for t in ts:
        d = t.detach().double()
        out.append([list(t.shape), float(d.sum()), float(d.square().sum())])
    return out


def _check_inputs(X_train, Y_train, X_val, Y_val, d_in: int | None, d_out: int | None) -> dict[str, torch.Tensor]:
    t = {k: as_matrix(v, k) for k, v in (("X_train", X_train), ("Y_train", Y_train), ("X_val", X_val), ("Y_val", Y_val))}
    for xs, ys in (("X_train", "Y_train"), ("X_val", "Y_val")):
        if t[xs].shape[0] != t[ys].shape[0]:
            raise ConfigError(f"{xs} and {ys} must have the same number of rows (paired samples): {t[xs].shape[0]} vs {t[ys].shape[0]}")
    for split in ("train", "val"):
        n = t[f"X_{split}"].shape[0]
        if n < 2:
            raise ConfigError(f"fit_map needs at least 2 {split} samples (for centring and marginal pairs), got {n}")
    d_in = t["X_train"].shape[1] if d_in is None else d_in
    d_out = t["Y_train"].shape[1] if d_out is None else d_out
    for k in ("X_train", "X_val"):
        if t[k].shape[1] != d_in:
            raise ConfigError(f"map expects source width {d_in}, got {t[k].shape[1]} ({k})")
    for k in ("Y_train", "Y_val"):
        if t[k].shape[1] != d_out:
            raise ConfigError(f"map expects target width {d_out}, got {t[k].shape[1]} ({k})")
    for k, v in t.items():
        check_finite(v, k)
    return t


def _cosine(base: float, t: int, total: int) -> float:
    return base * 0.5 * (1.0 + math.cos(math.pi * t / total))


def _check_cfg(cfg: MapTrainConfig | None) -> MapTrainConfig:
    cfg = MapTrainConfig() if cfg is None else cfg
    if not isinstance(cfg, MapTrainConfig):
        raise ConfigError(f"cfg must be a MapTrainConfig, got {type(cfg).__name__}")
    return cfg


def _check_stop_after(stop_after: int | None, cfg: MapTrainConfig) -> None:
    if stop_after is None:
        return
    if not (_is_int(stop_after) and stop_after >= 1):
        raise ConfigError(f"stop_after must be None or an integer >= 1, got {stop_after!r}")
    if cfg.checkpoint_dir is None:
        raise ConfigError("stop_after needs cfg.checkpoint_dir (the fit resumes from the checkpoint)")


def _build(
    t: dict[str, torch.Tensor], cfg: MapTrainConfig, map: CrossScaleMap | None
) -> tuple[CrossScaleMap, nn.Module, ProcrustesFit | None]:
    """The map (new, or a copy of ``map``), the critic (both seeded by ``cfg.seed``) and the closed-form init."""
    d_in, d_out = t["X_train"].shape[1], t["Y_train"].shape[1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        if map is None:
            m = CrossScaleMap(d_in, d_out, residual_hidden=cfg.residual_hidden, manifold=cfg.manifold)
        else:
            m = copy.deepcopy(map)
        critic = make_critic(cfg.critic, d_out, d_out, hidden=cfg.critic_hidden, embed=cfg.critic_embed)
    closed_form = m.init_from_procrustes(t["X_train"], t["Y_train"]) if (map is None and cfg.init == "procrustes") else None
    return m, critic, closed_form


_ZERO_ACC = {"n": 0, "loss": 0.0, "geo": 0.0, "info": 0.0, "curv": 0.0}


class MapTrainer:
    """Joint training of a :class:`CrossScaleMap` and its MI critic; :func:`fit_map` is ``MapTrainer(...).fit()``.

    Arguments as in :func:`fit_map`. :meth:`step` takes one optimisation step, :meth:`evaluate` reads the held-out
    objective, :meth:`record` logs a ``history`` row (and updates the best state and :attr:`stopper`), :meth:`fit`
    runs the loop. :meth:`state_dict` / :meth:`load_state_dict` carry everything a resumed fit needs (map, critic,
    optimiser, MINE average, RNG, step, history, best state, early stopping); it is what ``checkpoint_dir`` holds.
    """

    def __init__(self, X_train, Y_train, X_val, Y_val, cfg: MapTrainConfig | None = None, *,
                 map: CrossScaleMap | None = None):
        cfg = self.cfg = _check_cfg(cfg)
        if map is not None and not isinstance(map, CrossScaleMap):
            raise ConfigError(f"map must be a CrossScaleMap, got {type(map).__name__}")
        t = _check_inputs(X_train, Y_train, X_val, Y_val, None if map is None else map.d_in, None if map is None else map.d_out)
        dev = torch.device(cfg.device) if cfg.device is not None else (map.W.device if map is not None else torch.device("cpu"))
        m, critic, self.closed_form = _build(t, cfg, map)
        self.map, self.critic, self.device = m.to(dev), critic.to(dev), dev
        dtype = self.map.W.dtype
        self._X, self._Y, self._Xv, self._Yv = (t[k].to(device=dev, dtype=dtype) for k in ("X_train", "Y_train", "X_val", "Y_val"))
        self._use_info = cfg.lambda_info > 0
        self._use_curv = cfg.lambda_curv > 0 and self.map.residual is not None
        euclid = self.map.euclidean_parameters() + (list(self.critic.parameters()) if self._use_info else [])
        self.optimizer = geoopt.optim.RiemannianAdam(
            [{"params": self.map.stiefel_parameters(), "lr": cfg.stiefel_lr}, {"params": euclid, "lr": cfg.lr}],
            stabilize=cfg.stabilize,
        )
        self.objective = make_objective(cfg.estimator, alpha=cfg.mine_alpha, tau=cfg.smile_tau)
        self.generator = torch.Generator().manual_seed(cfg.seed + _SEED_BATCH)  # minibatches only
        self.curv_generator = torch.Generator().manual_seed(cfg.seed + _SEED_CURV)  # curvature directions only
        self.last_batch: torch.Tensor | None = None  # row indices of the latest training minibatch
        perm_gen = torch.Generator().manual_seed(cfg.seed + _SEED_EVAL_PERM)
        self._eval_perm = torch.randperm(self._Xv.shape[0], generator=perm_gen)
        self.curv_ref = self._curv_reference() if (self._use_curv and cfg.curv_scale == "relative") else 1.0
        self._fingerprint = _fingerprint(t["X_train"], t["Y_train"], t["X_val"], t["Y_val"])
        self._map_spec = {"d_in": m.d_in, "d_out": m.d_out, "residual_hidden": m.residual_hidden, "manifold": m.manifold_name}
        self.steps_done = 0
        self.history: list[dict] = []
        self.stopper = EarlyStopping(cfg.patience, mode="min")
        self.best_state: dict | None = None  # {"map", "critic"} state dicts at stopper.best_step
        self.finished = False
        self._acc = dict(_ZERO_ACC)

    def __repr__(self) -> str:
        return f"MapTrainer({self.map!r}, steps_done={self.steps_done}/{self.cfg.steps}, finished={self.finished})"

    @property
    def checkpoint_path(self) -> Path | None:
        """``cfg.checkpoint_dir / CHECKPOINT_FILE``, or None."""
        return Path(self.cfg.checkpoint_dir) / CHECKPOINT_FILE if self.cfg.checkpoint_dir is not None else None

    def _curv_reference(self) -> float:
        """Penalty of a reference g (this g's first layer, a seeded default-initialised last layer) on training
        rows and random directions: the unit of ``curv_scale="relative"``."""
        ref = copy.deepcopy(self.map.residual)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.seed + _SEED_CURV_REF)
            ref[2].reset_parameters()
        gen = torch.Generator().manual_seed(self.cfg.seed + _SEED_CURV_REF)
        n = self._X.shape[0]
        j = torch.randperm(n, generator=gen)[: min(n, self.cfg.eval_batch_size)].to(self.device)
        with torch.no_grad():
            c = float(curvature_loss(ref, self._X[j], self.cfg.curvature_eps, generator=gen))
        if not (math.isfinite(c) and c > 0):
            raise NumericsError(f"curv_scale='relative': reference curvature is {c}; use curv_scale='absolute'")
        return c

    def _loss(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.cfg
        pred = self.map(xb)
        lg = geo_loss(pred, yb)
        loss = cfg.lambda_geo * lg
        info = pred.new_zeros(())
        if self._use_info:
            info = self.objective(self.critic(pred, yb))
            loss = loss - cfg.lambda_info * info
        lc = pred.new_zeros(())
        if self._use_curv:
            lc = curvature_loss(self.map.residual, xb, cfg.curvature_eps, generator=self.curv_generator) / self.curv_ref
            loss = loss + cfg.lambda_curv * lc
        return loss, {"loss": loss, "geo": lg, "info": info, "curv": lc}

    def step(self) -> dict[str, float]:
        """One optimisation step on a training minibatch (cosine-decayed learning rates); returns its
        ``loss``, ``geo``, ``info`` and ``curv``. NumericsError on a non-finite loss."""
        cfg, step = self.cfg, self.steps_done
        if step >= cfg.steps:
            raise ConfigError(f"MapTrainer.step: all cfg.steps={cfg.steps} steps are done")
        for g, base in zip(self.optimizer.param_groups, (cfg.stiefel_lr, cfg.lr)):
            g["lr"] = _cosine(base, step, cfg.steps)
        n, B = self._X.shape[0], min(cfg.batch_size, self._X.shape[0])
        j = torch.arange(n) if B == n else torch.randperm(n, generator=self.generator)[:B]
        self.last_batch = j
        j = j.to(self.device)
        loss, parts = self._loss(self._X[j], self._Y[j])
        if not torch.isfinite(loss):
            raise NumericsError(
                f"fit_map: non-finite loss at step {step + 1} (geo={float(parts['geo'])}, info={float(parts['info'])}, "
                f"curv={float(parts['curv'])}); lower the learning rates or lambda_info"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.steps_done = step + 1
        out = {k: float(v.detach()) for k, v in parts.items()}
        self._acc["n"] += 1
        for k, v in out.items():
            self._acc[k] += v
        return out

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """The held-out objective (same λs) and its terms: ``val_objective``, ``val_geo``, ``val_info`` (NaN
        without the info term; Î on batches of ``eval_batch_size``), ``val_curv`` (in ``curv_scale`` units) and the
        weighted terms ``val_geo_term`` = λ_geo·geo, ``val_info_term`` = λ_info·Î, ``val_curv_term`` = λ_curv·curv.
        Changes no state."""
        cfg, m, critic, Xva, Yva = self.cfg, self.map, self.critic, self._Xv, self._Yv
        m.eval()
        critic.eval()
        num = 0.0
        for i in range(0, Xva.shape[0], 4096):
            num += float((m(Xva[i : i + 4096]) - Yva[i : i + 4096]).double().square().sum())
        den = float((Yva.double() - Yva.double().mean(0)).square().sum())
        geo = num / max(den, torch.finfo(torch.float64).tiny)
        Be = min(cfg.eval_batch_size, Xva.shape[0])
        info = float("nan")
        if self._use_info:
            info = heldout_mi(lambda a, b: critic(m(a), b), Xva, Yva, cfg.estimator, batch_size=Be, perm=self._eval_perm,
                              tau=cfg.smile_tau)
        curv = 0.0
        if self._use_curv:
            j = self._eval_perm[:Be].to(self.device)
            gen = torch.Generator().manual_seed(cfg.seed + _SEED_EVAL_CURV)
            curv = float(curvature_loss(m.residual, Xva[j], cfg.curvature_eps, generator=gen)) / self.curv_ref
        info_term = cfg.lambda_info * info if self._use_info else 0.0
        obj = cfg.lambda_geo * geo + cfg.lambda_curv * curv - info_term
        m.train()
        critic.train()
        return {"val_objective": obj, "val_geo": geo, "val_info": info, "val_curv": curv, "val_geo_term": cfg.lambda_geo * geo,
                "val_info_term": info_term, "val_curv_term": cfg.lambda_curv * curv}

    def record(self) -> dict:
        """Evaluate, append a ``history`` row (train means since the last row, held-out terms, ``ortho_error``),
        update :attr:`stopper` on the validation residual ``val_geo`` (model selection by geometry, never by the
        critic's Î) and keep the state if it is the best; returns the row."""
        cfg, step, acc = self.cfg, self.steps_done, self._acc
        row = {"step": step, "lr_stiefel": _cosine(cfg.stiefel_lr, min(step, cfg.steps - 1), cfg.steps)}
        for k in ("loss", "geo", "info", "curv"):
            row[f"train_{k}"] = acc[k] / acc["n"] if acc["n"] else float("nan")
        row.update(self.evaluate())
        row["ortho_error"] = self.map.orthogonality_error()
        self.history.append(row)
        self._acc = dict(_ZERO_ACC)
        if self.stopper.update(row["val_geo"], step):
            self.best_state = {"map": _plain(self.map.state_dict()), "critic": _plain(self.critic.state_dict())}
        return row

    def state_dict(self) -> dict:
        """A self-contained copy of the training state (CPU tensors; ``torch.load(weights_only=True)``-safe)."""
        best = None
        if self.best_state is not None:
            best = {"value": self.stopper.best, "step": self.stopper.best_step, **self.best_state}
        state = {"step": self.steps_done, "history": self.history, "best": best, "bad": self.stopper.bad, "acc": self._acc,
                 "finished": self.finished}
        return {
            "format": _CKPT_FORMAT, "format_version": _CKPT_VERSION, "config": self.cfg.result_fields(),
            "map_spec": dict(self._map_spec), "data": _plain(self._fingerprint), "map": _plain(self.map.state_dict()),
            "critic": _plain(self.critic.state_dict()), "optimizer": _plain(self.optimizer.state_dict()),
            "objective": _plain(self.objective.state_dict()), "generator": self.generator.get_state(),
            "curv_generator": self.curv_generator.get_state(),
            **_plain(state),
        }

    def load_state_dict(self, state: dict, *, source: str = "state dict") -> None:
        """Resume from :meth:`state_dict` (or a checkpoint file's content). ArtifactError naming ``source`` if it
        is not a fit_map state, has another format version, or was made with another config, map or data."""
        self._check_state(state, source)
        self.map.load_state_dict(state["map"])
        self.critic.load_state_dict(state["critic"])
        self.optimizer.load_state_dict(state["optimizer"])
        for st in self.optimizer.state.values():  # torch turns geoopt's int step counters into fp32 tensors on load
            if torch.is_tensor(st.get("step")):
                st["step"] = int(st["step"].item())
        self.objective.load_state_dict(state["objective"])
        self.generator.set_state(state["generator"])
        self.curv_generator.set_state(state["curv_generator"])
        self.closed_form = None
        self.steps_done, self.finished = int(state["step"]), bool(state["finished"])
        self.history, self._acc = copy.deepcopy(state["history"]), dict(state["acc"])
        best = state["best"]
        self.stopper = EarlyStopping(self.cfg.patience, mode="min")
        self.best_state = None
        if best is not None:
            self.stopper.load_state_dict({"best": best["value"], "best_step": best["step"], "bad": state["bad"]})
            self.best_state = copy.deepcopy({"map": best["map"], "critic": best["critic"]})

    def _check_state(self, ck, source: str) -> None:
        if not isinstance(ck, dict) or ck.get("format") != _CKPT_FORMAT:
            raise ArtifactError(f"{source} is not a fit_map checkpoint")
        if ck.get("format_version") != _CKPT_VERSION:
            raise ArtifactError(f"{source} has checkpoint format_version {ck.get('format_version')!r}; this version of "
                                f"msma_lens reads version {_CKPT_VERSION} only (version 2 selects the best step by validation residual "
                                "and draws curvature directions from their own RNG): delete it to start the fit afresh")
        if ck["config"] != self.cfg.result_fields():
            diff = sorted(k for k in ck["config"] if ck["config"][k] != self.cfg.result_fields().get(k))
            raise ArtifactError(f"{source} was written with a different config (fields: {', '.join(diff)})")
        if ck["map_spec"] != self._map_spec:
            raise ArtifactError(f"{source} holds a map {ck['map_spec']}, this fit builds {self._map_spec}")
        if ck["data"] != self._fingerprint:
            raise ArtifactError(f"{source} was written for different training/validation data")

    def save(self, path: str | os.PathLike) -> None:
        """Write :meth:`state_dict` to ``path`` atomically (a ``.tmp`` file, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)

    def load(self, path: str | os.PathLike) -> None:
        """:meth:`load_state_dict` from a file written by :meth:`save`; ArtifactError if unreadable or mismatched."""
        try:
            ck = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # any unpickling failure means a corrupt or foreign file
            raise ArtifactError(f"cannot read checkpoint {path}: {e}") from None
        self.load_state_dict(ck, source=f"checkpoint {path}")

    def fit(self, *, stop_after: int | None = None, progress: bool = True, desc: str = "fit_map") -> FitOutput:
        """Train to ``cfg.steps`` or early stop (see :func:`fit_map`); a trainer that has not started resumes from
        ``cfg.checkpoint_dir`` when it holds a checkpoint. Returns the best state once complete."""
        cfg, path = self.cfg, self.checkpoint_path
        _check_stop_after(stop_after, cfg)
        if path is not None and path.exists() and not self.history and self.steps_done == 0:
            self.load(path)
        if not self.history:
            self.record()
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=self.steps_done, desc=desc, unit="step", leave=False, disable=not progress,
                   postfix={"val": f"{self.history[-1]['val_objective']:.4g}"})
        with bar:  # closed (and cleared) also on exceptions and Ctrl-C
            while not self.finished:
                self.step()
                bar.update()
                step = self.steps_done
                if step % cfg.eval_every == 0 or step == cfg.steps:
                    bar.set_postfix(val=f"{self.record()['val_objective']:.4g}", refresh=False)
                    self.finished = self.stopper.should_stop
                self.finished = self.finished or step == cfg.steps
                if path is not None and (self.finished or step % cfg.checkpoint_every == 0 or step == stop_after):
                    self.save(path)
                if step == stop_after and not self.finished:
                    break
        return self._output()

    def _output(self) -> FitOutput:
        """The result; once finished, the map and critic are set to the best state and W re-projected in float64."""
        if self.finished:
            self.map.load_state_dict(self.best_state["map"])
            self.critic.load_state_dict(self.best_state["critic"])
            with torch.no_grad():  # final float64 re-projection (polar factor; keeps the det sign), as `stabilize` does
                U, _, Vh = torch.linalg.svd(self.map.W.detach().double(), full_matrices=False)
                self.map.W.copy_((U @ Vh).to(self.map.W))
        best_step = int(self.stopper.best_step)
        best = next((r for r in self.history if r["step"] == best_step), None)
        return FitOutput(
            map=self.map, critic=self.critic, history=self.history, best_step=best_step,
            best_objective=float("nan") if best is None else float(best["val_objective"]), steps_run=self.steps_done,
            completed=self.finished, closed_form=self.closed_form, config=self.cfg, best_geo=float(self.stopper.best),
        )


def fit_map(
    X_train,
    Y_train,
    X_val,
    Y_val,
    cfg: MapTrainConfig | None = None,
    *,
    map: CrossScaleMap | None = None,
    stop_after: int | None = None,
    progress: bool = True,
    desc: str = "fit_map",
) -> FitOutput:
    """Fit ``f: X → Y`` with ``λ_geo·L_geo − λ_info·Î + λ_curv·L_curv`` (see module docstring); runs :class:`MapTrainer`.

    Inputs are ``[n, d]`` tensors, expected centred and RMS-normalised by the caller (not assumed: widths,
    row counts and finiteness are checked). ``map`` (optional) is copied and trained from its current state
    (``cfg.init``, ``cfg.residual_hidden`` and ``cfg.manifold`` are then ignored); otherwise a new
    :class:`CrossScaleMap` is built and initialised per ``cfg.init``. Optimiser: geoopt ``RiemannianAdam`` with
    a Stiefel group (``cfg.stiefel_lr``) and a Euclidean group (``cfg.lr``; map gain, bias, g and the
    critic), ``stabilize``, cosine decay to 0 over ``cfg.steps``. Every ``eval_every`` steps the held-out
    objective (same λs; Î on held-out batches of ``eval_batch_size``) is evaluated; the state with the lowest
    validation residual is kept (not the best objective: Î is the critic's own score) and training stops after
    ``patience`` evaluations without improvement of it.

    On completion W is re-projected onto the manifold in float64 (a polar step of size ~‖WᵀW − I‖; the
    per-evaluation ``ortho_error`` in ``history`` is measured before it).

    With ``cfg.checkpoint_dir`` the full state (map, critic, optimiser, MINE average, RNG, history, best
    state) is saved every ``checkpoint_every`` steps and at the end, and a later call with the same config and
    data resumes from it, giving the same result as an uninterrupted fit. ``stop_after=k`` stops after step k
    (checkpointed; ``completed=False``): for time-sliced jobs and tests. Bitwise deterministic under
    ``cfg.seed`` on CPU (on GPU up to CUDA's non-deterministic kernels).

    ``progress``: a tqdm bar over the training steps on stderr (labelled ``desc``), with the held-out
    objective (``val``) after each evaluation.
    """
    cfg = _check_cfg(cfg)
    _check_stop_after(stop_after, cfg)
    return MapTrainer(X_train, Y_train, X_val, Y_val, cfg, map=map).fit(stop_after=stop_after, progress=progress, desc=desc)
