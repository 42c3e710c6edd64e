"""Scales: named, contiguous, non-overlapping groups of transformer blocks (local → intermediate → global).

Layers are block indices ``0 … n_layers-1``; a scale's activations are read at ``blocks.{i}.hook_resid_post``
(or another residual site) of each of its layers.
"""

from __future__ import annotations

import hashlib
import json
import operator
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from ..errors import ConfigError

DEFAULT_NAMES = ("local", "intermediate", "global")

# Published partitions in Hugging Face ``hidden_states`` indices (0 = embedding output, i = output of block
# i-1), from papers.md §A.2/§B.3. They are converted to block indices by ``h -> h - 1``; hidden state 0 (the
# embeddings) is not a block output and is dropped.
_PRESETS: dict[str, dict] = {
    "gpt2": {"n_layers": 12, "hidden": {"local": (0, 2), "intermediate": (3, 8), "global": (9, 12)},
             "source": "MSPGT/MSMA README table"},
    "bert": {"n_layers": 12, "hidden": {"local": (0, 4), "intermediate": (5, 8), "global": (9, 12)},
             "source": "MSPGT/MSMA README table"},
    "roberta": {"n_layers": 12, "hidden": {"local": (0, 4), "intermediate": (5, 8), "global": (9, 12)},
                "source": "MSPGT/MSMA README table"},
    "t5": {"n_layers": 6, "hidden": {"local": (0, 2), "intermediate": (3, 4), "global": (5, 6)},
           "source": "MSPGT/MSMA README table (t5-small encoder)"},
    "gpt2-msma-code": {"n_layers": 12, "hidden": {"local": (0, 3), "intermediate": (4, 7), "global": (8, 11)},
                       "source": "MSMA authors' code (gpt2.py)"},
    "bert-msma-code": {"n_layers": 12, "hidden": {"local": (0, 3), "intermediate": (4, 7), "global": (8, 10)},
                       "source": "MSMA authors' code (bert.py)"},
}


def preset_names() -> list[str]:
    return sorted(_PRESETS)


@dataclass(frozen=True)
class Scales:
    """An ordered mapping ``scale name -> tuple of block indices``.

    One convention for layer specs everywhere: a ``range`` or a list is the explicit set of layers it holds
    (``range(0, 4)`` and ``[0, 1, 2, 3]`` are layers 0-3, Python's exclusive stop); a 2-tuple ``(first, last)``
    is an **inclusive** range (``(0, 3)`` is layers 0-3), as in :meth:`from_ranges`, ``to_dict`` files and the
    CLI's ``--scales local=0-3``. So ``Scales({"local": (0, 3)})``, ``Scales({"local": range(0, 4)})``,
    ``Scales({"local": [0, 1, 2, 3]})`` and ``Scales.from_ranges({"local": (0, 3)})`` are the same partition.
    (Tuples of other lengths, the form in which :attr:`groups` stores layers, are explicit layers, so
    ``Scales(s.groups)`` rebuilds ``s``; a stored 2-layer group ``(a, a + 1)`` reads the same either way.)

    Also: depth fractions (:meth:`from_fractions`), a published partition (:meth:`preset`) or thirds of any
    depth (:meth:`default`). Groups must be non-empty, contiguous and non-overlapping; :meth:`validate`
    checks them against a model depth.
    """

    groups: Mapping[str, tuple[int, ...]]
    n_layers: int | None = None
    source: str = "explicit"
    _order: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.groups, Mapping) or len(self.groups) == 0:
            raise ConfigError("Scales needs at least one group, e.g. {'local': range(0, 4)}")
        clean: dict[str, tuple[int, ...]] = {}
        for name, layers in self.groups.items():
            if not isinstance(name, str) or not name or not name.replace("_", "").replace("-", "").isalnum():
                raise ConfigError(f"scale name {name!r} must be a non-empty identifier (letters, digits, '_' or '-')")
            ls = _layer_spec(name, layers)
            if len(ls) == 0:
                raise ConfigError(f"scale {name!r} is empty")
            if any(x < 0 for x in ls):
                raise ConfigError(f"scale {name!r}: negative layer index in {list(ls)}")
            if list(ls) != list(range(ls[0], ls[0] + len(ls))):
                raise ConfigError(f"scale {name!r} is not contiguous and increasing: {list(ls)}")
            clean[name] = ls
        owner: dict[int, str] = {}
        for name, ls in clean.items():
            for x in ls:
                if x in owner:
                    raise ConfigError(f"scales {owner[x]!r} and {name!r} overlap at layer {x}")
                owner[x] = name
        object.__setattr__(self, "groups", dict(clean))
        object.__setattr__(self, "_order", tuple(clean))
        if self.n_layers is not None:
            self.validate(self.n_layers)

    # ----- constructors -------------------------------------------------------------------------------
    @classmethod
    def from_ranges(cls, ranges: Mapping[str, tuple[int, int]], n_layers: int | None = None) -> Scales:
        """Inclusive ``(first, last)`` layer ranges, e.g. ``{"local": (0, 9), "intermediate": (10, 19)}``.

        A ``[first, last]`` list is read as a range too (as in ``to_dict`` files).
        """
        groups = {}
        for name, r in ranges.items():
            if not (isinstance(r, (tuple, list)) and len(r) == 2):
                raise ConfigError(f"scale {name!r}: range must be (first, last), got {r!r}")
            groups[name] = _inclusive(name, r)
        return cls(groups, n_layers=n_layers, source="ranges")

    @classmethod
    def from_fractions(
        cls, n_layers: int, boundaries: Iterable[float] = (1 / 3, 2 / 3), names: Iterable[str] | None = None
    ) -> Scales:
        """Split ``n_layers`` blocks at depth fractions, e.g. ``boundaries=(0.25, 0.75)`` → 3 groups."""
        b = [float(x) for x in boundaries]
        if any(not 0.0 < x < 1.0 for x in b) or b != sorted(b) or len(set(b)) != len(b):
            raise ConfigError(f"boundaries must be strictly increasing fractions in (0, 1), got {b}")
        names = tuple(names) if names is not None else (DEFAULT_NAMES if len(b) == 2 else tuple(f"scale{i}" for i in range(len(b) + 1)))
        if len(names) != len(b) + 1:
            raise ConfigError(f"{len(b)} boundaries make {len(b) + 1} scales but {len(names)} names were given: {list(names)}")
        n = _check_depth(n_layers)
        cuts = [0] + [round(x * n) for x in b] + [n]
        groups = {}
        for name, lo, hi in zip(names, cuts[:-1], cuts[1:]):
            if hi <= lo:
                raise ConfigError(f"scale {name!r} is empty: fractions {b} leave no layer of {n} for it")
            groups[name] = range(lo, hi)
        return cls(groups, n_layers=n, source=f"fractions {b}")

    @classmethod
    def default(cls, n_layers: int) -> Scales:
        """Thirds of the depth: local / intermediate / global (30 layers → 0-9, 10-19, 20-29)."""
        return cls.from_fractions(n_layers, (1 / 3, 2 / 3))

    @classmethod
    def preset(cls, name: str, n_layers: int | None = None) -> Scales:
        """A published partition (``gpt2``, ``bert``, ``roberta``, ``t5``, ``*-msma-code``) or ``default``."""
        if name == "default":
            if n_layers is None:
                raise ConfigError("preset 'default' needs n_layers")
            return cls.default(n_layers)
        if name not in _PRESETS:
            raise ConfigError(f"unknown scale preset {name!r}; valid: {['default', *preset_names()]}")
        p = _PRESETS[name]
        if n_layers is not None and n_layers != p["n_layers"]:
            raise ConfigError(f"scale preset {name!r} is for {p['n_layers']}-layer models, but the model has {n_layers} layers")
        groups = {}
        for g, (lo, hi) in p["hidden"].items():
            groups[g] = range(max(lo - 1, 0), hi)
        return cls(groups, n_layers=p["n_layers"], source=f"preset {name} ({p['source']})")

    @classmethod
    def discover(cls, model, corpus=None, **kwargs):
        """Discover the partition from data (MSPGT's layer-boundary method): see
        :func:`msma_lens.analysis.discovery.discover_scales`, which takes the same arguments (``n_scales=3``,
        ``max_docs``, ``probes``, ``n_boot``, ``seed``, ``device``, ``progress``, ...). Returns a
        :class:`~msma_lens.analysis.discovery.ScaleDiscovery`; its ``.scales`` is the partition."""
        from ..analysis.discovery import discover_scales  # late binding: capture may not import analysis at load time

        return discover_scales(model, corpus, **kwargs)

    @classmethod
    def coerce(cls, spec, n_layers: int) -> Scales:
        """Accept a Scales, a preset name, a mapping of layers, or None (default thirds) and validate it."""
        if spec is None:
            s = cls.default(n_layers)
        elif isinstance(spec, Scales):
            s = spec
        elif isinstance(spec, str):
            s = cls.preset(spec, n_layers)
        elif isinstance(spec, Mapping):
            s = cls(spec)
        else:
            raise ConfigError(f"cannot build Scales from {type(spec).__name__}: pass a Scales, a preset name or a mapping")
        s.validate(n_layers)
        return s

    # ----- access ------------------------------------------------------------------------------------
    @property
    def names(self) -> tuple[str, ...]:
        return self._order

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(x for n in self._order for x in self.groups[n])

    @property
    def max_layer(self) -> int:
        return max(self.layers)

    def __getitem__(self, name: str) -> tuple[int, ...]:
        if name not in self.groups:
            raise ConfigError(f"unknown scale {name!r}; scales are {list(self._order)}")
        return self.groups[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._order)

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, name: object) -> bool:
        return name in self.groups

    def items(self):
        return [(n, self.groups[n]) for n in self._order]

    def select(self, *names: str) -> Scales:
        """The sub-partition holding only the scales ``names`` (in that order); ConfigError names an unknown one."""
        if not names:
            raise ConfigError(f"select needs at least one scale name; scales are {list(self._order)}")
        return Scales({n: list(self[n]) for n in names}, n_layers=self.n_layers, source=self.source)

    def scale_of(self, layer: int) -> str | None:
        for n in self._order:
            if layer in self.groups[n]:
                return n
        return None

    def validate(self, n_layers: int) -> Scales:
        """Raise ConfigError naming the group if any layer lies outside ``0 … n_layers-1``."""
        n = _check_depth(n_layers)
        if self.n_layers is not None and self.n_layers != n:
            raise ConfigError(f"these scales were built for a {self.n_layers}-layer model, but the model has {n} layers")
        for name in self._order:
            bad = [x for x in self.groups[name] if x >= n]
            if bad:
                raise ConfigError(f"scale {name!r} has layers {bad} outside the model's 0..{n - 1}")
        return self

    # ----- serialisation -----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """``{"groups": {name: [first, last]}, "order": [names], "n_layers", "source"}``.

        ``order`` keeps the scale order through JSON writers that sort keys (``groups`` is a mapping).
        """
        return {"groups": {n: [self.groups[n][0], self.groups[n][-1]] for n in self._order}, "order": list(self._order),
                "n_layers": self.n_layers, "source": self.source}

    @classmethod
    def from_dict(cls, d: Mapping) -> Scales:
        """Inverse of :meth:`to_dict`. Specs without ``order`` (older files, whose ``groups`` may have been
        key-sorted on disk) are ordered by first layer, which restores local → intermediate → global."""
        try:
            ranges = {n: (int(r[0]), int(r[1])) for n, r in d["groups"].items()}
            order = d.get("order")
            if order is None:
                order = sorted(ranges, key=lambda n: ranges[n])
            elif sorted(map(str, order)) != sorted(ranges):
                raise ConfigError(f"malformed scale spec {dict(d)!r}: 'order' {list(order)} does not name the groups "
                                  f"{sorted(ranges)} exactly once each")
            groups = {n: range(ranges[n][0], ranges[n][1] + 1) for n in order}
            return cls(groups, n_layers=d.get("n_layers"), source=d.get("source", "explicit"))
        except (KeyError, TypeError, IndexError, ValueError, AttributeError) as e:
            if isinstance(e, ConfigError):
                raise
            raise ConfigError(f"malformed scale spec {d!r}: {e}") from e

    def spec_hash(self) -> str:
        """Identity of the partition (names and layers; not the source label)."""
        body = json.dumps({n: list(self.groups[n]) for n in self._order}, sort_keys=False)
        return hashlib.sha256(body.encode()).hexdigest()[:16]

    def same_partition(self, other: Scales) -> bool:
        """True when both assign the same layers to the same names (the order of the scales is not compared)."""
        return dict(self.groups) == dict(other.groups)

    def __repr__(self) -> str:
        body = ", ".join(f"{n}={self.groups[n][0]}-{self.groups[n][-1]}" for n in self._order)
        return f"Scales({body})"


def _index(name: str, x: object, spec: object) -> int:
    if isinstance(x, bool):
        raise ConfigError(f"scale {name!r}: layers must be integers, got {spec!r}")
    try:
        return operator.index(x)  # ints, numpy and 0-d torch integers; not floats or strings
    except TypeError:
        raise ConfigError(f"scale {name!r}: layers must be integers, got {spec!r}") from None


def _inclusive(name: str, r: tuple | list) -> range:
    """``(first, last)``, both included."""
    first, last = _index(name, r[0], r), _index(name, r[1], r)
    if last < first:
        raise ConfigError(f"scale {name!r} is empty: inclusive range ({first}, {last}) has last < first")
    return range(first, last + 1)


def _layer_spec(name: str, layers: object) -> tuple[int, ...]:
    """A 2-tuple is an inclusive ``(first, last)`` range; a range, list or other iterable is the explicit layers."""
    if isinstance(layers, tuple) and len(layers) == 2:
        return tuple(_inclusive(name, layers))
    if isinstance(layers, (str, bytes, Mapping)) or not isinstance(layers, Iterable):
        raise ConfigError(f"scale {name!r}: layers must be a range, a list of layer indices or an inclusive (first, last) "
                          f"tuple, got {layers!r}")
    return tuple(_index(name, x, layers) for x in layers)


def _check_depth(n_layers) -> int:
    if not isinstance(n_layers, int) or isinstance(n_layers, bool) or n_layers < 1:
        raise ConfigError(f"n_layers must be a positive int, got {n_layers!r}")
    return n_layers
