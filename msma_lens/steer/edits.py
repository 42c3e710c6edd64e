"""Scale-level edits (MSPGT §B.4): the intervention dataclasses and where they act.

An intervention is a small dataclass naming a scale (or ``layers=``). Residual-stream edits
(:class:`ResidualEdit`) are

* :class:`Translate` ``h + strength·Δ`` (``relative=True``: ``strength`` times the row's mean residual norm at
  that point, along the unit direction), :class:`Rescale` ``strength·h``, :class:`GaussianNoise`
  ``h + strength·ε`` and :class:`Ablate` (project a direction out),

and ``at=`` says where they act (every record stores it):

* ``"entry"``: once, on the stream entering the scale (``hook_resid_pre`` of its first block, the same tensor
  as ``msma.{scale}.hook_in``); the scale's blocks then run on the edited stream.
* ``"held"`` (default): at the entry and after every block of the scale (``hook_resid_post``), each time
  applied to the stream with this edit's previous application taken out, so the stream holds exactly one
  application, never a stack. For Rescale the stream after block l is ``strength ×`` (the entry stream plus
  the blocks' updates so far), i.e. every block's own update is rescaled; for a fixed Translate vector it
  equals ``"entry"``; GaussianNoise draws fresh noise at each point instead of piling it up.
* ``"every"``: after every block (``site=``, ``hook_resid_post`` by default), each application on top of the
  previous ones: the published protocol. It compounds: Rescale(1.5) on SmolLM2's intermediate scale (layers
  10–19) makes the residual norm 8.6× the unsteered one after layer 15 and 34× after layer 19 (held: 1.46–1.50).

:class:`AttentionEdit` (temperature ``T``) is not a residual edit: at every layer of the scale it tempers that
layer's own attention (nothing is carried from layer to layer, so there is nothing to stack). ``mode="query"``
scales ``hook_q`` by ``1/T``, which equals ``scores/T`` on every architecture; ``"scores"`` / ``"pattern"``
edit ``hook_attn_scores`` / ``hook_pattern`` where the architecture honours such edits (masked entries are
never un-masked).

**Where and when.** Positions are *absolute*: position 0 is the first real token of a row (BOS when the
model prepends one), independent of left padding; negative positions count back from the end of the row's
prompt (``-1`` = last prompt token). A forward *step* is 0 for the prompt pass and ``k`` for the pass that
feeds generated token ``k`` back in. Each position is edited according to its own step, on every pass that
computes it, so KV-cached decoding (one ``[B, 1, d]`` step at a time) and uncached decoding (the full
sequence every step) give the same result and no edit is ever re-applied at a later step's strength.
``phase="generated"`` edits the generated tokens fed back into the model: the first generated token is
still produced from the unsteered prompt. A :class:`Schedule` (start, stop, decay) multiplies the strength
per step (``Rescale`` and ``AttentionEdit`` interpolate towards the identity).

Per-row parameters: ``strength``/``temperature`` may be a tensor ``[B]`` and directions ``[B, d]``; each row
then gets its own value. Directions may also be a ``{layer: [d]}`` mapping (the entry uses the first layer's).

Renamed (the old names work for one release and emit DeprecationWarning): ``Scale`` → :class:`Rescale`,
``alpha=`` / ``sigma=`` → ``strength=``.

"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, dataclass
from typing import Any, ClassVar, NamedTuple

import torch

from .. import tl
from ..capture.scales import Scales
from ..errors import ConfigError
from .directions import as_direction
from .schedule import Schedule, check_phase, check_positions, describe_positions, is_number

_PKG_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the msma_lens package
RESID_SITES = ("resid_pre", "resid_mid", "resid_post")
ATTENTION_MODES = ("query", "scores", "pattern")
AT_MODES = ("entry", "held", "every")
DEFAULT_AT = "held"


# ----- parameter checks ------------------------------------------------------------------------------------
def _param(value: Any, name: str, *, lo: float | None = None, lo_open: bool = False) -> float | torch.Tensor:
    """A scalar (-> float) or per-row ``[B]`` parameter (-> float32 tensor), finite and above ``lo``."""
    if isinstance(value, torch.Tensor):
        if value.ndim == 0:
            value = float(value)
        elif value.ndim == 1 and value.numel() > 0:
            value = value.detach().to(torch.float32).cpu()
        else:
            raise ConfigError(f"{name} must be a number or a per-row tensor [B], got shape {tuple(value.shape)}")
    elif isinstance(value, (list, tuple)):
        if not value or not all(is_number(v) for v in value):
            raise ConfigError(f"{name} must be a number or a per-row list/tensor of numbers, got {value!r}")
        value = torch.tensor(value, dtype=torch.float32)
    elif is_number(value):
        value = float(value)
    else:
        raise ConfigError(f"{name} must be a number or a per-row tensor [B], got {type(value).__name__}")
    t = torch.as_tensor(value, dtype=torch.float64)
    if torch.isnan(t).any():
        raise ConfigError(f"{name} is NaN")
    if not torch.isfinite(t).all():
        raise ConfigError(f"{name} is infinite")
    if lo is not None and ((t <= lo).any() if lo_open else (t < lo).any()):
        raise ConfigError(f"{name} must be {'>' if lo_open else '>='} {lo}, got {value if is_number(value) else t.tolist()}")
    return value




def _direction(v: Any, name: str) -> torch.Tensor | dict[int, torch.Tensor]:
    if isinstance(v, Mapping):
        if not v:
            raise ConfigError(f"{name} mapping is empty; expected {{layer: tensor [d]}}")
        out = {}
        for k, x in v.items():
            if not isinstance(k, int) or isinstance(k, bool):
                raise ConfigError(f"{name} mapping keys must be layer indices (int), got {k!r}")
            out[k] = as_direction(x, f"{name}[{k}]")
        return out
    return as_direction(v, name)


def _rows(p: float | torch.Tensor, B: int, name: str, device: torch.device) -> float | torch.Tensor:
    """A parameter broadcast to the batch: a float, or a float32 ``[B]`` tensor on ``device``."""
    if isinstance(p, float):
        return p
    if p.shape[0] != B:
        raise ConfigError(f"{name} has {p.shape[0]} per-row values but the batch has {B} rows")
    return p.to(device)


def _col(p: float | torch.Tensor) -> float | torch.Tensor:
    """``[B]`` -> ``[B, 1]`` (broadcast over positions); floats pass through."""
    return p[:, None] if isinstance(p, torch.Tensor) else p


# ----- interventions ---------------------------------------------------------------------------------------
@dataclass
class EditContext:
    """What an intervention sees for one hook call.

    ``mult`` is the ``[B, T]`` per-position multiplier (0 = leave alone; ``None`` = 1 everywhere);
    ``abs_pos`` the ``[B, T]`` absolute positions (negative on left padding); ``ref_norm`` the ``[B]`` mean
    residual norm of the row's prompt at this point (relative interventions only); ``state`` a dict private
    to (intervention, point) that lives for one sequence. ``point`` is ``"entry"`` for the stream entering the
    scale (``hook_resid_pre`` of block ``layer``), else the per-layer hook (``"layer"``, ``"resid_post"``).
    """

    layer: int
    step: int
    mult: torch.Tensor | None
    abs_pos: torch.Tensor
    ref_norm: torch.Tensor | None
    state: dict
    point: str = "layer"


class EditPoint(NamedTuple):
    """One hook an intervention edits: the block index, what the point is (``"entry"``/``"layer"``/a site), its name."""

    layer: int
    point: str
    name: str


@dataclass
class Intervention:
    """Base class. Subclasses implement :meth:`apply`; ``kind`` names them in records and tables.

    ``scale`` names a group of the model's :class:`~msma_lens.Scales`; ``layers`` picks layers explicitly
    (inside ``scale`` when both are given). ``phase``, ``positions`` and ``schedule`` override those of
    :func:`steer` for this intervention. The base class edits :meth:`hook_name` of every layer (``site``, the
    residual hook); :class:`ResidualEdit` adds ``at=``.
    """

    scale: str | None
    _: KW_ONLY
    layers: Sequence[int] | None = None
    phase: str | None = None
    positions: Any = None
    schedule: Schedule | Mapping | tuple | None = None
    site: str | None = "resid_post"

    kind: ClassVar[str] = "intervention"
    needs_reference: ClassVar[bool] = False

    def __post_init__(self) -> None:
        cls = type(self).__name__
        if self.scale is not None and not isinstance(self.scale, str):
            raise ConfigError(f"{cls}.scale must be a scale name or None, got {self.scale!r}")
        if self.scale is None and self.layers is None:
            raise ConfigError(f"{cls} needs a scale name or layers=[...]")
        if self.layers is not None:
            ls = [self.layers] if isinstance(self.layers, int) else list(self.layers)
            if not ls or not all(isinstance(x, int) and not isinstance(x, bool) for x in ls):
                raise ConfigError(f"{cls}.layers must be a non-empty list of ints, got {self.layers!r}")
            self.layers = tuple(sorted(set(ls)))
        if self.phase is not None:
            check_phase(self.phase, f"{cls}.phase")
        self._positions = check_positions(self.positions, f"{cls}.positions")
        self.schedule = Schedule.coerce(self.schedule)
        if self.site is not None and self.site not in RESID_SITES:
            raise ConfigError(f"{cls}.site must be one of {list(RESID_SITES)}, got {self.site!r}")

    # -- resolution against a model --
    def resolve_layers(self, model: Any, scales: Scales) -> tuple[int, ...]:
        n = tl.n_layers(model)
        cls = type(self).__name__
        in_scale = scales[self.scale] if self.scale is not None else None  # ConfigError names unknown scales
        layers = self.layers if self.layers is not None else in_scale
        bad = [x for x in layers if not 0 <= x < n]
        if bad:
            raise ConfigError(f"{cls}: layers {bad} are outside the model's blocks 0..{n - 1}")
        if in_scale is not None and self.layers is not None:
            outside = [x for x in layers if x not in in_scale]
            if outside:
                raise ConfigError(f"{cls}: layers {outside} are not in scale {self.scale!r} ({in_scale[0]}-{in_scale[-1]})")
        return tuple(layers)

    def hook_name(self, model: Any, layer: int) -> str:
        return tl.resid_name(model, layer, self.site or "resid_post")

    def points(self, model: Any, layers: tuple[int, ...]) -> list[EditPoint]:
        """The hooks this intervention edits, in forward order (here :meth:`hook_name` of every layer)."""
        return [EditPoint(x, "layer", self.hook_name(model, x)) for x in layers]

    def check(self, model: Any, layers: tuple[int, ...]) -> None:
        """Model-dependent checks (widths, architecture support); raise ConfigError."""

    def apply(self, x: torch.Tensor, ctx: EditContext) -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> dict:
        d: dict[str, Any] = {"kind": self.kind, "scale": self.scale, "layers": list(self.layers) if self.layers else None,
                             "at": getattr(self, "at", "every")}
        for k in ("phase", "site"):
            d[k] = getattr(self, k)
        d["positions"] = describe_positions(self._positions)
        d["schedule"] = self.schedule.to_dict() if self.schedule else None
        d.update(self._params())
        return d

    def _params(self) -> dict:
        return {}

    def _check_width(self, v: torch.Tensor | dict, model: Any, name: str, layers: tuple[int, ...]) -> None:
        d = tl.d_model(model)
        vs = v.items() if isinstance(v, dict) else [(None, v)]
        for k, t in vs:
            if t.shape[-1] != d:
                where = f"[{k}]" if k is not None else ""
                raise ConfigError(f"{type(self).__name__}.{name}{where} has width {t.shape[-1]}, but the model's d_model is {d}")
        if isinstance(v, dict):
            missing = [x for x in layers if x not in v]
            if missing:
                raise ConfigError(f"{type(self).__name__}.{name} has no vector for layer(s) {missing}")


def _summ(p: float | torch.Tensor) -> Any:
    return p if isinstance(p, float) else [round(float(v), 6) for v in p]


def _dir_summary(v: torch.Tensor | dict) -> dict:
    if isinstance(v, dict):
        return {"per_layer": sorted(v), "norm": {k: round(float(t.norm()), 6) for k, t in v.items()}}
    return {"shape": list(v.shape), "norm": round(float(v.norm()), 6) if v.ndim == 1 else [round(float(n), 6) for n in v.norm(dim=-1)]}


def _dir_for(v: torch.Tensor | dict, layer: int) -> torch.Tensor:
    return v[layer] if isinstance(v, dict) else v


def _batched_dir(d: torch.Tensor, B: int, name: str, device: torch.device) -> torch.Tensor:
    """``[d]`` -> ``[1, 1, d]``; ``[B, d]`` -> ``[B, 1, d]`` (checked against the batch)."""
    if d.ndim == 1:
        return d.to(device)[None, None]
    if d.shape[0] != B:
        raise ConfigError(f"{name} has {d.shape[0]} per-row directions but the batch has {B} rows")
    return d.to(device)[:, None]


def _apply_mult(x: torch.Tensor, delta: torch.Tensor, mult: torch.Tensor | None) -> torch.Tensor:
    """``x + mult·delta`` with delta ``[B|1, T|1, d]`` in float32, cast to x's dtype."""
    if mult is not None:
        delta = mult.to(delta.device)[..., None] * delta
    return x + delta.to(dtype=x.dtype, device=x.device)


def user_stacklevel() -> int:
    """The ``stacklevel`` that points a warning raised by the caller of this function at the user's code: past
    msma_lens frames, contextlib and generated dataclass ``__init__``s."""
    f, level = sys._getframe(2), 2
    while f is not None and (f.f_code.co_filename.startswith(_PKG_DIR) or f.f_code.co_filename.endswith("contextlib.py")
                             or (f.f_code.co_filename.startswith("<") and f.f_code.co_name == "__init__")):
        f, level = f.f_back, level + 1
    return level


def warn_deprecated(msg: str) -> None:
    """A DeprecationWarning pointing at the caller's code (past msma_lens frames and generated ``__init__``s)."""
    warnings.warn(msg, DeprecationWarning, stacklevel=user_stacklevel())


def _alias(old: str, new: str) -> property:
    def get(self: Any) -> Any:
        warn_deprecated(f"{type(self).__name__}.{old} is deprecated; use .{new}")
        return getattr(self, new)

    def put(self: Any, value: Any) -> None:
        warn_deprecated(f"{type(self).__name__}.{old} is deprecated; use .{new}")
        setattr(self, new, value)

    return property(get, put, doc=f"Deprecated alias of ``{new}``.")


def _renamed(**renames: str) -> Any:
    """Class decorator: deprecated keyword and attribute names ``old=new`` that keep working for one release."""

    def wrap(cls: type) -> type:
        init = cls.__init__

        @functools.wraps(init)
        def __init__(self: Any, *args: Any, **kw: Any) -> None:
            for old, new in renames.items():
                if old in kw:
                    if new in kw:
                        raise ConfigError(f"{type(self).__name__}: pass {new}= only ({old}= is its deprecated name)")
                    warn_deprecated(f"{type(self).__name__}({old}=...) is deprecated; use {new}=")
                    kw[new] = kw.pop(old)
            init(self, *args, **kw)

        cls.__init__ = __init__
        for old, new in renames.items():
            setattr(cls, old, _alias(old, new))
        return cls

    return wrap


@dataclass
class ResidualEdit(Intervention):
    """An edit of the residual stream, ``x ↦ apply(x)``; ``at`` says where it acts on the scale.

    * ``"entry"``: once, at ``hook_resid_pre`` of the scale's first block (the stream entering the scale).
    * ``"held"`` (default): at the entry and at ``hook_resid_post`` of every block, each time applied to the stream
      with this edit's previous application removed (``x ↦ apply(x − e)`` where ``e`` is what the previous point
      added), so the stream carries exactly one application: for Rescale each block's own update is rescaled.
    * ``"every"``: at ``site`` (``hook_resid_post`` by default) of every block, on top of the previous
      applications (the published protocol; it compounds).

    ``site`` applies to ``"every"`` only. Subclasses implement :meth:`apply` as a function of the stream.
    """

    _: KW_ONLY
    at: str = DEFAULT_AT
    site: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        cls = type(self).__name__
        if self.at not in AT_MODES:
            raise ConfigError(f"{cls}.at must be one of {list(AT_MODES)}, got {self.at!r}")
        if self.at != "every" and self.site is not None:
            where = "hook_resid_pre of the scale's first block" + (" and hook_resid_post of every block" if self.at == "held" else "")
            raise ConfigError(f"{cls}.site applies to at='every' only; at={self.at!r} edits {where}")

    def check(self, model: Any, layers: tuple[int, ...]) -> None:
        if self.site == "resid_mid" and tl.backend(model) == "TransformerBridge":
            raise ConfigError(f"{type(self).__name__}(site='resid_mid'): on TransformerBridge hook_resid_mid is ln2's input; an "
                              "edit there changes what the MLP reads but not the residual stream (use resid_pre/resid_post)")

    def describe(self) -> dict:
        d = super().describe()
        d["site"] = (self.site or "resid_post") if self.at == "every" else None
        return d

    def points(self, model: Any, layers: tuple[int, ...]) -> list[EditPoint]:
        if self.at == "every":
            return super().points(model, layers)
        out = [EditPoint(layers[0], "entry", tl.resid_name(model, layers[0], "resid_pre"))]
        if self.at == "held":
            out += [EditPoint(x, "resid_post", tl.resid_name(model, x, "resid_post")) for x in layers]
        return out


@dataclass
class Translate(ResidualEdit):
    """``h + strength·Δ``; ``relative=True``: ``h + strength·‖h‖_mean·Δ/‖Δ‖`` with ``‖h‖_mean`` the row's mean
    residual norm at that point over its prompt positions except BOS and padding (measured on the prompt pass;
    with ``at="held"`` on the stream without this edit). Held, the stream carries one translation at a time."""

    direction: Any = None
    strength: Any = 1.0
    relative: bool = False
    kind: ClassVar[str] = "translate"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.direction is None:
            raise ConfigError("Translate needs a direction (a tensor [d] or [B, d], or {layer: tensor})")
        self.direction = _direction(self.direction, "Translate.direction")
        self.strength = _param(self.strength, "Translate.strength")
        if not isinstance(self.relative, bool):
            raise ConfigError(f"Translate.relative must be a bool, got {self.relative!r}")

    @property
    def needs_reference(self) -> bool:  # type: ignore[override]
        return self.relative

    def check(self, model: Any, layers: tuple[int, ...]) -> None:
        super().check(model, layers)
        self._check_width(self.direction, model, "direction", layers)

    def apply(self, x: torch.Tensor, ctx: EditContext) -> torch.Tensor:
        B, dev = x.shape[0], x.device
        d = _batched_dir(_dir_for(self.direction, ctx.layer), B, "Translate.direction", dev)
        s = _rows(self.strength, B, "Translate.strength", dev)
        if self.relative:
            d = d / d.norm(dim=-1, keepdim=True)
            s = s * ctx.ref_norm.to(dev)
        coef = s[:, None, None] if isinstance(s, torch.Tensor) else s
        return _apply_mult(x, coef * d, ctx.mult)

    def _params(self) -> dict:
        return {"strength": _summ(self.strength), "relative": self.relative, "direction": _dir_summary(self.direction)}


@_renamed(alpha="strength")
@dataclass
class Rescale(ResidualEdit):
    """``strength·h`` (amplify > 1, attenuate < 1; 1 is the identity). With a schedule multiplier m the factor is
    ``1 + (strength−1)·m``. ``at="held"``: after block l the stream is ``strength ×`` (the entry stream plus the
    blocks' updates so far), i.e. every block's update is rescaled too; ``"every"`` compounds (``strength^k``)."""

    strength: Any = 1.0
    kind: ClassVar[str] = "rescale"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.strength = _param(self.strength, f"{type(self).__name__}.strength")

    def apply(self, x: torch.Tensor, ctx: EditContext) -> torch.Tensor:
        a = _rows(self.strength, x.shape[0], f"{type(self).__name__}.strength", x.device)
        if ctx.mult is None:
            return x * (a[:, None, None].to(x.dtype) if isinstance(a, torch.Tensor) else a)
        m = ctx.mult.to(x.device)
        a = _col(a)
        f = torch.where(m == 1, torch.as_tensor(a, dtype=torch.float32, device=x.device).expand_as(m), 1 + (a - 1) * m)
        return x * f[..., None].to(x.dtype)

    def _params(self) -> dict:
        return {"strength": _summ(self.strength)}


class Scale(Rescale):
    """Deprecated name of :class:`Rescale` (``alpha=`` is now ``strength=``); removed in the next release."""

    def __post_init__(self) -> None:
        warn_deprecated("msma_lens.Scale is deprecated; use Rescale (the edit), not to be confused with Scales (the partition)")
        super().__post_init__()


@_renamed(sigma="strength")
@dataclass
class GaussianNoise(ResidualEdit):
    """``h + strength·ε``, ε ~ N(0, I) per position; ``relative=True``: strength times the row's RMS residual
    coordinate (``‖h‖_mean/√d``, so the noise norm is about ``strength·‖h‖_mean``). ``at="held"`` replaces the
    previous point's noise with a fresh draw (the noise never piles up); ``"every"`` adds a draw at every layer.

    Noise comes from its own seeded generators, never the global RNG: one stream per (row seed, layer, point),
    consumed position by position, so a position's noise does not depend on KV caching or on the rest of the
    batch. ``seed`` is an int (every row gets the same stream: common random numbers, batch-invariant) or one
    seed per row (independent noise per row).
    """

    strength: Any = 0.0
    relative: bool = False
    seed: int | Sequence[int] = 0
    kind: ClassVar[str] = "noise"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.strength = _param(self.strength, "GaussianNoise.strength", lo=0.0)
        if not isinstance(self.relative, bool):
            raise ConfigError(f"GaussianNoise.relative must be a bool, got {self.relative!r}")
        if isinstance(self.seed, torch.Tensor):
            self.seed = [int(s) for s in self.seed.flatten()]
        ok = (isinstance(self.seed, int) and not isinstance(self.seed, bool)) or (
            isinstance(self.seed, (list, tuple)) and len(self.seed) > 0 and all(isinstance(s, int) for s in self.seed))
        if not ok:
            raise ConfigError(f"GaussianNoise.seed must be an int or a list of per-row ints, got {self.seed!r}")

    @property
    def needs_reference(self) -> bool:  # type: ignore[override]
        return self.relative

    def _row_seeds(self, B: int) -> list[int]:
        if isinstance(self.seed, int):
            return [self.seed] * B
        if len(self.seed) != B:
            raise ConfigError(f"GaussianNoise.seed has {len(self.seed)} per-row seeds but the batch has {B} rows")
        return list(self.seed)

    def noise(self, ctx: EditContext, B: int, d: int) -> torch.Tensor:
        """``[B, T, d]`` float32 noise for the absolute positions of this call (CPU generators)."""
        st = ctx.state
        if "gens" not in st:
            key = (ctx.layer,) if ctx.point != "entry" else (ctx.layer, "entry")
            st["gens"] = [torch.Generator().manual_seed(mix_seed(s, *key)) for s in self._row_seeds(B)]
            st["buf"] = torch.zeros(B, 0, d)
        need = int(ctx.abs_pos.max()) + 1
        buf = st["buf"]
        if need > buf.shape[1]:
            # one draw of [d] per position: torch.randn(n, d) is not the concatenation of n draws of [d] when
            # d % 16 != 0 (CPU normal_ fills in blocks of 16), which would tie the noise to how many positions
            # a pass happened to need (batched vs one-by-one prompts)
            n = need - buf.shape[1]
            new = torch.stack([torch.stack([torch.randn(d, generator=g) for _ in range(n)]) for g in st["gens"]])
            st["buf"] = buf = torch.cat([buf, new], dim=1)
        idx = ctx.abs_pos.clamp(min=0).cpu()
        return buf[torch.arange(B)[:, None], idx]

    def apply(self, x: torch.Tensor, ctx: EditContext) -> torch.Tensor:
        B, d, dev = x.shape[0], x.shape[-1], x.device
        s = _rows(self.strength, B, "GaussianNoise.strength", dev)
        if self.relative:
            s = s * ctx.ref_norm.to(dev) / math.sqrt(d)
        eps = self.noise(ctx, B, d).to(dev)
        coef = s[:, None, None] if isinstance(s, torch.Tensor) else s
        return _apply_mult(x, coef * eps, ctx.mult)

    def _params(self) -> dict:
        return {"strength": _summ(self.strength), "relative": self.relative, "seed": self.seed}


def mix_seed(*parts: Any) -> int:
    h = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & 0x7FFF_FFFF_FFFF_FFFF


@dataclass
class Ablate(ResidualEdit):
    """Project a direction out: ``h − (h·u)u`` with ``u = Δ/‖Δ‖`` (a schedule multiplier m removes ``m·(h·u)u``).

    A projection does not stack, so ``"every"`` does not compound; ``"held"`` gives the stream of ``"every"``
    plus the ablation at the entry; ``"entry"`` lets the scale's blocks write the direction back.
    """

    direction: Any = None
    kind: ClassVar[str] = "ablate"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.direction is None:
            raise ConfigError("Ablate needs a direction (a tensor [d] or [B, d], or {layer: tensor})")
        self.direction = _direction(self.direction, "Ablate.direction")

    def check(self, model: Any, layers: tuple[int, ...]) -> None:
        super().check(model, layers)
        self._check_width(self.direction, model, "direction", layers)

    def apply(self, x: torch.Tensor, ctx: EditContext) -> torch.Tensor:
        u = _batched_dir(_dir_for(self.direction, ctx.layer), x.shape[0], "Ablate.direction", x.device)
        u = u / u.norm(dim=-1, keepdim=True)
        proj = (x.float() * u).sum(-1, keepdim=True)  # [B, T, 1]
        return _apply_mult(x, -proj * u, ctx.mult)

    def _params(self) -> dict:
        return {"direction": _dir_summary(self.direction)}


@dataclass
class AttentionEdit(Intervention):
    """Attention temperature ``T`` (``T < 1`` sharpens, ``T > 1`` flattens) at every layer of the scale.

    Not a residual edit: each layer's own attention is tempered once (records say ``at="every"``); nothing is
    carried in the residual stream from one layer's edit to the next, so there is nothing to stack or hold.
    ``temperature`` is its strength knob (1 is the identity). ``mode="query"`` multiplies ``hook_q`` by ``1/T``: ``(q/T)·k = scores/T`` exactly, on every architecture
    (including BERT-style bridges that delegate attention to Hugging Face). ``"scores"`` divides the unmasked
    entries of ``hook_attn_scores`` by T (masked entries, ``-inf`` on HookedTransformer and ``finfo.min`` on the
    bridge, are left as they are). ``"pattern"`` re-weights ``hook_pattern`` as ``p^(1/T)`` renormalised over
    keys, which equals ``softmax(scores/T)`` and keeps masked zeros at zero. ``"scores"``/``"pattern"`` raise
    ConfigError on architectures that discard such edits. Positions select query positions.
    """

    temperature: Any = 1.0
    mode: str = "query"
    _: KW_ONLY
    site: str | None = None
    kind: ClassVar[str] = "attention"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.site is not None:
            raise ConfigError(f"AttentionEdit edits attention hooks (mode={self.mode!r}), not the residual site {self.site!r}")
        self.temperature = _param(self.temperature, "AttentionEdit.temperature", lo=0.0, lo_open=True)
        if self.mode not in ATTENTION_MODES:
            raise ConfigError(f"AttentionEdit.mode must be one of {list(ATTENTION_MODES)}, got {self.mode!r}")

    def hook_name(self, model: Any, layer: int) -> str:
        return tl.attn_hook_name(model, layer, self.mode)

    def check(self, model: Any, layers: tuple[int, ...]) -> None:
        if self.mode == "query":
            return
        bad = [x for x in layers if not tl.attention_edits_flow(model, x)]
        if bad:
            raise ConfigError(
                f"AttentionEdit(mode={self.mode!r}) at layer(s) {bad}: this architecture's attention "
                f"({tl.attention_class(model, bad[0])}) delegates to the Hugging Face module and discards edits to "
                f"hook_attn_scores/hook_pattern; use mode='query' (q/T gives exactly scores/T)")

    def _factor(self, ctx: EditContext, B: int, device: torch.device) -> torch.Tensor | float:
        """``1/T`` per (row, query position) as ``[B, Tq]`` float32, or a float when uniform."""
        inv = _rows(self.temperature, B, "AttentionEdit.temperature", device)
        inv = 1.0 / inv
        if ctx.mult is None:
            return inv
        m = ctx.mult.to(device)
        inv = torch.as_tensor(_col(inv), dtype=torch.float32, device=device).expand_as(m)
        return torch.where(m == 1, inv, torch.pow(inv, m))

    def apply(self, x: torch.Tensor, ctx: EditContext) -> torch.Tensor:
        B, dev = x.shape[0], x.device
        f = self._factor(ctx, B, dev)
        if self.mode == "query":  # q: [B, T, H, dh]
            if isinstance(f, torch.Tensor):
                f = (f[:, :, None, None] if f.ndim == 2 else f[:, None, None, None]).to(x.dtype)
            return x * f
        # scores / pattern: [B, H, Tq, Tk]
        if isinstance(f, torch.Tensor):
            f = f[:, None, :, None] if f.ndim == 2 else f[:, None, None, None]
        else:
            f = torch.full((1, 1, 1, 1), f, device=dev)
        if self.mode == "scores":
            live = x > torch.finfo(x.dtype).min / 2  # False for -inf and finfo.min
            return torch.where(live, x * f.to(x.dtype), x)
        p = x.float().clamp(min=0).pow(f)
        z = p.sum(-1, keepdim=True)
        new = torch.where(z > 0, p / z.clamp(min=torch.finfo(torch.float32).tiny), x.float()).to(x.dtype)
        return torch.where(f != 1, new, x)  # T = 1 (or an unselected query) leaves the row exactly as it was

    def _params(self) -> dict:
        return {"temperature": _summ(self.temperature), "mode": self.mode}


