"""The stratified plugin: a planted union of subspaces (known truth), the model's parts, persistence, discovery, CLI."""

import importlib.metadata as md
import math

import numpy as np
import pytest
import torch
from msma_stratified import (
    MixtureOfDictionaryExperts,
    StratifiedManifolds,
    StratifiedResult,
    TrainConfig,
    contrastive_loss,
    gating_entropy,
    label_agreement,
    mean_ci,
    pca_dim_75,
    principal_angles,
    topk_abs,
)
from msma_stratified.model import SparseExpert, loss_terms
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from msma_lens import ScaleActivations, plugins
from msma_lens.errors import ArtifactError, ConfigError

torch.set_num_threads(1)
DIMS = (2, 4, 6)
PER = 400
FAST = {"pca_dim": 32, "sparsity": (2, 4, 6), "code_dim": 6, "n_perm": 50}


def union_of_subspaces(seed: int = 0, dim: int = 32, noise: float = 0.01):
    """PER points on each of three random linear subspaces (dims 2, 4, 6) through the origin of R^dim, equal total
    variance, isotropic noise; the strata share their mean (0), so KMeans cannot separate them. Rows shuffled,
    grouped 4 per "document"."""
    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for i, d in enumerate(DIMS):
        q, _ = torch.linalg.qr(torch.randn(dim, d, generator=g))
        xs.append(torch.randn(PER, d, generator=g) * (3 / d**0.5) @ q.T + noise * torch.randn(PER, dim, generator=g))
        ys.append(torch.full((PER,), i))
    perm = torch.randperm(PER * len(DIMS), generator=g)
    x, y = torch.cat(xs)[perm], torch.cat(ys)[perm]
    n = x.shape[0]
    acts = ScaleActivations({"planted": x, "noise": torch.randn(n, dim, generator=g)}, torch.arange(n) // 4,
                            torch.full((n,), -1), {"model_id": "synthetic"})
    return acts, [f"s{int(v)}" for v in y]


@pytest.fixture(scope="module")
def planted():
    return union_of_subspaces()


@pytest.fixture(scope="module")
def result(planted) -> StratifiedResult:
    acts, strata = planted
    return plugins.run("stratified", acts, labels={"stratum": strata}, scales=["planted"], **FAST)


def test_trained_mixture_recovers_planted_strata_and_kmeans_does_not(result):
    sc = result.per[0, 0]["scalars"]
    assert sc["ari_stratum"] > 0.9 and sc["nmi_stratum"] > 0.85
    assert sc["km_ari_stratum"] < 0.1  # shared mean: KMeans splits by direction, not by subspace
    assert sc["p_stratum"] == pytest.approx(1 / 51)  # no permutation of the labels reaches the observed NMI
    assert sc["n_test"] == 300 and sc["n_train"] == 720 and sc["n_used_experts"] == 3


def test_per_expert_dimensions_match_the_planted_ones(result):
    d = result.per[0, 0]
    rows = d["test_rows"].numpy()
    strata = np.asarray(result.labels["stratum"])[rows]
    holders = []
    for i, planted_dim in enumerate(DIMS):
        j = int(np.bincount(d["assign"].numpy()[strata == f"s{i}"], minlength=3).argmax())  # the expert holding stratum i
        holders.append(j)
        assert abs(float(d["twonn"][j]) - planted_dim) <= 1, (i, d["twonn"])
        assert abs(float(d["pca_dim"][j]) - planted_dim) <= 1, (i, d["pca_dim"])  # 75% of an isotropic d-subspace: ceil(0.75 d)
    assert sorted(holders) == [0, 1, 2]  # one expert per stratum (its sparsity level need not equal the stratum's dimension)


def test_untrained_gate_does_not_recover_the_strata(planted):
    acts, strata = planted
    res = plugins.run("stratified", acts, labels={"stratum": strata}, scales="planted", train_gate=False, **FAST)
    assert res.per[0, 0]["scalars"]["ari_stratum"] < 0.2
    assert res.config["train_gate"] is False and "untrained" in res.summary()


def test_statistics_against_independent_oracles(result, planted):
    acts, strata = planted
    d = result.per[0, 0]
    rows = d["test_rows"].numpy()
    lab = np.asarray(strata)[rows]
    assert d["scalars"]["ari_stratum"] == pytest.approx(adjusted_rand_score(lab, d["assign"].numpy()))
    assert d["scalars"]["km_nmi_stratum"] == pytest.approx(normalized_mutual_info_score(lab, d["km_assign"].numpy()))
    p = d["probs"].double()
    h = -(p * p.clamp_min(1e-300).log()).sum(1) / math.log(3)
    assert d["scalars"]["entropy_norm_mean"] == pytest.approx(float(h.mean()), rel=1e-6)
    assert torch.allclose(d["angles"], d["angles"].T) and torch.all(d["angles"].diagonal() == 0)
    assert torch.all(d["angles"][~torch.eye(3, dtype=torch.bool)] > 30)  # random subspaces of R^32 are far apart
    assert d["count"].sum() == 300 and d["probs"].shape == (300, 3)
    assert torch.allclose(d["probs"].sum(1), torch.ones(300), atol=1e-5)


def test_model_parts():
    z = torch.tensor([[0.1, -3.0, 2.0, 0.5], [1.5, 1.0, -5.0, 0.0]], requires_grad=True)
    out = topk_abs(z, 2)
    assert torch.equal(out.detach(), torch.tensor([[0.0, -3.0, 2.0, 0.0], [1.5, 0.0, -5.0, 0.0]]))
    out.sum().backward()
    assert torch.equal(z.grad, (out != 0).float())  # gradient through the kept entries only
    assert topk_abs(z, 4) is z
    # contrastive loss: identical embeddings with one label -> 0; two points >= margin apart with different labels -> 0
    assert float(contrastive_loss(torch.ones(3, 2), torch.zeros(3), 1.0)) == 0.0
    assert float(contrastive_loss(torch.tensor([[0.0, 0.0], [2.0, 0.0]]), torch.tensor([0, 1]), 1.0)) == 0.0
    # the gate and the dictionaries receive a gradient from the reconstruction loss (the authors' code: neither)
    m = MixtureOfDictionaryExperts(8, (2, 3), 4, seed=0)
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    loss_terms(m, x, TrainConfig())["loss"].backward()
    assert m.gate.keys.grad.abs().sum() > 0 and m.experts[0].atoms.grad.abs().sum() > 0
    m.zero_grad()
    m.gate.requires_grad_(False)
    loss_terms(m, x, TrainConfig(train_gate=False))["loss"].backward()
    assert m.gate.keys.grad is None and m.experts[1].atoms.grad.abs().sum() > 0
    # an expert's code has at most s non-zeros; with an orthonormal dictionary the IHT initialisation (W = Dᵀ,
    # S = 0) codes a 2-sparse combination of atoms exactly
    assert (m.experts[0].encode(x) != 0).sum(1).max() <= 2
    e = SparseExpert(8, 4, 2, 5, torch.Generator().manual_seed(0))
    e.set_dictionary(torch.eye(8)[:, :4])
    assert torch.equal(e.S.detach(), torch.zeros(4, 4))
    code = e.encode(torch.tensor([[0.0, 2.0, -3.0, 0.0, 0.0, 0.0, 0.0, 0.0]])).detach()
    assert torch.equal(code, torch.tensor([[0.0, 2.0, -3.0, 0.0]]))


def test_small_statistics():
    q, _ = torch.linalg.qr(torch.randn(20, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    x = torch.randn(200, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64) @ q.T
    assert pca_dim_75(x) <= 3 and pca_dim_75(x[:1]) == 1
    e = torch.eye(4)
    ang = principal_angles([e[:, :2], e[:, 2:], e[:, 1:3]])
    assert ang[0, 1] == pytest.approx(90) and ang[0, 2] == pytest.approx(45)  # angles {0, 90} -> mean 45
    u = gating_entropy(torch.full((5, 4), 0.25))
    assert u["entropy_norm_mean"] == pytest.approx(1) and u["assignment_entropy_norm"] == 0
    assert gating_entropy(torch.eye(4))["entropy_norm_mean"] == pytest.approx(0)
    assert gating_entropy(torch.eye(4))["assignment_entropy_norm"] == pytest.approx(1)
    lab = np.array(["a"] * 20 + ["b"] * 20)
    agree = label_agreement(np.array([0] * 20 + [1] * 20), lab, 99, np.random.default_rng(0))
    assert agree["nmi"] == 1 and agree["ari"] == 1 and agree["p"] == pytest.approx(0.01)
    m, lo, hi = mean_ci([1.0, 2.0, 3.0])
    assert m == 2 and hi - m == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5) and math.isnan(mean_ci([1.0])[1])


def test_options_are_validated(planted):
    acts, strata = planted
    for bad, match in (({"sparsity": (4,)}, "at least 2 experts"), ({"sparsity": (2, 40)}, "exceeds code_dim=32"),
                       ({"objective": "mse"}, r"objective must be one of \['recon', 'supcon'\]"),
                       ({"objective": "supcon"}, "needs labels"), ({"val_fraction": 0.5, "test_fraction": 0.5}, "leaves no training"),
                       ({"seeds": [0, 0]}, "seeds must be distinct"), ({"train_gate": 1}, "train_gate must be"),
                       ({"temperature": 0}, "temperature must be a number > 0"), ({"pca_dim": 1}, "pca_dim must be an integer >= 2"),
                       ({"labels": {"topic": ["a"]}, "supcon_label": "x", "objective": "supcon"}, "supcon_label 'x'")):
        with pytest.raises(ConfigError, match=match):
            StratifiedManifolds(**bad)
    with pytest.raises(ConfigError, match=r"label 'stratum' has 3 entries, the activations have 1200 rows"):
        plugins.run("stratified", acts, labels={"stratum": ["a", "b", "c"]})
    with pytest.raises(ConfigError, match=r"unknown scale\(s\) \['mid'\]"):
        plugins.run("stratified", acts, scales="mid")
    with pytest.raises(ConfigError, match="'stratified'.*'n_expert'"):
        plugins.run("stratified", acts, n_expert=3)


def test_supcon_variant_and_seeds_give_a_ci(planted):
    acts, strata = planted
    small = acts.subset(torch.arange(0, 1200, 2))
    lab = strata[::2]
    res = plugins.run("stratified", small, labels={"stratum": lab}, objective="supcon", seeds=[0, 1], max_epochs=5, **FAST)
    assert res.seeds == [0, 1] and res.scalar("ari_stratum").shape == (2, 2)
    row = res.table()[0]
    assert row["scale"] == "planted" and not math.isnan(row["nmi_stratum"][1])  # two seeds: a finite interval
    assert res.most_stratified() in ("planted", "noise")


def test_save_load_round_trip_and_figures(result, tmp_path):
    path = result.save(tmp_path / "res", figures=True)
    back = StratifiedResult.load(path)
    assert back.summary() == result.summary() and back.labels == result.labels and back.config == result.config
    for t in ("assign", "probs", "twonn", "angles", "key_dist"):
        assert torch.equal(back.per[0, 0][t], result.per[0, 0][t])
    assert back.provenance["plugin"] == "stratified" and back.provenance["plugin_version"] == "0.1.0"
    figs = result.figures()
    assert set(figs) == {"gate_by_label", "projection", "intrinsic_dimension"}
    assert (path / "gate_by_label.html").is_file()
    heat = figs["gate_by_label"].data[0]
    assert list(heat.y) == ["s0", "s1", "s2"] and np.allclose(np.asarray(heat.z).sum(1), 1, atol=1e-5)
    with pytest.raises(ArtifactError, match="expected a 'msma_stratified.StratifiedResult' artifact"):
        StratifiedResult.load(ScaleActivations({"a": torch.zeros(3, 2)}, torch.arange(3), torch.zeros(3)).save(tmp_path / "a"))


def test_discovered_through_the_entry_point():
    eps = {ep.name: ep for ep in md.entry_points(group=plugins.GROUP)}
    assert eps["stratified"].value == "msma_stratified:StratifiedManifolds"
    assert plugins.get("stratified") is StratifiedManifolds
    info = next(i for i in plugins.available() if i.name == "stratified")
    assert (info.dist, info.version, info.source) == ("msma-stratified", "0.1.0", "entry point")


TINY = {"pca_dim": 8, "sparsity": [2, 3], "code_dim": 4, "max_epochs": 3, "n_perm": 5}


def test_lens_analyse_runs_the_plugin_with_the_lens():
    from msma_lens import MSMA, load_corpus, load_model

    lens = MSMA(load_model("tiny-gpt2", seed=0, kv_check="off"), {"low": (0, 0), "high": (1, 1)})
    docs = load_corpus()[:12]
    acts = lens.capture([d.text for d in docs], pooling="mean", progress=False)
    res = lens.analyse("stratified", acts, labels={"topic": [d.topic for d in docs]}, **TINY)
    assert res.scales == ["low", "high"] and res.provenance["acts"]["model_id"] == "tiny-gpt2"
    assert res.per[0, 0]["scalars"]["n_test"] == 3 and "topic: NMI" in res.summary()
    other = MSMA(lens.model, {"all": (0, 1)})
    with pytest.raises(ArtifactError, match="captured with scales"):
        other.analyse("stratified", acts, **TINY)


def test_cli_stratified_sentences_and_documents(tmp_path, capsys):
    from msma_lens.cli import main

    opts = [x for k, v in TINY.items() for x in ("-o", f"{k}={v}".replace(" ", ""))]
    rc = main(["stratified", "--model", "tiny-gpt2", "--scales", "a=0-0,b=1-1", "--max-docs", "12", "--pooling", "both",
               "--seeds", "0,1", "--out", str(tmp_path), "--no-progress", *opts])
    assert rc == 0
    out = capsys.readouterr().out
    sent, doc = StratifiedResult.load(tmp_path / "sentence"), StratifiedResult.load(tmp_path / "document")
    assert sent.label_names == ["topic", "register", "type", "sentiment"] and doc.label_names == ["topic", "register"]
    from msma_lens import load_corpus

    n_sent = sum(len(d.sentences) for d in load_corpus()[:12])
    assert len(sent.labels["topic"]) == n_sent and len(doc.labels["topic"]) == 12 and sent.seeds == [0, 1]
    assert sent.provenance["acts"]["pooling"] == "mean" and sent.config["groups"] == "given"
    assert (tmp_path / "sentence" / "projection.html").is_file() and (tmp_path / "document.txt").read_text().strip() == doc.summary()
    assert "most stratified scale" in out
    rc = main(["stratified", "--model", "tiny-gpt2", "--texts", str(tmp_path / "document.txt"), "--out", str(tmp_path / "x")])
    assert rc == 2 and "--pooling sentence needs the bundled corpus" in capsys.readouterr().err
    rc = main(["stratified", "--model", "tiny-gpt2", "--out", str(tmp_path / "x"), "-o", "objective=mse"])
    assert rc == 2 and "objective must be one of" in capsys.readouterr().err
