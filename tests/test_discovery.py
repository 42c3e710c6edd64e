"""Scale discovery (analysis/discovery.py): planted known truth, exact oracles, bad inputs, real models end to end."""

import itertools
import time

import numpy as np
import pytest
import torch

from msma_lens.analysis import discovery as dv
from msma_lens.analysis.metrics import cka_debiased
from msma_lens.capture.scales import Scales
from msma_lens.errors import ConfigError

FEW = ("pos", "sentiment", "topic")  # one probe per level: faster, same planted structure


def planted(L=12, cuts=(4, 8), n_docs=30, sents=4, toks=5, d=12, seed=0, strength=3.0):
    """Features with token-level information in segment 0, sentence-level in segment 1, document-level in segment 2
    (segments split at ``cuts``; extra segments carry nothing), token residuals that stay put within a segment and
    change completely at each cut, and an attention span that grows by segment."""
    rng = np.random.default_rng(seed)
    edges = [0, *cuts, L]
    seg = np.repeat(np.arange(len(edges) - 1), np.diff(edges))
    n_sent, n_tok = n_docs * sents, n_docs * sents * toks
    sent_doc = np.repeat(np.arange(n_docs), sents)
    tok_doc = np.repeat(np.arange(n_docs), sents * toks)
    y = {"pos": rng.integers(0, 4, n_tok), "sentence_type": rng.integers(0, 3, n_sent), "sentiment": rng.integers(0, 3, n_sent),
         "topic": rng.integers(0, 4, n_docs), "register": rng.integers(0, 3, n_docs)}
    mu = {k: rng.normal(size=(5, d)) * strength for k in y}
    latent = [rng.normal(size=(n_tok, d)) for _ in range(len(edges) - 1)]
    tok = np.stack([latent[seg[x]] + 0.1 * rng.normal(size=(n_tok, d)) + (mu["pos"][y["pos"]] if seg[x] == 0 else 0)
                    for x in range(L)])
    sen = np.stack([rng.normal(size=(n_sent, d)) + (mu["sentence_type"][y["sentence_type"]] + mu["sentiment"][y["sentiment"]]
                                                      if seg[x] == 1 else 0) for x in range(L)])
    doc = np.stack([rng.normal(size=(n_docs, d)) + (mu["topic"][y["topic"]] + mu["register"][y["register"]]
                                                     if seg[x] == 2 else 0) for x in range(L)])
    q = np.full((n_docs, L), float(sents * toks))
    span = q * (1.0 + 2.0 * seg[None]) + rng.normal(size=(n_docs, L)) * 0.1
    labels = {k: np.array([f"{k}{v}" for v in vals]) for k, vals in y.items()}
    return dv.LayerFeatures(L, torch.tensor(tok, dtype=torch.float32), tok_doc, document=doc, sentence=sen,
                            sentence_doc=sent_doc, labels=labels, attn_span_sum=span, attn_uniform_sum=q * 10,
                            attn_queries=q, norm_sum=q * (1 + np.arange(L))[None], norm_count=q)


# ----- known truth -------------------------------------------------------------------------------------------
def test_planted_boundaries_are_recovered_exactly_with_covering_cis():
    res = dv.discover_from_features(planted(), n_boot=30, n_folds=3, progress=False)
    assert res.boundaries == (4, 8)
    assert res.scales.same_partition(Scales({"local": (0, 3), "intermediate": (4, 7), "global": (8, 11)}))
    assert res.scales.names == ("local", "intermediate", "global")
    assert [lo <= b <= hi for b, (lo, hi) in zip(res.boundaries, res.boundary_ci)] == [True, True]
    assert res.boundary_samples.shape == (30, 2) and res.stability == 1.0
    P = res.profiles
    # the planted profiles come back: probes high exactly in their segment, near chance elsewhere
    assert P["probe.pos"][:4].min() > 0.9 and P["probe.pos"][4:].max() < 0.45
    assert P["probe.topic"][8:].min() > 0.8 and P["probe.topic"][:8].max() < 0.5
    assert P["probe.sentiment"][4:8].min() > 0.8
    np.testing.assert_allclose(P["attn_span"], np.repeat([1.0, 3.0, 5.0], 4), atol=0.01)
    np.testing.assert_allclose(P["norm"], 1 + np.arange(12))
    info = P["adj_info"]
    assert info[[3, 7]].max() < 0.2 and np.delete(info[:-1], [3, 7]).min() > 0.95 and np.isnan(info[-1])
    # the fused score peaks at the cuts
    assert set(np.argsort(np.nan_to_num(res.fused, nan=-np.inf))[-2:]) == {4, 8}
    # 12 layers, 2 drops: ΔI's own SD hides them from the 2-SD rule (|z| = 1.6), so every layer may be a cut
    assert res.candidates == () and res.config["allowed_cuts"] == "all layers"


def test_two_sd_rule_flags_planted_drops_and_restricts_the_cuts():
    f = planted(L=24, cuts=(8, 16))
    res = dv.discover_from_features(f, n_boot=0, n_folds=3, probes=FEW, progress=False)
    assert res.candidates == (8, 16) and res.boundaries == (8, 16)
    assert res.config["allowed_cuts"] == "2-SD candidates"
    z = res.profiles["adj_info_dz"]
    assert z[8] < -2 and z[16] < -2 and np.nanmin(np.delete(z, [8, 16])) > -2
    # the probes alone would cut elsewhere: information drops moved to 6 and 16 win when they are 2-SD candidates
    g = planted(L=24, cuts=(8, 16))
    g.token = torch.tensor(planted(L=24, cuts=(6, 16)).token.numpy())
    res2 = dv.discover_from_features(g, n_boot=0, n_folds=3, probes=FEW, progress=False)
    assert res2.candidates == (6, 16) and res2.boundaries == (6, 16)


@pytest.mark.parametrize("n_scales,cuts", [(1, ()), (2, (6,)), (4, (3, 6, 9))])
def test_any_number_of_scales(n_scales, cuts):
    res = dv.discover_from_features(planted(L=12, cuts=cuts or (6,)), n_scales=n_scales, n_boot=5, n_folds=3,
                                    probes=FEW, progress=False)
    assert res.boundaries == cuts
    assert res.scales.names == tuple(f"scale_{i}" for i in range(n_scales))
    assert res.scales.layers == tuple(range(12))
    assert len(res.boundary_ci) == n_scales - 1 and res.boundary_samples.shape == (5, n_scales - 1)


# ----- exact oracles -----------------------------------------------------------------------------------------
def test_adjacent_cka_matches_metrics_cka_debiased():
    rng = np.random.default_rng(1)
    X = torch.tensor(rng.normal(size=(3, 50, 7)))
    X[1] = X[0] @ torch.tensor(rng.normal(size=(7, 7))) + 0.5 * X[1]
    Xs = [(x - x.mean(0)) / x.std(0) for x in X]
    got = dv.adjacent_cka(dv._grams(X.float(), torch.device("cpu")))
    want = [cka_debiased(Xs[0], Xs[1]), cka_debiased(Xs[1], Xs[2])]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # bootstrap weights: a draw without repeats is the plain estimate on those rows (standardised on all rows,
    # as _grams does); with repeats, pairs of copies are left out: the estimate is the U-statistic over distinct pairs
    grams = dv._grams(X.float(), torch.device("cpu"))
    idx = np.array([3, 9, 1, 20, 33, 41, 7, 12, 5, 48])
    w = np.bincount(idx, minlength=50)
    sub = dv.adjacent_cka(grams, w)
    np.testing.assert_allclose(sub, [cka_debiased(Xs[0][idx], Xs[1][idx]), cka_debiased(Xs[1][idx], Xs[2][idx])], rtol=1e-5)
    w2 = w.copy()
    w2[[3, 9]] = 3
    rep = np.repeat(np.arange(50), w2)
    K = [(x @ x.T).numpy() for x in Xs]
    same = rep[:, None] == rep[None, :]

    def hsic_u(A, B):  # Song et al.'s estimator on the expanded sample, copy pairs zeroed like the diagonal
        A, B = np.where(same, 0, A[np.ix_(rep, rep)]), np.where(same, 0, B[np.ix_(rep, rep)])
        n = len(rep)
        return (np.sum(A * B) + A.sum() * B.sum() / ((n - 1) * (n - 2)) - 2 / (n - 2) * A.sum(1) @ B.sum(1)) / (n * (n - 3))

    want = [hsic_u(K[i], K[i + 1]) / np.sqrt(hsic_u(K[i], K[i]) * hsic_u(K[i + 1], K[i + 1])) for i in range(2)]
    np.testing.assert_allclose(dv.adjacent_cka(grams, w2), want, rtol=1e-6)


def test_one_sharp_drop_gives_exactly_one_candidate():
    info = np.array([0.97, 0.98, 0.97, 0.98, 0.97, 0.3, 0.97, 0.98, 0.97, 0.98, 0.97])  # I(5; 6) drops
    cands, z = dv.boundary_candidates(info)
    assert cands == [6] and z[6] < -2 and z.shape == (12,) and np.isnan(z[:2]).all()
    assert dv.boundary_candidates(np.full(11, 0.9))[0] == []


def test_optimal_cuts_is_the_exhaustive_optimum():
    rng = np.random.default_rng(2)
    L, k = 9, 3
    Z, w, bonus = rng.normal(size=(L, 3)), np.array([0.5, 0.3, 0.2]), rng.uniform(0, 2, L)

    def objective(cuts):
        e = [0, *cuts, L]
        return sum((w * ((Z[a:b] - Z[a:b].mean(0)) ** 2).sum(0)).sum() for a, b in zip(e[:-1], e[1:])) - bonus[list(cuts)].sum()

    combos = list(itertools.combinations(range(1, L), k - 1))
    best = min(combos, key=objective)
    cuts, obj, forced = dv.optimal_cuts(Z, w, bonus, k)
    assert cuts == best and obj == pytest.approx(objective(best))
    for b in range(1, L):  # forced[b]: best objective among splits that cut at b
        assert forced[b] == pytest.approx(min(objective(c) for c in combos if b in c))
    allowed = [2, 5, 7]
    cuts_a, obj_a, _ = dv.optimal_cuts(Z, w, bonus, k, allowed)
    best_a = min(itertools.combinations(allowed, 2), key=objective)
    assert cuts_a == best_a and obj_a == pytest.approx(objective(best_a))


def test_attention_span_closed_forms():
    T = 6
    eye = torch.eye(T).expand(1, 2, T, T)
    mask = torch.ones(1, T)
    span, uni = dv.attention_span(eye, mask, causal=True)
    assert torch.equal(span, torch.zeros(1, T))
    causal = torch.tril(torch.ones(T, T)) / torch.arange(1, T + 1)[:, None]
    span, uni = dv.attention_span(causal.expand(1, 3, T, T), mask, causal=True)
    np.testing.assert_allclose(span[0], np.arange(T) / 2)  # uniform causal attention over t+1 keys: t/2
    np.testing.assert_allclose(uni[0], np.arange(T) / 2)
    full = torch.full((1, 1, T, T), 1 / T)
    span, uni = dv.attention_span(full, mask, causal=False)
    want = [np.mean(np.abs(t - np.arange(T))) for t in range(T)]  # (1/n) Σ_i |t − i|
    np.testing.assert_allclose(span[0], want)
    np.testing.assert_allclose(uni[0], want)
    padded = torch.tensor([[1, 1, 1, 1, 0, 0]])
    _, uni = dv.attention_span(full, padded, causal=False)
    np.testing.assert_allclose(uni[0, :4], [np.mean(np.abs(t - np.arange(4))) for t in range(4)])


def test_bootstrap_is_seeded_and_result_round_trips(tmp_path):
    f = planted(seed=3, strength=0.6)
    a = dv.discover_from_features(f, n_boot=8, seed=5, n_folds=3, probes=FEW, progress=False)
    b = dv.discover_from_features(f, n_boot=8, seed=5, n_folds=3, probes=FEW, progress=False)
    np.testing.assert_array_equal(a.boundary_samples, b.boundary_samples)
    a.save(tmp_path / "disc")
    c = dv.ScaleDiscovery.load(tmp_path / "disc")
    assert c.scales.same_partition(a.scales) and c.boundaries == a.boundaries and c.boundary_ci == a.boundary_ci
    for k, v in a.profiles.items():
        np.testing.assert_array_equal(c.profiles[k], v)
    np.testing.assert_array_equal(c.fused, a.fused)
    assert c.table() == a.table()
    assert "cuts (first layer of a scale)" in a.table() and "probe pos: token level" in a.table()
    fig = a.figures()["profiles"]
    assert len(fig.data) == len(FEW) + 3 and fig.layout.title.text.startswith("scale discovery")


# ----- bad inputs --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw,match", [
    ({"n_scales": 0}, r"n_scales must be an int between 1 and the number of layers \(12\), got 0"),
    ({"n_scales": 13}, r"n_scales must be an int between 1 and the number of layers \(12\), got 13"),
    ({"probes": ("pos", "syntax")}, r"unknown probe 'syntax'; valid: \['pos', 'sentence_type'"),
    ({"weights": (0.5, 0.5, 0.5)}, r"weights must be three non-negative numbers .* summing to 1"),
    ({"n_folds": 50}, r"30 documents are too few for GroupKFold with n_folds=50"),
    ({"level": 1.5}, r"level must be in \(0, 1\)"),
])
def test_bad_arguments_name_the_offender(kw, match):
    with pytest.raises(ConfigError, match=match):
        dv.discover_from_features(planted(), n_boot=0, progress=False, **kw)


def test_bad_features_and_labels():
    f = planted()
    with pytest.raises(ConfigError, match=r"probe 'topic' has no labels in these features"):
        dv.discover_from_features(dv.LayerFeatures(12, f.token, f.token_doc, labels={"pos": f.labels["pos"]}),
                                  probes=("topic",), n_boot=0, progress=False)
    with pytest.raises(ConfigError, match=r"probe 'register' needs at least 2 classes, but its labels hold only \['news'\]"):
        dv.discover_from_features(dv.LayerFeatures(12, f.token, f.token_doc, document=f.document,
                                                   labels={"register": np.array(["news"] * 30)}), n_boot=0, progress=False)
    with pytest.raises(ConfigError, match=r"labels for probe 'pos' have shape \(3,\), expected \(600,\)"):
        dv.LayerFeatures(12, f.token, f.token_doc, labels={"pos": np.array(["a", "b", "c"])})
    with pytest.raises(ConfigError, match=r"token features must be \[n_layers=11, rows, d\]"):
        dv.LayerFeatures(11, f.token, f.token_doc)


def test_corpus_without_labels_is_refused(tiny_llama):
    with pytest.raises(ConfigError, match=r"probe 'sentence_type' needs corpus labels, but corpus is a list of 2 texts"):
        dv.discover_scales(tiny_llama, ["One text.", "Another text."], progress=False)
    with pytest.raises(ConfigError, match=r"unknown probe 'syntax'"):
        dv.discover_scales(tiny_llama, ["One text."], probes=("syntax",), progress=False)
    with pytest.raises(ConfigError, match=r"n_scales must be an int between 1 and the number of layers \(4\), got 5"):
        dv.discover_scales(tiny_llama, n_scales=5, progress=False)


# ----- real models -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_llama():
    from msma_lens.io.models import load_model

    return load_model("tiny-llama", seed=0)


def test_end_to_end_on_tiny_llama(tiny_llama, tmp_path):
    from msma_lens.io.corpus import load_corpus

    res = Scales.discover(tiny_llama, load_corpus(), max_docs=12, n_boot=4, max_tokens=300, info_tokens=200, n_folds=3,
                          progress=False)
    assert isinstance(res, dv.ScaleDiscovery)
    assert res.scales.layers == (0, 1, 2, 3) and len(res.scales) == 3 and len(res.boundaries) == 2
    assert all(lo <= hi for lo, hi in res.boundary_ci)
    for k in ("attn_span", "attn_span_rel", "adj_info", "norm", *(f"probe.{p}" for p in dv.PROBES),
              "level.token", "level.sentence", "level.document"):
        assert res.profiles[k].shape == (4,), k
    assert np.isfinite(res.profiles["attn_span"]).all() and (res.profiles["attn_span"] > 0).all()
    assert res.config["n_docs"] == 12 and res.config["n_tokens"] == 300 and res.probe_info["topic"]["n"] == 12
    assert res.probe_info["sentence_type"]["n"] >= 12 * 3
    assert res.provenance["model_id"] == "tiny-llama" and res.provenance["causal"] is True
    res.save(tmp_path / "d")
    assert dv.ScaleDiscovery.load(tmp_path / "d").boundaries == res.boundaries


def test_end_to_end_on_a_random_encoder():
    from msma_lens import tl
    from msma_lens.io.corpus import load_corpus
    from msma_lens.io.models import load_model

    if tl.tl_major() < 3:
        pytest.skip("tiny-bert loads through TransformerBridge (TL >= 3)")
    res = Scales.discover(load_model("tiny-bert"), load_corpus(), max_docs=12, n_boot=4, max_tokens=300, info_tokens=200,
                          n_folds=3, progress=False)
    assert res.provenance["causal"] is False and res.scales.layers == (0, 1, 2, 3) and len(res.boundaries) == 2
    assert all(lo <= b <= hi for b, (lo, hi) in zip(res.boundaries, res.boundary_ci))
    assert res.config["n_tokens"] == 300 and res.probe_info["topic"]["n"] == 12
    assert (res.profiles["attn_span"] > 2).all()  # bidirectional: no causal-only formula


@pytest.mark.slow
def test_smollm2_discovery(smollm2):
    t0 = time.perf_counter()
    res = dv.discover_scales(smollm2, n_boot=100, progress=False)
    secs = time.perf_counter() - t0
    print(f"\nSmolLM2-135M: {secs:.0f} s\n{res.table()}")
    assert res.scales.layers == tuple(range(30)) and len(res.boundaries) == 2
    assert all(lo <= b <= hi for b, (lo, hi) in zip(res.boundaries, res.boundary_ci))
    # the labels are learnable from this model's residuals: held-out accuracy far above chance somewhere
    for p, info in res.probe_info.items():
        assert res.profiles[f"probe.{p}"].max() > info["chance"] + 0.2, p


@pytest.mark.slow
def test_minilm_discovery_bidirectional():
    from msma_lens.io.models import load_model

    m = load_model("minilm-l6")
    t0 = time.perf_counter()
    res = dv.discover_scales(m, n_boot=100, progress=False)
    print(f"\nMiniLM-L6: {time.perf_counter() - t0:.0f} s\n{res.table()}")
    assert res.provenance["causal"] is False and res.scales.layers == tuple(range(6))
    # bidirectional attention: spans are at least a few tokens even in layer 0 (a causal-only formula would break)
    assert (res.profiles["attn_span"] > 1).all()
    assert all(lo <= b <= hi for b, (lo, hi) in zip(res.boundaries, res.boundary_ci))
