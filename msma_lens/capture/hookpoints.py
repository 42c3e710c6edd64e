"""Per-scale TransformerLens hook points: ``msma.{scale}.hook_in`` and ``msma.{scale}.hook_resid``.

:func:`attach` adds a module holding two HookPoints per scale to the model (``model.msma``), so they appear in
``model.hook_dict`` and work with ``run_with_cache(names_filter=...)``, ``add_hook``, ``hooks(...)`` and
``run_with_hooks`` like the model's own points:

* ``msma.{scale}.hook_in`` ``[batch, pos, d_model]``: the residual stream entering the scale (``hook_resid_pre``
  of its first block). A hook that returns an edited tensor changes what the scale's layers see.
* ``msma.{scale}.hook_resid`` ``[batch, pos, d_model]``: the mean over the scale's blocks of the residual at
  ``site`` (``hook_resid_post`` by default), fired after the scale's last block. A read-out: what a hook returns
  here is not fed back into the model (edit ``hook_in`` or the blocks' own points for that).

Permanent driver hooks on the blocks' points feed them; a driver does nothing unless something is attached to its
HookPoint, so unused points cost one Python call per block and forward pass. :func:`detach` removes it all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .. import tl
from ..capture.scales import Scales
from ..errors import ConfigError

ROOT = "msma"
HOOK_IN = "hook_in"
HOOK_RESID = "hook_resid"


def hook_name(scale: str, point: str = HOOK_RESID) -> str:
    """The hook-dict name of one scale's point: ``msma.{scale}.hook_resid`` or ``msma.{scale}.hook_in``."""
    if point not in (HOOK_IN, HOOK_RESID):
        raise ConfigError(f"unknown scale hook point {point!r}; valid: {[HOOK_IN, HOOK_RESID]}")
    return f"{ROOT}.{scale}.{point}"


class ScaleHookPoints(torch.nn.Module):
    """The two hook points of one scale."""

    def __init__(self) -> None:
        super().__init__()
        self.hook_in = tl.new_hook_point()
        self.hook_resid = tl.new_hook_point()


class ScaleHooks(torch.nn.Module):
    """All scales' hook points; attached to a model as ``model.msma`` (``get_hooks()`` is the bridge's protocol)."""

    def __init__(self, scales: Scales, site: str) -> None:
        super().__init__()
        self.scales = scales
        self.site = site
        for name in scales.names:
            self.add_module(name, ScaleHookPoints())

    def point(self, scale: str, point: str) -> torch.nn.Module:
        return getattr(getattr(self, scale), point)

    def get_hooks(self) -> dict[str, torch.nn.Module]:
        return {f"{s}.{p}": self.point(s, p) for s in self.scales.names for p in (HOOK_IN, HOOK_RESID)}

    def extra_repr(self) -> str:
        return f"{self.scales!r}, site={self.site!r}"


@dataclass
class _Driver:
    """Feeds one scale's points from its blocks' hooks."""

    points: ScaleHookPoints
    layers: tuple[int, ...]
    acc: torch.Tensor | None = None
    handles: list = field(default_factory=list)

    def entering(self, x: torch.Tensor, hook: Any) -> torch.Tensor | None:
        if not tl.has_hooks(self.points.hook_in):
            return None
        return self.points.hook_in(x)

    def block(self, layer: int, x: torch.Tensor) -> None:
        if not tl.has_hooks(self.points.hook_resid):
            self.acc = None
            return
        if layer == self.layers[0]:
            self.acc = x.float()
        elif self.acc is None or self.acc.shape != x.shape:  # the scale's first block did not run in this pass
            self.acc = None
            return
        else:
            self.acc = self.acc + x.float()  # out of place: gradients flow through hook_resid
        if layer == self.layers[-1]:
            mean, self.acc = (self.acc / len(self.layers)).to(x.dtype), None
            self.points.hook_resid(mean)


def attached(model: Any) -> ScaleHooks | None:
    """The :class:`ScaleHooks` attached to ``model``, if any."""
    module = getattr(model, ROOT, None)
    return module if isinstance(module, ScaleHooks) else None


def attach(model: Any, scales: Scales, site: str = "resid_post") -> ScaleHooks:
    """Add ``msma.{scale}.hook_in`` / ``hook_resid`` for every scale to ``model`` (see the module docstring).

    Attaching the same partition and site again is a no-op; a different one replaces the old points (their
    user hooks go with them).
    """
    tl.check_model(model)
    scales = scales.validate(tl.n_layers(model))
    old = attached(model)
    if old is not None:
        if old.site == site and old.scales.same_partition(scales) and list(old.scales.names) == list(scales.names):
            return old
        detach(model)
    module = ScaleHooks(scales, site)
    first_names = {s: tl.resid_name(model, ls[0], "resid_pre") for s, ls in scales.items()}
    block_names = {x: tl.resid_name(model, x, site) for x in scales.layers}
    tl.attach_hook_module(model, ROOT, module)
    drivers = []
    try:
        for s, ls in scales.items():
            d = _Driver(getattr(module, s), tuple(ls))
            d.handles.append(tl.add_permanent_hook(model, first_names[s], d.entering))
            for x in ls:
                d.handles.append(tl.add_permanent_hook(model, block_names[x], lambda t, hook, d=d, x=x: d.block(x, t)))
            drivers.append(d)
    except BaseException:
        for d in drivers:
            for h in d.handles:
                tl.remove_permanent_hook(h)
        tl.detach_hook_module(model, ROOT)
        raise
    module.drivers = drivers  # plain attribute: not part of the module tree
    return module


def detach(model: Any) -> None:
    """Remove the per-scale hook points and their drivers (a no-op when none are attached)."""
    module = attached(model)
    if module is None:
        return
    for d in getattr(module, "drivers", []):
        for h in d.handles:
            tl.remove_permanent_hook(h)
    tl.detach_hook_module(model, ROOT)
