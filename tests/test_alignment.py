"""Alignment experiments on planted cross-scale structure (known truth), persistence, ablations, bad input."""

import json

import pytest
import torch

from msma_lens import ArtifactError, ConfigError, ScaleActivations, Scales
from msma_lens.align.maps import MapTrainConfig
from msma_lens.align.protocol import AlignConfig, AlignmentResult, fit_alignment, run_ablations

D = 12


def _planted(n_docs=30, T=20, seed=0, d_global=D):
    g = torch.Generator().manual_seed(seed)
    n = n_docs * T
    Z = torch.randn(n, D, generator=g) * torch.linspace(0.5, 3.0, D)
    Q1 = torch.linalg.qr(torch.randn(D, D, generator=g))[0]
    Q2 = torch.linalg.qr(torch.randn(D, d_global, generator=g))[0] if d_global <= D else None
    loc = Z + 0.05 * torch.randn(n, D, generator=g)
    inter = 2.0 * Z @ Q1 + 3.0 + 0.05 * torch.randn(n, D, generator=g)
    glob = 0.5 * inter @ Q2 - 1.0 + 0.05 * torch.randn(n, d_global, generator=g)
    meta = {"model_id": "synthetic", "pooling": "token",
            "scales": Scales.from_ranges({"local": (0, 1), "intermediate": (2, 3), "global": (4, 5)}).to_dict()}
    acts = ScaleActivations({"local": loc, "intermediate": inter, "global": glob},
                            torch.arange(n_docs).repeat_interleave(T), torch.arange(1, T + 1).repeat(n_docs), meta)
    return acts, Q1


def _cfg(**train):
    train = {"steps": 30, "eval_every": 10, "batch_size": 128, "residual_hidden": 0, **train}
    return AlignConfig(train=MapTrainConfig(**train), max_eval_rows=256)


@pytest.fixture(scope="module")
def planted():
    return _planted()


@pytest.fixture(scope="module")
def fitted(planted):
    return fit_alignment(planted[0], _cfg(residual_hidden=8))


def test_planted_maps_are_recovered_on_held_out_documents(fitted):
    for k in ("global->intermediate", "intermediate->local"):
        m = fitted.metrics[k]
        assert m["before"]["residual"] > 1.0  # different bases, scales and means
        assert m["closed_form"]["residual"] < 0.01 and m["after"]["residual"] < 0.05
        assert m["after"]["kl_diag"] < m["before"]["kl_diag"]
        assert m["pair"]["cka_debiased"] > 0.95  # the pair is strongly dependent
        assert fitted.maps[k].orthogonality_error() < 1e-5
    assert "layer-pair dependence" in fitted.table()


def test_raw_unit_prediction_and_direction_transfer(planted, fitted):
    acts, Q1 = planted
    pred = fitted.predict(acts["intermediate"][:50], "intermediate", "local")
    rel = (pred - acts["local"][:50]).norm() / acts["local"][:50].norm()
    assert rel < 0.1
    # local ≈ (inter - 3) Q1ᵀ / 2: a direction v at intermediate is carried to v Q1ᵀ / 2 at local
    v = torch.randn(D, generator=torch.Generator().manual_seed(1))
    t, want = fitted.transfer_direction(v, "intermediate", "local").float(), v @ Q1.T / 2
    assert torch.nn.functional.cosine_similarity(t, want, dim=0) > 0.99
    assert abs(t.norm() / want.norm() - 1) < 0.05
    chain = fitted.linear_map("global", "local")
    torch.testing.assert_close(chain, fitted.linear_map("global", "intermediate") @ fitted.linear_map("intermediate", "local"))
    with pytest.raises(ConfigError, match="no chain of fitted maps leads from 'local' to 'global'"):
        fitted.linear_map("local", "global")
    with pytest.raises(ConfigError, match="direction has width 5, scale 'intermediate' has width 12"):
        fitted.transfer_direction(torch.ones(5), "intermediate", "local")


def test_save_load_roundtrip_and_mismatch(fitted, planted, tmp_path):
    acts, _ = planted
    fitted.save(tmp_path / "a")
    back = AlignmentResult.load(tmp_path / "a")
    x = acts["global"][:20]
    assert torch.equal(back.predict(x, "global", "intermediate"), fitted.predict(x, "global", "intermediate"))
    assert back.metrics == json.loads(json.dumps(fitted.metrics))
    with pytest.raises(ArtifactError, match="maps were fitted on model 'synthetic', but loading uses 'smollm2-135m'"):
        AlignmentResult.load(tmp_path / "a", model_id="smollm2-135m")
    AlignmentResult.load(tmp_path / "a", scales=Scales.default(6))  # thirds of 6 layers: the partition it was fitted on
    with pytest.raises(ArtifactError, match="maps were fitted with scales"):
        AlignmentResult.load(tmp_path / "a", scales=Scales.from_ranges({"local": (0, 2), "intermediate": (3, 3), "global": (4, 5)}))
    with pytest.raises(ArtifactError, match="expected a 'msma_lens.AlignmentResult' artifact"):
        acts.save(tmp_path / "acts")
        AlignmentResult.load(tmp_path / "acts")


def test_same_seed_same_result(planted):
    a = fit_alignment(planted[0], _cfg())
    b = fit_alignment(planted[0], _cfg())
    for k in a.maps:
        assert torch.equal(a.maps[k].W, b.maps[k].W) and a.metrics[k] == b.metrics[k]


def test_rectangular_map_between_widths():
    acts, _ = _planted(d_global=8)
    r = fit_alignment(acts, _cfg())
    f = r.maps["global->intermediate"]
    assert (f.d_in, f.d_out) == (8, D) and f.orthogonality_error() < 1e-5
    assert r.metrics["global->intermediate"]["closed_form"]["residual"] < 1.0


def test_ablations_report_inert_terms_honestly(planted, tmp_path):
    ab = run_ablations(planted[0], _cfg(), seeds=(0, 1, 2))
    by = {(r["pair"], r["variant"], r["metric"]): r for r in ab.summary}
    k = "global->intermediate"
    assert {v for (_, v, _) in by} == {"baseline", "closed_form", "full", "published", "no_geometry", "no_information",
                                      "no_curvature", "selected"}
    # affine square map: the curvature term is identically zero, so dropping it changes nothing, exactly
    for seed in (0, 1, 2):
        full = [r["value"] for r in ab.rows if r["seed"] == seed and r["pair"] == k and r["variant"] == "full"]
        nocurv = [r["value"] for r in ab.rows if r["seed"] == seed and r["pair"] == k and r["variant"] == "no_curvature"]
        assert full == nocurv
    assert "inert by theory" in by[(k, "no_curvature", "residual")]["note"]
    assert "inert by theory" in by[(k, "no_information", "residual")]["note"]
    cf = by[(k, "closed_form", "residual")]
    assert cf["mean"] < 0.01 and cf["p_vs_baseline"] < 0.05 and cf["ci_low"] <= cf["mean"] <= cf["ci_high"]
    assert by[(k, "baseline", "residual")]["p_vs_baseline"] is None
    # identical rows are a p of exactly 1 against full (not NaN); every trained variant says how often it won
    assert by[(k, "no_curvature", "residual")]["p_vs_full"] == 1.0 and by[(k, "full", "residual")]["p_vs_full"] is None
    assert all(0 <= by[(k, v, "residual")]["n_trained_selected"] <= 3 for v in ("full", "published", "no_geometry"))
    assert by[(k, "closed_form", "residual")]["n_trained_selected"] is None
    assert "p vs full" in ab.table() and "won: seeds on which" in ab.table()
    ab.save(tmp_path / "ab")
    assert (tmp_path / "ab" / "ablation.csv").read_text().startswith("pair,variant,metric,mean")
    html = ab.write_html(tmp_path / "ab.html").read_text()
    assert "held-out metrics per ablation" in html and "held-out objective during training" in html


def test_bad_input(planted):
    acts, _ = planted
    with pytest.raises(ConfigError, match="pair 'global->words': unknown scale 'words'"):
        fit_alignment(acts, AlignConfig(pairs=(("global", "words"),)))
    with pytest.raises(ConfigError, match="a map from scale 'local' to itself"):
        AlignConfig(pairs=(("local", "local"),))
    with pytest.raises(ConfigError, match="held_out must be a fraction"):
        AlignConfig(held_out=1.2)
    with pytest.raises(ConfigError, match="unknown metric 'kl_magic'"):
        AlignConfig(map_metrics=("kl_magic",))
    with pytest.raises(ConfigError, match="lambda_info must be a finite number >= 0"):
        MapTrainConfig(lambda_info=-1.0)
    with pytest.raises(ConfigError, match="unknown ablation variant"):
        run_ablations(acts, _cfg(), variants=("baseline", "magic"))
    two = acts.subset(torch.nonzero(acts.doc_ids < 2).squeeze(1))
    with pytest.raises(ConfigError, match="alignment needs >= 3 documents"):
        fit_alignment(two, _cfg())
    bad = acts.subset(torch.arange(len(acts)))
    bad.acts["local"] = bad.acts["local"].clone()
    bad.acts["local"][5, 0] = float("nan")
    with pytest.raises(Exception, match="NaN/Inf"):
        fit_alignment(bad, _cfg())


def test_alignment_between_two_models(tmp_path):
    from msma_lens import MSMA, load_model

    texts = [f"Document {i}: the weather was {w} and the market {m}." for i, (w, m) in
             enumerate([(w, m) for w in ("cold", "warm", "wet", "dry", "windy", "calm") for m in ("rose", "fell", "held")])]
    a = MSMA(load_model("tiny-gpt2", d_model=64), {"global": range(2, 4)}).capture(texts, pooling="mean", progress=False)
    b = MSMA(load_model("tiny-llama", d_model=32), {"global": range(2, 4)}).capture(texts, pooling="mean", progress=False)
    joined = a.join(b, ("gpt2", "llama"))
    assert joined.scale_names == ["gpt2:global", "llama:global"]
    r = fit_alignment(joined, AlignConfig(pairs=(("gpt2:global", "llama:global"),), pair_metrics=("cka_debiased",),
                                          map_metrics=("residual",), train=MapTrainConfig(steps=5, eval_every=5, batch_size=8)))
    f = r.maps["gpt2:global->llama:global"]
    assert (f.d_in, f.d_out) == (64, 32) and f.orthogonality_error() < 1e-5
    with pytest.raises(ConfigError, match="two different prefixes"):
        a.join(b, ("x", "x"))
    tok = MSMA(load_model("tiny-llama", d_model=32), {"global": range(2, 4)}).capture(texts[:3], pooling="token", progress=False)
    with pytest.raises(ConfigError, match="rows differ"):
        a.join(tok, ("a", "b"))


def test_transfer_direction_through_alignment_result(fitted, tiny_gpt2):
    from msma_lens.steer.directions import transfer_direction

    v = torch.randn(D, generator=torch.Generator().manual_seed(2))
    out = transfer_direction(v, fitted, src="global", dst="local")
    torch.testing.assert_close(out, v @ fitted.linear_map("global", "local"))
    with pytest.raises(ConfigError, match="needs src= and dst= scale names"):
        transfer_direction(v, fitted)
    with pytest.raises(ArtifactError, match="fitted on model 'synthetic', but the direction is for 'tiny-gpt2'"):
        transfer_direction(v, fitted, src="global", dst="local", model=tiny_gpt2)


def test_lens_fit_refuses_activations_of_another_model(planted, tiny_gpt2):
    from msma_lens import MSMA

    with pytest.raises(ArtifactError, match="captured from model 'synthetic', but this lens uses 'tiny-gpt2'"):
        MSMA(tiny_gpt2).fit(planted[0], _cfg())


def test_fit_and_ablation_progress_bars(planted, capsys):
    acts = planted[0]
    fit_alignment(acts, _cfg(steps=10, eval_every=5), progress=True)
    err = capsys.readouterr().err
    assert "fit:" in err and "/2" in err and "->" in err  # tqdm redraws at most every 0.1 s: later labels may not show
    run_ablations(acts, _cfg(steps=10, eval_every=5), variants=("baseline", "full"), seeds=(0, 1), progress=True)
    err = capsys.readouterr().err
    assert "ablate:" in err and "/8" in err
    fit_alignment(acts, _cfg(steps=10, eval_every=5), progress=False)
    run_ablations(acts, _cfg(steps=10, eval_every=5), variants=("baseline", "full"), seeds=(0, 1), progress=False)
    assert capsys.readouterr().err == ""


# ----- the shared document split and massive-row rule (capture.activations) ----------------------------------
def _ragged(n_docs=11, seed=0):
    """Documents of 1-5 rows with non-contiguous ids, rows shuffled."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.cat([torch.full((int(k),), 3 * d + 1) for d, k in enumerate(torch.randint(1, 6, (n_docs,), generator=g))])
    ids = ids[torch.randperm(ids.numel(), generator=g)]
    return ScaleActivations({"a": torch.randn(ids.numel(), 4, generator=g)}, ids, torch.zeros(ids.numel(), dtype=torch.long))


@pytest.mark.parametrize("fractions", [{"held_out": 0.2}, {"held_out": 0.3, "val_fraction": 0.1}, {"x": 0.05, "y": 0.05, "z": 0.6}])
def test_document_split_keeps_documents_whole_and_is_seeded(fractions):
    acts = _ragged()
    docs = {}
    for seed in range(5):
        parts = acts.document_split(fractions, seed)
        assert list(parts) == ["train", *fractions]
        rows = torch.cat(list(parts.values()))
        assert sorted(rows.tolist()) == list(range(len(acts)))  # every row in exactly one part
        sets = {k: set(acts.doc_ids[v].tolist()) for k, v in parts.items()}
        assert all(sets.values()) and all(v.tolist() == sorted(v.tolist()) for v in parts.values())
        names = list(sets)
        assert all(sets[a].isdisjoint(sets[b]) for i, a in enumerate(names) for b in names[i + 1:])  # no straddling
        again = acts.document_split(fractions, seed)
        assert all(torch.equal(parts[k], again[k]) for k in parts)  # deterministic by seed
        docs[seed] = tuple(sorted(s) for s in sets.values())
    assert len(set(map(str, docs.values()))) > 1  # seeds differ


def test_protocol_split_is_the_activations_split_pinned():
    acts, _ = _planted()
    from msma_lens.align.protocol import split_documents

    for seed in (0, 1, 7):
        s = split_documents(acts, 0.2, 0.1, seed)
        p = acts.document_split({"held_out": 0.2, "val_fraction": 0.1}, seed)
        assert torch.equal(s.train, p["train"]) and torch.equal(s.val, p["val_fraction"]) and torch.equal(s.test, p["held_out"])
    # the documents this split drew before the merge (protocol and ScaleActivations each had their own copy)
    s0 = split_documents(acts, 0.2, 0.1, 0)
    assert sorted(set(acts.doc_ids[s0.test].tolist())) == [9, 13, 14, 23, 27, 29]
    assert sorted(set(acts.doc_ids[s0.val].tolist())) == [4, 6, 25]
    _, te = acts.split_by_document(0.25, seed=3)
    assert sorted(set(acts.doc_ids[te].tolist())) == [0, 4, 6, 10, 16, 19, 24, 27]


def test_document_split_errors_name_the_argument():
    acts = _ragged(n_docs=2)
    with pytest.raises(ConfigError, match=r"alignment needs >= 3 documents \(training \+ held_out, val_fraction\), these activations have 2"):
        acts.document_split({"held_out": 0.2, "val_fraction": 0.1}, what="alignment")
    with pytest.raises(ConfigError, match="val_fraction must be a fraction in \\(0, 1\\), got 1.5"):
        _ragged().document_split({"held_out": 0.2, "val_fraction": 1.5})
    with pytest.raises(ConfigError, match="held_out \\+ val_fraction = 1.0 leaves no documents for training"):
        _ragged().document_split({"held_out": 0.5, "val_fraction": 0.5})
    with pytest.raises(ConfigError, match="'train' is the remainder"):
        _ragged().document_split({"train": 0.5})


def test_massive_rows_flag_a_planted_outlier():
    from msma_lens.capture.activations import massive_rows

    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 8, generator=g)
    x = x / x.norm(dim=1, keepdim=True)  # every norm 1, so the median is 1
    x[17] *= 25.0
    y = x.clone()
    y[17] /= 25.0
    y[40] *= 50.0
    assert massive_rows(x, 20.0).nonzero().flatten().tolist() == [17]  # factor × median row norm
    assert not massive_rows(x, 30.0).any() and not massive_rows(x, None).any()
    assert massive_rows(torch.zeros(0, 8), 20.0).shape == (0,)
    z = x.clone()
    z[3, 0] = float("inf")
    assert massive_rows(z, 20.0)[3]  # a non-finite norm counts as massive
    acts = ScaleActivations({"x": x, "y": y}, torch.arange(200), torch.zeros(200, dtype=torch.long))
    assert acts.massive_rows(["x", "y"], 20.0).nonzero().flatten().tolist() == [17, 40]  # any of the scales
    from msma_lens.align import protocol

    with pytest.deprecated_call(match="use ScaleActivations.massive_rows"):
        assert torch.equal(protocol.massive_rows(acts, ["x"], 20.0), acts.massive_rows(["x"], 20.0))
    with pytest.raises(ConfigError, match="AlignConfig.outlier_factor must be None or > 1, got 1"):
        AlignConfig(outlier_factor=1)


def test_principal_direction_drops_exactly_the_massive_rows():
    from msma_lens.steer.directions import principal_direction

    g = torch.Generator().manual_seed(1)
    x = torch.randn(100, 6, generator=g) * torch.tensor([3.0, 1, 1, 1, 1, 1])
    x[5] = torch.tensor([0.0, 0, 0, 0, 0, 400.0])  # would be the top component if kept
    acts = ScaleActivations({"s": x}, torch.arange(100), torch.zeros(100, dtype=torch.long))
    keep = ~acts.massive_rows(["s"], 20.0)
    assert keep.sum() == 99
    v = principal_direction(acts, "s")
    assert torch.equal(v, principal_direction(acts.subset(torch.nonzero(keep).squeeze(1)), "s", outlier_factor=None))
    assert v[0].abs() > 0.9 and principal_direction(acts, "s", outlier_factor=None)[5].abs() > 0.9


def _two_scales(nonlinear: float, n_docs=40, T=20, seed=3, d=8):
    g = torch.Generator().manual_seed(seed)
    n = n_docs * T
    X = torch.randn(n, d, generator=g) * torch.linspace(0.5, 2.0, d)
    Q = torch.linalg.qr(torch.randn(d, d, generator=g))[0]
    Y = X @ Q + nonlinear * torch.tanh(2.0 * X) + 0.1 * torch.randn(n, d, generator=g)
    meta = {"model_id": "synthetic", "pooling": "token", "scales": Scales.from_ranges({"a": (0, 1), "b": (2, 3)}).to_dict()}
    return ScaleActivations({"a": X, "b": Y}, torch.arange(n_docs).repeat_interleave(T), torch.arange(1, T + 1).repeat(n_docs),
                            meta)


def _sel_cfg(**train):
    train = {"steps": 150, "eval_every": 25, "batch_size": 128, "residual_hidden": 32, "lr": 3e-3, "critic_hidden": 16,
             "critic_embed": 8, "eval_batch_size": 128, **train}
    return AlignConfig(pairs=(("a", "b"),), train=MapTrainConfig(**train), max_eval_rows=256,
                       pair_metrics=("cka_debiased",))


@pytest.mark.parametrize("lambda_info", [0.1, 10.0])
def test_closed_form_is_kept_when_training_cannot_beat_it(lambda_info):
    r = fit_alignment(_two_scales(nonlinear=0.0), _sel_cfg(lambda_info=lambda_info), progress=False)
    m = r.metrics["a->b"]
    vr = m["val_residual"]
    assert r.selected["a->b"] == m["selected"] == ("trained" if vr["trained"] < vr["closed_form"] else "closed_form")
    # a rotation plus noise: the closed form is optimal, so the kept map is it or matches it on held-out documents
    assert m["after"]["residual"] <= m["closed_form"]["residual"] * 1.02
    if lambda_info == 10.0:  # the MI term pulls the map off the geometry; selection keeps (or matches) the closed form
        assert max(h["val_geo"] for h in r.history["a->b"]) > 1.5 * vr["closed_form"]
        assert m["after"]["residual"] == pytest.approx(m["closed_form"]["residual"], rel=1e-4)
    if m["selected"] == "closed_form":
        assert r.maps["a->b"].residual is None  # the affine closed-form map itself
    assert "selected map: " + m["selected"] in r.table()


def test_trained_map_wins_when_the_residual_mlp_helps(tmp_path):
    r = fit_alignment(_two_scales(nonlinear=1.0), _sel_cfg(lambda_info=0.0), progress=False)
    m = r.metrics["a->b"]
    assert r.selected == {"a->b": "trained"}
    assert m["val_residual"]["trained"] < m["val_residual"]["closed_form"]
    assert m["after"]["residual"] < 0.9 * m["closed_form"]["residual"]  # held-out documents agree with validation
    loaded = AlignmentResult.load(r.save(tmp_path / "sel"))
    assert loaded.selected == r.selected and "selected map: trained" in loaded.table()


def test_a_trained_map_that_did_not_move_loses_the_tie_to_the_closed_form(planted):
    """Float noise between the closed form and a trained map that never left it must not be reported as a win."""
    r = fit_alignment(planted[0], _cfg(lr=1e-12, stiefel_lr=1e-12, lambda_info=0.0))
    for pair, m in r.metrics.items():
        vr = m["val_residual"]
        assert abs(vr["trained"] - vr["closed_form"]) <= 1e-6 * vr["closed_form"], vr
        assert r.selected[pair] == "closed_form"


def test_default_and_published_objectives():
    from msma_lens.align.maps import PUBLISHED_OBJECTIVE
    from msma_lens.align.protocol import DEFAULT_OBJECTIVE, default_train_config

    d, pub = AlignConfig().train, AlignConfig.published().train
    assert (d.lambda_geo, d.lambda_info, d.lambda_curv, d.curv_scale) == (1.0, 0.0, 0.01, "relative") == tuple(
        DEFAULT_OBJECTIVE.values())
    assert (pub.lambda_geo, pub.lambda_info, pub.lambda_curv, pub.curv_scale) == (0.1, 0.1, 0.01, "absolute")
    assert MapTrainConfig.published(steps=7) == MapTrainConfig(**PUBLISHED_OBJECTIVE, steps=7)
    assert d.residual_hidden == pub.residual_hidden == 64 and default_train_config(steps=5).steps == 5
    # lens.fit steps on the Euclidean-metric Stiefel manifold (faster at equal geometry); published keeps geoopt's default
    assert d.manifold == "euclidean" and pub.manifold == "canonical" == MapTrainConfig().manifold
    assert default_train_config(manifold="canonical").manifold == "canonical"
    with pytest.raises(ConfigError, match="unknown objective 'paper'; valid: \\['default', 'published'\\]"):
        default_train_config("paper")


def test_ablation_of_the_default_objective_on_a_nonlinear_pair():
    """Where a residual MLP helps, the default objective's trained map beats the closed form on every seed; the
    published objective (MI term at λ_info = λ_geo) does worse than it, paired by seed; λ_info is already 0 in the
    default, so "no information" is the full run exactly."""
    acts = _two_scales(nonlinear=1.0)
    cfg = AlignConfig(pairs=(("a", "b"),), max_eval_rows=256, pair_metrics=("cka_debiased",),
                      train=MapTrainConfig(**{**_sel_cfg().train.__dict__, "lambda_geo": 1.0, "lambda_info": 0.0,
                                              "lambda_curv": 0.01, "curv_scale": "relative"}))
    ab = run_ablations(acts, cfg, variants=("closed_form", "full", "published", "no_information"), seeds=(0, 1, 2),
                       progress=False)
    by = {(r["variant"], r["metric"]): r for r in ab.summary}
    assert by[("full", "residual")]["n_trained_selected"] == 3
    assert by[("full", "residual")]["mean"] < 0.9 * by[("closed_form", "residual")]["mean"]
    assert by[("published", "residual")]["mean"] > by[("full", "residual")]["mean"]
    assert by[("no_information", "residual")]["p_vs_full"] == 1.0
    # the kept map (trained won on every seed here) is the full run's, and never worse than the closed form
    assert by[("selected", "residual")]["mean"] == by[("full", "residual")]["mean"]
    assert by[("selected", "residual")]["p_vs_closed_form"] < 0.05
    assert by[("no_information", "residual")]["note"] == "identical to full: the configured lambda_info is already 0"
    full = [r["value"] for r in ab.rows if r["variant"] == "full"]
    assert full == [r["value"] for r in ab.rows if r["variant"] == "no_information"]


def test_heldout_mi_is_a_fresh_critic_trained_on_train_and_read_on_test(planted, monkeypatch, tmp_path):
    """metrics[pair]["mi_test"]: a new critic on the selected map's train predictions, early-stopped on validation,
    read on the test documents; computed with lambda_info = 0 too (the joint critic's value is NaN there)."""
    import dataclasses
    import math

    from msma_lens.align import protocol
    from msma_lens.analysis import metrics as M

    real, calls = protocol.estimate_mi, []

    def spy(xtr, ytr, xte, yte, estimator, **kw):
        r = real(xtr, ytr, xte, yte, estimator, **kw)
        calls.append({"rows": (xtr.shape[0], kw["x_val"].shape[0], xte.shape[0]), "estimator": estimator, "steps": kw["steps"],
                      "xte": xte, "yte": yte, "r": r})
        return r

    monkeypatch.setattr(protocol, "estimate_mi", spy)
    cfg = AlignConfig(train=MapTrainConfig(steps=30, eval_every=10, batch_size=128, residual_hidden=0, lambda_info=0.0),
                      max_eval_rows=256, mi_test_steps=300)
    r = fit_alignment(planted[0], cfg, progress=False)
    assert len(calls) == len(r.metrics) == 2
    for c, m in zip(calls, r.metrics.values()):
        assert c["estimator"] == m["mi_test_estimator"] == "infonce" and c["steps"] == 300
        assert c["rows"][0] == m["n_train"] and c["rows"][2] == m["n_test"] and c["rows"][1] > 0
        assert m["mi_test"] == c["r"].estimate and m["mi_test_steps"] == c["r"].steps_run <= 300
        assert m["mi_test_best_step"] == c["r"].best_step
        # the critic reads the selected map's test predictions: the same arrays as the "after" residual
        assert M.residual(c["xte"], c["yte"]) == pytest.approx(m["after"]["residual"], rel=1e-6)
        # planted near-deterministic maps: MI far above the InfoNCE cap log(B), B = min(512 or 1024, n_test)
        assert 2.0 < m["mi_test"] <= math.log(min(c["r"].eval_batch_size, m["n_test"])) + 1e-9
        assert math.isnan(m["mi_val_joint"]) and "mi_heldout" not in m  # lambda_info = 0: no joint critic
        assert f"held-out MI (critic trained on train only): {m['mi_test']:.3f} nats (infonce" in r.table()
    loaded = AlignmentResult.load(r.save(tmp_path / "a"))
    assert all(loaded.metrics[k]["mi_test"] == m["mi_test"] for k, m in r.metrics.items())
    off = fit_alignment(planted[0], dataclasses.replace(cfg, mi_test_steps=0), progress=False)
    assert len(calls) == 2 and all(math.isnan(m["mi_test"]) for m in off.metrics.values())
    assert "held-out MI: not computed (AlignConfig.mi_test_steps = 0)" in off.table()
    # too few held-out rows for a critic: a warning naming the split, NaN, and the fit still completes
    tiny = _planted(n_docs=12, T=14)[0]
    with pytest.warns(UserWarning, match=r"held-out MI not computed: .*split has \d+ rows \(< 16\)"):
        small = fit_alignment(tiny, dataclasses.replace(cfg, held_out=0.1, val_fraction=0.1), progress=False)
    assert all(math.isnan(m["mi_test"]) for m in small.metrics.values()) and "rows (< 16))" in small.table()


def test_old_artifacts_with_mi_heldout_still_load_and_print(fitted, tmp_path):
    """Artifacts written before mi_test existed hold "mi_heldout" (the joint critic's validation value)."""
    path = fitted.save(tmp_path / "old")
    cfg_path = path / "cfg.json"
    d = json.loads(cfg_path.read_text())
    for m in d["metrics"].values():
        m["mi_heldout"] = 0.25
        for key in ("mi_val_joint", "mi_test", "mi_test_estimator", "mi_test_steps", "mi_test_best_step", "mi_test_val"):
            m.pop(key, None)
    old = AlignmentResult(fitted.maps, fitted.norms, d["metrics"], fitted.history, fitted.config, fitted.provenance)
    table = old.table()
    assert "on the validation split at the step it chose: 0.250 nats (not held out" in table
    assert "held-out MI" not in table


def test_mi_test_config_is_validated():
    with pytest.raises(ConfigError, match=r"AlignConfig.mi_test_steps must be an int >= 0 \(0: no held-out MI\), got -1"):
        AlignConfig(mi_test_steps=-1)
    with pytest.raises(ConfigError, match="AlignConfig.mi_test_critics must be an int >= 1, got 0"):
        AlignConfig(mi_test_critics=0)
    with pytest.raises(ConfigError, match="AlignConfig.mi_test_estimator must be one of mine, infonce, nwj, smile, got 'kl'"):
        AlignConfig(mi_test_estimator="kl")
    assert AlignConfig.from_dict(AlignConfig(mi_test_steps=50).to_dict()).mi_test_steps == 50
