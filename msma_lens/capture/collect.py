"""Per-scale residual capture through TransformerLens hook points.

One forward pass per batch with ``run_with_cache`` restricted to the scales' hook names; the pass ends right
after the highest hook read, so no block above the highest scale (and, when the scales reach the top block, no
final norm or unembedding) is computed. BOS, special and padding positions are excluded from every statistic;
batches carry an explicit attention mask. Input is a list of texts or a ``[batch, pos]`` tensor of token ids
(with an optional ``attention_mask``). The result is preallocated and filled in place batch by batch;
:func:`capture_shards` streams batches to disk and hands back a :class:`ShardedCapture` that is read one
shard at a time, for corpora whose activations do not fit in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from .. import tl
from ..capture import hookpoints
from ..capture.activations import POOLINGS, ScaleActivations
from ..capture.scales import Scales
from ..errors import ArtifactError, ConfigError, NumericsError
from ..io.artifacts import load_artifact, save_artifact, sha256_texts, write_json_atomic

SHARD_KIND = "msma_lens.CaptureShard"


def check_texts(texts: Sequence[str]) -> list[str]:
    """Validate a list of documents; errors name the offending index."""
    if isinstance(texts, str):
        raise ConfigError("texts must be a list of documents, not a single string (wrap it in a list)")
    texts = list(texts)
    if not texts:
        raise ConfigError("texts is empty: pass at least one document")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ConfigError(f"document {i} is a {type(t).__name__}, expected str")
        if not t.strip():
            raise ConfigError(f"document {i} is empty")
    return texts


def _layer_plan(scales: Scales, layer_agg: str | int | dict) -> dict[str, list[int]]:
    """Which layers feed each scale: all of them (mean), or one chosen layer."""
    plan = {}
    for s, layers in scales.items():
        choice = layer_agg.get(s, "mean") if isinstance(layer_agg, dict) else layer_agg
        if choice == "mean":
            plan[s] = list(layers)
        elif choice == "last":
            plan[s] = [layers[-1]]
        elif choice == "first":
            plan[s] = [layers[0]]
        elif isinstance(choice, int) and not isinstance(choice, bool):
            if choice not in layers:
                raise ConfigError(f"layer_agg for scale {s!r} chose layer {choice}, which is not in its layers {list(layers)}")
            plan[s] = [choice]
        else:
            raise ConfigError(f"layer_agg for scale {s!r} must be 'mean', 'first', 'last' or a layer index, got {choice!r}")
    return plan


def capture(
    model: Any,
    scales: Scales | str | dict | None,
    texts: Sequence[str] | torch.Tensor,
    *,
    attention_mask: torch.Tensor | None = None,
    pooling: str = "token",
    layer_agg: str | int | dict = "mean",
    site: str = "resid_post",
    batch_size: int = 8,
    max_length: int | None = None,
    on_overflow: str = "warn",
    padding_side: str = "right",
    prepend_bos: bool = True,
    shard_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> ScaleActivations:
    """Capture per-scale residuals of ``texts`` (a list of documents, or a ``[batch, pos]`` tensor of token ids).

    pooling: ``token`` (one row per content token, positions paired across scales), ``mean`` (mask-aware
    mean per document) or ``last`` (last content token). layer_agg: ``mean`` of the scale's layers, ``first``,
    ``last``, or an absolute layer index (per scale via a dict). Texts longer than ``max_length`` (default:
    the model's context) are truncated with a warning, or rejected with ``on_overflow="error"``.

    Token ids are used as they are (no BOS is prepended, ``prepend_bos`` is ignored); ``attention_mask``
    (``[batch, pos]``, 1 = real token, default all ones) marks each row's tokens, left or right padded alike.
    The content positions are the attended ones minus the first when it is the tokenizer's BOS id (encoders:
    minus [CLS]/[SEP]); ``doc_ids`` index the rows. ``corpus_sha256`` then hashes the unpadded ids. A model
    without a tokenizer needs token ids.

    The output is preallocated (the row count of every document is known from its tokens) and each batch is
    written in place at its documents' rows, so memory holds the result plus one batch. Each forward pass
    stops right after the highest hook it reads (:func:`msma_lens.tl.run_with_cache`): no block above the
    highest scale, and no final norm or unembedding, is computed.

    ``shard_dir`` streams each batch to disk (only one batch is held in memory during the forward passes) and
    resumes an interrupted run. Each shard records its batch size and document ids; on resume every shard is
    verified against the batch it should hold (a damaged one is re-captured with a warning), and a resume
    with another ``batch_size``, ``padding_side`` or configuration is refused, so the result is exactly that of
    an uninterrupted run. The shards are then read back one at a time into the preallocated output; for a
    corpus whose activations do not fit in memory use :func:`capture_shards`, which returns the shards unread.
    """
    opts = dict(attention_mask=attention_mask, pooling=pooling, layer_agg=layer_agg, site=site, batch_size=batch_size,
                max_length=max_length, on_overflow=on_overflow, padding_side=padding_side, prepend_bos=prepend_bos,
                progress=progress)
    if shard_dir is not None:
        return _capture(model, scales, texts, shard_dir=shard_dir, **opts).assemble()
    return _capture(model, scales, texts, shard_dir=None, **opts)


def capture_shards(
    model: Any,
    scales: Scales | str | dict | None,
    texts: Sequence[str] | torch.Tensor,
    shard_dir: str | os.PathLike,
    **options: Any,
) -> ShardedCapture:
    """:func:`capture` into ``shard_dir`` without reading the result back: a :class:`ShardedCapture`.

    Same options and resume rules as :func:`capture` (``options`` are its keyword arguments). Memory stays
    bounded by one batch whatever the corpus size; iterate the result shard by shard, or call
    :meth:`ShardedCapture.assemble` for the in-memory :class:`ScaleActivations` that :func:`capture` returns.
    """
    if shard_dir is None:
        raise ConfigError("capture_shards needs a shard_dir (use capture() for an in-memory result)")
    if "shard_dir" in options:
        raise ConfigError("capture_shards: pass shard_dir once, as the fourth argument")
    return _capture(model, scales, texts, shard_dir=shard_dir, **options)


def _capture(
    model: Any,
    scales: Scales | str | dict | None,
    texts: Sequence[str] | torch.Tensor,
    *,
    shard_dir: str | os.PathLike | None,
    attention_mask: torch.Tensor | None = None,
    pooling: str = "token",
    layer_agg: str | int | dict = "mean",
    site: str = "resid_post",
    batch_size: int = 8,
    max_length: int | None = None,
    on_overflow: str = "warn",
    padding_side: str = "right",
    prepend_bos: bool = True,
    progress: bool = True,
) -> ScaleActivations | ShardedCapture:
    tl.check_model(model)
    tokens_in = isinstance(texts, torch.Tensor)
    if not tokens_in:
        if attention_mask is not None:
            raise ConfigError("attention_mask is only for token-id input (texts as a [batch, pos] tensor); texts are "
                              "tokenised and masked by msma-lens")
        texts = check_texts(texts)
    if getattr(model, "training", False):
        warnings.warn("the model is in training mode (dropout is active): call model.eval() for reproducible activations",
                      stacklevel=3)
    scales = Scales.coerce(scales, tl.n_layers(model))
    if pooling not in POOLINGS:
        raise ConfigError(f"unknown pooling {pooling!r}; valid: {list(POOLINGS)}")
    if on_overflow not in ("warn", "error"):
        raise ConfigError(f"on_overflow must be 'warn' or 'error', got {on_overflow!r}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive int, got {batch_size!r}")
    if padding_side not in ("left", "right"):
        raise ConfigError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    plan = _layer_plan(scales, layer_agg)
    layers = sorted({x for ls in plan.values() for x in ls})
    names = {x: tl.resid_name(model, x, site) for x in layers}
    # what each scale reads: its msma.{scale}.hook_resid point (the layer mean) when the whole scale is averaged,
    # else the chosen block's own hook; per-block hooks averaged here only when another partition is attached
    points = hookpoints.attached(model)
    own = points is None or (points.site == site and points.scales.same_partition(scales))
    sources = {s: ([hookpoints.hook_name(s)] if own and len(plan[s]) == len(scales[s]) and len(plan[s]) > 1
                   else [names[x] for x in plan[s]]) for s in scales.names}
    ctx = tl.context_length(model)
    max_len = min(max_length or ctx, ctx)

    if tokens_in:
        seqs, specials = tl.token_rows(model, texts, attention_mask, arg="texts (token ids)")
        prepend_bos, corpus_hash = False, _sha256_token_rows(seqs)
    else:
        seqs, specials = tl.encode(model, texts, prepend_bos=prepend_bos)
        corpus_hash = sha256_texts(texts)
    lengths = [len(x) for x in seqs]
    too_long = [i for i, n in enumerate(lengths) if n > max_len]
    if too_long:
        msg = f"{len(too_long)} document(s) exceed {max_len} tokens (first: document {too_long[0]}, {lengths[too_long[0]]} tokens)"
        if on_overflow == "error":
            raise ConfigError(msg)
        warnings.warn(msg + "; truncating them", stacklevel=3)
    # batch by length to limit padding; results are restored to document order
    order = sorted(range(len(seqs)), key=lambda i: lengths[i])
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    meta = {
        **tl.provenance(model),
        "scales": scales.to_dict(),
        "scale_spec_hash": scales.spec_hash(),
        "site": site,
        "hook_names": {s: [names[x] for x in plan[s]] for s in scales.names},
        "read_hooks": sources,
        "pooling": pooling,
        "layer_agg": layer_agg,
        "input": "token_ids" if tokens_in else "text",
        "prepend_bos": prepend_bos,
        "padding_side": padding_side,
        "max_length": max_len,
        "corpus_sha256": corpus_hash,
        "n_docs": len(seqs),
        "excluded_positions": ("attention_mask padding and a leading BOS id (encoders: [CLS]/[SEP])" if tokens_in
                               else "BOS, special tokens and padding"),
    }
    rows = [sum(1 - f for f in sp[:max_len]) if pooling == "token" else 1 for sp in specials]
    names_out = list(scales.names)
    if shard_dir is not None:
        shards = _ShardStore(Path(shard_dir), meta, batch_size, batches, rows, names_out)
        sink = shards.write
    else:
        shards, out = None, _Output(rows, names_out, tl.d_model(model))
        sink = out.write
    stop = max(layers) + 1
    it = range(len(batches))
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="capture", unit="batch", leave=False)
    temporary = points is None and any(n.startswith(hookpoints.ROOT + ".") for ns in sources.values() for n in ns)
    if temporary:
        hookpoints.attach(model, scales, site)
    try:
        _run_batches(model, it, batches, seqs, specials, sources, plan, shards, sink, padding_side, max_len, stop,
                     idx_pooling=pooling)
    finally:
        if temporary:
            hookpoints.detach(model)
    if shards is not None:
        shards.finish()
        return ShardedCapture(shards, meta)
    return out.result(meta)


def _run_batches(model: Any, it: Any, batches: list[list[int]], seqs: list[list[int]], specials: list[list[int]],
                 sources: dict[str, list[str]], plan: dict[str, list[int]], shards: Any, sink: Any, padding_side: str,
                 max_len: int, stop: int, idx_pooling: str) -> None:
    wanted = list(dict.fromkeys(n for ns in sources.values() for n in ns))
    with torch.no_grad():
        for b in it:
            if shards is not None and shards.done(b):
                continue
            idx = batches[b]
            toks, mask, content = tl.pad_batch(model, [seqs[i] for i in idx], [specials[i] for i in idx],
                                                padding_side=padding_side, max_length=max_len)
            toks, mask = toks.to(tl.model_device(model)), mask.to(tl.model_device(model))
            # the pass ends right after the last hook read (no final norm / unembedding; no block above `stop`)
            cache = tl.run_with_cache(model, toks, mask, wanted, stop_at_layer=stop)
            part = _pool_batch(cache, sources, plan, content, mask.cpu(), idx, idx_pooling)
            del cache
            sink(b, part)  # in place into the preallocated output, or one shard on disk


def _sha256_token_rows(seqs: list[list[int]]) -> str:
    """Hash of token-id input: each unpadded row, length-prefixed, as little-endian int64."""
    h = hashlib.sha256(b"msma_lens.token_ids\0")
    for ids in seqs:
        h.update(len(ids).to_bytes(8, "little"))
        h.update(torch.tensor(ids, dtype=torch.int64).numpy().astype("<i8").tobytes())
    return h.hexdigest()


def _pool_batch(cache: dict[str, torch.Tensor], sources: dict[str, list[str]], layers: dict[str, list[int]],
                content: torch.Tensor, mask: torch.Tensor, doc_idx: list[int], pooling: str) -> dict[str, torch.Tensor]:
    content = content.to(next(iter(cache.values())).device)
    if not content.any(1).all():
        empty = [doc_idx[i] for i in torch.nonzero(~content.any(1)).flatten().tolist()]
        raise ConfigError(f"document(s) {empty} have no tokens besides BOS/special tokens")
    out: dict[str, torch.Tensor] = {}
    for s, hook_names in sources.items():
        stack = []
        for name in hook_names:
            a = cache[name]
            bad = ~torch.isfinite(a) & content[..., None]
            if bad.any():
                row = int(bad.any(-1).any(-1).nonzero()[0])
                ls = layers[s] if name.startswith(hookpoints.ROOT + ".") else [int(name.split(".")[1])]
                where = f"layer {ls[0]}" if len(ls) == 1 else f"mean of layers {ls[0]}-{ls[-1]}"
                raise NumericsError(f"NaN/Inf in {name} ({where}, scale {s!r}) for document {doc_idx[row]}")
            stack.append(a.float())
        h = torch.stack(stack).mean(0) if len(stack) > 1 else stack[0]  # [B, T, d]
        if pooling == "token":
            out[f"acts.{s}"] = h[content].cpu()
        elif pooling == "mean":
            w = content.float()[..., None]
            out[f"acts.{s}"] = ((h * w).sum(1) / w.sum(1)).cpu()
        else:
            T = content.shape[1]
            last = (content.long() * torch.arange(T, device=content.device)).argmax(1)
            out[f"acts.{s}"] = h[torch.arange(h.shape[0]), last].cpu()
    docs = torch.tensor(doc_idx, dtype=torch.long)
    # positions count from the first attended token (BOS = 0), so left and right padding agree
    first = mask.long().argmax(1)
    c = content.cpu()
    if pooling == "token":
        bi, col = torch.nonzero(c, as_tuple=True)
        out["doc_ids"], out["positions"] = docs[bi], col - first[bi]
    elif pooling == "mean":
        out["doc_ids"], out["positions"] = docs, torch.full_like(docs, -1)
    else:
        last = (c.long() * torch.arange(c.shape[1])).argmax(1)
        out["doc_ids"], out["positions"] = docs, last - first
    return out


class _Output:
    """The capture's result, preallocated: ``rows_per_doc[i]`` rows for document ``i``, in document order.

    :meth:`write` puts one batch's rows in place at their documents' offsets (a document's rows are contiguous,
    in position order), so assembling never holds more than the result plus one batch.
    """

    def __init__(self, rows_per_doc: list[int], scale_names: list[str], width: int) -> None:
        self.rows = torch.tensor(rows_per_doc, dtype=torch.long)
        self.start = torch.cumsum(self.rows, 0) - self.rows
        n = int(self.rows.sum())
        self.acts = {s: torch.empty(n, width) for s in scale_names}
        self.doc_ids = torch.empty(n, dtype=torch.long)
        self.positions = torch.empty(n, dtype=torch.long)
        self.written = torch.zeros(len(rows_per_doc), dtype=torch.bool)

    def write(self, b: int, part: dict[str, torch.Tensor]) -> None:
        docs, pos = part["doc_ids"], part["positions"]
        n = docs.shape[0]
        # rows arrive grouped by document, positions ascending; sort (one batch) only if they do not
        same = docs[1:] == docs[:-1]
        if n > 1 and not bool((~same | (pos[1:] > pos[:-1])).all()):
            order = torch.argsort(docs * (pos.max() + 2) + pos + 1, stable=True)
            part = {k: v[order] for k, v in part.items()}
            docs, pos = part["doc_ids"], part["positions"]
        groups, counts = torch.unique_consecutive(docs, return_counts=True)
        if (groups.unique().numel() != groups.numel() or bool(self.written[groups].any())
                or not torch.equal(counts, self.rows[groups])):
            raise ArtifactError(f"batch {b}: its rows do not match documents {groups.tolist()} (expected "
                                f"{self.rows[groups].tolist()} rows, got {counts.tolist()})")
        first = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        dest = self.start[docs] + torch.arange(n) - first
        for s, out in self.acts.items():
            out.index_copy_(0, dest, part[f"acts.{s}"].to(out.dtype))
        self.doc_ids.index_copy_(0, dest, docs)
        self.positions.index_copy_(0, dest, pos)
        self.written[groups] = True

    def result(self, meta: dict) -> ScaleActivations:
        if not bool(self.written.all()):
            missing = torch.nonzero(~self.written).flatten().tolist()
            raise ArtifactError(f"capture incomplete: no rows for document(s) {missing[:10]}")
        return ScaleActivations(self.acts, self.doc_ids, self.positions, meta)


class ShardedCapture:
    """A completed sharded capture (:func:`capture_shards`): the shards on disk, read one at a time.

    ``len()`` is the number of rows, ``meta`` the capture's provenance (as in :class:`ScaleActivations`),
    ``scale_names`` its scales. Iterating yields one :class:`ScaleActivations` per shard (one batch of
    documents, rows in document order within it; every shard verified against its planned batch), so memory
    stays bounded by one batch. :meth:`assemble` builds the in-memory result of :func:`capture`, identical to an
    unsharded capture, holding the result plus one shard.
    """

    def __init__(self, store: _ShardStore, meta: dict) -> None:
        self._store, self.meta = store, meta
        self.root = store.root
        self.scale_names = list(store.scale_names)

    def __len__(self) -> int:
        return int(sum(self._store.rows_per_doc))

    @property
    def n_shards(self) -> int:
        return len(self._store.batches)

    def __repr__(self) -> str:
        return f"ShardedCapture({str(self.root)!r}, rows={len(self)}, shards={self.n_shards}, scales={self.scale_names})"

    def shard(self, b: int) -> ScaleActivations:
        """Shard ``b`` as :class:`ScaleActivations` (rows sorted by document, then position)."""
        part = self._store.read(b)
        docs, pos = part["doc_ids"], part["positions"]
        order = torch.argsort(docs * (pos.max() + 2) + pos + 1, stable=True)
        return ScaleActivations({s: part[f"acts.{s}"][order] for s in self.scale_names}, docs[order], pos[order],
                                dict(self.meta))

    def __iter__(self) -> Iterator[ScaleActivations]:
        for b in range(self.n_shards):
            yield self.shard(b)

    def assemble(self) -> ScaleActivations:
        """All shards in one :class:`ScaleActivations`, in document order (as :func:`capture` returns)."""
        out = _Output(self._store.rows_per_doc, self.scale_names, self._store.width)
        for b in range(self.n_shards):
            out.write(b, self._store.read(b))
        return out.result(self.meta)


class _ShardStore:
    """Batch shards on disk (one safetensors artifact per batch) with a manifest that pins the configuration.

    The manifest key holds the capture settings and the batch size; each shard's cfg holds its batch size and
    document ids. A shard counts as done only if it loads (checksums) and holds exactly the documents, rows and
    scales of its planned batch.
    """

    def __init__(self, root: Path, meta: dict, batch_size: int, batches: list[list[int]], rows_per_doc: list[int],
                 scale_names: list[str]) -> None:
        self.root, self.batch_size, self.batches = root, batch_size, batches
        self.rows_per_doc, self.scale_names, self.width = rows_per_doc, scale_names, meta["d_model"]
        if root.exists() and not root.is_dir():
            raise ArtifactError(f"shard_dir {root} exists and is not a directory")
        root.mkdir(parents=True, exist_ok=True)
        key = {k: meta[k] for k in ("model_id", "scale_spec_hash", "site", "pooling", "layer_agg", "max_length",
                                    "corpus_sha256", "n_docs", "input", "prepend_bos", "padding_side")}
        key["batch_size"] = batch_size
        key = json.loads(json.dumps(key))
        man = root / "manifest.json"
        if not man.is_file():
            stray = sorted(p.name for p in root.glob("batch-*"))
            if stray:
                raise ArtifactError(f"{root} holds shards ({stray[0]}, ...) but no manifest.json, so they cannot be "
                                    "verified; use another shard_dir or delete it")
            write_json_atomic(man, {"key": key})
            return
        try:
            old = json.loads(man.read_text(encoding="utf-8"))["key"]
            if not isinstance(old, dict):
                raise TypeError("key is not an object")
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
            raise ArtifactError(f"{man}: corrupt shard manifest ({e})") from e
        if "batch_size" not in old:
            raise ArtifactError(f"{root} was written by an older msma-lens that did not record the batch size, so its "
                                "shards cannot be verified; delete it or use another shard_dir")
        diff = sorted(k for k in set(old) | set(key) if k != "batch_size" and old.get(k) != key.get(k))
        if diff:
            raise ArtifactError(f"{root} holds shards of a different capture ({', '.join(diff)} differ); use another "
                                "shard_dir or delete it")
        if old["batch_size"] != batch_size:
            raise ArtifactError(f"{root} holds shards written with batch_size={old['batch_size']}, but this capture uses "
                                f"batch_size={batch_size}: resume with batch_size={old['batch_size']}, or delete {root} (or use "
                                "another shard_dir) to start over with the new batch size")
        extra = sorted(p.name for p in root.glob("batch-*") if not p.name[6:].isdigit() or int(p.name[6:]) >= len(batches))
        if extra:
            raise ArtifactError(f"{root} holds shard(s) {extra} beyond the {len(batches)} batches of this capture; "
                                "use another shard_dir or delete it")

    def _path(self, b: int) -> Path:
        return self.root / f"batch-{b:06d}"

    def _check(self, b: int, tensors: dict[str, torch.Tensor], cfg: dict) -> None:
        """Raise ArtifactError unless shard ``b`` holds exactly the documents, rows and scales of batch ``b``."""
        path, want = self._path(b), self.batches[b]
        docs = tensors.get("doc_ids")
        if cfg.get("doc_ids") != want or cfg.get("batch_size") != self.batch_size or docs is None:
            raise ArtifactError(f"shard {path} does not hold batch {b} of this capture (documents {want}, batch_size="
                                f"{self.batch_size}); use another shard_dir or delete it")
        n = docs.shape[0]
        if Counter(docs.tolist()) != {d: self.rows_per_doc[d] for d in want}:
            raise ArtifactError(f"shard {path}: its rows do not match documents {want} (expected "
                                f"{sum(self.rows_per_doc[d] for d in want)} rows); use another shard_dir or delete it")
        for k in ["positions", *(f"acts.{s}" for s in self.scale_names)]:
            t = tensors.get(k)
            if t is None or t.shape[0] != n or (k != "positions" and tuple(t.shape) != (n, self.width)):
                raise ArtifactError(f"shard {path}: tensor {k!r} is missing or has the wrong shape "
                                    f"{None if t is None else tuple(t.shape)}")

    def done(self, b: int) -> bool:
        """Whether shard ``b`` is on disk and verified; a damaged one is removed (with a warning) for re-capture."""
        path = self._path(b)
        if not path.exists():
            return False
        try:
            tensors, cfg = load_artifact(path, SHARD_KIND)
        except ArtifactError as e:
            warnings.warn(f"shard {path} is damaged and is re-captured: {e}", stacklevel=3)
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
            return False
        self._check(b, tensors, cfg)
        return True

    def read(self, b: int) -> dict[str, torch.Tensor]:
        tensors, cfg = load_artifact(self._path(b), SHARD_KIND)
        self._check(b, tensors, cfg)
        return tensors

    def write(self, b: int, part: dict[str, torch.Tensor]) -> None:
        save_artifact(self._path(b), SHARD_KIND, part, {"batch": b, "batch_size": self.batch_size,
                                                         "doc_ids": self.batches[b]})

    def finish(self) -> None:
        write_json_atomic(self.root / "complete.json", {"complete": True})
