"""Plugin registry: named analyses of :class:`~msma_lens.ScaleActivations`, registered in code or discovered
from installed packages through the entry-point group ``msma_lens.plugins``.

Protocol
--------
An **analysis** is a class (or a factory returning an instance) that

* is constructed with keyword options only and validates them in the constructor, raising
  :class:`~msma_lens.errors.ConfigError` naming the option (a dataclass with ``__post_init__`` is the usual
  form); ``run`` checks the option names against the signature before constructing it;
* has ``fit(acts: ScaleActivations) -> result`` (or, failing that, ``__call__(acts) -> result``). A ``fit``
  that declares a ``lens`` parameter also receives the :class:`~msma_lens.MSMA` lens when ``run`` is given one;
* may set a class attribute ``description`` (one line); otherwise the first line of its docstring is used.

A **result** has ``save(path) -> Path``, classmethod ``load(path)``, ``figures() -> dict[str, plotly Figure]``
and ``summary() -> str``. Subclass :class:`AnalysisResult` and implement ``to_artifact`` / ``from_artifact``
and ``summary`` to get the rest: results are msma-lens artifacts (``tensors.safetensors`` + ``cfg.json`` with
checksums, see :mod:`msma_lens.io.artifacts`) whose ``cfg.json`` also carries the provenance ``run`` records
(plugin name and version, options, msma-lens version, the activations' model, scales and corpus hash).

A package exposes an analysis with an entry point::

    [project.entry-points."msma_lens.plugins"]
    intrinsic-dim = "msma_intrinsic_dim:IntrinsicDimension"

Use: ``available()`` lists plugins, ``get(name)`` returns the analysis, ``run(name, acts, **options)`` builds
and fits it. Entry points are loaded once, on first use (``discover(reload=True)`` rescans); one that fails to
import is reported as a :class:`PluginWarning` naming it, and the others still load.
"""

from __future__ import annotations

import importlib.metadata as md
import inspect
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch

from .capture.activations import ScaleActivations
from .errors import ArtifactError, ConfigError
from .io.artifacts import json_clean, load_artifact, save_artifact, write_text_atomic

GROUP = "msma_lens.plugins"

__all__ = ["GROUP", "Analysis", "AnalysisResult", "PluginInfo", "PluginWarning", "Result", "available", "create",
           "discover", "get", "register", "run", "unregister", "write_figures"]


class PluginWarning(UserWarning):
    """An installed plugin that could not be loaded (import error, name clash); the others are unaffected."""


@runtime_checkable
class Result(Protocol):
    """What an analysis returns."""

    def save(self, path: str | os.PathLike) -> Path: ...

    @classmethod
    def load(cls, path: str | os.PathLike) -> Result: ...

    def figures(self) -> dict[str, Any]: ...

    def summary(self) -> str: ...


@runtime_checkable
class Analysis(Protocol):
    """A constructed analysis: ``fit(acts)`` returns a :class:`Result`."""

    def fit(self, acts: ScaleActivations) -> Result: ...


class AnalysisResult:
    """Base class for results: implement ``to_artifact``, ``from_artifact`` and ``summary``; ``figures`` is optional.

    ``kind`` (the artifact's ``format``) defaults to ``"module.QualName"`` of the subclass. ``provenance`` is
    filled by :func:`run` and saved with the result.
    """

    kind: ClassVar[str] = ""
    provenance: dict

    def to_artifact(self) -> tuple[dict[str, torch.Tensor], dict]:
        """(tensors, JSON-able metadata) to save."""
        raise NotImplementedError

    @classmethod
    def from_artifact(cls, tensors: dict[str, torch.Tensor], cfg: dict) -> AnalysisResult:
        """Inverse of :meth:`to_artifact` (``cfg`` is its metadata; non-finite floats come back as ``None``)."""
        raise NotImplementedError

    def summary(self) -> str:
        raise NotImplementedError

    def figures(self) -> dict[str, Any]:
        """Named plotly figures (none by default)."""
        return {}

    @classmethod
    def artifact_kind(cls) -> str:
        return cls.kind or f"{cls.__module__}.{cls.__qualname__}"

    def save(self, path: str | os.PathLike, figures: bool = False) -> Path:
        """Write the artifact; with ``figures=True`` also ``NAME.html`` per figure (plotly.js inlined) into it."""
        tensors, cfg = self.to_artifact()
        out = save_artifact(path, self.artifact_kind(), tensors, {"result": cfg, "provenance": getattr(self, "provenance", {})})
        if figures:
            write_figures(self, out)
        return out

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "cpu") -> AnalysisResult:
        tensors, cfg = load_artifact(path, cls.artifact_kind(), device=device)
        try:
            out = cls.from_artifact(tensors, cfg["result"])
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise ArtifactError(f"{path}: inconsistent {cls.__name__} artifact ({type(e).__name__}: {e})") from e
        out.provenance = cfg.get("provenance", {})
        return out


def write_figures(result: Any, directory: str | os.PathLike) -> list[Path]:
    """Write each of ``result.figures()`` as ``directory/NAME.html`` (self-contained: plotly.js inlined)."""
    directory = Path(directory)
    return [write_text_atomic(directory / f"{name}.html", fig.to_html(include_plotlyjs=True, full_html=True))
            for name, fig in result.figures().items()]


@dataclass(frozen=True)
class PluginInfo:
    """One registered analysis. ``source`` is ``"entry point"`` or ``"registered"`` (in code)."""

    name: str
    target: str
    dist: str | None
    version: str | None
    description: str
    source: str


@dataclass
class _Entry:
    obj: Any
    info: PluginInfo

    @property
    def origin(self) -> str:
        i = self.info
        if i.source == "entry point":
            return f"entry point {i.name!r} = {i.target}" + (f" of {i.dist} {i.version or ''}".rstrip() if i.dist else "")
        return f"{i.target} (registered in code)"


_REGISTRY: dict[str, _Entry] = {}
_CLASHES: dict[str, list[str]] = {}  # names claimed by two entry points: get() refuses them
_discovered = False


def _target(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', type(obj).__qualname__)}"


def _description(obj: Any) -> str:
    d = getattr(obj, "description", None)
    if not isinstance(d, str):
        d = inspect.getdoc(obj) or ""
    return next((line.strip() for line in d.splitlines() if line.strip()), "")


def _module_version(obj: Any) -> str | None:
    mod = sys.modules.get(str(getattr(obj, "__module__", "")).partition(".")[0])
    v = getattr(mod, "__version__", None)
    return v if isinstance(v, str) else None


def _check_analysis(name: str, obj: Any) -> None:
    if not callable(obj):
        raise ConfigError(f"plugin {name!r}: {obj!r} is not an analysis class or factory (not callable)")
    if inspect.isclass(obj) and not (callable(getattr(obj, "fit", None))
                                     or any("__call__" in vars(k) for k in obj.__mro__[:-1])):
        raise ConfigError(f"plugin {name!r}: class {_target(obj)} has neither fit(acts) nor __call__(acts)")


def _check_name(name: Any) -> None:
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise ConfigError(f"plugin names are non-empty strings without surrounding spaces, got {name!r}")


def _add(entry: _Entry) -> None:
    name = entry.info.name
    old = _REGISTRY.get(name)
    if old is not None:
        if old.obj is entry.obj:  # the same analysis again (e.g. a decorated class that also has an entry point)
            if entry.info.source == "entry point":
                _REGISTRY[name] = entry
            return
        raise ConfigError(f"plugin name {name!r} is already registered by {old.origin}; "
                          f"cannot register it again for {entry.origin}")
    _REGISTRY[name] = entry


def register(name: str, analysis: Any = None, *, description: str | None = None):
    """Register ``analysis`` (a class or factory, see the module docstring) under ``name``.

    Without ``analysis`` it is a class decorator: ``@register("name")``. A name already taken by another
    analysis raises ConfigError naming both; registering the same object again is a no-op.
    """
    _check_name(name)

    def deco(obj: Any) -> Any:
        _check_analysis(name, obj)
        info = PluginInfo(name, _target(obj), None, _module_version(obj), description or _description(obj), "registered")
        _add(_Entry(obj, info))
        return obj

    return deco if analysis is None else deco(analysis)


def unregister(name: str) -> None:
    """Remove ``name`` from the registry (ConfigError if it is not registered)."""
    if _REGISTRY.pop(name, None) is None and _CLASHES.pop(name, None) is None:
        raise ConfigError(f"plugin {name!r} is not registered; available: {_names()}")


def discover(reload: bool = False) -> list[str]:
    """Load the entry points of group ``msma_lens.plugins`` (once; again with ``reload=True``); the names loaded.

    An entry point that fails to import, is not an analysis, or clashes with another name is reported as a
    :class:`PluginWarning` naming it and skipped; two entry points claiming one name make that name unusable
    (``get`` names both) rather than picking one silently.
    """
    global _discovered
    if _discovered and not reload:
        return []
    _discovered = True
    _CLASHES.clear()  # recomputed below
    loaded = []
    for ep in md.entry_points(group=GROUP):
        dist = getattr(ep, "dist", None)
        dname = getattr(dist, "name", None) if dist is not None else None
        dver = getattr(dist, "version", None) if dist is not None else None
        where = f"entry point {ep.name!r} = {ep.value}" + (f" of {dname} {dver}" if dname else "")
        try:
            _check_name(ep.name)
            obj = ep.load()
            _check_analysis(ep.name, obj)
            info = PluginInfo(ep.name, ep.value, dname, dver or _module_version(obj), _description(obj), "entry point")
            old = _REGISTRY.get(ep.name)
            if old is not None and old.obj is not obj and old.info.source == "entry point":
                _REGISTRY.pop(ep.name)
                _CLASHES[ep.name] = [old.origin, _Entry(obj, info).origin]
                raise ConfigError(f"plugin name {ep.name!r} is declared by both {old.origin} and {_Entry(obj, info).origin}")
            if ep.name in _CLASHES:
                _CLASHES[ep.name].append(_Entry(obj, info).origin)
                raise ConfigError(f"plugin name {ep.name!r} is declared by {' and '.join(_CLASHES[ep.name])}")
            _add(_Entry(obj, info))
            loaded.append(ep.name)
        except Exception as e:  # a broken plugin must not break the others
            msg = str(e) if isinstance(e, ConfigError) else f"failed to load: {type(e).__name__}: {e}"
            warnings.warn(f"msma-lens plugin {where}: {msg}", PluginWarning, stacklevel=2)
    return loaded


def _names() -> list[str]:
    return sorted(_REGISTRY)


def available() -> list[PluginInfo]:
    """Every registered and installed plugin, sorted by name."""
    discover()
    return [_REGISTRY[n].info for n in _names()]


def get(name: str) -> Any:
    """The analysis class or factory registered as ``name`` (ConfigError listing the available names if unknown)."""
    discover()
    if name in _CLASHES:
        raise ConfigError(f"plugin name {name!r} is declared by {' and '.join(_CLASHES[name])}; uninstall one of them")
    if name not in _REGISTRY:
        raise ConfigError(f"unknown plugin {name!r}; available: {_names()} "
                          f"(installed packages add plugins through the entry-point group {GROUP!r})")
    return _REGISTRY[name].obj


def create(name: str, **options: Any) -> Any:
    """Construct plugin ``name`` with ``options`` (ConfigError naming the plugin for an unknown option)."""
    factory = get(name)
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        sig = None
    if sig is not None:
        try:
            sig.bind(**options)
        except TypeError as e:
            accepted = [p.name for p in sig.parameters.values() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
            raise ConfigError(f"plugin {name!r}: {e}; its options are {accepted}") from None
    analysis = factory(**options)
    if not (callable(getattr(analysis, "fit", None)) or callable(analysis)):
        raise ConfigError(f"plugin {name!r}: {_target(factory)} built a {type(analysis).__name__}, which has neither fit(acts) nor __call__(acts)")
    return analysis


def _jsonable(v: Any) -> Any:
    try:
        return json_clean(v)
    except TypeError:
        return repr(v)


def _is_lens(obj: Any) -> bool:
    """An :class:`~msma_lens.MSMA` lens, recognised by duck typing (the lens layer sits above the plugin registry)."""
    return all(hasattr(obj, a) for a in ("model", "scales", "capture", "provenance")) and not isinstance(obj, ScaleActivations)


def run(name: str, data: Any, /, *, acts: ScaleActivations | None = None, **options: Any) -> Any:
    """Build plugin ``name`` with ``options`` and fit it on ``data``: a ScaleActivations, or an MSMA lens together
    with ``acts=`` (a lens holds no activations; they must match its scales). Returns the plugin's result, with
    ``provenance`` recorded on it when it is an :class:`AnalysisResult`."""
    lens = None
    if isinstance(data, ScaleActivations):
        if acts is not None:
            raise ConfigError(f"plugin {name!r}: activations given twice (as data and as acts=)")
        acts = data
    elif _is_lens(data):
        lens = data
        if acts is None:
            raise ConfigError(f"plugin {name!r} was given an MSMA lens without activations: pass acts=lens.capture(texts)")
        if not isinstance(acts, ScaleActivations):
            raise ConfigError(f"plugin {name!r}: acts must be ScaleActivations, got {type(acts).__name__}")
        acts.check_matches(lens.model_id, lens.scales, what=f"plugin {name!r} with this lens")
    else:
        raise ConfigError(f"plugin {name!r} analyses ScaleActivations (or an MSMA lens with acts=), got {type(data).__name__}")
    analysis = create(name, **options)
    fit = getattr(analysis, "fit", None)
    fn = fit if callable(fit) else analysis
    kwargs = {}
    if lens is not None:
        try:
            if "lens" in inspect.signature(fn).parameters:
                kwargs["lens"] = lens
        except (TypeError, ValueError):
            pass
    result = fn(acts, **kwargs)
    missing = [m for m in ("save", "load", "figures", "summary") if not callable(getattr(result, m, None))]
    if missing:
        raise ConfigError(f"plugin {name!r} ({_target(get(name))}) returned a {type(result).__name__} without {missing}; "
                          "results need save, load, figures and summary")
    if isinstance(result, AnalysisResult):
        from . import __version__

        info = _REGISTRY[name].info
        meta = acts.meta
        result.provenance = {"plugin": name, "plugin_target": info.target, "plugin_version": info.version,
                             "options": {k: _jsonable(v) for k, v in options.items()}, "msma_lens_version": __version__, "n_rows": len(acts),
                             "acts": {k: meta.get(k) for k in ("model_id", "backend", "tl_version", "scales", "site", "pooling",
                                                                   "layer_agg", "corpus_sha256", "n_docs")
                                      if k in meta}}
    return result
