"""Per-scale capture: pairing, padding, BOS exclusion, pooling, sharding, artifacts, bad input."""

import json
import shutil

import pytest
import torch

from msma_lens import MSMA, ArtifactError, ConfigError, NumericsError, ScaleActivations, Scales
from msma_lens import tl as _tl
from msma_lens import tl as tl_mod
from msma_lens.capture import capture
from msma_lens.io.models import available_backends

TEXTS = [
    "The cat sat on the mat.",
    "A much longer document about the weather, the rain and the sun over the hills near the town.",
    "Hi there!",
    "Prices rose again this week and investors worried.",
    "Mix the flour with water.",
]
SCALES = Scales.from_ranges({"local": (0, 0), "intermediate": (1, 1), "global": (2, 3)})


def _cap(model, **kw):
    kw.setdefault("progress", False)
    return capture(model, SCALES, TEXTS, **kw)


def test_batched_equals_one_by_one(tiny_model):
    a, b = _cap(tiny_model, batch_size=5), _cap(tiny_model, batch_size=1)
    assert torch.equal(a.doc_ids, b.doc_ids) and torch.equal(a.positions, b.positions)
    for s in SCALES:
        torch.testing.assert_close(a[s], b[s], atol=1e-5, rtol=1e-5)


def test_left_and_right_padding_agree(tiny_model):
    r, left = _cap(tiny_model, batch_size=5), _cap(tiny_model, batch_size=5, padding_side="left")
    assert torch.equal(r.positions, left.positions)
    for s in SCALES:
        torch.testing.assert_close(r[s], left[s], atol=1e-5, rtol=1e-5)


def test_token_rows_match_direct_cache_and_exclude_bos(tiny_model):
    acts = _cap(tiny_model)
    lengths = _tl.token_lengths(tiny_model, TEXTS)
    assert len(acts) == sum(n - 1 for n in lengths)  # every token but BOS
    assert acts.positions.min() == 1
    toks, mask, _ = _tl.to_tokens(tiny_model, [TEXTS[1]])
    _, cache = tiny_model.run_with_cache(toks, names_filter=lambda n: n.endswith("hook_resid_post"))
    rows = acts.doc_ids == 1
    torch.testing.assert_close(acts["intermediate"][rows], cache["blocks.1.hook_resid_post"][0, 1:], atol=1e-5, rtol=1e-5)
    glob = (cache["blocks.2.hook_resid_post"][0, 1:] + cache["blocks.3.hook_resid_post"][0, 1:]) / 2
    torch.testing.assert_close(acts["global"][rows], glob, atol=1e-5, rtol=1e-5)


def test_mean_and_last_pooling_and_layer_choice(tiny_model):
    tok = _cap(tiny_model)
    mean, last = _cap(tiny_model, pooling="mean"), _cap(tiny_model, pooling="last")
    chosen = _cap(tiny_model, layer_agg={"global": 3})
    for d in range(len(TEXTS)):
        rows = tok.doc_ids == d
        torch.testing.assert_close(mean["local"][d], tok["local"][rows].mean(0), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(last["global"][d], tok["global"][rows][-1], atol=1e-5, rtol=1e-5)
    assert mean.positions.eq(-1).all() and len(mean) == len(TEXTS)
    toks, _, _ = _tl.to_tokens(tiny_model, [TEXTS[0]])
    _, cache = tiny_model.run_with_cache(toks, names_filter="blocks.3.hook_resid_post")
    torch.testing.assert_close(chosen["global"][chosen.doc_ids == 0], cache["blocks.3.hook_resid_post"][0, 1:], atol=1e-5, rtol=1e-5)
    assert chosen.meta["hook_names"]["global"] == ["blocks.3.hook_resid_post"]


def test_no_block_above_the_highest_scale_runs(tiny_model):
    fired = []
    low = Scales.from_ranges({"local": (0, 0), "global": (1, 1)})
    with tiny_model.hooks(fwd_hooks=[("blocks.2.hook_attn_out", lambda x, hook: fired.append(1))]):
        capture(tiny_model, low, TEXTS[:2], progress=False)
    assert fired == []


def test_provenance_in_meta(tiny_model):
    m = _cap(tiny_model).meta
    assert m["model_id"] in ("tiny-gpt2", "tiny-llama") and m["tl_version"] == _tl.tl_version()
    assert m["backend"] == _tl.backend(tiny_model) and m["pooling"] == "token"
    assert m["hook_names"]["intermediate"] == ["blocks.1.hook_resid_post"]
    assert Scales.from_dict(m["scales"]).same_partition(SCALES) and len(m["corpus_sha256"]) == 64


def test_lens_capture_uses_its_scales(tiny_gpt2):
    lens = MSMA(tiny_gpt2, SCALES)
    acts = lens.capture(TEXTS[:2], progress=False)
    assert acts.scale_names == ["local", "intermediate", "global"]
    assert lens.hook_names["global"] == ["blocks.2.hook_resid_post", "blocks.3.hook_resid_post"]


@pytest.mark.parametrize("texts, match", [
    ([], "texts is empty"),
    (["ok", "  "], "document 1 is empty"),
    (["ok", 3], "document 1 is a int, expected str"),
    ("just one string", "not a single string"),
])
def test_bad_texts(tiny_gpt2, texts, match):
    with pytest.raises(ConfigError, match=match):
        capture(tiny_gpt2, SCALES, texts, progress=False)


def test_bad_options(tiny_gpt2):
    with pytest.raises(ConfigError, match="unknown pooling 'max'"):
        capture(tiny_gpt2, SCALES, TEXTS, pooling="max")
    with pytest.raises(ConfigError, match=r"layer_agg for scale 'local' chose layer 3, which is not in its layers \[0\]"):
        capture(tiny_gpt2, SCALES, TEXTS, layer_agg={"local": 3})
    with pytest.raises(ConfigError, match="scale 'global' has layers"):
        capture(tiny_gpt2, Scales({"local": [0], "global": range(1, 9)}), TEXTS)


def test_overflow_warns_and_truncates_or_errors(tiny_gpt2):
    with pytest.warns(UserWarning, match=r"exceed 6 tokens \(first: document"):
        acts = capture(tiny_gpt2, SCALES, TEXTS, max_length=6, progress=False)
    assert acts.positions.max() <= 5
    with pytest.raises(ConfigError, match="exceed 6 tokens"):
        capture(tiny_gpt2, SCALES, TEXTS, max_length=6, on_overflow="error")


def test_nan_in_activations_names_the_layer(tiny_gpt2):
    def poison(x, hook):
        x = x.clone()
        x[:, -1] = float("nan")
        return x

    with tiny_gpt2.hooks(fwd_hooks=[("blocks.1.hook_resid_post", poison)]):
        with pytest.raises(NumericsError, match=r"NaN/Inf in blocks.1.hook_resid_post \(layer 1, scale 'intermediate'\)"):
            capture(tiny_gpt2, SCALES, TEXTS[:1], progress=False)
    assert _tl.count_attached_hooks(tiny_gpt2) == 0


def test_save_load_roundtrip_and_corruption(tiny_gpt2, tmp_path):
    acts = _cap(tiny_gpt2)
    p = acts.save(tmp_path / "acts")
    back = ScaleActivations.load(p)
    for s in SCALES:
        assert torch.equal(back[s], acts[s])
    assert torch.equal(back.doc_ids, acts.doc_ids) and back.meta == json.loads(json.dumps(acts.meta))
    # corrupt tensor file
    t = p / "tensors.safetensors"
    raw = bytearray(t.read_bytes())
    raw[-10] ^= 0xFF
    t.write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        ScaleActivations.load(p)
    # foreign artifact
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "cfg.json").write_text(json.dumps({"format": "something.else", "format_version": 1}))
    with pytest.raises(ArtifactError, match="expected a 'msma_lens.ScaleActivations' artifact, found format 'something.else'"):
        ScaleActivations.load(tmp_path / "foreign")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "cfg.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="corrupt JSON"):
        ScaleActivations.load(tmp_path / "broken")
    with pytest.raises(ArtifactError, match="not an msma-lens artifact"):
        ScaleActivations.load(tmp_path / "nothing-here")


def test_mismatch_checks(tiny_gpt2):
    acts = _cap(tiny_gpt2)
    with pytest.raises(ArtifactError, match="captured from model 'tiny-gpt2', but fitting uses 'smollm2-135m'"):
        acts.check_matches(model_id="smollm2-135m", what="fitting")
    with pytest.raises(ArtifactError, match="captured with scales"):
        acts.check_matches(scales=Scales.default(4))
    acts.check_matches(model_id="tiny-gpt2", scales=SCALES)


def test_split_by_document_keeps_documents_whole(tiny_gpt2):
    acts = _cap(tiny_gpt2)
    tr, te = acts.split_by_document(0.4, seed=1)
    assert set(acts.doc_ids[tr].tolist()).isdisjoint(acts.doc_ids[te].tolist())
    assert len(tr) + len(te) == len(acts)
    with pytest.raises(ConfigError, match="held_out must be a fraction"):
        acts.split_by_document(1.5)


def test_sharded_capture_resumes_after_interrupt(tiny_gpt2, tmp_path, monkeypatch):
    full = _cap(tiny_gpt2, batch_size=2)
    real = _tl.run_with_cache
    calls = {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(tl_mod, "run_with_cache", flaky)
    with pytest.raises(KeyboardInterrupt):
        _cap(tiny_gpt2, batch_size=2, shard_dir=tmp_path / "shards")
    assert _tl.count_attached_hooks(tiny_gpt2) == 0
    assert len(list((tmp_path / "shards").glob("batch-*"))) == 1
    calls["n"] = 10  # no more interrupts
    resumed = _cap(tiny_gpt2, batch_size=2, shard_dir=tmp_path / "shards")
    assert calls["n"] == 10 + 2  # only the 2 missing batches of 3 were computed
    for s in SCALES:
        assert torch.equal(resumed[s], full[s])
    assert torch.equal(resumed.doc_ids, full.doc_ids)
    with pytest.raises(ArtifactError, match="holds shards of a different capture"):
        _cap(tiny_gpt2, batch_size=2, pooling="mean", shard_dir=tmp_path / "shards")


# ----- sharded resume: verified per document, never drops rows ----------------------------------------------
def _count_passes(monkeypatch, fail_at: int | None = None) -> dict:
    """Count forward passes of capture; raise KeyboardInterrupt on pass ``fail_at`` (1-based)."""
    real, calls = _tl.run_with_cache, {"n": 0, "fail_at": fail_at}

    def counted(*a, **k):
        calls["n"] += 1
        if calls["n"] == calls["fail_at"]:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(tl_mod, "run_with_cache", counted)
    return calls


def _assert_same(a: ScaleActivations, b: ScaleActivations) -> None:
    assert torch.equal(a.doc_ids, b.doc_ids) and torch.equal(a.positions, b.positions)
    for s in SCALES:
        assert torch.equal(a[s], b[s]), s


def test_shard_resume_with_another_batch_size_is_refused_and_loses_nothing(tiny_gpt2, tmp_path, monkeypatch):
    full = _cap(tiny_gpt2, batch_size=4)
    d = tmp_path / "shards"
    calls = _count_passes(monkeypatch, fail_at=2)
    with pytest.raises(KeyboardInterrupt):
        _cap(tiny_gpt2, batch_size=4, shard_dir=d)  # batch 0 (4 documents) on disk, batch 1 lost
    cfg = json.loads((d / "batch-000000" / "cfg.json").read_text())
    assert cfg["batch_size"] == 4 and len(cfg["doc_ids"]) == 4
    calls.update(n=0, fail_at=None)
    # batch_size=3 also gives 2 batches: the old code skipped "batch 0" and lost a document
    for bs in (3, 2):
        with pytest.raises(ArtifactError, match=rf"{d}.*batch_size=4, but this capture uses batch_size={bs}"):
            _cap(tiny_gpt2, batch_size=bs, shard_dir=d)
    assert calls["n"] == 0 and sorted(p.name for p in d.glob("batch-*")) == ["batch-000000"]
    resumed = _cap(tiny_gpt2, batch_size=4, shard_dir=d)
    assert calls["n"] == 1
    _assert_same(resumed, full)
    assert resumed.n_docs == len(TEXTS)


def test_damaged_or_foreign_shards_are_detected(tiny_gpt2, tmp_path, monkeypatch):
    d = tmp_path / "shards"
    full = _cap(tiny_gpt2, batch_size=2, shard_dir=d)  # 3 shards
    calls = _count_passes(monkeypatch)
    t = d / "batch-000001" / "tensors.safetensors"
    raw = bytearray(t.read_bytes())
    raw[-10] ^= 0xFF
    t.write_bytes(bytes(raw))
    (d / "batch-000000" / "tensors.safetensors").unlink()
    shutil.rmtree(d / "batch-000002")
    with pytest.warns(UserWarning) as rec:
        again = _cap(tiny_gpt2, batch_size=2, shard_dir=d)
    damaged = sorted(str(w.message).split(" is damaged")[0][-12:] for w in rec if "is damaged" in str(w.message))
    assert damaged == ["batch-000000", "batch-000001"]  # named; the deleted batch-000002 is simply re-captured
    assert calls["n"] == 3  # all three re-captured, in the same batches
    _assert_same(again, full)
    # an intact shard in the wrong place (documents of another batch) is refused, not assembled
    shutil.rmtree(d / "batch-000001")
    shutil.copytree(d / "batch-000000", d / "batch-000001")
    with pytest.raises(ArtifactError, match=r"shard .*batch-000001 does not hold batch 1"):
        _cap(tiny_gpt2, batch_size=2, shard_dir=d)
    # a manifest of the old format (no batch size) cannot be verified
    man = d / "manifest.json"
    key = json.loads(man.read_text())["key"]
    key.pop("batch_size")
    man.write_text(json.dumps({"key": {**key, "n_batches": 3}}))
    with pytest.raises(ArtifactError, match=rf"{d} was written by an older msma-lens .* batch size"):
        _cap(tiny_gpt2, batch_size=2, shard_dir=d)


def test_sharded_resume_with_same_settings_skips_done_batches(tiny_gpt2, tmp_path, monkeypatch):
    full = _cap(tiny_gpt2, batch_size=1, pooling="mean")
    d = tmp_path / "shards"
    calls = _count_passes(monkeypatch, fail_at=3)
    with pytest.raises(KeyboardInterrupt):
        _cap(tiny_gpt2, batch_size=1, pooling="mean", shard_dir=d)
    calls.update(n=0, fail_at=None)
    resumed = _cap(tiny_gpt2, batch_size=1, pooling="mean", shard_dir=d)
    assert calls["n"] == len(TEXTS) - 2  # only the 3 missing documents
    _assert_same(resumed, full)
    calls["n"] = 0
    _assert_same(_cap(tiny_gpt2, batch_size=1, pooling="mean", shard_dir=d), full)
    assert calls["n"] == 0 and (d / "complete.json").is_file()
    with pytest.raises(ArtifactError, match="holds shards of a different capture .*padding_side"):
        _cap(tiny_gpt2, batch_size=1, pooling="mean", padding_side="left", shard_dir=d)


# ----- token-id input -------------------------------------------------------------------------------------
def test_token_ids_equal_text_capture(tiny_model):
    text = _cap(tiny_model, batch_size=2)
    toks, mask, _ = _tl.to_tokens(tiny_model, TEXTS)
    ids = capture(tiny_model, SCALES, toks, attention_mask=mask, batch_size=2, progress=False)
    assert torch.equal(ids.doc_ids, text.doc_ids) and torch.equal(ids.positions, text.positions)
    for s in SCALES:
        torch.testing.assert_close(ids[s], text[s], atol=1e-5, rtol=1e-5)
    assert ids.meta["input"] == "token_ids" and ids.meta["corpus_sha256"] != text.meta["corpus_sha256"]
    # one document from the model's own to_tokens (BOS included, no padding, no mask needed)
    one = MSMA(tiny_model, SCALES).capture(tiny_model.to_tokens(TEXTS[1]), progress=False)
    assert one.doc_ids.eq(0).all() and torch.equal(one.positions, text.positions[text.doc_ids == 1])
    torch.testing.assert_close(one["global"], text["global"][text.doc_ids == 1], atol=1e-5, rtol=1e-5)
    for pooling in ("mean", "last"):
        a = capture(tiny_model, SCALES, toks, attention_mask=mask, pooling=pooling, progress=False)
        b = _cap(tiny_model, pooling=pooling)
        torch.testing.assert_close(a["local"], b["local"], atol=1e-5, rtol=1e-5)


def test_left_padded_token_ids_equal_right_padded(tiny_model):
    right = _tl.to_tokens(tiny_model, TEXTS, padding_side="right")
    left = _tl.to_tokens(tiny_model, TEXTS, padding_side="left")
    assert not torch.equal(right[0], left[0])
    r = capture(tiny_model, SCALES, right[0], attention_mask=right[1], progress=False)
    lf = capture(tiny_model, SCALES, left[0], attention_mask=left[1].bool(), progress=False)
    _assert_same(r, lf)
    assert r.meta["corpus_sha256"] == lf.meta["corpus_sha256"]
    assert len(r) == int(right[1].sum()) - len(TEXTS)  # every attended token but the leading BOS


def test_model_without_tokenizer_takes_token_ids(tiny_gpt2, monkeypatch):
    toks, mask, _ = _tl.to_tokens(tiny_gpt2, TEXTS, padding_side="left")
    with_tok = capture(tiny_gpt2, SCALES, toks, attention_mask=mask, progress=False)
    monkeypatch.setattr(tiny_gpt2, "tokenizer", None)
    with pytest.raises(ConfigError, match="has no tokenizer, so it cannot take text: pass token ids"):
        capture(tiny_gpt2, SCALES, TEXTS, progress=False)
    with pytest.raises(ConfigError, match="has no tokenizer"):
        _tl.token_lengths(tiny_gpt2, TEXTS)
    acts = capture(tiny_gpt2, SCALES, toks, attention_mask=mask, progress=False)
    assert len(acts) == int(mask.sum())  # no tokenizer: nothing is known to be BOS, every attended token is a row
    assert acts.positions.min() == 0
    keep = acts.positions > 0
    assert torch.equal(acts.doc_ids[keep], with_tok.doc_ids) and torch.equal(acts.positions[keep], with_tok.positions)
    for s in SCALES:
        torch.testing.assert_close(acts[s][keep], with_tok[s], atol=1e-5, rtol=1e-5)


@pytest.mark.skipif("hooked" not in available_backends(), reason="HookedTransformer needs TransformerLens < 4")
def test_hooked_transformer_without_tokenizer():
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(0)
    cfg = HookedTransformerConfig(n_layers=4, d_model=32, n_ctx=64, d_head=8, n_heads=4, d_vocab=100, act_fn="gelu",
                                  normalization_type="LN")
    model = HookedTransformer(cfg).eval()
    assert model.tokenizer is None
    with pytest.raises(ConfigError, match="HookedTransformer has no tokenizer, so it cannot take text"):
        capture(model, SCALES, TEXTS, progress=False)
    toks = torch.randint(0, 100, (3, 9))
    mask = torch.ones_like(toks)
    mask[1, 6:] = 0
    acts = capture(model, SCALES, toks, attention_mask=mask, pooling="token", batch_size=2, progress=False)
    assert len(acts) == 9 + 6 + 9
    _, cache = model.run_with_cache(toks[1:2, :6], names_filter="blocks.1.hook_resid_post")
    torch.testing.assert_close(acts["intermediate"][acts.doc_ids == 1], cache["blocks.1.hook_resid_post"][0], atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigError, match="outside the vocabulary 0..99"):
        capture(model, SCALES, toks + 100, progress=False)


_TOKS = torch.tensor([[0, 42, 75, 262], [0, 288, 280, 2]])


@pytest.mark.parametrize("tokens, kw, match", [
    (_TOKS.float(), {}, r"texts \(token ids\) must hold integer token ids \(torch.long\), got dtype torch.float32"),
    (_TOKS[0], {}, r"texts \(token ids\) must be a \[batch, pos\] tensor of token ids, got shape \(4,\).*unsqueeze"),
    (_TOKS[:0], {}, r"texts \(token ids\) is empty"),
    (_TOKS, {"attention_mask": torch.ones(2, 3)}, r"attention_mask has shape \(2, 3\), expected \(2, 4\)"),
    (_TOKS, {"attention_mask": torch.ones(2, 4)}, "attention_mask must be a bool or integer tensor of 0/1, got dtype torch.float32"),
    (_TOKS, {"attention_mask": [[1, 1, 1, 1]] * 2}, "attention_mask must be a torch.Tensor, got list"),
    (_TOKS, {"attention_mask": torch.tensor([[1, 1, 2, 1], [1, 1, 1, 1]])}, r"attention_mask must hold only 0 and 1, found \[2\]"),
    (_TOKS, {"attention_mask": torch.tensor([[1, 1, 1, 1], [1, 0, 1, 1]])}, "attention_mask row 1 has gaps"),
    (_TOKS, {"attention_mask": torch.tensor([[1, 1, 1, 1], [0, 0, 0, 0]])}, "attention_mask row 1 has no attended tokens"),
    (_TOKS * 1000, {}, r"texts \(token ids\) row 0 holds token id 42000, outside the vocabulary"),
    (TEXTS, {"attention_mask": torch.ones(5, 4, dtype=torch.long)}, "attention_mask is only for token-id input"),
    ("tokens", {}, "not a single string"),
])
def test_bad_token_input(tiny_gpt2, tokens, kw, match):
    with pytest.raises(ConfigError, match=match):
        capture(tiny_gpt2, SCALES, tokens, progress=False, **kw)


@pytest.mark.slow
def test_encoder_token_ids_exclude_cls_and_sep():
    from msma_lens.io.models import load_model

    model = load_model("minilm-l6")
    sc = Scales.from_ranges({"low": (0, 1), "high": (2, 5)})
    text = capture(model, sc, TEXTS[:3], progress=False)
    toks, mask, _ = _tl.to_tokens(model, TEXTS[:3], padding_side="left")
    ids = capture(model, sc, toks, attention_mask=mask, progress=False)
    assert len(ids) == int(mask.sum()) - 2 * 3  # [CLS] and [SEP] of each document excluded
    assert torch.equal(ids.doc_ids, text.doc_ids) and torch.equal(ids.positions, text.positions)
    torch.testing.assert_close(ids["high"], text["high"], atol=1e-5, rtol=1e-5)


# ----- nothing above the highest cached hook runs ------------------------------------------------------------
def test_capture_of_every_layer_skips_final_norm_and_unembed_with_identical_activations(tiny_model):
    n = _tl.n_layers(tiny_model)
    every = Scales.from_ranges({"low": (0, n // 2 - 1), "high": (n // 2, n - 1)})
    calls = []
    handles = [getattr(tiny_model, m).register_forward_pre_hook(lambda mod, args, m=m: calls.append(m))
               for m in ("ln_final", "unembed")]
    try:
        acts = capture(tiny_model, every, TEXTS, progress=False, batch_size=1, layer_agg="last")
        assert calls == []  # the final norm and the unembedding never ran
        tiny_model(_tl.to_tokens(tiny_model, TEXTS[:1])[0])
        assert sorted(set(calls)) == ["ln_final", "unembed"]  # the counting hooks do see a full pass
    finally:
        for h in handles:
            h.remove()
    # oracle: TransformerLens' own full forward pass (logits computed), same rows
    names = {s: _tl.resid_name(tiny_model, every[s][-1]) for s in every.names}
    for i, text in enumerate(TEXTS):
        toks, _, _ = _tl.to_tokens(tiny_model, [text])
        _, cache = tiny_model.run_with_cache(toks, names_filter=lambda k: k in names.values())
        for s in every.names:
            assert torch.equal(acts[s][acts.doc_ids == i], cache[names[s]][0, 1:].float()), (s, i)
    assert _tl.count_attached_hooks(tiny_model) == 0


def test_run_with_cache_stops_after_the_last_requested_hook(tiny_model):
    fired = []
    n = _tl.n_layers(tiny_model)
    toks, mask, _ = _tl.to_tokens(tiny_model, TEXTS[:2])
    top = _tl.resid_name(tiny_model, n - 1)
    with tiny_model.hooks(fwd_hooks=[("blocks.1.hook_attn_out", lambda x, hook: fired.append(1))]):
        out = _tl.run_with_cache(tiny_model, toks, mask, [_tl.resid_name(tiny_model, 0)], stop_at_layer=None)
        assert fired == []  # block 1 never ran: the pass ended at block 0's output
        out2 = _tl.run_with_cache(tiny_model, toks, mask, [top, _tl.resid_name(tiny_model, 0)], stop_at_layer=None)
        assert fired == [1]
    assert list(out2) == [top, _tl.resid_name(tiny_model, 0)] and torch.equal(out[_tl.resid_name(tiny_model, 0)],
                                                                              out2[_tl.resid_name(tiny_model, 0)])
    assert _tl.count_attached_hooks(tiny_model) == 0


# ----- memory: preallocated assembly, and sharded captures consumed shard by shard ---------------------------
_MEMORY_PROBE = r"""
import json, re, sys
import torch
torch.set_num_threads(1)
from msma_lens import Scales
from msma_lens.capture import capture, capture_shards
from msma_lens.io.models import load_model

def status(key):
    return int(re.search(key + r":\s+(\d+)", open("/proc/self/status").read()).group(1)) * 1024

def peak_of(fn):
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak-RSS counter (VmHWM) to the current RSS
    base = status("VmRSS")
    out = fn()
    return out, status("VmHWM") - base

# many narrow scales and small batches: the returned activations (100 MiB) dwarf one batch's forward pass
model = load_model("tiny-gpt2", backend=sys.argv[2], d_model=128, n_layers=8, seed=0)
scales = Scales.from_ranges({f"s{i}": (i, i) for i in range(8)})
toks = torch.randint(3, 400, (400, 64), generator=torch.Generator().manual_seed(0))
for _ in range(2):
    capture(model, scales, toks[:8], batch_size=8, progress=False)  # warm-up: allocator, hooks, kernels

def consume():
    sums = {s: torch.zeros(128, dtype=torch.float64) for s in scales.names}
    n = 0
    for part in capture_shards(model, scales, toks, sys.argv[1], batch_size=8, progress=False):
        n += len(part)
        for s in scales.names:
            sums[s] += part[s].double().sum(0)
    return n, sums

(n_sharded, sums), peak_sharded = peak_of(consume)
acts, peak_memory = peak_of(lambda: capture(model, scales, toks, batch_size=8, progress=False))
out_bytes = sum(acts[s].numel() * acts[s].element_size() for s in scales.names)
err = max(float((acts[s].double().sum(0) - sums[s]).abs().max()) for s in scales.names)
print(json.dumps({"rows": len(acts), "rows_sharded": n_sharded, "out_bytes": out_bytes, "peak_sharded": peak_sharded,
                  "peak_memory": peak_memory, "sum_err": err}))
"""


@pytest.mark.slow
@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/clear_refs"), reason="needs Linux /proc peak-RSS reset")
def test_capture_peak_memory_and_sharded_capture_beyond_a_memory_cap(tmp_path):
    import subprocess
    import sys

    from msma_lens.io.models import available_backends

    res = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(tmp_path / "shards"), available_backends()[0]],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(res.stdout.strip().splitlines()[-1])
    assert r["rows"] == r["rows_sharded"] == 400 * 64  # no BOS id in these tokens: every token is a row
    out = r["out_bytes"]  # 100 MiB of activations returned
    # in memory: the preallocated result plus one batch (the old assembly held parts + cat + reordered copy, ~3x)
    assert 0.9 * out <= r["peak_memory"] <= 1.5 * out, r
    # sharded and consumed shard by shard: the whole result is never in memory (measured: ~7 MiB); a cap of a
    # fifth of it holds
    cap = out / 5
    assert r["peak_sharded"] < cap, r
    assert r["sum_err"] < 1e-6, r  # the same activations (float64 column sums over all rows agree)


def test_capture_shards_iterates_the_same_rows_and_assembles_the_same_result(tiny_gpt2, tmp_path):
    from msma_lens.capture import ShardedCapture, capture_shards

    full = _cap(tiny_gpt2, batch_size=2)
    sc = capture_shards(tiny_gpt2, SCALES, TEXTS, tmp_path / "shards", batch_size=2, progress=False)
    assert isinstance(sc, ShardedCapture) and len(sc) == len(full) and sc.n_shards == 3 and sc.scale_names == list(SCALES.names)
    seen = 0
    for part in sc:
        for d in part.doc_ids.unique().tolist():  # each shard holds whole documents, rows in position order
            rows, ref = part.doc_ids == d, full.doc_ids == d
            assert torch.equal(part.positions[rows], full.positions[ref])
            for s in SCALES:
                assert torch.equal(part[s][rows], full[s][ref])
        seen += len(part)
    assert seen == len(full)
    _assert_same(sc.assemble(), full)
    assert sc.assemble().meta == full.meta
    with pytest.raises(ConfigError, match="capture_shards needs a shard_dir"):
        capture_shards(tiny_gpt2, SCALES, TEXTS, None)


def test_preallocated_assembly_refuses_rows_that_do_not_match_the_plan():
    from msma_lens.capture.collect import _Output

    out = _Output([2, 1], ["a"], 3)
    # rows arriving out of position order are sorted within their batch
    out.write(0, {"acts.a": torch.tensor([[2.0] * 3, [1.0] * 3]), "doc_ids": torch.tensor([0, 0]), "positions": torch.tensor([2, 1])})
    with pytest.raises(ArtifactError, match=r"batch 1: its rows do not match documents \[1\] \(expected \[1\] rows, got \[2\]\)"):
        out.write(1, {"acts.a": torch.ones(2, 3), "doc_ids": torch.tensor([1, 1]), "positions": torch.tensor([1, 2])})
    with pytest.raises(ArtifactError, match=r"capture incomplete: no rows for document\(s\) \[1\]"):
        out.result({})
    out.write(1, {"acts.a": torch.full((1, 3), 3.0), "doc_ids": torch.tensor([1]), "positions": torch.tensor([1])})
    r = out.result({})
    assert r.doc_ids.tolist() == [0, 0, 1] and r.positions.tolist() == [1, 2, 1] and r["a"][:, 0].tolist() == [1, 2, 3]
