"""Short reprs (no tensor dumps) and real signatures on the lens (no bare **kwargs)."""

from __future__ import annotations

import inspect

import pytest
import torch

from msma_lens import MSMA, ScaleActivations, Scales, Translate
from msma_lens.capture import capture
from msma_lens.steer.experiment import run_experiment
from msma_lens.steer.generate import generate

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Rain fell on the city while the market opened."]


@pytest.fixture(scope="module")
def lens(tiny_gpt2):
    return MSMA(tiny_gpt2, {"local": (0, 1), "global": (2, 3)})


# ----- reprs -----------------------------------------------------------------------------------------------
def test_scale_activations_repr_is_short(lens):
    acts = lens.capture(TEXTS, pooling="token", progress=False)
    r = repr(acts)
    assert len(r) < 400 and r.count("\n") <= 3 and "tensor(" not in r
    for fact in ("tiny-gpt2", "'token'", f"rows={len(acts)}", "docs=2", "local=[", f"global=[{len(acts)}, 64]"):
        assert fact in r
    many = ScaleActivations({f"s{i}": torch.zeros(5000, 576) for i in range(30)}, torch.arange(5000), torch.arange(5000))
    r = repr(many)
    assert len(r) < 400 and "rows=5000" in r and "+24 more" in r


def test_steering_record_repr_is_short(lens, tiny_gpt2):
    with lens.steer(Translate("global", torch.randn(64), strength=0.5), Translate("local", torch.randn(64))) as rec:
        tiny_gpt2(tiny_gpt2.to_tokens(TEXTS[:1]))
    r = repr(rec)
    assert len(r) < 400 and r.count("\n") <= 3 and "tensor(" not in r
    for fact in ("2 intervention(s)", "translate global", "layers 2-3", "translate local", "layers 0-1",
                 "1 forward pass(es)", "0 warning(s)"):
        assert fact in r


def test_generation_result_repr_is_short(lens):
    out = lens.generate(TEXTS, [Translate("global", torch.randn(64), strength=0.1)], max_new_tokens=12, capture_scales=True)
    r = repr(out)
    assert len(r) < 400 and r.count("\n") <= 3 and "tensor(" not in r
    for fact in ("model_id='tiny-gpt2'", "prompts=2", f"tokens={list(out.tokens.shape)}", "max_new_tokens=12",
                 "interventions=1", "captured scales ['local', 'global']"):
        assert fact in r
    long = lens.generate(TEXTS * 20, max_new_tokens=2)
    assert len(repr(long)) < 400 and "prompts=40" in repr(long)


# ----- signatures ------------------------------------------------------------------------------------------
def _params(fn, drop=()):
    return {n: p.default for n, p in inspect.signature(fn).parameters.items() if n not in drop}


@pytest.mark.parametrize("method, fn, supplied", [
    ("capture", capture, ("model", "scales", "site")),
    ("generate", generate, ("model", "scales")),
    ("experiment", run_experiment, ("model", "scales")),
])
def test_lens_methods_mirror_the_functions_they_call(lens, method, fn, supplied):
    """The lens method takes exactly the function's options (same names and defaults) minus what the lens supplies."""
    sig = inspect.signature(getattr(lens, method))
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
    assert _params(getattr(lens, method)) == _params(fn, supplied)


def test_key_parameters_are_visible(lens):
    assert {"pooling", "layer_agg", "batch_size", "shard_dir"} <= set(inspect.signature(lens.capture).parameters)
    gen = inspect.signature(lens.generate).parameters
    assert gen["max_new_tokens"].default == 20 and gen["do_sample"].default is False and "capture_scales" in gen
    assert {"phase", "positions", "schedule", "attention_mask"} <= set(inspect.signature(lens.steer).parameters)
    assert {"strengths", "seeds", "interventions", "max_new_tokens"} <= set(inspect.signature(lens.experiment).parameters)
    assert {"variants", "seeds", "level"} <= set(inspect.signature(lens.ablate).parameters)
    assert list(inspect.signature(lens.contrastive_direction).parameters)[:3] == ["positive", "negative", "scale"]
    assert list(inspect.signature(lens.principal_direction).parameters)[:2] == ["texts", "scale"]


def test_lens_generate_defaults_match_steering_generate(lens, tiny_gpt2):
    out = lens.generate(TEXTS[:1])
    ref = generate(tiny_gpt2, TEXTS[:1], scales=lens.scales)
    assert out.settings["max_new_tokens"] == 20 and out.settings["do_sample"] is False
    assert out.generated == ref.generated and torch.equal(out.tokens, ref.tokens)


def test_lens_experiment_rejects_unknown_options(lens):
    with pytest.raises(TypeError, match="bogus"):
        lens.experiment(TEXTS, bogus=1)


def test_scales_repr_unchanged():
    assert repr(Scales({"local": (0, 3), "global": range(4, 6)})) == "Scales(local=0-3, global=4-5)"
