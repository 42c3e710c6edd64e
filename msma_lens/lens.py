"""MSMA: the user-facing object binding a TransformerLens model to a scale partition."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import _tl
from .activations import ScaleActivations
from .capture import capture as _capture
from .scales import Scales


class MSMA:
    """Multi-scale lens on a TransformerLens model.

    >>> lens = MSMA(load_model("smollm2-135m"))            # default scales: thirds of the depth
    >>> acts = lens.capture(load_corpus().texts, pooling="token")
    """

    def __init__(self, model: Any, scales: Scales | str | dict | None = None, *, site: str = "resid_post") -> None:
        _tl.check_model(model)
        self.model = model
        self.scales = Scales.coerce(scales, _tl.n_layers(model))
        self.site = site
        self.hook_names = {s: [_tl.resid_name(model, x, site) for x in ls] for s, ls in self.scales.items()}

    @property
    def model_id(self) -> str:
        return _tl.provenance(self.model)["model_id"]

    def provenance(self) -> dict:
        return {**_tl.provenance(self.model), "scales": self.scales.to_dict(), "site": self.site, "hook_names": self.hook_names}

    def capture(self, texts: Sequence[str], **kwargs: Any) -> ScaleActivations:
        """Per-scale activations of ``texts``; see :func:`msma_lens.capture.capture` for the options."""
        return _capture(self.model, self.scales, texts, site=self.site, **kwargs)

    def __repr__(self) -> str:
        p = _tl.provenance(self.model)
        return f"MSMA({p['model_id']!r}, {p['backend']}, {self.scales!r})"
