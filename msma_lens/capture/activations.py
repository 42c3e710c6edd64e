"""ScaleActivations: per-scale residual samples with paired rows, plus provenance; safetensors + cfg.json."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..capture.scales import Scales
from ..errors import ArtifactError, ConfigError, NumericsError
from ..io.artifacts import load_artifact, save_artifact

KIND = "msma_lens.ScaleActivations"
POOLINGS = ("token", "mean", "last")
DEFAULT_OUTLIER_FACTOR = 20.0


# ----- massive activations ----------------------------------------------------------------------------------
def check_outlier_factor(factor: object, name: str = "outlier_factor") -> float | None:
    """``factor`` if it is ``None`` or a number > 1; ConfigError naming ``name`` otherwise."""
    if factor is not None and (isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor > 1):
        raise ConfigError(f"{name} must be None or > 1, got {factor!r}")
    return factor


def massive_rows(x: torch.Tensor, factor: float | None) -> torch.Tensor:
    """Boolean mask ``[N]`` of the massive-activation rows of ``x [N, d]``: norm above ``factor`` × the median row norm.

    These are attention-sink tokens (methods.md §9): a handful of rows with norms ~100× the median that would
    dominate every squared-error fit, statistic or principal component. A row whose norm is not finite counts as
    massive. Norms are computed in ``x``'s dtype. ``factor=None`` or no rows: nothing is flagged.
    """
    if factor is None or x.shape[0] == 0:
        return torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    n = x.norm(dim=1)
    return ~(n <= factor * n.median())


@dataclass
class ScaleActivations:
    """Per-scale activations whose rows are paired across scales.

    ``acts[scale]`` is ``[N, d]``: with pooling ``token`` a row is one (document, position) pair, identical
    positions in every scale; with ``mean``/``last`` a row is one document. ``doc_ids[i]`` is the document
    (index into the captured text list) of row ``i`` and ``positions[i]`` its token position (``-1`` for
    ``mean``). ``meta`` holds provenance: model, backend, TL version, compatibility mode, hook names, scale
    spec, pooling, layer aggregation and corpus hash.
    """

    acts: dict[str, torch.Tensor]
    doc_ids: torch.Tensor
    positions: torch.Tensor
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.acts:
            raise ConfigError("ScaleActivations needs at least one scale")
        n = self.doc_ids.shape[0]
        for s, a in self.acts.items():
            if a.ndim != 2 or a.shape[0] != n:
                raise ConfigError(f"scale {s!r}: activations must be [N={n}, d], got {tuple(a.shape)} (rows must be paired)")
        if self.positions.shape[0] != n:
            raise ConfigError(f"positions has {self.positions.shape[0]} rows, expected {n}")

    def __repr__(self) -> str:
        m = self.meta
        shown = list(self.acts.items())[:6]
        body = ", ".join(f"{s}=[{a.shape[0]}, {a.shape[1]}]" for s, a in shown)
        if len(self.acts) > len(shown):
            body += f", … +{len(self.acts) - len(shown)} more"
        head = ", ".join(f"{k}={m[k]!r}" for k in ("model_id", "pooling", "site") if m.get(k) is not None)
        return (f"ScaleActivations({head + ', ' if head else ''}rows={len(self)}, docs={self.n_docs},\n"
                f"    scales: {body})")

    # ----- access ------------------------------------------------------------------------------------
    def __getitem__(self, scale: str) -> torch.Tensor:
        if scale not in self.acts:
            raise ConfigError(f"unknown scale {scale!r}; these activations have {list(self.acts)}")
        return self.acts[scale]

    @property
    def scale_names(self) -> list[str]:
        return list(self.acts)

    @property
    def scales(self) -> Scales | None:
        spec = self.meta.get("scales")
        return Scales.from_dict(spec) if spec else None

    def __len__(self) -> int:
        return int(self.doc_ids.shape[0])

    @property
    def n_docs(self) -> int:
        return int(torch.unique(self.doc_ids).numel())

    def width(self, scale: str) -> int:
        return int(self[scale].shape[1])

    def subset(self, idx: torch.Tensor) -> ScaleActivations:
        return ScaleActivations({s: a[idx] for s, a in self.acts.items()}, self.doc_ids[idx], self.positions[idx], dict(self.meta))

    def join(self, other: ScaleActivations, prefixes: tuple[str, str]) -> ScaleActivations:
        """Combine captures of the same rows from two models (scales renamed ``prefix:scale``).

        Rows must be identical (same documents and positions): use ``mean``/``last`` pooling over the same texts
        when the two models tokenise differently. The result can be aligned across models, e.g. the pair
        ``("a:global", "b:global")``; widths may differ (rectangular maps).
        """
        pa, pb = prefixes
        if pa == pb:
            raise ConfigError(f"join needs two different prefixes, got {prefixes}")
        if not (torch.equal(self.doc_ids, other.doc_ids) and torch.equal(self.positions, other.positions)):
            raise ConfigError("cannot join activations whose rows differ (documents or positions); capture the same texts "
                              "with pooling='mean' or 'last' when the models tokenise differently")
        acts = {f"{pa}:{s}": a for s, a in self.acts.items()} | {f"{pb}:{s}": a for s, a in other.acts.items()}
        meta = {"joined": {pa: self.meta, pb: other.meta}, "pooling": self.meta.get("pooling")}
        return ScaleActivations(acts, self.doc_ids.clone(), self.positions.clone(), meta)

    def split_by_document(self, held_out: float = 0.2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Row indices (train, held_out) with whole documents on one side (never split by token)."""
        parts = self.document_split({"held_out": held_out}, seed)
        return parts["train"], parts["held_out"]

    def document_split(self, fractions: Mapping[str, float], seed: int = 0, *,
                       what: str = "a split by document") -> dict[str, torch.Tensor]:
        """Row indices with every document in exactly one part: ``{"train": ..., name: ...}`` per entry of ``fractions``.

        One permutation of the document ids, seeded by ``seed``; the named parts take its first documents in the
        order of ``fractions``, each ``round(fraction × n_docs)`` documents but at least 1 and leaving at least 1
        for every later part and for training; the rest train. Indices are sorted row numbers. ``what`` names
        the caller in the error raised when there are fewer documents than parts.
        """
        for name, v in fractions.items():
            if name == "train":
                raise ConfigError("document_split: 'train' is the remainder, not a held-out part name")
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 < v < 1.0:
                raise ConfigError(f"{name} must be a fraction in (0, 1), got {v}")
        if sum(fractions.values()) >= 1.0:
            raise ConfigError(f"{' + '.join(fractions)} = {sum(fractions.values())} leaves no documents for training")
        docs = torch.unique(self.doc_ids)
        n_docs, n_parts = docs.numel(), len(fractions)
        if n_docs < n_parts + 1:
            raise ConfigError(f"{what} needs >= {n_parts + 1} documents (training + {', '.join(fractions) or 'nothing'}), "
                              f"these activations have {n_docs}")
        perm = docs[torch.randperm(n_docs, generator=torch.Generator().manual_seed(seed))]
        out, held, start = {}, torch.zeros(len(self), dtype=torch.bool), 0
        for later, (name, frac) in enumerate(fractions.items(), start=1):
            k = min(max(1, round(frac * n_docs)), n_docs - start - (n_parts - later) - 1)
            mask = torch.isin(self.doc_ids, perm[start:start + k])
            out[name], held, start = torch.nonzero(mask).squeeze(1), held | mask, start + k
        return {"train": torch.nonzero(~held).squeeze(1), **out}

    def massive_rows(self, scales: Iterable[str], factor: float | None) -> torch.Tensor:
        """Rows (boolean mask ``[N]``) that are massive (:func:`massive_rows`) in any of ``scales``."""
        bad = torch.zeros(len(self), dtype=torch.bool)
        for s in scales:
            bad |= massive_rows(self[s], factor).cpu()
        return bad

    def check_finite(self) -> None:
        for s, a in self.acts.items():
            bad = ~torch.isfinite(a)
            if bad.any():
                row = int(bad.any(1).nonzero()[0])
                raise NumericsError(f"scale {s!r}: NaN/Inf in activations (row {row}, document {int(self.doc_ids[row])})")

    def check_matches(self, model_id: str | None = None, scales: Scales | None = None, what: str = "this operation") -> None:
        """Raise ArtifactError if these activations came from another model or scale partition."""
        mine = self.meta.get("model_id")
        if model_id is not None and mine is not None and mine != model_id:
            raise ArtifactError(f"activations were captured from model {mine!r}, but {what} uses {model_id!r}")
        if scales is not None and self.scales is not None and not self.scales.same_partition(scales):
            raise ArtifactError(f"activations were captured with scales {self.scales!r}, but {what} uses {scales!r}")

    # ----- persistence -------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        tensors = {f"acts.{s}": a for s, a in self.acts.items()}
        tensors["doc_ids"] = self.doc_ids
        tensors["positions"] = self.positions
        return save_artifact(path, KIND, tensors, {"scale_names": list(self.acts), "n_rows": len(self), "meta": self.meta})

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "cpu") -> ScaleActivations:
        tensors, cfg = load_artifact(path, KIND, device=device)
        try:
            acts = {s: tensors[f"acts.{s}"] for s in cfg["scale_names"]}
            out = cls(acts, tensors["doc_ids"], tensors["positions"], cfg.get("meta", {}))
        except (KeyError, ConfigError) as e:
            raise ArtifactError(f"{path}: inconsistent ScaleActivations artifact ({e})") from e
        if len(out) != cfg.get("n_rows"):
            raise ArtifactError(f"{path}: expected {cfg.get('n_rows')} rows, found {len(out)}")
        return out
