"""The cross-scale map and its training (msma_lens.align.maps): closed-form init, Riemannian fits, losses,
determinism, checkpoint/resume, validation."""

from __future__ import annotations

import math

import geoopt
import pytest
import torch

from msma_lens.align import procrustes
from msma_lens.align.maps import CHECKPOINT_FILE, CrossScaleMap, MapTrainConfig, MapTrainer, curvature_loss, fit_map, geo_loss
from msma_lens.errors import ArtifactError, ConfigError, NumericsError


def _planted(n: int, d: int, det: int, seed: int, noise: float = 0.3, nonlinear: float = 0.0):
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
    if int(torch.linalg.slogdet(Q.double())[0]) != det:
        Q[:, 0] = -Q[:, 0]
    b = 0.3 * torch.randn(d, generator=g)

    def make(m: int):
        X = torch.randn(m, d, generator=g) * torch.linspace(0.5, 2.0, d)
        Y = 1.3 * X @ Q + b + nonlinear * torch.tanh(X) + noise * torch.randn(m, d, generator=g)
        return X, Y

    return (*make(n), *make(n // 2))


def _gap(out, X, Y) -> float:
    cf = procrustes(X, Y)
    with torch.no_grad():
        res = float(geo_loss(out.map(X).double(), Y.double()))
    return (res - cf.residual) / cf.residual


def _state_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _geo_only(**kw) -> MapTrainConfig:
    base = dict(lambda_geo=1.0, lambda_info=0.0, lambda_curv=0.0, eval_every=25, patience=None)
    base.update(kw)
    return MapTrainConfig(**base)


def test_init_from_procrustes_equals_closed_form():
    X, Y, _, _ = _planted(300, 12, -1, 0)
    m = CrossScaleMap(12, 12, residual_hidden=8)
    fit = m.init_from_procrustes(X, Y)
    assert isinstance(m.W, geoopt.ManifoldParameter) and m.det_sign() == -1
    with torch.no_grad():
        assert torch.allclose(m(X), fit.apply(X), atol=1e-5)
        assert torch.count_nonzero(m.residual(X)) == 0  # zero-initialised last layer: g ≡ 0


def test_gain_is_the_scalar_and_old_scale_names_are_deprecated_aliases():
    X, Y, _, _ = _planted(300, 12, 1, 0)
    m = CrossScaleMap(12, 12)
    fit = m.init_from_procrustes(X, Y)
    assert float(m.gain.detach()) == pytest.approx(fit.scale, rel=1e-6) and float(m.log_gain.detach()) == pytest.approx(math.log(fit.scale))
    assert torch.allclose(m.linear, m.gain * m.weight) and "log_gain" in m.state_dict()
    with pytest.deprecated_call(match=r"CrossScaleMap.scale is deprecated; use .gain") as rec:
        assert torch.equal(m.scale, m.gain)
    with pytest.deprecated_call(match=r"CrossScaleMap.log_scale is deprecated; use .log_gain"):
        assert m.log_scale is m.log_gain
    assert {w.filename for w in rec} == {__file__}
    old = {("log_scale" if k == "log_gain" else k): v for k, v in m.state_dict().items()}  # saved before the rename
    fresh = CrossScaleMap(12, 12)
    fresh.load_state_dict(old)  # strict: no missing or unexpected keys
    assert _state_equal(fresh, m)


def test_riemannian_fit_from_identity_reaches_closed_form():
    X, Y, _, _ = _planted(512, 16, 1, 1)
    cfg = _geo_only(init="identity", stiefel_lr=0.3, lr=1e-2, steps=300, batch_size=512)
    out = fit_map(X, Y, X, Y, cfg)
    assert out.closed_form is None and out.completed
    gap = _gap(out, X, Y)
    assert -1e-6 < gap < 1e-3, gap
    # fp32 retraction steps drift (Cayley: ~1e-5 per 100 steps); `stabilize` re-projects, fit_map ends with a float64 one
    assert max(r["ortho_error"] for r in out.history) < 1e-4
    assert out.map.orthogonality_error() < 1e-5


@pytest.mark.parametrize("manifold,steps", [("canonical", 200), ("euclidean", 400)])
def test_reflection_trap_and_closed_form_init(manifold, steps):
    # at the same stiefel_lr the Euclidean metric's steps are 1/√2 of the canonical one's (RiemannianAdam
    # normalises by the metric's norm), so from the identity it needs ~2x the steps to reach the Kabsch optimum
    X, Y, _, _ = _planted(512, 16, -1, 2)
    cfg = _geo_only(init="identity", stiefel_lr=0.3, lr=1e-2, steps=steps, batch_size=512, manifold=manifold)
    stuck = fit_map(X, Y, X, Y, cfg)
    assert stuck.map.det_sign() == 1 and _gap(stuck, X, Y) > 0.05  # SO(d) never reaches det = −1
    kabsch = procrustes(X, Y, allow_reflection=False).residual
    assert _gap(stuck, X, Y) < (kabsch - procrustes(X, Y).residual) / procrustes(X, Y).residual * 1.01
    good = fit_map(X, Y, X, Y, _geo_only(steps=50, batch_size=512, manifold=manifold))
    assert good.map.det_sign() == -1 and good.closed_form.det_sign == -1
    assert abs(_gap(good, X, Y)) < 1e-4


def test_joint_training_stays_orthonormal_and_improves_nonlinear_fit():
    X, Y, Xv, Yv = _planted(1024, 16, 1, 3, noise=0.1, nonlinear=0.5)
    cfg = MapTrainConfig(residual_hidden=32, lambda_geo=1.0, steps=150, batch_size=256, eval_every=25, lr=3e-3,
                         critic_hidden=32, critic_embed=16, eval_batch_size=512, estimator="infonce")
    out = fit_map(X, Y, Xv, Yv, cfg)
    assert out.map.orthogonality_error() < 1e-5
    assert max(r["ortho_error"] for r in out.history) < 1e-4  # fp32 retraction drift, bounded by `stabilize`
    h0, best = out.history[0], next(r for r in out.history if r["step"] == out.best_step)
    assert best["val_geo"] < h0["val_geo"]  # g captures the tanh part the closed form cannot
    assert best["val_info"] > 0.5 and best["val_curv"] > 0
    assert out.best_objective == best["val_objective"]


@pytest.mark.parametrize("estimator,critic", [("mine", "separable"), ("nwj", "separable"), ("smile", "separable"), ("infonce", "concat")])
def test_other_estimators_and_critics_run(estimator, critic):
    X, Y, Xv, Yv = _planted(256, 8, 1, 4)
    cfg = MapTrainConfig(estimator=estimator, critic=critic, residual_hidden=8, steps=20, batch_size=64, eval_every=10,
                         critic_hidden=16, critic_embed=8, eval_batch_size=64)
    out = fit_map(X, Y, Xv, Yv, cfg)
    assert all(math.isfinite(r["val_info"]) for r in out.history)
    assert type(out.critic).__name__ == {"separable": "SeparableCritic", "concat": "ConcatCritic"}[critic]


def test_same_seed_identical_result():
    X, Y, Xv, Yv = _planted(400, 12, 1, 5, nonlinear=0.3)
    cfg = dict(residual_hidden=16, steps=40, batch_size=128, eval_every=10, critic_hidden=32, critic_embed=16)
    a = fit_map(X, Y, Xv, Yv, MapTrainConfig(**cfg, seed=3))
    b = fit_map(X, Y, Xv, Yv, MapTrainConfig(**cfg, seed=3))
    c = fit_map(X, Y, Xv, Yv, MapTrainConfig(**cfg, seed=4))
    assert _state_equal(a.map, b.map) and _state_equal(a.critic, b.critic)
    assert not _state_equal(a.map, c.map)


def _history_equal(h1: list[dict], h2: list[dict]) -> bool:
    same = lambda u, v: u == v or (isinstance(u, float) and math.isnan(u) and math.isnan(v))  # noqa: E731
    return len(h1) == len(h2) and all(r1.keys() == r2.keys() and all(same(r1[k], r2[k]) for k in r1) for r1, r2 in zip(h1, h2))


def test_resume_from_checkpoint_equals_uninterrupted(tmp_path):
    X, Y, Xv, Yv = _planted(400, 12, -1, 6, nonlinear=0.3)
    cfg = dict(residual_hidden=16, steps=60, batch_size=128, eval_every=10, critic_hidden=32, critic_embed=16, stabilize=20)
    full = fit_map(X, Y, Xv, Yv, MapTrainConfig(**cfg))
    part = fit_map(X, Y, Xv, Yv, MapTrainConfig(**cfg, checkpoint_dir=str(tmp_path), checkpoint_every=7), stop_after=33)
    assert not part.completed and part.steps_run == 33
    resumed = fit_map(X, Y, Xv, Yv, MapTrainConfig(**cfg, checkpoint_dir=str(tmp_path), checkpoint_every=7))
    assert resumed.completed and resumed.steps_run == 60
    assert _state_equal(full.map, resumed.map) and _state_equal(full.critic, resumed.critic)
    assert _history_equal(full.history, resumed.history) and full.best_step == resumed.best_step
    again = fit_map(X, Y, Xv, Yv, MapTrainConfig(**cfg, checkpoint_dir=str(tmp_path)))  # finished: just reloads
    assert _state_equal(full.map, again.map)
    with pytest.raises(ArtifactError, match="different config.*lambda_geo"):
        fit_map(X, Y, Xv, Yv, MapTrainConfig(**cfg, lambda_geo=0.5, checkpoint_dir=str(tmp_path)))
    with pytest.raises(ArtifactError, match="different training/validation data"):
        fit_map(X + 1, Y, Xv, Yv, MapTrainConfig(**cfg, checkpoint_dir=str(tmp_path)))


def test_curvature_loss_zero_for_affine_positive_for_nonlinear():
    x = torch.randn(64, 10, generator=torch.Generator().manual_seed(7))
    assert float(curvature_loss(None, x)) == 0.0
    m = CrossScaleMap(10, 10, residual_hidden=16)
    with torch.no_grad():
        assert float(curvature_loss(m.residual, x)) == 0.0  # g ≡ 0 at init
    torch.nn.init.normal_(m.residual[2].weight)
    with torch.no_grad():
        assert float(curvature_loss(m.residual, x, generator=torch.Generator().manual_seed(0))) > 1e-3
    lin = torch.nn.Linear(10, 10).double()
    with torch.no_grad():
        assert float(curvature_loss(lin, x.double())) < 1e-20  # second difference of an affine map


def test_geo_loss():
    y = torch.randn(50, 4)
    assert float(geo_loss(y, y)) == 0.0
    assert abs(float(geo_loss(y.mean(0).expand_as(y), y)) - 1.0) < 1e-6


@pytest.mark.parametrize("d_in,d_out", [(24, 8), (8, 24)])
def test_rectangular_maps(d_in, d_out):
    g = torch.Generator().manual_seed(8)
    X = torch.randn(300, d_in, generator=g)
    Y = X @ torch.randn(d_in, d_out, generator=g) / math.sqrt(d_in) + 0.1 * torch.randn(300, d_out, generator=g)
    m = CrossScaleMap(d_in, d_out, manifold="euclidean")
    assert m.W.shape[-1] <= m.W.shape[-2] and m.weight.shape == (d_in, d_out)
    fit = m.init_from_procrustes(X, Y)
    with torch.no_grad():
        assert torch.allclose(m(X), fit.apply(X), atol=1e-5)
    out = fit_map(X, Y, X, Y, _geo_only(steps=60, batch_size=300, stiefel_lr=0.05, lr=1e-3), map=m)
    W = out.map.weight.detach().double()
    gram = W.T @ W if d_in > d_out else W @ W.T
    assert torch.allclose(gram, torch.eye(min(d_in, d_out), dtype=torch.float64), atol=1e-5)
    assert out.history[-1]["val_geo"] <= out.history[0]["val_geo"] + 1e-6
    assert torch.equal(m.W, torch.as_tensor(fit.W.T if d_in < d_out else fit.W, dtype=torch.float32))  # input map untouched


def test_config_validation():
    with pytest.raises(ConfigError, match=r"lambda_info must be a finite number >= 0, got -0.1"):
        MapTrainConfig(lambda_info=-0.1)
    with pytest.raises(ConfigError, match="lambda_curv must be a finite number >= 0, got nan"):
        MapTrainConfig(lambda_curv=float("nan"))
    with pytest.raises(ConfigError, match="lambda_geo must be a finite number >= 0, got inf"):
        MapTrainConfig(lambda_geo=float("inf"))
    with pytest.raises(ConfigError, match="estimator must be one of mine, infonce, nwj, smile, got 'mi'"):
        MapTrainConfig(estimator="mi")
    with pytest.raises(ConfigError, match="stiefel_lr must be a finite number > 0"):
        MapTrainConfig(stiefel_lr=0)
    with pytest.raises(ConfigError, match="steps must be an integer >= 1"):
        MapTrainConfig(steps=1.5)
    with pytest.raises(ConfigError, match="patience must be None or an integer >= 1"):
        MapTrainConfig(patience=0)
    with pytest.raises(ConfigError, match="manifold must be one of canonical, euclidean"):
        MapTrainConfig(manifold="grassmann")
    with pytest.raises(ConfigError, match="critic must be one of separable, concat, got 'bilinear'"):
        MapTrainConfig(critic="bilinear")
    with pytest.raises(ConfigError, match="unknown manifold 'x'"):
        CrossScaleMap(4, 4, manifold="x")
    assert (MapTrainConfig().lambda_geo, MapTrainConfig().lambda_info, MapTrainConfig().lambda_curv) == (0.1, 0.1, 0.01)


def test_fit_map_input_errors(tmp_path):
    X, Y, Xv, Yv = _planted(64, 8, 1, 9)
    cfg = _geo_only(steps=2)
    with pytest.raises(ConfigError, match=r"^map expects source width 576, got 64 \(X_train\)$"):
        fit_map(torch.randn(10, 64), torch.randn(10, 576), torch.randn(10, 64), torch.randn(10, 576), cfg,
                map=CrossScaleMap(576, 576))
    with pytest.raises(ConfigError, match=r"map expects source width 8, got 5 \(X_val\)"):
        fit_map(X, Y, Xv[:, :5], Yv, cfg)
    with pytest.raises(ConfigError, match=r"map expects target width 8, got 7 \(Y_val\)"):
        fit_map(X, Y, Xv, Yv[:, :7], cfg)
    with pytest.raises(ConfigError, match="X_train and Y_train must have the same number of rows.*64 vs 63"):
        fit_map(X, Y[:-1], Xv, Yv, cfg)
    bad = Xv.clone()
    bad[2, 3] = float("inf")
    with pytest.raises(NumericsError, match=r"X_val contains 1 NaN/Inf value\(s\) \(first in row 2\)"):
        fit_map(X, Y, bad, Yv, cfg)
    with pytest.raises(ConfigError, match=r"at least 2 val samples \(for centring and marginal pairs\), got 1"):
        fit_map(X, Y, Xv[:1], Yv[:1], cfg)
    with pytest.raises(ConfigError, match="stop_after needs cfg.checkpoint_dir"):
        fit_map(X, Y, Xv, Yv, cfg, stop_after=1)
    (tmp_path / "fit_map.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ArtifactError, match="cannot read checkpoint"):
        fit_map(X, Y, Xv, Yv, _geo_only(steps=2, checkpoint_dir=str(tmp_path)))


def test_fit_map_progress_bar_on_stderr_and_off(capsys):
    X, Y, Xv, Yv = _planted(64, 4, 1, seed=0)
    cfg = _geo_only(steps=20, eval_every=5)
    on = fit_map(X, Y, Xv, Yv, cfg, progress=True, desc="g->i")
    cap = capsys.readouterr()
    assert cap.out == ""
    assert "g->i" in cap.err and "/20" in cap.err and "val=" in cap.err  # bar over the 20 steps, held-out objective
    off = fit_map(X, Y, Xv, Yv, cfg, progress=False)
    assert capsys.readouterr().err == ""
    assert _history_equal(on.history, off.history) and _state_equal(on.map, off.map)  # the bar does not touch the fit


def _nested_equal(a, b) -> bool:
    """Equal nested dicts / lists / tensors / floats (NaN equals NaN)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_nested_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_nested_equal(u, v) for u, v in zip(a, b))
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return a == b


def _trainer_data():
    X, Y, Xv, Yv = _planted(300, 10, 1, 10, nonlinear=0.3)
    cfg = MapTrainConfig(residual_hidden=8, steps=40, batch_size=64, eval_every=5, patience=3, critic_hidden=16, critic_embed=8,
                         eval_batch_size=64, stabilize=7, seed=2, lr=3e-2)  # early-stops at step 15, best (by val_geo) at step 0
    return X, Y, Xv, Yv, cfg


def test_trainer_step_evaluate_record():
    X, Y, Xv, Yv, cfg = _trainer_data()
    tr = MapTrainer(X, Y, Xv, Yv, cfg)
    assert tr.steps_done == 0 and tr.history == [] and tr.closed_form is not None
    before = tr.evaluate()
    assert before == tr.evaluate() and set(before) == {"val_objective", "val_geo", "val_info", "val_curv", "val_geo_term",
                                                      "val_info_term", "val_curv_term"}  # no state change
    row0 = tr.record()
    assert tr.history == [row0] and row0["step"] == 0 and math.isnan(row0["train_loss"]) and tr.stopper.best_step == 0
    losses = [tr.step() for _ in range(3)]
    assert tr.steps_done == 3 and all(set(d) == {"loss", "geo", "info", "curv"} and math.isfinite(d["loss"]) for d in losses)
    assert losses[0]["loss"] == pytest.approx(cfg.lambda_geo * losses[0]["geo"] - cfg.lambda_info * losses[0]["info"]
                                              + cfg.lambda_curv * losses[0]["curv"], rel=1e-5)
    row = tr.record()
    assert row["step"] == 3 and row["train_loss"] == pytest.approx(sum(d["loss"] for d in losses) / 3)
    assert tr.map.orthogonality_error() < 1e-5 and isinstance(tr.map.W, geoopt.ManifoldParameter)
    done = MapTrainer(X, Y, Xv, Yv, _geo_only(steps=2))
    done.step(), done.step()
    with pytest.raises(ConfigError, match="MapTrainer.step: all cfg.steps=2 steps are done"):
        done.step()


def test_trainer_is_fit_map_and_resumes_from_a_state_dict_mid_training(tmp_path):
    X, Y, Xv, Yv, cfg = _trainer_data()
    full = MapTrainer(X, Y, Xv, Yv, cfg).fit(progress=False)
    ref = fit_map(X, Y, Xv, Yv, cfg, progress=False)
    assert _state_equal(full.map, ref.map) and _history_equal(full.history, ref.history) and full.best_step == ref.best_step
    assert full.completed and full.steps_run < cfg.steps and full.best_step < 13  # resumed below with two bad evaluations
    part = MapTrainer(X, Y, Xv, Yv, cfg)
    part.record()
    for _ in range(13):  # stop between evaluations: the train-loss accumulator and the RNG are mid-interval
        part.step()
        if part.steps_done % cfg.eval_every == 0:
            part.record()
    state, part_stopper = part.state_dict(), part.stopper.state_dict()
    for _ in range(4):  # the state is a snapshot: training on does not change it
        part.step()
    resumed = MapTrainer(X, Y, Xv, Yv, cfg)
    resumed.load_state_dict(state)
    assert _nested_equal(resumed.state_dict(), state) and resumed.steps_done == 13 and resumed.closed_form is None
    assert resumed.stopper.state_dict() == part_stopper and resumed.stopper.bad == 2
    out = resumed.fit(progress=False)
    assert out.completed and out.steps_run == full.steps_run
    assert _state_equal(full.map, out.map) and _state_equal(full.critic, out.critic)
    assert _history_equal(full.history, out.history) and (full.best_step, full.best_objective) == (out.best_step, out.best_objective)
    assert out.map.orthogonality_error() < 1e-5 and out.map.det_sign() == full.map.det_sign()
    part.save(tmp_path / CHECKPOINT_FILE)  # the file format is the state dict
    from_file = MapTrainer(X, Y, Xv, Yv, cfg)
    from_file.load(tmp_path / CHECKPOINT_FILE)
    assert _nested_equal(from_file.state_dict(), part.state_dict())


def test_trainer_state_dict_mismatches_are_artifact_errors():
    X, Y, Xv, Yv, cfg = _trainer_data()
    state = MapTrainer(X, Y, Xv, Yv, cfg).state_dict()
    with pytest.raises(ArtifactError, match=r"^state dict was written with a different config \(fields: seed\)$"):
        MapTrainer(X, Y, Xv, Yv, MapTrainConfig(**{**vars(cfg), "seed": 3})).load_state_dict(state)
    with pytest.raises(ArtifactError, match="state dict holds a map .*'residual_hidden': 8"):
        MapTrainer(X, Y, Xv, Yv, cfg, map=CrossScaleMap(10, 10)).load_state_dict(state)
    with pytest.raises(ArtifactError, match="mine.pt has checkpoint format_version 3; .* reads version 2 only"):
        MapTrainer(X, Y, Xv, Yv, cfg).load_state_dict({**state, "format_version": 3}, source="mine.pt")
    with pytest.raises(ArtifactError, match="state dict is not a fit_map checkpoint"):
        MapTrainer(X, Y, Xv, Yv, cfg).load_state_dict({"map": state["map"]})


def test_best_step_is_chosen_by_validation_residual_not_by_the_critics_mi():
    X, Y, Xv, Yv = _planted(512, 8, 1, 5, noise=0.3)
    cfg = MapTrainConfig(residual_hidden=16, lambda_geo=0.1, lambda_info=10.0, steps=60, batch_size=128, eval_every=10,
                         lr=3e-3, patience=None, critic_hidden=16, critic_embed=8, eval_batch_size=256, estimator="infonce")
    out = fit_map(X, Y, Xv, Yv, cfg, progress=False)
    h = out.history
    by_geo = min(h, key=lambda r: r["val_geo"])["step"]
    by_mi = max(h, key=lambda r: r["val_info"])["step"]
    by_objective = min(h, key=lambda r: r["val_objective"])["step"]
    assert by_mi != by_geo and by_objective != by_geo  # the planted case separates the rules
    assert out.best_step == by_geo and out.best_geo == min(r["val_geo"] for r in h)
    best = next(r for r in h if r["step"] == out.best_step)
    assert out.best_objective == best["val_objective"]
    assert best["val_info_term"] == pytest.approx(10.0 * best["val_info"])  # the MI term is reported beside it
    assert best["val_geo_term"] == pytest.approx(0.1 * best["val_geo"])


def _batches_and_state(lambda_curv: float, steps: int = 12):
    X, Y, Xv, Yv = _planted(512, 8, 1, 6, nonlinear=0.5)
    cfg = MapTrainConfig(residual_hidden=16, lambda_curv=lambda_curv, steps=steps, batch_size=64, eval_every=4, lr=3e-3,
                         critic_hidden=16, critic_embed=8, eval_batch_size=128)
    tr = MapTrainer(X, Y, Xv, Yv, cfg)
    batches = []
    for _ in range(steps):
        tr.step()
        batches.append(tr.last_batch.clone())
    return batches, tr


def test_curvature_has_its_own_random_stream_so_ablations_see_identical_batches():
    b0, t0 = _batches_and_state(0.0)
    b1, t1 = _batches_and_state(1e-12)
    assert all(torch.equal(a, b) for a, b in zip(b0, b1, strict=True))
    sa, sb = t0.map.state_dict(), t1.map.state_dict()
    assert max(float((sa[k] - sb[k]).abs().max()) for k in sa) < 1e-6
    assert t1.evaluate()["val_curv_term"] > 0 and t0.evaluate()["val_curv_term"] == 0.0


def test_curvature_term_magnitude_is_logged_and_relative_scale_is_documented_option():
    X, Y, Xv, Yv = _planted(512, 8, 1, 7, nonlinear=0.5)
    kw = dict(residual_hidden=16, steps=20, batch_size=128, eval_every=10, lr=3e-3, critic_hidden=16, critic_embed=8,
              eval_batch_size=256)
    absolute = fit_map(X, Y, Xv, Yv, MapTrainConfig(**kw), progress=False)
    relative = MapTrainer(X, Y, Xv, Yv, MapTrainConfig(curv_scale="relative", **kw))
    last = absolute.history[-1]
    assert {"val_geo_term", "val_info_term", "val_curv_term"} <= set(last)
    assert 0 < last["val_curv_term"] < 1e-2 * last["val_geo_term"]  # the published penalty is tiny next to geometry
    assert relative.curv_ref > 0 and relative.evaluate()["val_curv"] == 0.0  # g ≡ 0 at init
    with pytest.raises(ConfigError, match="curv_scale"):
        MapTrainConfig(curv_scale="bogus")


def test_version_1_checkpoint_is_refused_with_a_clear_error():
    X, Y, Xv, Yv = _planted(128, 4, 1, 8)
    tr = MapTrainer(X, Y, Xv, Yv, _geo_only(steps=4, batch_size=32, eval_every=2))
    state = tr.state_dict()
    assert state["format_version"] == 2
    state["format_version"] = 1
    with pytest.raises(ArtifactError, match="version 1.*validation residual"):
        MapTrainer(X, Y, Xv, Yv, _geo_only(steps=4, batch_size=32, eval_every=2)).load_state_dict(state)


# ----- both Stiefel metrics: constraint, planted rotation, checkpoints (issue 12) --------------------------
@pytest.mark.parametrize("manifold", ["canonical", "euclidean"])
def test_each_manifold_recovers_a_planted_rotation_and_keeps_the_stiefel_constraint(manifold, tmp_path):
    from msma_lens.align.maps import MANIFOLDS

    assert manifold in MANIFOLDS
    X, Y, _, _ = _planted(512, 16, 1, 1)
    cfg = _geo_only(init="identity", stiefel_lr=0.3, lr=1e-2, steps=300, batch_size=512, manifold=manifold,
                    checkpoint_dir=str(tmp_path))
    out = fit_map(X, Y, X, Y, cfg, progress=False)
    expected = geoopt.EuclideanStiefel if manifold == "euclidean" else geoopt.CanonicalStiefel
    assert out.map.manifold_name == manifold and type(out.map.manifold) is expected
    assert -1e-6 < _gap(out, X, Y) < 1e-3  # reaches the closed form from the identity
    W = out.map.W.detach().double()
    assert torch.allclose(W.T @ W, torch.eye(16, dtype=torch.float64), atol=1e-6, rtol=0)  # WᵀW = I to 1e-6
    assert max(r["ortho_error"] for r in out.history) < 1e-4  # during training too (before the final re-projection)
    ck = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)
    assert ck["map_spec"]["manifold"] == manifold  # the checkpoint records the manifold
    other = "canonical" if manifold == "euclidean" else "euclidean"
    with pytest.raises(ArtifactError, match=r"was written with a different config \(fields: manifold\)"):
        fit_map(X, Y, X, Y, _geo_only(init="identity", stiefel_lr=0.3, lr=1e-2, steps=300, batch_size=512, manifold=other,
                                      checkpoint_dir=str(tmp_path)), progress=False)


@pytest.mark.parametrize("manifold", ["canonical", "euclidean"])
def test_each_manifold_keeps_the_constraint_under_the_full_objective(manifold):
    assert MapTrainConfig().manifold == "canonical" and CrossScaleMap(4, 4).manifold_name == "canonical"  # the default
    X, Y, Xv, Yv = _planted(1024, 16, -1, 3, noise=0.1, nonlinear=0.5)
    cfg = MapTrainConfig(residual_hidden=16, lambda_geo=1.0, steps=80, batch_size=256, eval_every=20, lr=3e-3,
                         critic_hidden=16, critic_embed=8, eval_batch_size=256, manifold=manifold, stiefel_lr=0.3)
    out = fit_map(X, Y, Xv, Yv, cfg, progress=False)
    W = out.map.W.detach().double()
    assert torch.allclose(W.T @ W, torch.eye(16, dtype=torch.float64), atol=1e-6, rtol=0)
    assert out.map.det_sign() == -1  # started from the closed form's reflection and stayed in its component
    best = next(r for r in out.history if r["step"] == out.best_step)
    assert best["val_geo"] <= out.history[0]["val_geo"]


def test_procrustes_leaves_its_inputs_alone_and_fp32_equals_fp64():
    X, Y, _, _ = _planted(300, 12, 1, 0)
    for dt in (torch.float32, torch.float64):
        Xt, Yt = X.to(dt), Y.to(dt)
        X0, Y0 = Xt.clone(), Yt.clone()
        for kw in ({}, {"bias": False}, {"whiten": True}):
            procrustes(Xt, Yt, **kw)
            assert torch.equal(Xt, X0) and torch.equal(Yt, Y0), (dt, kw)  # centring in place only on its own copies
    a, b = procrustes(X.float(), Y.float()), procrustes(X.float().double(), Y.float().double())
    assert torch.equal(a.W, b.W) and a.scale == b.scale and torch.equal(a.bias, b.bias) and a.residual == b.residual
