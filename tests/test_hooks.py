"""The TransformerLens adapter: names, validation, scoping, fired-checks."""

import pytest
import torch

from msma_lens import HookError
from msma_lens import tl as _tl
from msma_lens.errors import ConfigError


def test_resid_names_and_validation(tiny_model):
    assert _tl.resid_name(tiny_model, 0) == "blocks.0.hook_resid_post"
    assert _tl.resid_name(tiny_model, 3, "resid_pre") == "blocks.3.hook_resid_pre"
    with pytest.raises(ConfigError, match=r"layer 4 is outside the model's blocks 0..3"):
        _tl.resid_name(tiny_model, 4)
    with pytest.raises(ConfigError, match="unknown residual site 'resid_end'"):
        _tl.resid_name(tiny_model, 0, "resid_end")
    with pytest.raises(HookError, match=r"unknown hook name\(s\) \['blocks.1.hook_bogus'\]"):
        _tl.validate_hook_names(tiny_model, ["blocks.0.hook_resid_post", "blocks.1.hook_bogus"])


def test_provenance_records_backend_and_version(tiny_model):
    p = _tl.provenance(tiny_model)
    assert p["backend"] in ("TransformerBridge", "HookedTransformer")
    assert p["tl_version"] == _tl.tl_version() and p["n_layers"] == 4 and p["d_model"] == 64
    assert p["compatibility_mode"] in (False, None)


def _tokens(model):
    return _tl.to_tokens(model, ["Rain fell on the city."])[:2]


def test_scoped_hooks_removed_on_exception_in_hook_and_keyboardinterrupt(tiny_model):
    toks, mask = _tokens(tiny_model)
    before = _tl.count_attached_hooks(tiny_model)

    def boom(x, hook):
        raise RuntimeError("inside hook")

    with pytest.raises(RuntimeError, match="inside hook"):
        with _tl.scoped_hooks(tiny_model, [("blocks.1.hook_resid_post", boom)]):
            tiny_model(toks, attention_mask=mask)
    assert _tl.count_attached_hooks(tiny_model) == before
    with pytest.raises(KeyboardInterrupt):
        with _tl.scoped_hooks(tiny_model, [("blocks.1.hook_resid_post", lambda x, hook: x)]):
            assert _tl.count_attached_hooks(tiny_model) == before + 1
            raise KeyboardInterrupt
    assert _tl.count_attached_hooks(tiny_model) == before


def test_unfired_hook_is_an_error(tiny_model):
    toks, mask = _tokens(tiny_model)
    with pytest.raises(HookError, match=r"\['blocks.3.hook_resid_post'\] never fired"):
        with _tl.scoped_hooks(tiny_model, [("blocks.3.hook_resid_post", lambda x, hook: x)]):
            tiny_model.run_with_hooks(toks, attention_mask=mask, stop_at_layer=2)
    assert _tl.count_attached_hooks(tiny_model) == 0


def test_user_hooks_survive_scoped_hooks(tiny_model):
    toks, mask = _tokens(tiny_model)
    calls = []
    tiny_model.add_hook("blocks.0.hook_resid_post", lambda x, hook: calls.append(1))
    try:
        with _tl.scoped_hooks(tiny_model, [("blocks.1.hook_resid_post", lambda x, hook: x)]) as rec:
            tiny_model(toks, attention_mask=mask)
        assert rec.calls == {"blocks.1.hook_resid_post": 1}
        tiny_model(toks, attention_mask=mask)
        assert len(calls) == 2  # still attached after our scope closed
    finally:
        tiny_model.reset_hooks()


def test_edit_through_scoped_hook_changes_output(tiny_model):
    toks, mask = _tokens(tiny_model)
    base = tiny_model(toks, attention_mask=mask)
    with _tl.scoped_hooks(tiny_model, [("blocks.1.hook_resid_post", lambda x, hook: x + 1.0)]):
        edited = tiny_model(toks, attention_mask=mask)
    assert not torch.allclose(base, edited)
    assert torch.equal(tiny_model(toks, attention_mask=mask), base)


class _FakeSAEBridge:
    """Stands in for a SAELens-wrapped bridge: canonical names only, no legacy aliases."""

    def __init__(self):
        self.cfg = type("C", (), {"n_layers": 2, "d_model": 8})()
        self.hook_dict = {"blocks.0.hook_out": object(), "blocks.1.hook_in": object()}


def test_saelens_style_model_uses_canonical_names_and_says_why():
    m = _FakeSAEBridge()
    assert _tl.resid_name(m, 0) == "blocks.0.hook_out"
    assert _tl.resid_name(m, 1, "resid_pre") == "blocks.1.hook_in"
    with pytest.raises(HookError, match="SAELens-wrapped.*legacy HookedTransformer aliases"):
        _tl.resid_name(m, 1)


def test_non_tl_model_rejected():
    with pytest.raises(ConfigError, match="Linear is not a TransformerLens model"):
        _tl.check_model(torch.nn.Linear(2, 2))
