"""MI bounds and critics (msma_lens.analysis.mi): formulas, MINE bias correction, held-out accuracy, errors."""

from __future__ import annotations

import math

import pytest
import torch

from msma_lens.analysis.mi import (
    ESTIMATORS,
    ConcatCritic,
    MineEMA,
    SeparableCritic,
    dv_bound,
    estimate_mi,
    infonce_bound,
    js_bound,
    make_objective,
    nwj_bound,
    smile_bound,
)
from msma_lens.errors import ConfigError, NumericsError

D = 2
RHO = math.sqrt(1.0 - math.exp(-2.0 / D))  # −(d/2)·log(1 − ρ²) = 1 nat
TRUE_MI = -(D / 2) * math.log(1 - RHO**2)


def _gaussians(n: int, g: torch.Generator, rho: float = RHO, d: int = D):
    x = torch.randn(n, d, generator=g)
    return x, rho * x + math.sqrt(1 - rho**2) * torch.randn(n, d, generator=g)


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(123)
    return (*_gaussians(6144, g), *_gaussians(4096, g))


def _loop_bounds(S: torch.Tensor, tau: float = 5.0) -> dict[str, float]:
    B = S.shape[0]
    S = S.double()
    diag = sum(float(S[i, i]) for i in range(B)) / B
    off = [float(S[i, j]) for i in range(B) for j in range(B) if i != j]
    return {
        "dv": diag - math.log(sum(math.exp(v) for v in off) / len(off)),
        "nwj": diag - sum(math.exp(v - 1) for v in off) / len(off),
        "infonce": sum(float(S[i, i]) - math.log(sum(math.exp(float(S[i, j])) for j in range(B))) for i in range(B)) / B + math.log(B),
        "smile": diag - math.log(sum(min(max(math.exp(v), math.exp(-tau)), math.exp(tau)) for v in off) / len(off)),
        "js": -sum(math.log1p(math.exp(-float(S[i, i]))) for i in range(B)) / B - sum(math.log1p(math.exp(v)) for v in off) / len(off),
    }


def test_bounds_match_definitions():
    S = torch.randn(7, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    ref = _loop_bounds(S, tau=2.0)
    assert abs(float(dv_bound(S)) - ref["dv"]) < 1e-10
    assert abs(float(nwj_bound(S)) - ref["nwj"]) < 1e-10
    assert abs(float(infonce_bound(S)) - ref["infonce"]) < 1e-10
    assert abs(float(smile_bound(S, tau=2.0)) - ref["smile"]) < 1e-10
    assert abs(float(js_bound(S)) - ref["js"]) < 1e-10


def test_infonce_never_exceeds_log_b():
    g = torch.Generator().manual_seed(1)
    for B in (2, 16, 256):
        S = torch.randn(B, B, generator=g) * 50
        S.diagonal().add_(1e4)  # a critic that separates joint pairs perfectly
        assert float(infonce_bound(S)) <= math.log(B)
    # trained on near-deterministic data (true MI ≈ 7.6 nats) with held-out B = 32: capped at log 32
    x, y = _gaussians(512, g, rho=0.99999)
    xt, yt = _gaussians(256, g, rho=0.99999)
    r = estimate_mi(x, y, xt, yt, "infonce", steps=60, batch_size=64, eval_batch_size=32, hidden=32, embed=16, lr=3e-3, eval_every=20)
    assert r.eval_batch_size == 32 and r.log_batch_cap == pytest.approx(math.log(32))
    assert all(v <= math.log(32) for v in r.heldout_curve)
    assert r.estimate > 2.0  # it does learn


def test_mine_ema_value_is_dv_and_gradient_is_bias_corrected():
    g = torch.Generator().manual_seed(2)
    S1 = torch.randn(6, 6, generator=g, dtype=torch.float64, requires_grad=True)
    ema = MineEMA(alpha=0.25)
    v1 = ema(S1)
    assert abs(float(v1.detach()) - float(dv_bound(S1.detach()))) < 1e-12
    v1.backward()
    S1b = S1.detach().clone().requires_grad_(True)
    dv_bound(S1b).backward()
    assert torch.allclose(S1.grad, S1b.grad)  # first call: m = the batch mean, so the gradient is DV's
    m1 = float(torch.exp(torch.logsumexp(S1.detach()[~torch.eye(6, dtype=torch.bool)], 0)) / 30)
    S2 = torch.randn(6, 6, generator=g, dtype=torch.float64, requires_grad=True)
    v2 = ema(S2)
    assert abs(float(v2.detach()) - float(dv_bound(S2.detach()))) < 1e-12
    v2.backward()
    off = ~torch.eye(6, dtype=torch.bool)
    batch_m = float(torch.exp(S2.detach()[off]).mean())
    m2 = 0.75 * m1 + 0.25 * batch_m
    assert abs(math.exp(float(ema.log_m)) - m2) < 1e-12
    expected = torch.eye(6, dtype=torch.float64) / 6 - off * torch.exp(S2.detach()) / (30 * m2)
    assert torch.allclose(S2.grad, expected)


def test_smile_objective_reads_out_clipped_dv_and_trains_with_js():
    S = torch.randn(5, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64, requires_grad=True) * 8
    S.retain_grad()
    obj = make_objective("smile", tau=5.0)
    val = obj(S)
    assert abs(float(val.detach()) - float(smile_bound(S.detach()))) < 1e-12
    val.backward()
    S2 = S.detach().clone().requires_grad_(True)
    js_bound(S2).backward()
    assert torch.allclose(S.grad, S2.grad)


def test_critic_shapes():
    x, y = torch.randn(9, 3), torch.randn(9, 5)
    assert SeparableCritic(3, 5, hidden=8, embed=4)(x, y).shape == (9, 9)
    concat = ConcatCritic(3, 5, hidden=8)
    S = concat(x, y)
    assert S.shape == (9, 9)
    assert torch.allclose(S[2, 4], concat.rest(concat.fx(x[2]) + concat.fy(y[4])).squeeze(), atol=1e-6)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_estimators_recover_gaussian_mi_held_out(data, estimator):
    r = estimate_mi(*data, estimator, steps=300, batch_size=256, lr=1e-3, hidden=64, embed=32, eval_every=25, patience=6, seed=0)
    assert r.estimator == estimator and r.eval_batch_size == 1024
    assert abs(r.estimate - TRUE_MI) / TRUE_MI < 0.15, (estimator, r.estimate)
    assert r.eval_steps[-1] == r.steps_run and r.best_step in r.eval_steps
    assert len(r.train_curve) == r.steps_run


def test_estimate_is_deterministic_under_seed(data):
    kw = dict(steps=40, batch_size=128, hidden=16, embed=8, eval_every=10)
    a = estimate_mi(*data, "mine", seed=7, **kw)
    b = estimate_mi(*data, "mine", seed=7, **kw)
    c = estimate_mi(*data, "mine", seed=8, **kw)
    assert a.estimate == b.estimate and a.train_curve == b.train_curve
    assert all(torch.equal(p, q) for p, q in zip(a.critic.state_dict().values(), b.critic.state_dict().values()))
    assert c.train_curve != a.train_curve


def test_errors(data):
    x, y, xt, yt = data
    with pytest.raises(ConfigError, match="unknown MI estimator 'kl'; valid estimators: mine, infonce, nwj, smile"):
        estimate_mi(x, y, xt, yt, "kl")
    with pytest.raises(ConfigError, match="at least 16 train samples, got 10"):
        estimate_mi(x[:10], y[:10], xt, yt)
    with pytest.raises(ConfigError, match="at least 16 test samples, got 3"):
        estimate_mi(x, y, xt[:3], yt[:3])
    with pytest.raises(ConfigError, match="same number of rows"):
        estimate_mi(x, y[:-1], xt, yt)
    with pytest.raises(ConfigError, match="x_test has width 3 but x_train has width 2"):
        estimate_mi(x, y, torch.randn(100, 3), yt[:100])
    bad = x.clone()
    bad[5, 0] = float("nan")
    with pytest.raises(NumericsError, match="x_train contains"):
        estimate_mi(bad, y, xt, yt)
    with pytest.raises(ConfigError, match="B >= 2"):
        dv_bound(torch.zeros(1, 1))
    with pytest.raises(ConfigError, match="steps must be an integer >= 1"):
        estimate_mi(x, y, xt, yt, steps=0)


def test_validation_split_keeps_test_out_of_model_selection(data):
    x, y, xt, yt = data
    kw = dict(steps=60, batch_size=128, hidden=16, embed=8, eval_every=20, seed=0)
    xv, yv, xte, yte = xt[:2048], yt[:2048], xt[2048:], yt[2048:]
    r = estimate_mi(x, y, xte, yte, "infonce", x_val=xv, y_val=yv, **kw)
    assert r.selected_on_val and r.best_step in r.eval_steps
    ref = estimate_mi(x, y, xv, yv, "infonce", **kw)  # same training; selection split = validation
    assert r.heldout_curve == ref.heldout_curve and r.best_step == ref.best_step
    # the estimate is the selected critic read once on the test split, not the best validation value
    assert r.estimate != max(r.heldout_curve)
    with torch.no_grad():
        from msma_lens.analysis.mi import heldout_mi

        test_perm = torch.randperm(xte.shape[0], generator=torch.Generator().manual_seed(2))
        assert r.estimate == heldout_mi(r.critic, xte, yte, "infonce", batch_size=1024, perm=test_perm)
    with pytest.raises(ConfigError, match="both x_val and y_val"):
        estimate_mi(x, y, xte, yte, x_val=xv)
    with pytest.raises(ConfigError, match="y_val has width 3 but y_train has width 2"):
        estimate_mi(x, y, xte, yte, x_val=xv, y_val=torch.randn(2048, 3))


def test_early_stopping_keeps_the_best_critic_and_stops_after_patience_bad_evaluations():
    g = torch.Generator().manual_seed(11)
    x = torch.randn(600, 6, generator=g)
    y = x @ torch.randn(6, 4, generator=g) + 0.5 * torch.randn(600, 4, generator=g)
    kw = dict(steps=150, batch_size=64, eval_every=5, patience=3, hidden=32, embed=8, eval_batch_size=100, lr=3e-3, seed=0,
              n_critics=1)  # one critic: its own best validation value is the estimate
    r = estimate_mi(x[:300], y[:300], x[300:450], y[300:450], "infonce", **kw)
    assert r.steps_run < 150 and r.steps_run == r.best_step + 3 * 5  # stopped 3 evaluations after the best
    assert r.estimate == max(r.heldout_curve) == r.heldout_curve[r.eval_steps.index(r.best_step)]
    from msma_lens.analysis.mi import heldout_mi

    r.critic.eval()
    assert heldout_mi(r.critic, x[300:450], y[300:450], "infonce", batch_size=100,
                      perm=torch.randperm(150, generator=torch.Generator().manual_seed(1))) == r.estimate  # best critic restored
    off = estimate_mi(x[:300], y[:300], x[300:450], y[300:450], "infonce", early_stopping=False, **kw)
    assert off.steps_run == 150 and off.estimate == off.heldout_curve[-1] and off.best_step == 150


# ----- mi_neural: splits by document (groups) ----------------------------------------------------------------
def test_mi_neural_groups_keep_every_document_in_one_split(monkeypatch):
    import numpy as np

    import msma_lens.analysis.mi as mi_mod
    from msma_lens.analysis.metrics import mi_neural

    n_docs, T = 40, 25
    groups = np.repeat(np.arange(100, 100 + n_docs), T)  # document ids, not 0..n-1
    X = torch.stack([torch.arange(n_docs * T, dtype=torch.float32), torch.randn(n_docs * T)], 1)  # column 0 = row id
    Y = torch.randn(n_docs * T, 3)
    seen = {}

    def spy(x_train, y_train, x_test, y_test, estimator="infonce", *, x_val=None, y_val=None, seed=0, **kw):
        seen.update(train=x_train[:, 0].long(), val=x_val[:, 0].long(), test=x_test[:, 0].long(), seed=seed)
        return mi_mod.MIEstimate(0.5, estimator, 1, 1, 2, [], [], [], critic=torch.nn.Identity())

    monkeypatch.setattr(mi_mod, "estimate_mi", spy)
    assert mi_neural(X, Y, groups=groups, seed=3) == 0.5
    docs = {k: set(groups[seen[k].numpy()].tolist()) for k in ("train", "val", "test")}
    assert not (docs["train"] & docs["val"]) and not (docs["train"] & docs["test"]) and not (docs["val"] & docs["test"])
    assert docs["train"] | docs["val"] | docs["test"] == set(groups.tolist())
    # whole documents: every row of a split's documents is in that split; 20% of 40 test, 20% of the other 32 val
    assert sorted(torch.cat([seen["train"], seen["val"], seen["test"]]).tolist()) == list(range(n_docs * T))
    assert (len(docs["test"]), len(docs["val"]), len(docs["train"])) == (8, 6, 26)
    first = {k: v.clone() for k, v in seen.items() if k != "seed"}
    mi_neural(X, Y, groups=torch.as_tensor(groups), seed=3)  # tensor groups: same split under the same seed
    assert all(torch.equal(first[k], seen[k]) for k in first)
    mi_neural(X, Y, groups=groups, seed=4)
    assert not torch.equal(first["test"], seen["test"])
    # a random row split (no groups) puts rows of almost every document in both train and test
    mi_neural(X, Y, seed=3)
    shared = set(groups[seen["train"].numpy()].tolist()) & set(groups[seen["test"].numpy()].tolist())
    assert len(shared) > 30


def test_mi_neural_group_errors():
    from msma_lens.analysis.metrics import mi_neural

    X, Y = torch.randn(60, 2), torch.randn(60, 2)
    with pytest.raises(ConfigError, match="groups has 59 entries, X and Y have 60 rows"):
        mi_neural(X, Y, groups=list(range(59)))
    with pytest.raises(ConfigError, match=r"needs at least 3 distinct groups \(documents\) to split train / validation / test by group, got 2"):
        mi_neural(X, Y, groups=[0] * 30 + [1] * 30)
    with pytest.raises(ConfigError, match=r"needs at least 2 distinct groups \(documents\) to split train / test by group, got 1"):
        mi_neural(X, Y, groups=[7] * 60, val_fraction=0.0)
    with pytest.raises(ConfigError, match="pass groups or test_mask, not both"):
        mi_neural(X, Y, groups=[0, 1, 2] * 20, test_mask=torch.zeros(60, dtype=torch.bool))
    with pytest.raises(ConfigError, match=r"test_fraction must be in \(0, 1\), got 1.0"):
        mi_neural(X, Y, groups=[0, 1, 2] * 20, test_fraction=1.0)


# ----- calibration of the defaults: held-out Gaussians at 2 nats -------------------------------------------
def _gaussian_splits(d: int, seed: int, sizes=(4800, 1200, 4096), mi: float = 2.0):
    g = torch.Generator().manual_seed(seed)
    rho = math.sqrt(1.0 - math.exp(-2.0 * mi / d))  # −(d/2)·log(1 − ρ²) = mi
    out = []
    for n in sizes:
        x, y = _gaussians(n, g, rho=rho, d=d)
        out += [x, y]
    return out


def test_default_estimate_mi_is_within_10_percent_at_2_nats_held_out():
    """Defaults (InfoNCE, 3 averaged separable critics, early stopping on validation), 8-d Gaussians with 2 nats,
    4800 train / 1200 validation / 4096 test rows: within 10% on the test split (measured 1.867). A single critic
    is ~7-11% low here (the critic's generalisation gap, see the module docstring)."""
    xtr, ytr, xv, yv, xte, yte = _gaussian_splits(8, 100)
    r = estimate_mi(xtr, ytr, xte, yte, x_val=xv, y_val=yv)
    assert r.estimator == "infonce" and r.n_critics == 3 and r.selected_on_val and len(r.member_best_steps) == 3
    assert abs(r.estimate - 2.0) / 2.0 < 0.10, r.estimate
    assert r.estimate <= r.log_batch_cap == pytest.approx(math.log(1024))


@pytest.mark.slow
@pytest.mark.parametrize(("d", "seed"), [(8, 101), (8, 102), (16, 100), (16, 101), (16, 102)])
def test_default_estimate_mi_within_10_percent_more_seeds_and_16_dims(d, seed):
    xtr, ytr, xv, yv, xte, yte = _gaussian_splits(d, seed)
    r = estimate_mi(xtr, ytr, xte, yte, x_val=xv, y_val=yv)
    assert abs(r.estimate - 2.0) / 2.0 < 0.10, (d, seed, r.estimate)


@pytest.mark.slow
def test_default_mi_neural_with_document_groups_is_within_10_percent():
    """mi_neural at its defaults on 8000 rows in 400 'documents' of 20 rows (train / validation / test by document)."""
    from msma_lens.analysis.metrics import mi_neural

    xtr, ytr, *_ = _gaussian_splits(8, 100, sizes=(8000,))
    v = mi_neural(xtr, ytr, groups=torch.arange(8000) // 20)
    assert abs(v - 2.0) / 2.0 < 0.10, v


def test_critic_ensemble_averages_scores_and_one_critic_is_the_old_estimator(data):
    from msma_lens.analysis.mi import CriticEnsemble

    kw = dict(steps=40, batch_size=128, hidden=16, embed=8, eval_every=10, seed=3)
    one = estimate_mi(*data, "infonce", n_critics=1, **kw)
    three = estimate_mi(*data, "infonce", n_critics=3, **kw)
    assert isinstance(one.critic, SeparableCritic) and isinstance(three.critic, CriticEnsemble)
    assert len(three.critic.members) == 3 and three.n_critics == 3 and len(three.member_steps_run) == 3
    # member 0 of the ensemble is the single critic (same seed, same minibatches)
    assert three.train_curve == one.train_curve
    assert all(torch.equal(p, q) for p, q in zip(one.critic.state_dict().values(), three.critic.members[0].state_dict().values()))
    x, y = data[2][:64], data[3][:64]
    with torch.no_grad():
        assert torch.allclose(three.critic(x, y), sum(m(x, y) for m in three.critic.members) / 3, atol=1e-6)
    with pytest.raises(ConfigError, match="n_critics must be an integer >= 1, got 0"):
        estimate_mi(*data, n_critics=0)
