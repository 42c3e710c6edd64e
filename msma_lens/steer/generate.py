"""Steered generation (MSPGT §B.4): :func:`generate` runs ``model.generate`` (KV cache by default: each step is
one ``[B, 1, d]`` pass, never a re-run of the sequence) under the edits' hooks (:mod:`msma_lens.steer.session`), with
positions computed per row from the left padding, a seeded RNG shared by baseline and steered runs, and optional
capture of the steered trajectory's per-scale activations."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import tl
from ..capture.activations import POOLINGS, ScaleActivations
from ..capture.scales import Scales
from ..errors import ConfigError
from ..guard import kv_cache_usable
from .edits import Intervention
from .session import SteeringRecord, TokenLayout, flatten_interventions, steering_session

__all__ = ["GenerationCapture", "GenerationResult", "check_prompts", "generate"]


# ----- generation ------------------------------------------------------------------------------------------
@dataclass
class GenerationCapture:
    """Per-scale activations of a steered trajectory (after the edits), at ``site`` of each scale's layers.

    ``acts[scale]`` is ``[B, T, d]``, the mean over the scale's layers, for every column the model processed:
    the left-padded prompt and the generated tokens fed back in (the last sampled token is never fed back,
    so ``T = P + n − 1``). ``mask`` ``[B, T]`` marks real tokens (no padding, nothing after a row's EOS);
    ``positions`` ``[B, T]`` are absolute positions (−1 on padding); ``prompt_mask`` marks prompt columns.
    """

    acts: dict[str, torch.Tensor]
    mask: torch.Tensor
    positions: torch.Tensor
    prompt_mask: torch.Tensor
    layers: dict[str, tuple[int, ...]]
    meta: dict = field(default_factory=dict)

    def to_scale_activations(self, pooling: str = "token", part: str = "all", exclude_bos: bool = True) -> ScaleActivations:
        """Rows paired across scales (``doc_ids`` = batch row). ``part``: ``all``, ``prompt`` or ``generated``."""
        if pooling not in POOLINGS:
            raise ConfigError(f"unknown pooling {pooling!r}; valid: {list(POOLINGS)}")
        if part not in ("all", "prompt", "generated"):
            raise ConfigError(f"part must be 'all', 'prompt' or 'generated', got {part!r}")
        keep = self.mask.clone()
        if part == "prompt":
            keep &= self.prompt_mask
        elif part == "generated":
            keep &= ~self.prompt_mask
        if exclude_bos and self.meta.get("prepend_bos"):
            keep &= self.positions >= 1
        if not keep.any():
            raise ConfigError(f"no {part} positions to pool (generation too short, or everything is BOS/padding)")
        B = keep.shape[0]
        rows = torch.arange(B)
        if pooling == "token":
            bi, col = torch.nonzero(keep, as_tuple=True)
            acts = {s: a[bi, col].float().cpu() for s, a in self.acts.items()}
            doc_ids, pos = bi, self.positions[bi, col]
        else:
            has = keep.any(1)
            if not has.all():
                raise ConfigError(f"row(s) {torch.nonzero(~has).flatten().tolist()} have no {part} positions")
            if pooling == "mean":
                w = keep.float()[..., None]
                acts = {s: ((a.float().cpu() * w).sum(1) / w.sum(1)) for s, a in self.acts.items()}
                pos = torch.full((B,), -1, dtype=torch.long)
            else:
                last = (keep.long() * torch.arange(keep.shape[1])).argmax(1)
                acts = {s: a[rows, last].float().cpu() for s, a in self.acts.items()}
                pos = self.positions[rows, last]
            doc_ids = rows
        meta = {**self.meta, "pooling": pooling, "part": part}
        return ScaleActivations(acts, doc_ids.long(), pos.long(), meta)


@dataclass
class GenerationResult:
    """Output of :func:`generate`.

    ``texts[i]`` is the continuation of ``prompts[i]`` (cut at the first EOS when ``stop_at_eos``);
    ``generated[i]`` its token ids; ``tokens`` the model's ``[B, P + n]`` output (left-padded prompts,
    generated ids, EOS after a row finished); ``record`` the :class:`SteeringRecord`.
    """

    prompts: list[str]
    texts: list[str]
    generated: list[list[int]]
    tokens: torch.Tensor
    prompt_lengths: list[int]
    record: SteeringRecord
    capture: GenerationCapture | None = None
    settings: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        st = self.settings
        head = ", ".join(f"{k}={st[k]!r}" for k in ("model_id", "max_new_tokens", "do_sample", "seed") if k in st)
        n_new = [len(g) for g in self.generated]
        first = self.texts[0] if self.texts else ""
        first = repr(first if len(first) <= 60 else first[:57] + "...")
        cap = f", captured scales {list(self.capture.acts)}" if self.capture is not None else ""
        return (f"GenerationResult({head + ', ' if head else ''}prompts={len(self.prompts)}, tokens={list(self.tokens.shape)},\n"
                f"    new tokens {min(n_new, default=0)}-{max(n_new, default=0)}, interventions={len(self.record.interventions)}"
                f"{cap}, texts[0]={first})")


def check_prompts(prompts: Any) -> list[str]:
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, Sequence) or not prompts:
        raise ConfigError("prompts must be a non-empty list of strings")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise ConfigError(f"prompt {i} is a {type(p).__name__}, expected str")
    return list(prompts)


def check_int(v: Any, name: str, lo: int) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < lo:
        raise ConfigError(f"{name} must be an int >= {lo}, got {v!r}")
    return v


class _Seeded:
    """Seed the global RNG (used by ``model.generate`` for sampling) and restore it afterwards."""

    def __init__(self, seed: int, device: torch.device) -> None:
        self.seed = int(seed)
        devices = [device] if device.type == "cuda" else []
        self.fork = torch.random.fork_rng(devices=devices)

    def __enter__(self) -> None:
        self.fork.__enter__()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc: Any) -> Any:
        return self.fork.__exit__(*exc)


def _capture_scale_names(capture_scales: Any, scales: Scales) -> list[str]:
    if capture_scales is None or capture_scales is False:
        return []
    if capture_scales is True:
        return list(scales.names)
    names = [capture_scales] if isinstance(capture_scales, str) else list(capture_scales)
    for n in names:
        scales[n]  # ConfigError naming an unknown scale
    return names


def generate(
    model: Any,
    prompts: str | Sequence[str],
    interventions: Intervention | Sequence[Intervention] | None = (),
    *,
    max_new_tokens: int = 20,
    do_sample: bool = False,
    attention_mask: torch.Tensor | None = None,
    seed: int = 0,
    scales: Any = None,
    phase: str = "both",
    positions: Any = None,
    schedule: Any = None,
    use_past_kv_cache: bool = True,
    capture_scales: bool | str | Sequence[str] | None = None,
    capture_site: str = "resid_post",
    stop_at_eos: bool = True,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> GenerationResult:
    """Generate continuations of ``prompts`` (batched, left-padded) under ``interventions``.

    Pass no interventions for the baseline: it runs the same code path with the same seed, so baseline and
    steered samples are paired. The global RNG is seeded with ``seed`` for the call and restored afterwards;
    noise interventions use their own generators. ``capture_scales`` (``True`` for all scales, or names)
    records the steered activations (:class:`GenerationCapture`). Encoder models raise ConfigError.
    """
    tl.check_model(model)
    if tl.is_encoder(model):
        raise ConfigError(f"{tl.provenance(model)['model_id']} is an encoder (BERT-style) model and cannot generate; "
                          "apply interventions to its forward passes with steer() instead")
    if isinstance(prompts, torch.Tensor):  # token ids [B, P] (+ attention_mask), used as they are (no BOS added)
        rows, _ = tl.token_rows(model, prompts, attention_mask, arg="prompts")
        prompt_input: Any = rows
        prompts = [tl.decode(model, r) if getattr(model, "tokenizer", None) is not None else "" for r in rows]
        lengths = [len(r) for r in rows]
    else:
        if attention_mask is not None:
            raise ConfigError("attention_mask goes with token-id prompts ([batch, pos] tensor), not with text")
        prompts = check_prompts(prompts)
        prompt_input = prompts
        lengths = tl.prompt_lengths(model, prompts)
    check_int(max_new_tokens, "max_new_tokens", 1)
    if not isinstance(do_sample, bool):
        raise ConfigError(f"do_sample must be True or False, got {do_sample!r}")
    check_int(seed, "seed", 0)
    if not isinstance(interventions, (list, tuple)):
        interventions = [interventions]
    ivs = flatten_interventions(tuple(interventions))
    n_layers = tl.n_layers(model)
    sc = Scales.coerce(scales, n_layers)
    cap_names = _capture_scale_names(capture_scales, sc)
    cap_layers = sorted({x for s in cap_names for x in sc[s]})
    B, P = len(prompts), max(lengths)
    kv_ok = kv_cache_usable(model)
    use_past_kv_cache = bool(use_past_kv_cache and kv_ok)
    mask = torch.zeros(B, P, dtype=torch.bool)
    for i, n in enumerate(lengths):
        mask[i, P - n:] = True
    bos = tl.default_prepend_bos(model)
    seq = TokenLayout(mask, bos)
    with steering_session(model, ivs, scales=sc, phase=phase, positions=positions, schedule=schedule, sequence=seq,
                capture_layers=cap_layers, capture_site=capture_site, max_steps=max_new_tokens,
                prompt_lengths=lengths) as (record, session):
        with _Seeded(seed, tl.model_device(model)):
            tokens = tl.generate_tokens(model, prompt_input, max_new_tokens=max_new_tokens, do_sample=do_sample,
                                         use_past_kv_cache=use_past_kv_cache, stop_at_eos=stop_at_eos,
                                         temperature=temperature, top_k=top_k, top_p=top_p)
    tokens = tokens.detach().cpu()
    eos = tl.eos_token_id(model) if stop_at_eos else None
    generated, texts = [], []
    for b in range(B):
        ids = tokens[b, P:].tolist()
        if eos is not None and eos in ids:
            ids = ids[: ids.index(eos)]
        generated.append(ids)
        texts.append(tl.decode(model, ids))
    settings = {"max_new_tokens": max_new_tokens, "do_sample": do_sample, "seed": seed, "use_past_kv_cache": use_past_kv_cache,
                "stop_at_eos": stop_at_eos, "temperature": temperature, "top_k": top_k, "top_p": top_p, "phase": phase,
                "scales": sc.to_dict(), "input": "token_ids" if prompt_input is not prompts else "text",
                "kv_cache_fallback": not kv_ok, **tl.provenance(model)}
    capture = None
    if cap_names:
        capture = _assemble_capture(session, sc, cap_names, tokens, P, eos, settings, capture_site, bos)
    return GenerationResult(prompts, texts, generated, tokens, lengths, record, capture, settings)


def _assemble_capture(session: Any, sc: Scales, names: list[str], tokens: torch.Tensor, P: int, eos: int | None,
                      settings: dict, site: str, bos: bool) -> GenerationCapture:
    per_layer = {x: torch.cat(chunks, dim=1) for x, chunks in session.captured.items()}
    acts = {s: torch.stack([per_layer[x] for x in sc[s]]).float().mean(0) for s in names}
    B, T = next(iter(acts.values())).shape[:2]
    cols = torch.arange(T)
    prompt_cols = cols < P
    offsets = session.mask.long().argmax(1)
    real = torch.where(prompt_cols[None], session.mask[:, cols.clamp(max=P - 1)], torch.ones(1, dtype=torch.bool))
    if eos is not None:  # nothing after a row's first generated EOS
        is_eos = tokens[:, P:T] == eos
        after = (is_eos.long().cumsum(1) - is_eos.long()) > 0
        real[:, P:] &= ~after[:, : T - P]
    positions = torch.where(real | ~prompt_cols[None], cols[None] - offsets[:, None], torch.full((1,), -1))
    meta = {**{k: settings[k] for k in ("model_id", "backend", "tl_version", "compatibility_mode", "n_layers", "d_model", "dtype")},
            "scales": sc.to_dict(), "site": site, "layer_agg": "mean", "prepend_bos": bos,
            "source": "msma_lens.steer.generate.generate", "interventions": session.record.interventions,
            "generation": {k: settings[k] for k in ("max_new_tokens", "do_sample", "seed", "use_past_kv_cache")}}
    return GenerationCapture(acts, real, positions, prompt_cols[None].expand(B, T).clone(),
                             {s: tuple(sc[s]) for s in names}, meta)


