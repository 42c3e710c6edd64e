"""MSMA: the user-facing object binding a TransformerLens model to a scale partition."""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from . import plugins, tl
from .align.protocol import ABLATION_SEEDS, VARIANTS, AblationResult, AlignConfig, AlignmentResult, fit_alignment, run_ablations
from .align.tuning import TuneConfig, TuningResult, tune_alignment
from .capture import hookpoints
from .capture.activations import DEFAULT_OUTLIER_FACTOR, ScaleActivations, check_outlier_factor
from .capture.collect import capture as _capture
from .capture.scales import Scales
from .errors import ConfigError
from .guard import guard_generation
from .steer.directions import contrastive_direction as _contrastive_direction
from .steer.directions import layer_scales
from .steer.directions import principal_direction as _principal_direction
from .steer.directions import transfer_direction as _transfer_direction
from .steer.edits import Intervention
from .steer.experiment import run_experiment as _run_experiment
from .steer.generate import GenerationResult
from .steer.generate import generate as _generate
from .steer.schedule import Schedule
from .steer.session import SteeringRecord


class MSMA:
    """Multi-scale lens on a TransformerLens model.

    >>> lens = MSMA(load_model("smollm2-135m"))            # default scales: thirds of the depth
    >>> acts = lens.capture(load_corpus().texts, pooling="token")

    ``lens.attach()`` adds the per-scale hook points ``msma.{scale}.hook_in`` / ``msma.{scale}.hook_resid`` to the
    model's ``hook_dict`` (see :mod:`msma_lens.capture.hookpoints`); ``lens.detach()`` removes them; ``with lens:`` does
    both around a block. Constructing a lens changes nothing on the model.
    """

    def __init__(self, model: Any, scales: Scales | str | dict | None = None, *, site: str = "resid_post",
                 kv_check: str = "fallback") -> None:
        tl.check_model(model)
        guard_generation(model, kv_check)  # once per model: a no-op when load_model already checked it
        self.model = model
        self.scales = Scales.coerce(scales, tl.n_layers(model))
        self.site = site
        self.hook_names = {s: [tl.resid_name(model, x, site) for x in ls] for s, ls in self.scales.items()}

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
        return tl.provenance(self.model)["model_id"]

    def provenance(self) -> dict:
        return {**tl.provenance(self.model), "scales": self.scales.to_dict(), "site": self.site, "hook_names": self.hook_names}

    def capture(self, texts: Sequence[str] | torch.Tensor, *, attention_mask: torch.Tensor | None = None,
                pooling: str = "token", layer_agg: str | int | dict = "mean", batch_size: int = 8,
                max_length: int | None = None, on_overflow: str = "warn", padding_side: str = "right",
                prepend_bos: bool = True, shard_dir: str | os.PathLike | None = None,
                progress: bool = True) -> ScaleActivations:
        """Per-scale activations of ``texts`` (documents, or ``[batch, pos]`` token ids with ``attention_mask=``)
        at this lens's scales and site.

        See :func:`msma_lens.capture.capture` for the options.
        """
        return _capture(self.model, self.scales, texts, site=self.site, attention_mask=attention_mask, pooling=pooling,
                        layer_agg=layer_agg, batch_size=batch_size, max_length=max_length, on_overflow=on_overflow,
                        padding_side=padding_side, prepend_bos=prepend_bos, shard_dir=shard_dir, progress=progress)

    def _acts(self, acts: ScaleActivations | None, texts: Sequence[str] | None, what: str,
              progress: bool = True) -> ScaleActivations:
        if acts is None:
            if texts is None:
                from .io.corpus import load_corpus

                texts = load_corpus().texts
            acts = self.capture(texts, pooling="token", progress=progress)
        acts.check_matches(self.model_id, self.scales, what=what)
        return acts

    def fit(self, acts: ScaleActivations | None = None, cfg: AlignConfig | None = None, *,
            texts: Sequence[str] | None = None, checkpoint_dir: str | None = None, progress: bool = True) -> AlignmentResult:
        """Fit cross-scale maps (default f_GI and f_IL) on ``acts`` (or on a capture of ``texts`` / the corpus)."""
        return fit_alignment(self._acts(acts, texts, "this lens", progress), cfg, checkpoint_dir=checkpoint_dir, progress=progress)

    def tune(self, acts: ScaleActivations | None = None, cfg: AlignConfig | None = None, tune: TuneConfig | None = None, *,
             texts: Sequence[str] | None = None, storage: str | os.PathLike | None = None, progress: bool = True) -> TuningResult:
        """Search the maps' hyperparameters on the validation split (Optuna TPE + median pruning, scored by the
        validation residual); ``lens.fit(acts, result.align_config(cfg))`` then fits the tuned maps.

        See :func:`msma_lens.align.tuning.tune_alignment`.
        """
        return tune_alignment(self._acts(acts, texts, "this lens", progress), cfg, tune, storage=storage, progress=progress)

    def ablate(self, acts: ScaleActivations | None = None, cfg: AlignConfig | None = None, *,
               texts: Sequence[str] | None = None, variants: tuple[str, ...] = VARIANTS, seeds: tuple[int, ...] = ABLATION_SEEDS,
               level: float = 0.95, progress: bool = True) -> AblationResult:
        """Baseline / closed form / full / published / no-geometry / no-information / no-curvature over ``seeds``.

        See :func:`msma_lens.align.protocol.run_ablations`.
        """
        return run_ablations(self._acts(acts, texts, "this lens", progress), cfg, variants=variants, seeds=seeds, level=level,
                             progress=progress)

    # ----- directions --------------------------------------------------------------------------------
    def _direction_acts(self, texts: Sequence[str], scale: str, arg: str, *, pooling: str, per_layer: bool,
                        batch_size: int, progress: bool) -> ScaleActivations:
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise ConfigError(f"{arg} must be a list of texts, got {type(texts).__name__}")
        if not per_layer:
            self.scales[scale]  # ConfigError naming an unknown scale before any forward pass
            return self.capture(list(texts), pooling=pooling, batch_size=batch_size, progress=progress)
        return _capture(self.model, layer_scales(self.scales, scale), list(texts), pooling=pooling, site=self.site,
                        batch_size=batch_size, progress=progress)

    def contrastive_direction(self, positive: Sequence[str], negative: Sequence[str], scale: str, *, per_layer: bool = False,
                              batch_size: int = 8, progress: bool = False) -> torch.Tensor | dict[int, torch.Tensor]:
        """Difference of mean activations of ``positive`` and ``negative`` texts at ``scale`` of this lens (``[d]``).

        Each text is mean-pooled over its content tokens (BOS, special tokens and padding excluded) at the lens's
        site and averaged over the scale's layers, exactly as ``lens.capture(texts, pooling="mean")[scale]``;
        ``per_layer=True`` gives ``{layer: [d]}``. See :func:`msma_lens.steer.directions.contrastive_direction`.
        """
        opts = {"pooling": "mean", "per_layer": per_layer, "batch_size": batch_size, "progress": progress}
        pos = self._direction_acts(positive, scale, "positive", **opts)
        neg = self._direction_acts(negative, scale, "negative", **opts)
        return _contrastive_direction(pos, neg, scale, per_layer=per_layer)

    def principal_direction(self, texts: Sequence[str], scale: str, *, per_layer: bool = False,
                            outlier_factor: float | None = DEFAULT_OUTLIER_FACTOR, batch_size: int = 8,
                            progress: bool = False) -> torch.Tensor | dict[int, torch.Tensor]:
        """Unit top principal direction of the token activations of ``texts`` at ``scale`` of this lens.

        Token activations as ``lens.capture(texts, pooling="token")[scale]``; massive-activation tokens above
        ``outlier_factor`` × the median norm are dropped first. See :func:`msma_lens.steer.directions.principal_direction`.
        """
        check_outlier_factor(outlier_factor)
        acts = self._direction_acts(texts, scale, "texts", pooling="token", per_layer=per_layer, batch_size=batch_size,
                                    progress=progress)
        return _principal_direction(acts, scale, per_layer=per_layer, outlier_factor=outlier_factor)

    def transfer_direction(self, direction: torch.Tensor, alignment: AlignmentResult | Any, src: str | None = None,
                           dst: str | None = None) -> torch.Tensor:
        """Carry ``direction`` from scale ``src`` to ``dst`` through fitted maps (linear part, raw residual units).

        ``alignment`` is usually ``lens.fit(...)``; it must come from this lens's model and scales (ArtifactError
        otherwise). A single fitted map (tensor, ``ProcrustesFit``, ``CrossScaleMap``) needs no ``src``/``dst``.
        See :func:`msma_lens.steer.directions.transfer_direction`.
        """
        if isinstance(alignment, AlignmentResult):
            alignment.check_matches(self.model_id, self.scales, what="this lens")
            for name in (src, dst):
                if name is not None:
                    self.scales[name]  # ConfigError naming a scale the lens does not have
        return _transfer_direction(direction, alignment, model=self.model, src=src, dst=dst)

    # ----- interventions ----------------------------------------------------------------------------
    def steer(self, *interventions: Intervention, phase: str = "both", positions: Any = None,
              schedule: Schedule | Mapping | tuple | None = None,
              attention_mask: torch.Tensor | None = None) -> contextlib.AbstractContextManager[SteeringRecord]:
        """Context manager applying scale-specific interventions (see :func:`msma_lens.steer.edits.steer`).

        >>> with lens.steer(Translate("global", delta, strength=4.0), phase="generated") as record:
        ...     model.generate(...)
        """
        from .steer.session import steer

        return steer(self.model, *interventions, scales=self.scales, phase=phase, positions=positions, schedule=schedule,
                     attention_mask=attention_mask)

    def generate(self, prompts: str | Sequence[str] | torch.Tensor, interventions: Intervention | Sequence[Intervention] | None = (),
                 *, max_new_tokens: int = 20, do_sample: bool = False, attention_mask: torch.Tensor | None = None,
                 seed: int = 0, phase: str = "both", positions: Any = None, schedule: Any = None,
                 use_past_kv_cache: bool = True, capture_scales: bool | str | Sequence[str] | None = None,
                 capture_site: str = "resid_post", stop_at_eos: bool = True, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None) -> GenerationResult:
        """KV-cached generation with interventions and optional per-scale capture of the steered trajectory.

        Defaults as :func:`msma_lens.steer.generate.generate`: 20 new tokens, greedy (``do_sample=False``).
        """
        return _generate(self.model, prompts, interventions, scales=self.scales, max_new_tokens=max_new_tokens,
                         do_sample=do_sample, attention_mask=attention_mask, seed=seed, phase=phase, positions=positions,
                         schedule=schedule, use_past_kv_cache=use_past_kv_cache, capture_scales=capture_scales,
                         capture_site=capture_site, stop_at_eos=stop_at_eos, temperature=temperature, top_k=top_k,
                         top_p=top_p)

    def experiment(self, prompts: Sequence[str], **kwargs: Any):
        """prompts × scales × interventions × strengths × seeds → text-metric effects vs the unsteered baseline.

        Takes the options of :func:`msma_lens.steer.experiment.run_experiment` (its signature is this method's).
        """
        return _run_experiment(self.model, prompts, scales=self.scales, **kwargs)

    # ----- plugins ------------------------------------------------------------------------------------
    def analyse(self, name: str, acts: ScaleActivations | None = None, **options: Any) -> Any:
        """Run the analysis plugin ``name`` (see :mod:`msma_lens.plugins`) on ``acts`` with this lens.

        ``acts=None`` captures the bundled corpus (token pooling, as :meth:`fit`); the activations must come from
        this lens's model and scales. Equivalent to ``plugins.run(name, self, acts=acts, **options)``.
        """
        return plugins.run(name, self, acts=self._acts(acts, None, f"plugin {name!r} with this lens"), **options)

    def __repr__(self) -> str:
        p = tl.provenance(self.model)
        return f"MSMA({p['model_id']!r}, {p['backend']}, {self.scales!r})"


def _bound_signature(fn: Any, drop: tuple[str, ...]) -> inspect.Signature:
    """``fn``'s signature with ``self`` first and the parameters the lens supplies (``drop``) removed."""
    sig = inspect.signature(fn)
    params = [p for n, p in sig.parameters.items() if n not in drop]
    return sig.replace(parameters=[inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD), *params])


MSMA.experiment.__signature__ = _bound_signature(_run_experiment, ("model", "scales"))
