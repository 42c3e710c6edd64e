"""ScaleActivations: per-scale residual samples with paired rows, plus provenance; safetensors + cfg.json."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..capture.scales import Scales
from ..errors import ArtifactError, ConfigError, NumericsError
from ..io.artifacts import load_artifact, save_artifact

KIND = "msma_lens.ScaleActivations"
POOLINGS = ("token", "mean", "last")


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
        if not 0.0 < held_out < 1.0:
            raise ConfigError(f"held_out must be a fraction in (0, 1), got {held_out}")
        docs = torch.unique(self.doc_ids)
        if docs.numel() < 2:
            raise ConfigError(f"a split by document needs >= 2 documents, these activations have {docs.numel()}")
        g = torch.Generator().manual_seed(seed)
        perm = docs[torch.randperm(docs.numel(), generator=g)]
        n_test = min(max(1, round(held_out * docs.numel())), docs.numel() - 1)
        test_docs = perm[:n_test]
        is_test = torch.isin(self.doc_ids, test_docs)
        return torch.nonzero(~is_test).squeeze(1), torch.nonzero(is_test).squeeze(1)

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
