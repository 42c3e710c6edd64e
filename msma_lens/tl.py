"""The one module that speaks to TransformerLens.

Works with HookedTransformer (TL 2.16+/3.x) and TransformerBridge (TL 3.x/4.x) through the hook API they
share (``hook_dict``, ``hooks()``, ``run_with_cache``, ``generate``). Models are recognised by duck typing;
no TransformerLens class is imported at module level (TL 4 has no HookedTransformer).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import ConfigError, HookError

SITES = {"resid_pre": "hook_resid_pre", "resid_mid": "hook_resid_mid", "resid_post": "hook_resid_post"}
# canonical bridge names the legacy aliases point to; used when the aliases are gone (SAELens-wrapped bridges)
_BRIDGE_CANONICAL = {"resid_pre": "hook_in", "resid_mid": "ln2.hook_in", "resid_post": "hook_out"}


def tl_version() -> str:
    try:
        return importlib.metadata.version("transformer-lens")
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def tl_major() -> int:
    v = tl_version()
    return int(v.split(".")[0]) if v[:1].isdigit() else 0


def check_model(model: Any) -> None:
    """Raise ConfigError unless ``model`` exposes the TransformerLens hook API."""
    missing = [a for a in ("hook_dict", "hooks", "run_with_cache", "cfg") if not hasattr(model, a)]
    if missing:
        raise ConfigError(
            f"{type(model).__name__} is not a TransformerLens model (missing {missing}); pass a HookedTransformer or "
            "TransformerBridge, or a name for msma_lens.load_model"
        )


def backend(model: Any) -> str:
    """``"TransformerBridge"``, ``"HookedTransformer"`` or the class name of another hooked root module."""
    names = [c.__name__ for c in type(model).__mro__]
    if any("Bridge" in n for n in names):
        return "TransformerBridge"
    if "HookedTransformer" in names:
        return "HookedTransformer"
    if "HookedEncoder" in names:
        return "HookedEncoder"
    return type(model).__name__


def compatibility_mode(model: Any) -> bool | None:
    """Whether a bridge runs in compatibility mode (None for HookedTransformer)."""
    if backend(model) != "TransformerBridge":
        return None
    for attr in ("compatibility_mode", "_compatibility_mode"):
        v = getattr(model, attr, None)
        if isinstance(v, bool):
            return v
    v = getattr(getattr(model, "cfg", None), "compatibility_mode", None)
    return bool(v) if v is not None else False


def n_layers(model: Any) -> int:
    return int(model.cfg.n_layers)


def d_model(model: Any) -> int:
    return int(model.cfg.d_model)


def is_encoder(model: Any) -> bool:
    """True for encoder-only models (BERT family): they have no ``generate``."""
    cfg = model.cfg
    arch = str(getattr(cfg, "original_architecture", "") or getattr(cfg, "architecture", "") or "")
    if any(k in arch for k in ("Bert", "Roberta", "Electra", "Encoder", "MaskedLM")):
        return True
    return backend(model) == "HookedEncoder"


def model_dtype(model: Any) -> torch.dtype:
    """Dtype of the weights (``cfg.dtype`` can be wrong on the bridge)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def model_device(model: Any) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def provenance(model: Any) -> dict:
    """What an artifact must record about the model it came from."""
    return {
        "model_id": getattr(model, "msma_model_id", None) or str(getattr(model.cfg, "model_name", type(model).__name__)),
        "backend": backend(model),
        "tl_version": tl_version(),
        "compatibility_mode": compatibility_mode(model),
        "n_layers": n_layers(model),
        "d_model": d_model(model),
        "dtype": str(model_dtype(model)),
        # e.g. "4-bit quantised (GGUF Q4_K_M) and dequantised to fp32: ..." for the offline GGUF models (io.models)
        "weights": getattr(model, "msma_weights", None),
    }


def _saelens_note(model: Any) -> str:
    if "SAE" in type(model).__name__:
        return (" (this looks like a SAELens-wrapped model: SAETransformerBridge drops the legacy HookedTransformer "
                "aliases such as blocks.N.hook_resid_post; use the canonical blocks.N.hook_out names or hook the "
                "SAE's hook_sae_output)")
    return ""


def resid_name(model: Any, layer: int, site: str = "resid_post") -> str:
    """The hook name of a residual site of block ``layer``, validated against ``model.hook_dict``."""
    if site not in SITES:
        raise ConfigError(f"unknown residual site {site!r}; valid: {list(SITES)}")
    n = n_layers(model)
    if not isinstance(layer, int) or not 0 <= layer < n:
        raise ConfigError(f"layer {layer!r} is outside the model's blocks 0..{n - 1}")
    hd = model.hook_dict
    name = f"blocks.{layer}.{SITES[site]}"
    if name in hd:
        return name
    alt = f"blocks.{layer}.{_BRIDGE_CANONICAL[site]}"
    if alt in hd:
        return alt
    raise HookError(f"hook {name!r} (or {alt!r}) not found on {type(model).__name__}{_saelens_note(model)}")


def validate_hook_names(model: Any, names: Iterable[str]) -> list[str]:
    """Raise HookError for any name not in ``model.hook_dict`` (TL 3.9 ignores unknown names silently)."""
    names = list(names)
    hd = model.hook_dict
    bad = [n for n in names if n not in hd]
    if bad:
        close = sorted({k for k in hd if any(k.split(".")[-1] == b.split(".")[-1] for b in bad)})[:5]
        hint = f"; similar names on this model: {close}" if close else ""
        raise HookError(f"unknown hook name(s) {bad} on {type(model).__name__}{hint}{_saelens_note(model)}")
    return names


@dataclass
class HookRecord:
    """Per-hook call counts for one scoped session."""

    calls: dict[str, int] = field(default_factory=dict)

    def unfired(self) -> list[str]:
        return [n for n, c in self.calls.items() if c == 0]


@contextlib.contextmanager
def scoped_hooks(
    model: Any,
    fwd_hooks: list[tuple[str, Callable]],
    *,
    require_fired: bool = True,
) -> Iterator[HookRecord]:
    """Attach forward hooks for the duration of the block; always removed, also on exceptions and Ctrl-C.

    Names are validated first. On a normal exit, hooks that never fired raise HookError (a silent no-op is
    the most common TransformerLens failure). Hooks the user attached with ``add_hook`` stay untouched.
    """
    validate_hook_names(model, [n for n, _ in fwd_hooks])
    record = HookRecord({n: 0 for n, _ in fwd_hooks})

    def counted(name: str, fn: Callable) -> Callable:
        def wrapper(x, hook):
            record.calls[name] += 1
            return fn(x, hook)

        return wrapper

    wrapped = [(n, counted(n, fn)) for n, fn in fwd_hooks]
    with model.hooks(fwd_hooks=wrapped):
        yield record
    if require_fired and record.unfired():
        raise HookError(f"hook(s) {record.unfired()} never fired during the forward pass{_saelens_note(model)}")


def count_attached_hooks(model: Any) -> int:
    """Number of forward hooks currently attached to the model's hook points (aliases counted once)."""
    seen, total = set(), 0
    for hp in model.hook_dict.values():
        if id(hp) in seen:
            continue
        seen.add(id(hp))
        total += len(getattr(hp, "_forward_hooks", {}) or {})
    return total


def _tokenizer(model: Any) -> Any:
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise ConfigError(f"{type(model).__name__} has no tokenizer, so it cannot take text: pass token ids instead "
                          "(a [batch, pos] LongTensor, with attention_mask= a [batch, pos] tensor if it is padded)")
    return tok


def encode(model: Any, texts: list[str], *, prepend_bos: bool = True) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids of each text and their special-token flags (1 = BOS/[CLS]/[SEP]); unpadded, untruncated.

    Decoders get BOS prepended when the tokenizer has one and ``prepend_bos``; encoders get their own special
    tokens ([CLS]/[SEP]). Raises ConfigError when the model has no tokenizer.
    """
    tok = _tokenizer(model)
    encoder = is_encoder(model)
    bos = tok.bos_token_id if (prepend_bos and not encoder) else None
    seqs, specials = [], []
    for t in texts:
        enc = tok(t, add_special_tokens=encoder, return_special_tokens_mask=encoder)
        ids = list(enc["input_ids"])
        sp = list(enc["special_tokens_mask"]) if encoder else [0] * len(ids)
        if bos is not None:
            ids, sp = [bos, *ids], [1, *sp]
        seqs.append(ids)
        specials.append(sp)
    return seqs, specials


def token_rows(model: Any, tokens: Any, attention_mask: Any = None, *,
               arg: str = "tokens") -> tuple[list[list[int]], list[list[int]]]:
    """Unpadded rows of a ``[batch, pos]`` token-id tensor and their special-token flags.

    ``attention_mask`` (``[batch, pos]``, 1 = real token, default all ones) selects each row's tokens; its ones
    must be contiguous (left or right padding), so both paddings give the same rows. The tokens are used as
    they are (no BOS is added). Flagged as special, i.e. excluded from statistics: the first attended token
    when it is the tokenizer's BOS id (decoders), or every [CLS]/[SEP]/BOS/EOS id (encoders).
    Without a tokenizer nothing is flagged. Errors name ``arg`` / ``attention_mask``.
    """
    if not isinstance(tokens, torch.Tensor):
        raise ConfigError(f"{arg} must be a torch.Tensor of token ids, got {type(tokens).__name__}")
    if tokens.ndim != 2:
        hint = " (use tokens.unsqueeze(0) for one sequence)" if tokens.ndim == 1 else ""
        raise ConfigError(f"{arg} must be a [batch, pos] tensor of token ids, got shape {tuple(tokens.shape)}{hint}")
    if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
        raise ConfigError(f"{arg} must hold integer token ids (torch.long), got dtype {tokens.dtype}")
    if tokens.shape[0] == 0 or tokens.shape[1] == 0:
        raise ConfigError(f"{arg} is empty (shape {tuple(tokens.shape)}): pass at least one token per row")
    tokens = tokens.detach().cpu().long()
    if attention_mask is None:
        mask = torch.ones_like(tokens, dtype=torch.bool)
    else:
        if not isinstance(attention_mask, torch.Tensor):
            raise ConfigError(f"attention_mask must be a torch.Tensor, got {type(attention_mask).__name__}")
        if tuple(attention_mask.shape) != tuple(tokens.shape):
            raise ConfigError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected {tuple(tokens.shape)} "
                              f"(the shape of {arg})")
        if attention_mask.is_floating_point() or attention_mask.is_complex():
            raise ConfigError(f"attention_mask must be a bool or integer tensor of 0/1, got dtype {attention_mask.dtype}")
        m = attention_mask.detach().cpu().long()
        if ((m != 0) & (m != 1)).any():
            raise ConfigError(f"attention_mask must hold only 0 and 1, found {sorted(set(m.unique().tolist()) - {0, 1})[:5]}")
        mask = m.bool()
    vocab = getattr(model.cfg, "d_vocab", None)
    tok = getattr(model, "tokenizer", None)
    encoder = is_encoder(model)
    bos = getattr(tok, "bos_token_id", None) if tok is not None and not encoder else None
    special_ids = set()
    if tok is not None and encoder:  # the tokens an encoder's tokenizer adds itself ([CLS]/[SEP], <s>/</s>)
        special_ids = {getattr(tok, a, None) for a in ("cls_token_id", "sep_token_id", "bos_token_id", "eos_token_id")}
        special_ids.discard(None)
    seqs, specials = [], []
    for i in range(tokens.shape[0]):
        where = torch.nonzero(mask[i]).flatten()
        if where.numel() == 0:
            raise ConfigError(f"attention_mask row {i} has no attended tokens")
        if int(where[-1] - where[0]) + 1 != where.numel():
            raise ConfigError(f"attention_mask row {i} has gaps: its ones must be contiguous (left or right padding)")
        ids = tokens[i, where].tolist()
        bad = [t for t in ids if t < 0 or (vocab is not None and t >= int(vocab))]
        if bad:
            raise ConfigError(f"{arg} row {i} holds token id {bad[0]}, outside the vocabulary 0..{int(vocab) - 1 if vocab else '?'}")
        if encoder:
            sp = [int(t in special_ids) for t in ids]
        else:
            sp = [0] * len(ids)
            if bos is not None and ids[0] == bos:
                sp[0] = 1
        seqs.append(ids)
        specials.append(sp)
    return seqs, specials


def pad_batch(model: Any, seqs: list[list[int]], specials: list[list[int]], *, padding_side: str = "right",
              max_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pad rows into ``(tokens [B, T], attention_mask [B, T], content_mask [B, T])``, truncating to ``max_length``.

    ``content_mask`` is the attention mask without special positions: the positions statistics should use
    (BOS norms are ~100x the median). The mask is returned explicitly: never infer it from pad ids (SmolLM2 has
    pad == eos).
    """
    if padding_side not in ("left", "right"):
        raise ConfigError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if max_length is not None:
        seqs, specials = [s[:max_length] for s in seqs], [sp[:max_length] for sp in specials]
    tok = getattr(model, "tokenizer", None)
    pad = 0
    if tok is not None:
        pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    T = max(len(s) for s in seqs)
    toks = torch.full((len(seqs), T), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    content = torch.zeros((len(seqs), T), dtype=torch.bool)
    for i, (s, sp) in enumerate(zip(seqs, specials)):
        sl = slice(0, len(s)) if padding_side == "right" else slice(T - len(s), T)
        toks[i, sl] = torch.tensor(s, dtype=torch.long)
        mask[i, sl] = 1
        content[i, sl] = torch.tensor(sp, dtype=torch.long) == 0
    return toks, mask, content


def to_tokens(model: Any, texts: list[str], *, prepend_bos: bool = True, padding_side: str = "right",
              max_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tokenise a batch: ``(tokens [B, T], attention_mask [B, T], content_mask [B, T])``.

    :func:`encode` then :func:`pad_batch`: BOS (decoders) or [CLS]/[SEP] (encoders) added and excluded from
    ``content_mask``. Raises ConfigError when the model has no tokenizer (pass token ids instead).
    """
    if padding_side not in ("left", "right"):
        raise ConfigError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    seqs, specials = encode(model, texts, prepend_bos=prepend_bos)
    return pad_batch(model, seqs, specials, padding_side=padding_side, max_length=max_length)


def token_lengths(model: Any, texts: list[str], *, prepend_bos: bool = True) -> list[int]:
    """Token count of each text as :func:`to_tokens` would produce it (before truncation)."""
    return [len(s) for s in encode(model, texts, prepend_bos=prepend_bos)[0]]


def context_length(model: Any) -> int:
    n = getattr(model.cfg, "n_ctx", None)
    return int(n) if n else 2048


class _StopForward(Exception):
    """Raised by the caching hook once every requested name has fired: nothing later in the pass is needed."""


def run_with_cache(model: Any, tokens: torch.Tensor, attention_mask: torch.Tensor, names: list[str],
                   stop_at_layer: int | None) -> dict[str, torch.Tensor]:
    """Cache ``names`` for one batch and check every name fired.

    The forward pass ends as soon as the last of ``names`` has fired (a private exception raised from its
    hook), so no block or module above it runs: with the top block's residual cached, the final norm and the
    unembedding are skipped on HookedTransformer and on the bridge alike. ``stop_at_layer`` (< n_layers) is
    also passed to TransformerLens, which stops before block ``stop_at_layer``. The cached tensors are those
    of a full forward pass (the pass is only cut short after they were computed).
    """
    validate_hook_names(model, names)
    wanted = list(dict.fromkeys(names))
    cache: dict[str, torch.Tensor] = {}

    def keeper(name: str) -> Callable:
        def keep(x: torch.Tensor, hook: Any) -> None:
            cache[name] = x.detach()
            if len(cache) == len(wanted):
                raise _StopForward
        return keep

    kwargs: dict[str, Any] = {"names_filter": lambda n: False, "return_type": None}
    if stop_at_layer is not None and stop_at_layer < n_layers(model):
        kwargs["stop_at_layer"] = stop_at_layer
    with model.hooks(fwd_hooks=[(n, keeper(n)) for n in wanted]):
        try:
            try:
                model.run_with_cache(tokens, attention_mask=attention_mask, **kwargs)
            except TypeError:
                # very old HT signatures do not take return_type=None with stop_at_layer
                kwargs.pop("return_type")
                model.run_with_cache(tokens, attention_mask=attention_mask, **kwargs)
        except _StopForward:
            pass
    missing = [n for n in names if n not in cache]
    if missing:
        raise HookError(f"hook(s) {missing} never fired during the forward pass{_saelens_note(model)}")
    return {n: cache[n] for n in names}


# ----- steering helpers (interventions.py / steering.py) ---------------------------------------------------
ATTN_HOOKS = {"query": "hook_q", "scores": "hook_attn_scores", "pattern": "hook_pattern"}


def attn_hook_name(model: Any, layer: int, kind: str) -> str:
    """``blocks.{layer}.attn.hook_q`` / ``hook_attn_scores`` / ``hook_pattern``, validated against ``hook_dict``."""
    if kind not in ATTN_HOOKS:
        raise ConfigError(f"unknown attention hook kind {kind!r}; valid: {list(ATTN_HOOKS)}")
    n = n_layers(model)
    if not isinstance(layer, int) or not 0 <= layer < n:
        raise ConfigError(f"layer {layer!r} is outside the model's blocks 0..{n - 1}")
    name = f"blocks.{layer}.attn.{ATTN_HOOKS[kind]}"
    validate_hook_names(model, [name])
    return name


def attention_edits_flow(model: Any, layer: int) -> bool:
    """Whether edits returned by ``hook_attn_scores`` / ``hook_pattern`` reach the output of block ``layer``.

    HookedTransformer computes attention itself (True). Bridge attention classes that re-implement the
    forward (Llama-family, GPT-2 joint QKV, ...) also honour edits; the generic ``AttentionBridge`` delegates
    to the HF module and fires those hooks after the fact, so edits are discarded (BERT, RoBERTa, OPT, ...).
    """
    attn = getattr(model.blocks[layer], "attn", None)
    if attn is None:
        return False
    generic = next((c for c in type(attn).__mro__ if c.__name__ == "AttentionBridge"), None)
    if generic is None:
        return True
    return type(attn).forward is not generic.forward


def attention_class(model: Any, layer: int) -> str:
    return type(getattr(model.blocks[layer], "attn", None)).__name__


def default_prepend_bos(model: Any) -> bool:
    tok = getattr(model, "tokenizer", None)
    has_bos = tok is not None and getattr(tok, "bos_token_id", None) is not None
    return bool(getattr(model.cfg, "default_prepend_bos", True)) and has_bos


def prompt_lengths(model: Any, prompts: list[str]) -> list[int]:
    """Token count of each prompt as the model's own ``to_tokens`` tokenises it (BOS included)."""
    return [int(model.to_tokens(p).shape[-1]) for p in prompts]


def eos_token_id(model: Any) -> int | None:
    tok = getattr(model, "tokenizer", None)
    return getattr(tok, "eos_token_id", None) if tok is not None else None


def decode(model: Any, ids: list[int]) -> str:
    return model.tokenizer.decode(ids)


def generate_tokens(model: Any, prompts: list[str] | list[list[int]], *, max_new_tokens: int, do_sample: bool,
                    use_past_kv_cache: bool, stop_at_eos: bool, temperature: float = 1.0, top_k: int | None = None,
                    top_p: float | None = None) -> torch.Tensor:
    """``model.generate`` on a list of strings or of token-id rows, left-padded, returning ``[B, P + n]`` token ids.

    TL 3.x/4.x force left padding for batched lists; TL 2.x pads on the tokenizer's side (right), which would
    generate after the padding, so left padding is requested explicitly. Token rows of different lengths are
    left-padded and passed with an ``attention_mask``, which only ``TransformerBridge.generate`` accepts.
    """
    kw: dict[str, Any] = {}
    if prompts and not isinstance(prompts[0], str):
        lengths = [len(r) for r in prompts]
        P = max(lengths)
        tok = getattr(model, "tokenizer", None)
        pad = getattr(tok, "pad_token_id", None) if tok is not None else None
        pad = pad if pad is not None else (eos_token_id(model) or 0)
        inp = torch.full((len(prompts), P), int(pad), dtype=torch.long)
        mask = torch.zeros((len(prompts), P), dtype=torch.long)
        for i, r in enumerate(prompts):
            inp[i, P - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, P - len(r):] = 1
        inp = inp.to(model_device(model))
        if min(lengths) != P:
            import inspect

            if "attention_mask" not in inspect.signature(model.generate).parameters:
                raise ConfigError(f"{type(model).__name__}.generate takes no attention_mask, so token-id prompts of "
                                  f"different lengths ({sorted(set(lengths))}) cannot be batched; pass rows of equal "
                                  "length, or text")
            kw["attention_mask"] = mask.to(model_device(model))
    else:
        inp = prompts
        if len(prompts) > 1:
            kw["padding_side"] = "left"
    out = model.generate(inp, max_new_tokens=max_new_tokens, do_sample=do_sample, use_past_kv_cache=use_past_kv_cache,
                         stop_at_eos=stop_at_eos, temperature=temperature, top_k=top_k, top_p=top_p,
                         return_type="tokens", verbose=False, **kw)
    if not isinstance(out, torch.Tensor):  # ModelOutput-like (output_logits) or tuple
        out = getattr(out, "sequences", out[0] if isinstance(out, tuple) else out)
    return out


# ----- KV-cache self-check (guard.py) ----------------------------------------------------------------------
def library_versions() -> dict[str, str]:
    """Versions of the libraries that decide what generation computes."""
    out = {"transformer_lens": tl_version()}
    for dist in ("transformers", "torch"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def kv_probe_tokens(model: Any, text: str = "The capital of France is") -> torch.Tensor:
    """A short ``[1, P]`` prompt for the self-check: ``text`` tokenised (BOS included), or fixed ids without a tokenizer."""
    tok = getattr(model, "tokenizer", None)
    if tok is not None:
        ids = list(tok(text, add_special_tokens=False)["input_ids"])
        if default_prepend_bos(model):
            ids = [tok.bos_token_id, *ids]
    else:
        ids = [(7 * i + 1) % int(model.cfg.d_vocab) for i in range(6)]
    return torch.tensor([ids], dtype=torch.long, device=model_device(model))


def kv_decoding_logits(model: Any, tokens: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Greedy-decode ``steps`` tokens with ``model.generate`` and its KV cache, then re-run the whole sequence once.

    Returns ``(cached [B, steps, V], uncached [B, steps, V], sequence [B, P + steps])``: the logits each cached
    decoding step produced (read from the unembedding's output, so no TransformerLens hook is involved), and the
    logits one uncached forward pass gives at the same positions of the same sequence.
    """
    unembed = getattr(model, "unembed", None)
    if not isinstance(unembed, torch.nn.Module):
        raise ConfigError(f"{type(model).__name__} has no unembed module to read decoding logits from")
    seen: list[torch.Tensor] = []
    handle = unembed.register_forward_hook(lambda mod, args, out: seen.append(out[:, -1:].detach().float().clone()))
    try:
        with torch.no_grad():
            raw = original_generate(model)
            seq = raw(tokens, max_new_tokens=steps, do_sample=False, use_past_kv_cache=True, stop_at_eos=False,
                      return_type="tokens", verbose=False)
    finally:
        handle.remove()
    if not isinstance(seq, torch.Tensor):
        seq = getattr(seq, "sequences", seq[0] if isinstance(seq, tuple) else seq)
    P = tokens.shape[1]
    if len(seen) < steps:
        raise HookError(f"the unembedding fired {len(seen)} times during {steps} decoding steps")
    cached = torch.cat(seen[-steps:], dim=1)
    with torch.no_grad():
        uncached = model(seq, return_type="logits")[:, P - 1:P - 1 + steps].float()
    return cached, uncached, seq


def force_uncached_generation(model: Any, message: str) -> None:
    """Make ``model.generate`` decode without the KV cache (on this instance only), warning on each cached request."""
    if getattr(model, "msma_uncached_generation", False):
        return
    original = model.generate

    def generate(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("use_past_kv_cache", True):
            warnings.warn(message, RuntimeWarning, stacklevel=2)
        kwargs["use_past_kv_cache"] = False
        return original(*args, **kwargs)

    generate.__doc__ = getattr(original, "__doc__", None)
    generate.__wrapped__ = original  # type: ignore[attr-defined]  # inspect.signature shows the real one
    generate.msma_original = original  # type: ignore[attr-defined]
    model.generate = generate
    model.msma_uncached_generation = True


def original_generate(model: Any) -> Callable:
    """The model's own bound ``generate``, past a fallback installed by :func:`force_uncached_generation`."""
    return getattr(model.generate, "msma_original", model.generate)


# ----- extra hook points (hookpoints.py) -------------------------------------------------------------------
def new_hook_point() -> torch.nn.Module:
    """A fresh TransformerLens ``HookPoint``."""
    from transformer_lens.hook_points import HookPoint

    return HookPoint()


def has_hooks(hook_point: torch.nn.Module) -> bool:
    """Whether anything (a cache, a user's hook, a steering edit) is attached to ``hook_point``."""
    return bool(hook_point._forward_hooks)


def attach_hook_module(model: Any, name: str, module: torch.nn.Module) -> None:
    """Add ``module`` as ``model.<name>`` so that its HookPoints appear in ``model.hook_dict`` as ``<name>.<...>``.

    TransformerBridge registers a component's ``get_hooks()`` in its hook registry on attribute assignment;
    HookedTransformer rebuilds ``hook_dict`` from its module tree in ``setup()``.
    """
    if hasattr(model, name):
        raise HookError(f"{type(model).__name__} already has an attribute {name!r}; detach it first")
    setattr(model, name, module)
    if backend(model) != "TransformerBridge":
        model.setup()
    for hook_name, hp in module.get_hooks().items():
        hp.name = f"{name}.{hook_name}"
    missing = [f"{name}.{n}" for n in module.get_hooks() if f"{name}.{n}" not in model.hook_dict]
    if missing:
        detach_hook_module(model, name)
        raise HookError(f"could not register hook points {missing} on {type(model).__name__} (TL {tl_version()})")


def detach_hook_module(model: Any, name: str) -> None:
    """Undo :func:`attach_hook_module`: the module and its names leave the model and ``hook_dict``."""
    module = getattr(model, name, None)
    if module is None:
        return
    delattr(model, name)
    if backend(model) == "TransformerBridge":
        registry = getattr(model, "_hook_registry", {})
        for hook_name in module.get_hooks():
            registry.pop(f"{name}.{hook_name}", None)
    else:
        model.setup()


def add_permanent_hook(model: Any, hook_name: str, fn: Callable) -> tuple[torch.nn.Module, Any]:
    """Attach ``fn(x, hook)`` to ``hook_name`` as a permanent hook (it survives ``reset_hooks()`` and the bridge's
    ``hooks()`` scoping). Returns a handle for :func:`remove_permanent_hook`."""
    hp = model.hook_dict[validate_hook_names(model, [hook_name])[0]]
    hp.add_hook(fn, dir="fwd", is_permanent=True)
    return hp, hp.fwd_hooks[-1]


def remove_permanent_hook(handle: tuple[torch.nn.Module, Any]) -> None:
    hp, lens_handle = handle
    lens_handle.hook.remove()
    if lens_handle in hp.fwd_hooks:
        hp.fwd_hooks.remove(lens_handle)
