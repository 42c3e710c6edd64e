"""Per-scale hook points msma.{scale}.hook_in / hook_resid on every backend (msma_lens.capture.hookpoints, MSMA.attach)."""

import pytest
import torch

from msma_lens import MSMA
from msma_lens import tl as _tl
from msma_lens.capture import capture
from msma_lens.capture.scales import Scales

SCALES = Scales({"local": [0], "intermediate": [1, 2], "global": [3]})
TEXTS = ["The quick brown fox jumps over the lazy dog.", "Rain fell on the city while the market opened."]


def _msma_names(model) -> set[str]:
    return {n for n in model.hook_dict if n.startswith("msma.")}


def _attached_hook_count(model) -> int:
    return sum(len(model.hook_dict[n]._forward_hooks) for n in _msma_names(model))


def test_points_appear_in_hook_dict_and_cache(tiny_model):
    before = set(tiny_model.hook_dict)
    with MSMA(tiny_model, SCALES) as lens:
        assert lens.attached
        assert _msma_names(tiny_model) == {f"msma.{s}.{p}" for s in SCALES.names for p in ("hook_in", "hook_resid")}
        toks = tiny_model.to_tokens(TEXTS[0])
        _, cache = tiny_model.run_with_cache(toks, names_filter=lambda n: n.startswith("msma.") or "hook_resid_p" in n)
        assert {k for k in cache.keys() if k.startswith("msma.")} == _msma_names(tiny_model)
        for s, layers in SCALES.items():
            want = torch.stack([cache[f"blocks.{x}.hook_resid_post"] for x in layers]).mean(0)
            assert cache[f"msma.{s}.hook_resid"].shape == (1, toks.shape[1], _tl.d_model(tiny_model))
            torch.testing.assert_close(cache[f"msma.{s}.hook_resid"], want, atol=1e-6, rtol=0)
            assert torch.equal(cache[f"msma.{s}.hook_in"], cache[f"blocks.{layers[0]}.hook_resid_pre"])
        assert lens.hook_point_names("hook_in")["global"] == "msma.global.hook_in"
    assert set(tiny_model.hook_dict) == before and not hasattr(tiny_model, "msma")


def test_unused_points_change_nothing(tiny_model):
    toks = tiny_model.to_tokens(TEXTS)
    base = tiny_model(toks)
    lens = MSMA(tiny_model, SCALES).attach()
    try:
        assert torch.equal(tiny_model(toks), base)
    finally:
        lens.detach()
    assert torch.equal(tiny_model(toks), base)


def test_edit_at_hook_in_changes_what_the_scale_sees(tiny_model):
    toks = tiny_model.to_tokens(TEXTS[0])
    delta = torch.randn(_tl.d_model(tiny_model), generator=torch.Generator().manual_seed(0))

    def add(x, hook):
        return x + delta

    with torch.no_grad():
        base = tiny_model(toks)
        with tiny_model.hooks(fwd_hooks=[("blocks.1.hook_resid_pre", add)]):
            direct = tiny_model(toks)  # the oracle: the same edit on the block's own point
        with MSMA(tiny_model, SCALES):
            with tiny_model.hooks(fwd_hooks=[("msma.intermediate.hook_in", add)]):
                via_point = tiny_model(toks)
                _, cache = tiny_model.run_with_cache(toks, names_filter=["blocks.1.hook_resid_pre", "blocks.0.hook_resid_post"])
    assert (via_point - base).abs().max() > 1e-2
    torch.testing.assert_close(via_point, direct, atol=1e-5, rtol=0)
    torch.testing.assert_close(cache["blocks.1.hook_resid_pre"], cache["blocks.0.hook_resid_post"] + delta, atol=1e-5, rtol=0)


def test_add_hook_persists_and_user_hooks_survive_steering(tiny_model):
    from msma_lens.steer.edits import Translate

    calls = {"resid": 0, "block": 0}

    def count(key):
        def fn(x, hook):
            calls[key] += 1

        return fn

    lens = MSMA(tiny_model, SCALES).attach()
    try:
        tiny_model.add_hook("msma.global.hook_resid", count("resid"))
        tiny_model.add_hook("blocks.3.hook_resid_post", count("block"))
        toks = tiny_model.to_tokens(TEXTS[0])
        tiny_model(toks)
        assert calls == {"resid": 1, "block": 1}
        d = torch.ones(_tl.d_model(tiny_model))
        lens.generate(TEXTS[:1], [Translate("global", d, strength=1.0)], max_new_tokens=3)
        n_resid, n_block = calls["resid"], calls["block"]
        assert n_resid >= 3 and n_block >= 3  # they fired during generation too
        tiny_model(toks)  # ... and are still attached after lens.steer's scoped hooks were removed
        assert calls == {"resid": n_resid + 1, "block": n_block + 1}
    finally:
        tiny_model.reset_hooks()
        lens.detach()


def test_hooks_removed_on_exceptions(tiny_model):
    def boom(x, hook):
        raise RuntimeError("boom")

    toks = tiny_model.to_tokens(TEXTS[0])
    with pytest.raises(RuntimeError, match="boom"):
        with MSMA(tiny_model, SCALES):
            with tiny_model.hooks(fwd_hooks=[("msma.local.hook_resid", boom)]):
                tiny_model(toks)
    assert not hasattr(tiny_model, "msma") and not _msma_names(tiny_model)
    assert _tl.count_attached_hooks(tiny_model) == 0
    lens = MSMA(tiny_model, SCALES).attach()
    try:
        with pytest.raises(RuntimeError, match="boom"):
            with tiny_model.hooks(fwd_hooks=[("msma.local.hook_resid", boom)]):
                tiny_model(toks)
        assert _attached_hook_count(tiny_model) == 0  # only the scoped hook was on the point, and it is gone
        tiny_model(toks)
    finally:
        lens.detach()


def test_reattach_another_partition_replaces_points(tiny_model):
    a = MSMA(tiny_model, SCALES).attach()
    b = MSMA(tiny_model, {"low": range(0, 2), "high": range(2, 4)})
    try:
        assert a.attached and not b.attached
        b.attach()
        assert b.attached and not a.attached
        assert _msma_names(tiny_model) == {"msma.low.hook_in", "msma.low.hook_resid", "msma.high.hook_in", "msma.high.hook_resid"}
        a.detach()  # not a's points: nothing happens
        assert b.attached
    finally:
        b.detach()
    assert not _msma_names(tiny_model)


def test_capture_reads_the_scale_points(tiny_model):
    manual = capture(tiny_model, SCALES, TEXTS, layer_agg={"intermediate": 1}, progress=False)  # block hooks only
    acts = capture(tiny_model, SCALES, TEXTS, progress=False)  # temporary attach
    assert acts.meta["read_hooks"]["intermediate"] == ["msma.intermediate.hook_resid"]
    assert acts.meta["read_hooks"]["local"] == ["blocks.0.hook_resid_post"]
    assert not hasattr(tiny_model, "msma")  # the temporary points are gone
    with MSMA(tiny_model, SCALES) as lens:
        attached = lens.capture(TEXTS, progress=False)
    for s in SCALES.names:
        assert torch.equal(acts[s], attached[s])
    assert torch.equal(acts["local"], manual["local"])
    # the layer mean read from the point equals the mean of the blocks' own activations
    l1 = capture(tiny_model, SCALES, TEXTS, layer_agg={"intermediate": 1}, progress=False)["intermediate"]
    l2 = capture(tiny_model, SCALES, TEXTS, layer_agg={"intermediate": 2}, progress=False)["intermediate"]
    torch.testing.assert_close(acts["intermediate"], (l1 + l2) / 2, atol=1e-6, rtol=0)


def test_capture_with_another_partition_attached_falls_back_to_block_hooks(tiny_model):
    other = MSMA(tiny_model, {"low": range(0, 2), "high": range(2, 4)}).attach()
    try:
        acts = capture(tiny_model, SCALES, TEXTS, progress=False)
        assert acts.meta["read_hooks"]["intermediate"] == ["blocks.1.hook_resid_post", "blocks.2.hook_resid_post"]
        assert other.attached
    finally:
        other.detach()
    ref = capture(tiny_model, SCALES, TEXTS, progress=False)
    torch.testing.assert_close(acts["intermediate"], ref["intermediate"], atol=1e-6, rtol=0)
