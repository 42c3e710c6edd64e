"""Runtime guard against silently corrupted KV-cached generation.

A dependency release can break cached decoding without any error: transformers 5.24.0 with TransformerLens
4.3's ``TransformerBridge`` turns "The capital of France is" into " Paris-----------" while uncached decoding
and Hugging Face's own ``generate`` stay correct. :func:`check_kv_cache` decodes a few tokens with the cache
and compares every step's logits with one uncached forward pass; :func:`guard_generation` runs it once per
model (``load_model`` and ``MSMA`` call it) and, on a disagreement, either switches the model to uncached
decoding with a warning that names the installed versions (``policy="fallback"``, the default) or raises
:class:`~msma_lens.errors.KVCacheError` (``policy="error"``).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

from . import tl
from .errors import ConfigError, HookError, KVCacheError

KV_POLICIES = ("fallback", "error", "off")
# relative tolerance on max |Δ logit| / max |logit|: float32 disagreements are ~1e-6, a broken cache gives O(1)
_RTOL = {"float32": 1e-3, "float64": 1e-3}
_RTOL_LOW_PRECISION = 5e-2


@dataclass(frozen=True)
class KVCheck:
    """Outcome of :func:`check_kv_cache`. ``ok`` is None where the check does not apply (encoders)."""

    ok: bool | None
    max_abs_diff: float = 0.0
    max_abs_logit: float = 0.0
    tolerance: float = 0.0
    worst_step: int = -1
    steps: int = 0
    tokens_match: bool = True
    seconds: float = 0.0
    versions: dict = field(default_factory=dict)
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        if self.ok is None:
            return f"KV self-check not applicable ({self.note})"
        v = ", ".join(f"{k} {x}" for k, x in self.versions.items())
        verdict = "passed" if self.ok else "FAILED"
        return (f"KV self-check {verdict}: max |Δlogit| {self.max_abs_diff:.3g} (step {self.worst_step}) vs tolerance "
                f"{self.tolerance:.3g} over {self.steps} cached decoding steps, {self.seconds:.2f} s [{v}]")


def check_kv_cache(model: Any, *, steps: int = 3) -> KVCheck:
    """Greedy-decode ``steps`` tokens of a short prompt with the KV cache; compare each step with uncached logits."""
    tl.check_model(model)
    if not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps must be a positive int, got {steps!r}")
    versions = tl.library_versions()
    if tl.is_encoder(model) or not hasattr(model, "generate"):
        return KVCheck(ok=None, versions=versions, note="encoder model: no generation")
    t0 = time.perf_counter()
    tokens = tl.kv_probe_tokens(model)
    try:
        cached, uncached, seq = tl.kv_decoding_logits(model, tokens, steps)
    except (ConfigError, HookError, NotImplementedError) as e:  # no unembedding module, or generate unsupported
        return KVCheck(ok=None, versions=versions, note=f"cannot run on {type(model).__name__}: {e}")
    diff = (cached - uncached).abs().amax(dim=(0, 2))  # per step
    scale = float(uncached.abs().max())
    rtol = _RTOL.get(str(tl.model_dtype(model)).removeprefix("torch."), _RTOL_LOW_PRECISION)
    tol = rtol * max(scale, 1.0)
    P = tokens.shape[1]
    tokens_match = bool((uncached.argmax(-1) == seq[:, P:P + steps].to(uncached.device)).all())
    return KVCheck(ok=bool(diff.max() <= tol), max_abs_diff=float(diff.max()), max_abs_logit=scale, tolerance=tol,
                   worst_step=int(diff.argmax()), steps=steps, tokens_match=tokens_match,
                   seconds=round(time.perf_counter() - t0, 3), versions=versions)


def guard_generation(model: Any, policy: str = "fallback", *, steps: int = 3) -> KVCheck | None:
    """Run :func:`check_kv_cache` once per model (the result is kept as ``model.msma_kv_check``) and apply ``policy``.

    ``"fallback"``: on a disagreement, warn (naming the TransformerLens and transformers versions) and make this
    model's ``generate`` decode without the KV cache from now on. ``"error"``: raise KVCacheError instead.
    ``"off"``: skip the check.
    """
    if policy not in KV_POLICIES:
        raise ConfigError(f"kv_check must be one of {list(KV_POLICIES)}, got {policy!r}")
    if policy == "off":
        return getattr(model, "msma_kv_check", None)
    result = getattr(model, "msma_kv_check", None)
    if not isinstance(result, KVCheck):
        result = check_kv_cache(model, steps=steps)
        model.msma_kv_check = result
    if result.ok is False:
        name = tl.provenance(model)["model_id"]
        msg = (f"{name}: KV-cached generation disagrees with uncached decoding ({result}). The installed "
               f"transformer-lens {result.versions.get('transformer_lens')} + transformers "
               f"{result.versions.get('transformers')} corrupt cached generation (known: transformers 5.24 with "
               "TransformerLens 4.3's TransformerBridge); install the locked versions (bash .ci/setup).")
        if policy == "error":
            raise KVCacheError(msg)
        if not getattr(model, "msma_uncached_generation", False):
            warnings.warn(msg + " Falling back to uncached decoding for this model (slower, correct).", RuntimeWarning,
                          stacklevel=2)
        tl.force_uncached_generation(model, f"{name}: the KV cache is broken with these library versions; decoding "
                                             "without it (use_past_kv_cache=False)")
    return result


def kv_cache_usable(model: Any) -> bool:
    """False when :func:`guard_generation` found this model's cached decoding broken."""
    result = getattr(model, "msma_kv_check", None)
    return not (isinstance(result, KVCheck) and result.ok is False)
