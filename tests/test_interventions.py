"""Interventions and steer(): exact identities, where/when semantics, per-row parameters, errors, directions."""

from __future__ import annotations

import warnings

import pytest
import torch

from msma_lens import _tl
from msma_lens.errors import ArtifactError, ConfigError, HookError
from msma_lens.interventions import (
    Ablate,
    AttentionEdit,
    GaussianNoise,
    Scale,
    Schedule,
    Translate,
    contrastive_direction,
    principal_direction,
    random_direction,
    steer,
    transfer_direction,
)

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
    for iv in (Translate("global", v, strength=0.0), Translate("local", v, strength=0.0, relative=True),
               Scale("intermediate", 1.0), GaussianNoise("local", 0.0), GaussianNoise("global", 0.0, relative=True),
               AttentionEdit("global", 1.0), AttentionEdit("local", 1.0, mode="scores"),
               AttentionEdit("local", 1.0, mode="pattern")):
        with steer(tiny_model, iv, attention_mask=mask):
            out = tiny_model(toks, attention_mask=mask)
        assert torch.equal(out, base), iv
    assert _tl.count_attached_hooks(tiny_model) == 0


def test_translate_adds_exactly_strength_delta_at_first_layer(tiny_model):
    toks, mask = _batch(tiny_model)
    v = _d(tiny_model)
    _, h0, _ = _resid(tiny_model, 1, toks, mask)
    _, h1, rec = _resid(tiny_model, 1, toks, mask, Translate("intermediate", v, strength=0.5))  # layers 1-2
    real = mask.bool()
    assert torch.allclose((h1 - h0)[real], (0.5 * v).expand(int(real.sum()), -1), atol=1e-5)
    assert torch.equal(h1[~real], h0[~real])  # padding untouched
    assert rec.layers(0) == [1, 2] and rec.interventions[0]["hooks"] == ["blocks.1.hook_resid_post", "blocks.2.hook_resid_post"]


def test_relative_translate_uses_row_mean_norm_without_bos_and_pads(tiny_model):
    toks, mask = _batch(tiny_model)
    v = _d(tiny_model) * 7.0
    _, h0, _ = _resid(tiny_model, 0, toks, mask)
    _, h1, _ = _resid(tiny_model, 0, toks, mask, Translate("local", v, strength=2.0, relative=True))
    for b in range(toks.shape[0]):
        n = int(mask[b].sum())
        ref = h0[b, 1:n].norm(dim=-1).mean()  # non-BOS, non-pad positions
        added = (h1[b, :n] - h0[b, :n]).norm(dim=-1)
        assert torch.allclose(added, 2.0 * ref.expand(n), rtol=1e-4)


def test_scale_and_ablate_at_first_layer(tiny_model):
    toks, mask = _batch(tiny_model)
    _, h0, _ = _resid(tiny_model, 0, toks, mask)
    _, h1, _ = _resid(tiny_model, 0, toks, mask, Scale("local", 1.5))
    real = mask.bool()
    assert torch.allclose(h1[real], 1.5 * h0[real], atol=1e-6) and torch.equal(h1[~real], h0[~real])
    u = _d(tiny_model, 3)
    _, h2, _ = _resid(tiny_model, 0, toks, mask, Ablate("local", u))
    assert (h2[real] @ (u / u.norm())).abs().max() < 1e-4
    assert (h0[real] @ (u / u.norm())).abs().max() > 1e-2


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
    from msma_lens.models import load_model

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
    from msma_lens.steering import generate

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
        _, h1, rec = _resid(tiny_model, 0, toks, mask, Translate("local", v), positions=spec)
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
             Scale("intermediate", torch.tensor([1.0, 2.0])),
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
    from msma_lens.interventions import EditContext

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
        with steer(tiny_model, Scale("intermediate", 2.0), attention_mask=mask):
            tiny_model(toks, attention_mask=mask)
        assert len(calls) == 2  # the user's hook fired alongside, and is still attached
        assert _tl.count_attached_hooks(tiny_model) == before
    finally:
        tiny_model.reset_hooks()
    assert _tl.count_attached_hooks(tiny_model) == 0


def test_unfired_steering_hook_is_an_error(tiny_gpt2):
    toks = _batch(tiny_gpt2, TEXTS[:1])[0]
    with pytest.raises(HookError, match="never fired although 1 forward pass"):
        with steer(tiny_gpt2, Scale("global", 2.0)):
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
        (lambda: Scale("global", float("inf")), "Scale.alpha is infinite"),
        (lambda: GaussianNoise("global", -1.0), "GaussianNoise.sigma must be >= 0"),
        (lambda: GaussianNoise("global", 1.0, seed="x"), "GaussianNoise.seed must be an int"),
        (lambda: AttentionEdit("global", 0.0), "AttentionEdit.temperature must be > 0"),
        (lambda: AttentionEdit("global", 2.0, mode="keys"), "AttentionEdit.mode must be one of"),
        (lambda: Translate(None, v), "needs a scale name or layers"),
        (lambda: Scale("global", 2.0, layers=["a"]), "Scale.layers must be a non-empty list of ints"),
        (lambda: Scale("global", 2.0, phase="decode"), "Scale.phase must be one of"),
        (lambda: Scale("global", 2.0, positions=[1.5]), "Scale.positions must be None, an int"),
        (lambda: Scale("global", 2.0, site="resid_end"), "Scale.site must be one of"),
    ]:
        with pytest.raises(ConfigError, match=match):
            make()
    for iv, kw, match in [
        (Translate("global", torch.ones(65)), {}, "Translate.direction has width 65, but the model's d_model is 64"),
        (Translate("global", {2: v}), {}, r"Translate.direction has no vector for layer\(s\) \[3\]"),
        (Scale("galactic", 2.0), {}, "unknown scale 'galactic'"),
        (Scale(None, 2.0, layers=[2, 9]), {}, r"layers \[9\] are outside the model's blocks 0..3"),
        (Scale("local", 2.0, layers=[2]), {}, r"layers \[2\] are not in scale 'local'"),
        (Scale("global", 2.0), {"phase": "later"}, "phase must be one of"),
        (Scale("global", 2.0), {"positions": slice(-2, None)}, "positions slice must be"),
        (Scale("global", 2.0), {"schedule": "soon"}, "schedule must be a Schedule"),
        ("not an intervention", {}, "intervention 0 is a str"),
    ]:
        with pytest.raises(ConfigError, match=match):
            with steer(m, iv, **kw):
                pass
    toks = _batch(m, TEXTS[:1])[0]
    with pytest.raises(ConfigError, match=r"attention_mask has shape \(2, 3\) but the forward pass has \[1, "):
        with steer(m, Scale("global", 2.0), attention_mask=torch.ones(2, 3)):
            m(toks)
    assert _tl.count_attached_hooks(m) == 0


def test_record_describes_what_was_applied(tiny_gpt2):
    toks = _batch(tiny_gpt2, TEXTS[:1])[0]
    with steer(tiny_gpt2, Translate("global", _d(tiny_gpt2), strength=2.0), Scale("local", 0.5, positions=[0, 1])) as rec:
        tiny_gpt2(toks)
    d = rec.to_dict()
    assert d["interventions"][0]["kind"] == "translate" and d["interventions"][0]["strength"] == 2.0
    assert rec.layers(0) == [3] and rec.layers(1) == [0]
    assert rec.positions(1) == [0, 1] and rec.n_edits(1) == 2 and rec.n_edits(0) == toks.shape[1]
    assert rec.steps(0) == [0] and len(rec.forwards) == 1
    assert all(c == 1 for c in rec.hook_calls.values())


# ----- directions --------------------------------------------------------------------------------------------
def test_contrastive_and_principal_directions(tiny_gpt2):
    pos = ["The team won the match and the crowd cheered loudly.", "Birds sing at dawn in spring."]
    neg = ["Prices rose again this week.", "Investors worried about the bank."]
    d = contrastive_direction(tiny_gpt2, pos, neg, "intermediate")
    assert d.shape == (64,) and d.norm() > 0
    per = contrastive_direction(tiny_gpt2, pos, neg, "intermediate", per_layer=True)
    assert sorted(per) == [1, 2] and torch.allclose((per[1] + per[2]) / 2, d, atol=1e-5)
    with pytest.raises(ConfigError, match="is zero: the two text sets give identical"):
        contrastive_direction(tiny_gpt2, pos, pos, "global")
    p = principal_direction(tiny_gpt2, pos + neg, "global")
    assert p.shape == (64,) and abs(float(p.norm()) - 1) < 1e-5
    with steer(tiny_gpt2, Translate("intermediate", per, relative=True)) as rec:
        tiny_gpt2(_batch(tiny_gpt2, TEXTS[:1])[0])
    assert rec.applied(0) and rec.layers(0) == [1, 2]


class _FakeMap:
    def __init__(self, W, scale=1.0, model_id=None):
        self.weight, self.scale, self.meta = W, torch.tensor(scale), {"model_id": model_id}


def test_transfer_and_random_directions(tiny_gpt2):
    v = torch.randn(64)
    W = torch.linalg.qr(torch.randn(64, 64))[0]
    assert torch.allclose(transfer_direction(v, W), v @ W, atol=1e-5)
    assert torch.allclose(transfer_direction(v, _FakeMap(W, 2.0)), 2 * v @ W, atol=1e-4)
    assert torch.allclose(transfer_direction(v, _FakeMap(W[:, :16])), v @ W[:, :16], atol=1e-5)

    class Custom:
        def transfer_direction(self, d):
            return -d

    assert torch.equal(transfer_direction(v, Custom()), -v)
    with pytest.raises(ConfigError, match="direction has width 32, but the map expects d_in=64"):
        transfer_direction(torch.randn(32), W)
    with pytest.raises(ArtifactError, match="the map was fitted on model 'gpt2-xl', but the direction is for 'tiny-gpt2'"):
        transfer_direction(v, _FakeMap(W, model_id="gpt2-xl"), model=tiny_gpt2)
    transfer_direction(v, _FakeMap(W, model_id="tiny-gpt2"), model=tiny_gpt2)
    with pytest.raises(ConfigError, match="cannot transfer through a str"):
        transfer_direction(v, "W")
    r = random_direction(v, seed=3)
    assert torch.allclose(r.norm(), v.norm()) and torch.equal(r, random_direction(v, seed=3))
    assert not torch.allclose(r, random_direction(v, seed=4))
    rows = random_direction(torch.stack([v, 2 * v]), seed=1)
    assert torch.allclose(rows.norm(dim=-1), torch.stack([v, 2 * v]).norm(dim=-1))
    assert abs(float(random_direction(64).norm()) - 1) < 1e-6


def test_transfer_through_fitted_procrustes_and_crossscalemap():
    from msma_lens.align import procrustes
    from msma_lens.maps import CrossScaleMap

    X = torch.randn(200, 16, dtype=torch.float64)
    R = torch.linalg.qr(torch.randn(16, 16, dtype=torch.float64))[0]
    fit = procrustes(X, 3.0 * X @ R, scale=True, bias=True)
    v = torch.randn(16)
    assert torch.allclose(transfer_direction(v, fit), (3.0 * v.double() @ R).float(), atol=1e-4)
    m = CrossScaleMap(16, 8)
    assert torch.allclose(transfer_direction(v, m), v @ m.weight.detach(), atol=1e-5)


def test_edits_follow_activation_dtype_bf16():
    from msma_lens.models import load_model

    m = load_model("tiny-llama", backend="bridge" if _tl.tl_major() >= 3 else "hooked").to(torch.bfloat16)
    v = torch.randn(64, dtype=torch.float64)  # a float64 direction must not promote bf16 activations
    ivs = [Translate("global", v, relative=True), Scale("local", 1.3), GaussianNoise("intermediate", 0.3, relative=True),
           Ablate("global", v), AttentionEdit("global", 0.5, mode="scores"), AttentionEdit("local", 0.5, mode="pattern"),
           AttentionEdit("intermediate", 2.0)]
    toks = m.to_tokens(["The quick brown fox"])
    with steer(m, *ivs):
        out = m(toks)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_principal_direction_is_the_top_pc_without_massive_tokens(tiny_gpt2):
    from msma_lens.capture import capture

    texts = ["The team won the match and the crowd cheered loudly.", "Birds sing at dawn in spring.",
             "Prices rose again this week.", "Investors worried about the bank."]

    def top_pc(X):
        X = X.double()
        v = torch.linalg.eigh((X - X.mean(0)).T @ (X - X.mean(0)))[1][:, -1]
        return v.float()

    def massive(x, hook):  # plant one attention-sink-like token: row 0, position 3
        x = x.clone()
        x[0, 3] *= 1000.0
        return x

    with tiny_gpt2.hooks(fwd_hooks=[("blocks.3.hook_resid_post", massive)]):
        X = capture(tiny_gpt2, None, texts, pooling="token", batch_size=4, progress=False)["global"]
        p = principal_direction(tiny_gpt2, texts, "global", batch_size=4)
        raw = principal_direction(tiny_gpt2, texts, "global", batch_size=4, outlier_factor=None)
    n = X.norm(dim=1)
    assert (n > 20 * n.median()).sum() == 1  # exactly the planted token
    clean = top_pc(X[n <= 20 * n.median()])
    assert abs(float(torch.dot(p, clean))) > 0.999  # the top PC of the remaining tokens
    assert abs(float(torch.dot(raw, top_pc(X)))) > 0.999 and abs(float(torch.dot(raw, p))) < 0.99
    with pytest.raises(ConfigError, match="outlier_factor must be None or > 1"):
        principal_direction(tiny_gpt2, texts, "global", outlier_factor=0.5)
