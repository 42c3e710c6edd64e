"""Per-scale capture: pairing, padding, BOS exclusion, pooling, sharding, artifacts, bad input."""

import json

import pytest
import torch

import msma_lens.capture as capture_mod
from msma_lens import MSMA, ArtifactError, ConfigError, NumericsError, ScaleActivations, Scales, _tl
from msma_lens.capture import capture

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

    monkeypatch.setattr(capture_mod._tl, "run_with_cache", flaky)
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
