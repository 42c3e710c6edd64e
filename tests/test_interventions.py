"""Interventions and steer(): exact identities, where/when semantics, per-row parameters, errors (directions: test_directions.py)."""

from __future__ import annotations

import warnings

import pytest
import torch

from msma_lens import tl as _tl
from msma_lens.errors import ConfigError, HookError
from msma_lens.steer.edits import AT_MODES, DEFAULT_AT, Ablate, AttentionEdit, GaussianNoise, Rescale, Translate
from msma_lens.steer.schedule import Schedule
from msma_lens.steer.session import steer

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Rain fell on the city while the market opened."]


def _batch(model, texts=TEXTS, side="right"):
    toks, mask, _ = _tl.to_tokens(model, list(texts), padding_side=side)
    return toks, mask


def _d(model, seed=0):
    return torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(seed))


def _resid(model, layer, toks, mask, *interventions, **kw):
    """Logits and the (steered) resid_post of ``layer``, read by a user hook attached inside steer()."""
    seen = {}

    def grab(x, hook):
        seen["x"] = x.detach().clone()

    with steer(model, *interventions, attention_mask=mask, **kw) as rec:
        with model.hooks(fwd_hooks=[(f"blocks.{layer}.hook_resid_post", grab)]):
            logits = model(toks, attention_mask=mask)
    return logits, seen["x"], rec


# ----- identities --------------------------------------------------------------------------------------------
def test_identity_interventions_reproduce_logits_exactly(tiny_model):
    toks, mask = _batch(tiny_model)
    base = tiny_model(toks, attention_mask=mask)
    v = _d(tiny_model)
    ivs = [AttentionEdit("global", 1.0), AttentionEdit("local", 1.0, mode="scores"), AttentionEdit("local", 1.0, mode="pattern")]
    for at in AT_MODES:
        ivs += [Translate("global", v, strength=0.0, at=at), Translate("intermediate", v, strength=0.0, relative=True, at=at),
                Rescale("intermediate", 1.0, at=at), GaussianNoise("intermediate", 0.0, at=at),
                GaussianNoise("global", 0.0, relative=True, at=at)]
    for iv in ivs:
        with steer(tiny_model, iv, attention_mask=mask):
            out = tiny_model(toks, attention_mask=mask)
        assert torch.equal(out, base), iv
    assert _tl.count_attached_hooks(tiny_model) == 0


def test_translate_adds_exactly_strength_delta_at_first_layer(tiny_model):
    toks, mask = _batch(tiny_model)
    v = _d(tiny_model)
    _, h0, _ = _resid(tiny_model, 1, toks, mask)
    _, h1, rec = _resid(tiny_model, 1, toks, mask, Translate("intermediate", v, strength=0.5, at="every"))  # layers 1-2
    real = mask.bool()
    assert torch.allclose((h1 - h0)[real], (0.5 * v).expand(int(real.sum()), -1), atol=1e-5)
    assert torch.equal(h1[~real], h0[~real])  # padding untouched
    assert rec.layers(0) == [1, 2] and rec.interventions[0]["hooks"] == ["blocks.1.hook_resid_post", "blocks.2.hook_resid_post"]


def test_relative_translate_uses_row_mean_norm_without_bos_and_pads(tiny_model):
    toks, mask = _batch(tiny_model)
    v = _d(tiny_model) * 7.0
    _, h0, _ = _resid(tiny_model, 0, toks, mask)
    _, h1, _ = _resid(tiny_model, 0, toks, mask, Translate("local", v, strength=2.0, relative=True, at="every"))
    for b in range(toks.shape[0]):
        n = int(mask[b].sum())
        ref = h0[b, 1:n].norm(dim=-1).mean()  # non-BOS, non-pad positions
        added = (h1[b, :n] - h0[b, :n]).norm(dim=-1)
        assert torch.allclose(added, 2.0 * ref.expand(n), rtol=1e-4)


def test_scale_and_ablate_at_first_layer(tiny_model):
    toks, mask = _batch(tiny_model)
    _, h0, _ = _resid(tiny_model, 0, toks, mask)
    _, h1, _ = _resid(tiny_model, 0, toks, mask, Rescale("local", 1.5, at="every"))
    real = mask.bool()
    assert torch.allclose(h1[real], 1.5 * h0[real], atol=1e-6) and torch.equal(h1[~real], h0[~real])
    u = _d(tiny_model, 3)
    _, h2, _ = _resid(tiny_model, 0, toks, mask, Ablate("local", u))
    assert (h2[real] @ (u / u.norm())).abs().max() < 1e-4
    assert (h0[real] @ (u / u.norm())).abs().max() > 1e-2


# ----- at=: entry / held / every ------------------------------------------------------------------------------
SCALE = (1, 2)  # the tiny models' "intermediate" scale


def _stream(model, toks, mask, *interventions, zero=()):
    """Per layer of SCALE: ``pre`` (the block's input, after edits), ``raw`` (its output before the edits at
    hook_resid_post: hooks attached before steer() fire first) and ``post`` (after them). The blocks in ``zero``
    add nothing to the stream (attention and MLP outputs zeroed), so any change is the edit's own."""
    seen = {}

    def grab(key):
        def hook(x, hook):
            seen[key] = x.detach().clone()

        return hook

    zeroing = [(f"blocks.{x}.hook_{k}_out", lambda x, hook: torch.zeros_like(x)) for x in zero for k in ("attn", "mlp")]
    outer = zeroing + [(f"blocks.{x}.hook_resid_post", grab(("raw", x))) for x in SCALE]
    inner = [(f"blocks.{x}.hook_resid_{s}", grab((s, x))) for x in SCALE for s in ("pre", "post")]
    with model.hooks(fwd_hooks=outer):
        with steer(model, *interventions, attention_mask=mask):
            with model.hooks(fwd_hooks=inner):
                model(toks, attention_mask=mask)
    return seen


def _norm_ratio(a, b, real):
    return (a.norm(dim=-1) / b.norm(dim=-1))[real]


@pytest.mark.parametrize("at", AT_MODES)
def test_norm_ratio_per_layer_when_blocks_add_nothing(tiny_model, at):
    """With the scale's blocks silenced, each mode's footprint is exact: Rescale α gives steered/unsteered norm
    ratios (entering the scale, after block 1, after block 2) of α, α, α for entry and held, and 1, α, α² for
    every (it compounds); Translate v adds 1, 1, 1 copies of v for entry and held, and 0, 1, 2 for every."""
    toks, mask = _batch(tiny_model)
    real, a, v = mask.bool(), 1.5, _d(tiny_model)
    base = _stream(tiny_model, toks, mask, zero=SCALE)
    powers = {"entry": (1, 1, 1), "held": (1, 1, 1), "every": (0, 1, 2)}[at]
    points = [("pre", 1), ("post", 1), ("post", 2)]
    st = _stream(tiny_model, toks, mask, Rescale("intermediate", a, at=at), zero=SCALE)
    for key, k in zip(points, powers):
        assert torch.allclose(_norm_ratio(st[key], base[key], real), torch.tensor(a**k), rtol=1e-5), (at, key)
        assert torch.allclose(st[key][real], a**k * base[key][real], rtol=1e-5, atol=1e-6), (at, key)
        assert torch.equal(st[key][~real], base[key][~real])  # padding untouched
    st = _stream(tiny_model, toks, mask, Translate("intermediate", v, strength=0.5, at=at), zero=SCALE)
    for key, k in zip(points, powers):
        delta = (st[key] - base[key])[real]
        assert torch.allclose(delta, (k * 0.5 * v).expand_as(delta), atol=1e-5), (at, key)


@pytest.mark.parametrize("at", AT_MODES)
def test_rescale_per_layer_identities_with_real_blocks(tiny_model, at):
    """entry: the stream entering the scale is α× the unsteered one, the blocks' outputs are left alone; held:
    the same entry, then each block's own update (output − input) is α× what the block computed, so the stream
    holds one rescaling; every: each block's output is multiplied by α, earlier applications included."""
    toks, mask = _batch(tiny_model)
    real, a = mask.bool(), 1.5
    base = _stream(tiny_model, toks, mask)
    st = _stream(tiny_model, toks, mask, Rescale("intermediate", a, at=at))
    entering = st[("pre", 1)][real] / base[("pre", 1)][real]
    assert torch.allclose(entering, torch.tensor(1.0 if at == "every" else a), rtol=1e-5)
    for x in SCALE:
        pre, raw, post = st[("pre", x)][real], st[("raw", x)][real], st[("post", x)][real]
        if at == "entry":
            assert torch.equal(post, raw)
        elif at == "held":
            assert torch.allclose(post - pre, a * (raw - pre), atol=1e-5), x
            assert not torch.allclose(post, a * raw, atol=1e-3)  # unlike every: the carried part is not rescaled again
        else:
            assert torch.allclose(post, a * raw, rtol=1e-5, atol=1e-6), x
    if at == "every":  # block 1 ran on the unsteered stream: its output's ratio is exactly α, and it grows after
        r1 = _norm_ratio(st[("post", 1)], base[("post", 1)], real)
        assert torch.allclose(r1, torch.tensor(a), rtol=1e-5)
        assert _norm_ratio(st[("post", 2)], base[("post", 2)], real).mean() > r1.mean()


@pytest.mark.parametrize("at", AT_MODES)
def test_translate_enters_once_and_held_carries_one_copy(tiny_model, at):
    toks, mask = _batch(tiny_model)
    real, v = mask.bool(), _d(tiny_model)
    base = _stream(tiny_model, toks, mask)
    st = _stream(tiny_model, toks, mask, Translate("intermediate", v, strength=0.5, at=at))
    entered = (st[("pre", 1)] - base[("pre", 1)])[real]
    assert torch.allclose(entered, (0.0 if at == "every" else 0.5) * v.expand_as(entered), atol=1e-6)
    for x in SCALE:  # what each block-output point adds: nothing (entry; held re-adds the copy it took out), v (every)
        added = (st[("post", x)] - st[("raw", x)])[real]
        assert torch.allclose(added, (0.5 * v if at == "every" else 0 * v).expand_as(added), atol=1e-5), x


def test_held_noise_is_one_fresh_draw_per_point(tiny_model):
    """held replaces the previous point's noise with this point's draw; every adds the same draws up."""
    toks, mask = _batch(tiny_model)
    real = mask.bool()
    base = _stream(tiny_model, toks, mask, zero=SCALE)
    held = _stream(tiny_model, toks, mask, GaussianNoise("intermediate", 0.5, seed=3), zero=SCALE)
    every = _stream(tiny_model, toks, mask, GaussianNoise("intermediate", 0.5, seed=3, at="every"), zero=SCALE)

    def delta(st, key):
        return (st[key] - base[key])[real]

    assert torch.allclose(delta(held, ("post", 1)), delta(every, ("post", 1)), atol=1e-5)
    draw2 = delta(every, ("post", 2)) - delta(every, ("post", 1))
    assert torch.allclose(delta(held, ("post", 2)), draw2, atol=1e-5)
    assert not torch.allclose(delta(held, ("pre", 1)), delta(held, ("post", 1)), atol=1e-3)  # the entry has its own draw
    n = delta(held, ("post", 2)).norm(dim=-1).mean()
    assert delta(every, ("post", 2)).norm(dim=-1).mean() > 1.2 * n  # two independent draws: about √2 × one


def test_held_ablate_keeps_the_direction_out_at_every_point(tiny_model):
    toks, mask = _batch(tiny_model)
    real, u = mask.bool(), _d(tiny_model, 3)
    u = u / u.norm()
    st = _stream(tiny_model, toks, mask, Ablate("intermediate", u))
    for key in [("pre", 1), ("post", 1), ("post", 2)]:
        assert (st[key][real] @ u).abs().max() < 1e-4, key
    entry = _stream(tiny_model, toks, mask, Ablate("intermediate", u, at="entry"))
    assert (entry[("pre", 1)][real] @ u).abs().max() < 1e-4
    assert (entry[("post", 2)][real] @ u).abs().max() > 1e-3  # the blocks write the direction back


def test_resid_mid_edit_refused_where_it_misses_the_stream(tiny_gpt2):
    toks = _batch(tiny_gpt2, TEXTS[:1])[0]
    iv = Rescale("global", 2.0, at="every", site="resid_mid")
    if _tl.backend(tiny_gpt2) == "TransformerBridge":
        with pytest.raises(ConfigError, match="hook_resid_mid is ln2's input"):
            with steer(tiny_gpt2, iv):
                pass
    else:
        with steer(tiny_gpt2, iv) as rec:
            tiny_gpt2(toks)
        assert rec.interventions[0]["hooks"] == ["blocks.3.hook_resid_mid"]


# ----- deprecated names ---------------------------------------------------------------------------------------
def _old_scale():
    from msma_lens.steer.edits import Scale

    return Scale("intermediate", 1.5)


@pytest.mark.parametrize("make, match, attr", [
    (_old_scale, r"msma_lens.Scale is deprecated; use Rescale", None),
    (lambda: Rescale("intermediate", alpha=1.5), r"Rescale\(alpha=...\) is deprecated; use strength=", "alpha"),
    (lambda: GaussianNoise("intermediate", sigma=0.5, seed=1), r"GaussianNoise\(sigma=...\) is deprecated", "sigma"),
], ids=["Scale", "alpha=", "sigma="])
def test_deprecated_names_warn_and_do_what_the_new_ones_do(tiny_gpt2, make, match, attr):
    with pytest.deprecated_call(match=match) as rec:
        old = make()
    assert {w.filename for w in rec} == {__file__}  # the warning points at the caller
    new = Rescale("intermediate", 1.5) if old.kind == "rescale" else GaussianNoise("intermediate", 0.5, seed=1)
    assert isinstance(old, type(new))
    assert old.describe() == new.describe()
    if attr is not None:
        with pytest.deprecated_call(match=rf"{type(old).__name__}.{attr} is deprecated; use .strength"):
            assert getattr(old, attr) == new.strength
    toks, mask = _batch(tiny_gpt2)
    outs = []
    for iv in (old, new):
        with steer(tiny_gpt2, iv, attention_mask=mask):
            outs.append(tiny_gpt2(toks, attention_mask=mask))
    assert torch.equal(outs[0], outs[1])


def test_attention_temperature_modes_agree_and_never_unmask(tiny_model):
    toks, mask = _batch(tiny_model, TEXTS[:1])
    base = tiny_model(toks)
    outs = {}
    for mode in ("query", "scores", "pattern"):
        pats = []
        with steer(tiny_model, AttentionEdit("global", 0.5, mode=mode)):
            with tiny_model.hooks(fwd_hooks=[("blocks.3.attn.hook_pattern", lambda x, hook, pats=pats: pats.append(x.detach().clone()))]):
                outs[mode] = tiny_model(toks)
        T = toks.shape[1]
        future = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
        assert torch.all(pats[0][..., future] == 0), mode  # causal mask intact
        assert torch.isfinite(outs[mode]).all()
    assert not torch.allclose(outs["query"], base)
    assert torch.allclose(outs["query"], outs["scores"], atol=1e-5)
    assert torch.allclose(outs["pattern"], outs["scores"], atol=1e-5)


def test_attention_edit_raises_where_edits_are_discarded(tiny_gpt2, monkeypatch):
    monkeypatch.setattr(_tl, "attention_edits_flow", lambda model, layer: False)
    for mode in ("scores", "pattern"):
        with pytest.raises(ConfigError, match=f"AttentionEdit\\(mode='{mode}'\\).*discards edits.*use mode='query'"):
            with steer(tiny_gpt2, AttentionEdit("global", 2.0, mode=mode)):
                pass
    with steer(tiny_gpt2, AttentionEdit("global", 2.0, mode="query")):  # always portable
        tiny_gpt2(_batch(tiny_gpt2, TEXTS[:1])[0])
    assert _tl.count_attached_hooks(tiny_gpt2) == 0


@pytest.mark.slow
def test_attention_edit_on_bert_bridge():
    from msma_lens.io.models import load_model

    if _tl.tl_major() < 3:
        pytest.skip("the BERT bridge needs TransformerLens >= 3")
    try:
        m = load_model("minilm-l6", backend="bridge")
    except Exception as e:  # package not installed
        pytest.skip(f"minilm-l6 unavailable: {e}")
    assert not _tl.attention_edits_flow(m, 0)
    with pytest.raises(ConfigError, match="delegates to the Hugging Face module"):
        with steer(m, AttentionEdit("global", 2.0, mode="pattern")):
            pass
    toks, mask = _batch(m, TEXTS)
    base = m(toks, attention_mask=mask)
    with steer(m, AttentionEdit("global", 0.3), attention_mask=mask):
        out = m(toks, attention_mask=mask)
    assert not torch.allclose(out, base)
    with steer(m, Translate("global", _d(m), strength=0.0), attention_mask=mask):
        assert torch.equal(m(toks, attention_mask=mask), base)
    from msma_lens.steer.generate import generate

    with pytest.raises(ConfigError, match="encoder"):
        generate(m, ["hello"], max_new_tokens=2, do_sample=False)


# ----- where: positions, phases, per-row -----------------------------------------------------------------------
def test_positions_absolute_negative_and_slice(tiny_model):
    toks, mask = _batch(tiny_model, TEXTS, side="left")
    v = _d(tiny_model)
    _, h0, _ = _resid(tiny_model, 0, toks, mask)
    offsets = (mask == 0).sum(1)
    lengths = mask.sum(1)
    for spec, expect in (([1, 2], lambda b: {1, 2}), ([-1], lambda b: {int(lengths[b]) - 1}),
                         (slice(4, None), lambda b: set(range(4, int(lengths[b]))))):
        _, h1, rec = _resid(tiny_model, 0, toks, mask, Translate("local", v, at="every"), positions=spec)
        for b in range(toks.shape[0]):
            changed = (h1[b] != h0[b]).any(-1).nonzero().flatten() - offsets[b]
            assert set(changed.tolist()) == expect(b), (spec, b)
        assert rec.positions(0) == sorted(set().union(*[expect(b) for b in range(toks.shape[0])]))


def test_per_row_parameters_hit_only_their_row(tiny_model):
    toks, mask = _batch(tiny_model)
    base = tiny_model(toks, attention_mask=mask)
    d = tiny_model.cfg.d_model
    cases = [Translate("global", _d(tiny_model), strength=torch.tensor([0.0, 3.0])),
             Translate("global", torch.stack([torch.zeros(d) + 1e-12, _d(tiny_model)]), strength=1.0),
             Rescale("intermediate", torch.tensor([1.0, 2.0])),
             GaussianNoise("local", torch.tensor([0.0, 1.0])),
             AttentionEdit("global", [1.0, 0.2])]
    for iv in cases:
        with steer(tiny_model, iv, attention_mask=mask):
            out = tiny_model(toks, attention_mask=mask)
        assert torch.allclose(out[0], base[0], atol=1e-5), iv.kind
        assert not torch.allclose(out[1], base[1], atol=1e-3), iv.kind
    with pytest.raises(ConfigError, match="Translate.strength has 3 per-row values but the batch has 2 rows"):
        with steer(tiny_model, Translate("global", _d(tiny_model), strength=[1.0, 2.0, 3.0])):
            tiny_model(toks, attention_mask=mask)
    assert _tl.count_attached_hooks(tiny_model) == 0


def test_noise_reproducible_and_batch_invariant(tiny_model):
    toks, mask = _batch(tiny_model, [TEXTS[0], TEXTS[0]])
    runs = []
    for seed in (7, 7, 8):
        with steer(tiny_model, GaussianNoise("intermediate", 0.5, relative=True, seed=seed)):
            runs.append(tiny_model(toks, attention_mask=mask))
    assert torch.equal(runs[0], runs[1])
    assert not torch.allclose(runs[0], runs[2])
    assert torch.equal(runs[0][0], runs[0][1])  # an int seed: same stream for every row
    with steer(tiny_model, GaussianNoise("intermediate", 0.5, relative=True, seed=7)):
        alone = tiny_model(toks[:1], attention_mask=mask[:1])
    assert torch.allclose(alone[0], runs[0][0], atol=1e-5)
    with steer(tiny_model, GaussianNoise("intermediate", 0.5, seed=[1, 2])):
        per_row = tiny_model(toks, attention_mask=mask)
    assert not torch.allclose(per_row[0], per_row[1])


def test_noise_stream_independent_of_how_many_positions_a_pass_draws():
    """A position's noise is the same whether a pass needs 5 positions at once or they come one at a time,
    also for widths that are not a multiple of 16 (torch's CPU normal_ fills in blocks of 16)."""
    from msma_lens.steer.edits import EditContext

    def draw(chunks, d):
        iv, st, out = GaussianNoise(None, 1.0, layers=[0], seed=[3, 4]), {}, []
        start = 0
        for n in chunks:
            pos = torch.arange(start, start + n)[None].expand(2, -1)
            out.append(iv.noise(EditContext(0, 0, None, pos, None, st), 2, d))
            start += n
        return torch.cat(out, dim=1)

    for d in (40, 64, 8):
        assert torch.equal(draw([5], d), draw([2, 1, 1, 1], d)), d
        assert torch.equal(draw([5], d), draw([1] * 5, d)), d


def test_scores_and_pattern_edits_keep_padding_masked(tiny_model):
    toks, mask = _batch(tiny_model, TEXTS + ["Hi"], side="left")
    pad_keys = ~mask.bool()  # [B, Tk]
    real_q = mask.bool()
    for mode in ("scores", "pattern"):
        pats = []
        with steer(tiny_model, AttentionEdit("global", 3.0, mode=mode), attention_mask=mask):
            with tiny_model.hooks(fwd_hooks=[("blocks.3.attn.hook_pattern",
                                              lambda x, hook, pats=pats: pats.append(x.detach().clone()))]):
                tiny_model(toks, attention_mask=mask)
        p = pats[0]  # [B, H, Tq, Tk]
        for b in range(toks.shape[0]):
            if pad_keys[b].any():
                assert torch.all(p[b][:, real_q[b]][..., pad_keys[b]] == 0), (mode, b)  # pads stay masked
        assert torch.allclose(p.sum(-1)[real_q[:, None].expand(-1, p.shape[1], -1)], torch.tensor(1.0), atol=1e-4)


def test_phase_generated_leaves_prompt_untouched_in_model_generate(tiny_model):
    """steer() around a user's own model.generate: prompt activations identical, generated ones edited."""
    name = "blocks.3.hook_resid_post"
    v = _d(tiny_model) * 10

    def run(*ivs, **kw):
        seen = []
        with steer(tiny_model, *ivs, **kw) as rec:
            with tiny_model.hooks(fwd_hooks=[(name, lambda x, hook: seen.append(x.detach().clone()))]):
                tiny_model.generate("Rain fell on the city", max_new_tokens=4, do_sample=False, verbose=False)
        return seen, rec

    base, _ = run()
    gen, rec = run(Translate("global", v), phase="generated")
    assert torch.equal(gen[0], base[0])  # the prompt pass
    assert not torch.allclose(gen[1], base[1])
    assert rec.steps(0) == [1, 2, 3]
    prm, rec = run(Translate("global", v), phase="prompt")
    assert not torch.equal(prm[0], base[0]) and rec.steps(0) == [0]


# ----- when: schedules and warnings --------------------------------------------------------------------------
def test_schedule_multiplier():
    s = Schedule(start=2, stop=5, decay=0.5)
    assert s.multiplier(torch.arange(7)).tolist() == [0, 0, 1, 0.5, 0.25, 0, 0]
    assert Schedule.coerce({"start": 1}).start == 1 and Schedule.coerce((0, 3)).stop == 3
    with pytest.raises(ConfigError, match="Schedule.stop must be None or an int > start"):
        Schedule(start=3, stop=3)
    with pytest.raises(ConfigError, match="Schedule.decay must be a finite number >= 0"):
        Schedule(decay=float("nan"))
    with pytest.raises(ConfigError, match="unknown schedule key"):
        Schedule.coerce({"begin": 1})


def test_warns_when_it_can_never_apply(tiny_gpt2):
    toks = _batch(tiny_gpt2, TEXTS[:1])[0]
    v = _d(tiny_gpt2)
    with pytest.warns(UserWarning, match="phase='prompt' runs at step 0 only"):
        with steer(tiny_gpt2, Translate("global", v), phase="prompt", schedule=Schedule(start=2)):
            pass
    with pytest.warns(UserWarning, match="negative positions \\[-1\\] index prompt tokens"):
        with steer(tiny_gpt2, Translate("global", v), phase="generated", positions=-1):
            pass
    with pytest.warns(UserWarning, match="was never applied in 1 forward pass"):
        with steer(tiny_gpt2, Translate("global", v), positions=[500]):
            tiny_gpt2(toks)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with steer(tiny_gpt2, Translate("global", v)) as rec:
            tiny_gpt2(toks)
    assert not rec.warnings and not [w for w in caught if "never" in str(w.message)]


# ----- hooks: cleanup and composition ------------------------------------------------------------------------
def test_hooks_removed_on_exception_and_user_hooks_compose(tiny_model):
    toks, mask = _batch(tiny_model)
    calls = []
    tiny_model.add_hook("blocks.1.hook_resid_post", lambda x, hook: calls.append(1))
    try:
        before = _tl.count_attached_hooks(tiny_model)
        with pytest.raises(RuntimeError, match="user code failed"):
            with steer(tiny_model, Translate("global", _d(tiny_model)), attention_mask=mask):
                assert _tl.count_attached_hooks(tiny_model) > before
                tiny_model(toks, attention_mask=mask)
                raise RuntimeError("user code failed")
        assert _tl.count_attached_hooks(tiny_model) == before
        with steer(tiny_model, Rescale("intermediate", 2.0), attention_mask=mask):
            tiny_model(toks, attention_mask=mask)
        assert len(calls) == 2  # the user's hook fired alongside, and is still attached
        assert _tl.count_attached_hooks(tiny_model) == before
    finally:
        tiny_model.reset_hooks()
    assert _tl.count_attached_hooks(tiny_model) == 0


def test_unfired_steering_hook_is_an_error(tiny_gpt2):
    toks = _batch(tiny_gpt2, TEXTS[:1])[0]
    with pytest.raises(HookError, match="never fired although 1 forward pass"):
        with steer(tiny_gpt2, Rescale("global", 2.0)):
            tiny_gpt2.run_with_hooks(toks, stop_at_layer=2)
    assert _tl.count_attached_hooks(tiny_gpt2) == 0


# ----- errors ------------------------------------------------------------------------------------------------
def test_bad_inputs_name_the_problem(tiny_gpt2):
    m = tiny_gpt2
    v = _d(m)
    for make, match in [
        (lambda: Translate("global", v, strength=float("nan")), "Translate.strength is NaN"),
        (lambda: Translate("global", torch.zeros(64)), "Translate.direction has zero norm"),
        (lambda: Translate("global", torch.stack([v, torch.zeros(64)])), r"zero norm \(row\(s\) \[1\]\)"),
        (lambda: Translate("global", None), "Translate needs a direction"),
        (lambda: Ablate("global", torch.zeros(64)), "Ablate.direction has zero norm"),
        (lambda: Rescale("global", float("inf")), "Rescale.strength is infinite"),
        (lambda: GaussianNoise("global", -1.0), "GaussianNoise.strength must be >= 0"),
        (lambda: GaussianNoise("global", 1.0, seed="x"), "GaussianNoise.seed must be an int"),
        (lambda: AttentionEdit("global", 0.0), "AttentionEdit.temperature must be > 0"),
        (lambda: AttentionEdit("global", 2.0, mode="keys"), "AttentionEdit.mode must be one of"),
        (lambda: Translate(None, v), "needs a scale name or layers"),
        (lambda: Rescale("global", 2.0, layers=["a"]), "Rescale.layers must be a non-empty list of ints"),
        (lambda: Rescale("global", 2.0, phase="decode"), "Rescale.phase must be one of"),
        (lambda: Rescale("global", 2.0, positions=[1.5]), "Rescale.positions must be None, an int"),
        (lambda: Rescale("global", 2.0, site="resid_end", at="every"), "Rescale.site must be one of"),
        (lambda: Rescale("global", 2.0, at="twice"), r"Rescale.at must be one of \['entry', 'held', 'every'\]"),
        (lambda: Translate("global", v, site="resid_pre"), "Translate.site applies to at='every' only; at='held' edits"),
        (lambda: Ablate("global", v, at="entry", site="resid_post"), "Ablate.site applies to at='every' only"),
        (lambda: AttentionEdit("global", 2.0, site="resid_post"), "AttentionEdit edits attention hooks"),
        (lambda: Rescale("global", 2.0, strength=1.0, alpha=3.0), "pass strength= only"),
    ]:
        with pytest.raises(ConfigError, match=match):
            make()
    for iv, kw, match in [
        (Translate("global", torch.ones(65)), {}, "Translate.direction has width 65, but the model's d_model is 64"),
        (Translate("global", {2: v}), {}, r"Translate.direction has no vector for layer\(s\) \[3\]"),
        (Rescale("galactic", 2.0), {}, "unknown scale 'galactic'"),
        (Rescale(None, 2.0, layers=[2, 9]), {}, r"layers \[9\] are outside the model's blocks 0..3"),
        (Rescale("local", 2.0, layers=[2]), {}, r"layers \[2\] are not in scale 'local'"),
        (Rescale("global", 2.0), {"phase": "later"}, "phase must be one of"),
        (Rescale("global", 2.0), {"positions": slice(-2, None)}, "positions slice must be"),
        (Rescale("global", 2.0), {"schedule": "soon"}, "schedule must be a Schedule"),
        ("not an intervention", {}, "intervention 0 is a str"),
    ]:
        with pytest.raises(ConfigError, match=match):
            with steer(m, iv, **kw):
                pass
    toks = _batch(m, TEXTS[:1])[0]
    with pytest.raises(ConfigError, match=r"attention_mask has shape \(2, 3\) but the forward pass has \[1, "):
        with steer(m, Rescale("global", 2.0), attention_mask=torch.ones(2, 3)):
            m(toks)
    assert _tl.count_attached_hooks(m) == 0


def test_record_describes_what_was_applied(tiny_gpt2):
    toks = _batch(tiny_gpt2, TEXTS[:1])[0]
    with steer(tiny_gpt2, Translate("global", _d(tiny_gpt2), strength=2.0), Rescale("local", 0.5, positions=[0, 1], at="every"),
               Ablate("intermediate", _d(tiny_gpt2), at="entry")) as rec:
        tiny_gpt2(toks)
    d = rec.to_dict()
    assert d["interventions"][0]["kind"] == "translate" and d["interventions"][0]["strength"] == 2.0
    assert [iv["at"] for iv in d["interventions"]] == [DEFAULT_AT, "every", "entry"] and DEFAULT_AT == "held"
    assert d["interventions"][1]["kind"] == "rescale" and d["interventions"][1]["strength"] == 0.5
    assert d["interventions"][0]["hooks"] == ["blocks.3.hook_resid_pre", "blocks.3.hook_resid_post"]
    assert d["interventions"][1]["hooks"] == ["blocks.0.hook_resid_post"]
    assert d["interventions"][2]["hooks"] == ["blocks.1.hook_resid_pre"] and rec.layers(2) == [1, 2]
    assert "at=held" in repr(rec) and "at=entry" in repr(rec)
    assert rec.layers(0) == [3] and rec.layers(1) == [0]
    assert rec.positions(1) == [0, 1] and rec.n_edits(1) == 2 and rec.n_edits(0) == toks.shape[1]
    assert rec.steps(0) == [0] and len(rec.forwards) == 1
    assert all(c == 1 for c in rec.hook_calls.values())


def test_edits_follow_activation_dtype_bf16():
    from msma_lens.io.models import load_model

    m = load_model("tiny-llama", backend="bridge" if _tl.tl_major() >= 3 else "hooked").to(torch.bfloat16)
    v = torch.randn(64, dtype=torch.float64)  # a float64 direction must not promote bf16 activations
    ivs = [Translate("global", v, relative=True), Rescale("local", 1.3), GaussianNoise("intermediate", 0.3, relative=True),
           Rescale("intermediate", 1.2, at="every"), GaussianNoise("global", 0.2, at="entry"),
           Ablate("global", v), AttentionEdit("global", 0.5, mode="scores"), AttentionEdit("local", 0.5, mode="pattern"),
           AttentionEdit("intermediate", 2.0)]
    toks = m.to_tokens(["The quick brown fox"])
    with steer(m, *ivs):
        out = m(toks)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
