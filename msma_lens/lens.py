"""MSMA: the user-facing object binding a TransformerLens model to a scale partition."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from . import _tl, hookpoints
from .activations import ScaleActivations
from .alignment import AblationResult, AlignConfig, AlignmentResult, fit_alignment, run_ablations
from .capture import capture as _capture
from .guard import guard_generation
from .scales import Scales


class MSMA:
    """Multi-scale lens on a TransformerLens model.

    >>> lens = MSMA(load_model("smollm2-135m"))            # default scales: thirds of the depth
    >>> acts = lens.capture(load_corpus().texts, pooling="token")

    ``lens.attach()`` adds the per-scale hook points ``msma.{scale}.hook_in`` / ``msma.{scale}.hook_resid`` to the
    model's ``hook_dict`` (see :mod:`msma_lens.hookpoints`); ``lens.detach()`` removes them; ``with lens:`` does
    both around a block. Constructing a lens changes nothing on the model.
    """

    def __init__(self, model: Any, scales: Scales | str | dict | None = None, *, site: str = "resid_post",
                 kv_check: str = "fallback") -> None:
        _tl.check_model(model)
        guard_generation(model, kv_check)  # once per model: a no-op when load_model already checked it
        self.model = model
        self.scales = Scales.coerce(scales, _tl.n_layers(model))
        self.site = site
        self.hook_names = {s: [_tl.resid_name(model, x, site) for x in ls] for s, ls in self.scales.items()}

    # ----- hook points ---------------------------------------------------------------------------------
    def attach(self) -> MSMA:
        """Add ``msma.{scale}.hook_in`` and ``msma.{scale}.hook_resid`` for this lens's scales to the model."""
        hookpoints.attach(self.model, self.scales, self.site)
        return self

    def detach(self) -> None:
        """Remove the per-scale hook points (and every hook on them) from the model."""
        if self.attached:
            hookpoints.detach(self.model)

    @property
    def attached(self) -> bool:
        """Whether this lens's partition is attached to the model as hook points."""
        points = hookpoints.attached(self.model)
        return points is not None and points.site == self.site and points.scales.same_partition(self.scales)

    def hook_point_names(self, point: str = hookpoints.HOOK_RESID) -> dict[str, str]:
        """``{scale: "msma.{scale}.hook_resid"}`` (or ``hook_in``), e.g. for ``names_filter``."""
        return {s: hookpoints.hook_name(s, point) for s in self.scales.names}

    def __enter__(self) -> MSMA:
        return self.attach()

    def __exit__(self, *exc: Any) -> None:
        self.detach()

    @property
    def model_id(self) -> str:
        return _tl.provenance(self.model)["model_id"]

    def provenance(self) -> dict:
        return {**_tl.provenance(self.model), "scales": self.scales.to_dict(), "site": self.site, "hook_names": self.hook_names}

    def capture(self, texts: Sequence[str] | torch.Tensor, **kwargs: Any) -> ScaleActivations:
        """Per-scale activations of ``texts`` (documents, or ``[batch, pos]`` token ids with ``attention_mask=``).

        See :func:`msma_lens.capture.capture` for the options.
        """
        return _capture(self.model, self.scales, texts, site=self.site, **kwargs)

    def _acts(self, acts: ScaleActivations | None, texts: Sequence[str] | None, what: str,
              progress: bool = True) -> ScaleActivations:
        if acts is None:
            if texts is None:
                from .corpus import load_corpus

                texts = load_corpus().texts
            acts = self.capture(texts, pooling="token", progress=progress)
        acts.check_matches(self.model_id, self.scales, what=what)
        return acts

    def fit(self, acts: ScaleActivations | None = None, cfg: AlignConfig | None = None, *,
            texts: Sequence[str] | None = None, checkpoint_dir: str | None = None, progress: bool = True) -> AlignmentResult:
        """Fit cross-scale maps (default f_GI and f_IL) on ``acts`` (or on a capture of ``texts`` / the corpus)."""
        return fit_alignment(self._acts(acts, texts, "this lens", progress), cfg, checkpoint_dir=checkpoint_dir, progress=progress)

    def ablate(self, acts: ScaleActivations | None = None, cfg: AlignConfig | None = None, *,
               texts: Sequence[str] | None = None, seeds: tuple[int, ...] = (0, 1, 2), progress: bool = True,
               **kwargs: Any) -> AblationResult:
        """Baseline / closed form / full / no-geometry / no-information / no-curvature over ``seeds``."""
        return run_ablations(self._acts(acts, texts, "this lens", progress), cfg, seeds=seeds, progress=progress, **kwargs)

    # ----- interventions ----------------------------------------------------------------------------
    def steer(self, *interventions: Any, **kwargs: Any):
        """Context manager applying scale-specific interventions (see :func:`msma_lens.interventions.steer`).

        >>> with lens.steer(Translate("global", delta, strength=4.0), phase="generated") as record:
        ...     model.generate(...)
        """
        from .interventions import steer

        return steer(self.model, *interventions, scales=self.scales, **kwargs)

    def generate(self, prompts: Sequence[str], interventions: Sequence[Any] = (), **kwargs: Any):
        """KV-cached generation with interventions and optional per-scale capture of the steered trajectory."""
        from .steering import generate

        return generate(self.model, prompts, interventions, scales=self.scales, **kwargs)

    def experiment(self, prompts: Sequence[str], **kwargs: Any):
        """prompts × scales × interventions × strengths × seeds → text-metric effects vs the unsteered baseline."""
        from .steering import run_experiment

        return run_experiment(self.model, prompts, scales=self.scales, **kwargs)

    def __repr__(self) -> str:
        p = _tl.provenance(self.model)
        return f"MSMA({p['model_id']!r}, {p['backend']}, {self.scales!r})"
