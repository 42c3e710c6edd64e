"""Hyperparameter search of the cross-scale maps (Optuna TPE + median pruning) on planted structure: the search
finds the region that the planted nonlinearity needs, prunes, resumes exactly, is seeded, and feeds fit_alignment."""

import dataclasses
import json

import pytest
import torch

from msma_lens import ArtifactError, ConfigError, ScaleActivations, Scales
from msma_lens.align.maps import MapTrainConfig, geo_loss
from msma_lens.align.procrustes import procrustes
from msma_lens.align.protocol import AlignConfig, fit_alignment, prepare_pairs
from msma_lens.align.tuning import JOURNAL_FILE, TuneConfig, TuningResult, tune_alignment
from msma_lens.analysis import metrics as M
from msma_lens.cli import main


def _planted(nonlinear=1.0, n_docs=40, T=20, seed=3, d=8):
    """Target = planted rotation of the source + a planted smooth nonlinearity (tanh) + noise."""
    g = torch.Generator().manual_seed(seed)
    n = n_docs * T
    X = torch.randn(n, d, generator=g) * torch.linspace(0.5, 2.0, d)
    Q = torch.linalg.qr(torch.randn(d, d, generator=g))[0]
    Y = X @ Q + nonlinear * torch.tanh(2.0 * X) + 0.1 * torch.randn(n, d, generator=g)
    meta = {"model_id": "synthetic", "pooling": "token", "scales": Scales.from_ranges({"a": (0, 1), "b": (2, 3)}).to_dict()}
    return ScaleActivations({"a": X, "b": Y}, torch.arange(n_docs).repeat_interleave(T), torch.arange(1, T + 1).repeat(n_docs),
                            meta)


def _cfg(**train):
    train = {"batch_size": 128, "critic_hidden": 16, "critic_embed": 8, "eval_batch_size": 128, **train}
    return AlignConfig(pairs=(("a", "b"),), train=MapTrainConfig(**train), max_eval_rows=256, pair_metrics=("cka_debiased",),
                       mi_test_steps=0)


def _tune(**kw):
    kw = {"n_trials": 12, "steps": 60, "eval_every": 10, "residual_hidden": (0, 32), "lr": (1e-3, 3e-2),
          "startup_trials": 4, "prune_startup_trials": 2, "prune_warmup_steps": 10, **kw}
    return TuneConfig(**kw)


@pytest.fixture(scope="module")
def acts():
    return _planted()


@pytest.fixture(scope="module")
def tuned(acts):
    return tune_alignment(acts, _cfg(), _tune(), progress=False)


def test_search_finds_the_nonlinear_region_and_beats_the_closed_form(acts, tuned):
    p = tuned.pairs["a->b"]
    best, trials = p["best"], p["trials"]
    # the closed-form reference is the Procrustes fit on the protocol's own train split, scored on its validation split
    d = prepare_pairs(acts, _cfg())["a->b"]
    cf = procrustes(d["X"]["train"], d["Y"]["train"])
    want = float(geo_loss(cf.apply(d["X"]["val"]).double(), d["Y"]["val"].double()))
    assert p["closed_form"]["val_residual"] == pytest.approx(want, rel=1e-9)
    assert p["closed_form"]["val_kl_diag"] == pytest.approx(M.kl_diag(cf.apply(d["X"]["val"]), d["Y"]["val"]), rel=1e-6)
    # the planted tanh needs g: the best trial has a residual MLP and beats the best affine map (the closed form) clearly
    assert best["params"]["residual_hidden"] > 0
    assert best["value"] < 0.6 * p["closed_form"]["val_residual"]
    assert tuned.beats_closed_form("a->b")
    affine = [t for t in trials if t["params"]["residual_hidden"] == 0 and t["state"] == "COMPLETE"]
    assert affine, "the search never tried the affine region"
    # an affine map cannot beat the optimal affine map by much: the whole region is worse than the best trial
    assert min(t["value"] for t in affine) > 0.95 * p["closed_form"]["val_residual"] > best["value"]
    # the best trial is the lowest validation residual, whatever the critic's information bound says
    complete = [t for t in trials if t["state"] == "COMPLETE"]
    assert best["number"] == min(complete, key=lambda t: t["value"])["number"]
    a = best["user_attrs"]
    assert a["val_residual"] == best["value"] and a["closed_form_val_residual"] == p["closed_form"]["val_residual"]
    assert a["val_kl_diag"] < p["closed_form"]["val_kl_diag"]
    assert 0 <= a["best_step"] <= 60 and set(a) >= {"val_info", "val_info_term", "val_curv_term", "steps_run"}
    assert (a["val_info"] == a["val_info"]) == best["params"].get("use_info", True)  # Î is NaN exactly when λ_info = 0


def test_pruning_stops_trials_early(tuned):
    trials = tuned.pairs["a->b"]["trials"]
    pruned = [t for t in trials if t["state"] == "PRUNED"]
    assert pruned, [t["state"] for t in trials]
    assert all(t["user_attrs"]["steps_run"] < 60 for t in pruned)
    assert all(t["user_attrs"]["steps_run"] == 60 for t in trials if t["state"] == "COMPLETE")  # no early stop at patience 10
    assert len(trials) == 12 and [t["number"] for t in trials] == list(range(12))


def test_tuned_configs_refit_the_best_trial_exactly(acts, tuned):
    cfg = _cfg()
    pt = tuned.best_train_configs(cfg.train)
    c, params = pt["a->b"], tuned.best_params["a->b"]
    assert (c.steps, c.eval_every, c.residual_hidden, c.lr, c.stiefel_lr) == (60, 10, params["residual_hidden"], params["lr"],
                                                                             params["stiefel_lr"])
    assert c.lambda_info == (params["lambda_info"] if params.get("use_info", True) else 0.0)
    assert (c.batch_size, c.critic_hidden) == (128, 16)  # untuned fields come from the base
    r = fit_alignment(acts, tuned.align_config(cfg), progress=False)
    m = r.metrics["a->b"]
    assert r.selected["a->b"] == "trained"
    # same split, seed, steps and params: the fit's trained validation residual is the best trial's value
    assert m["val_residual"]["trained"] == pytest.approx(tuned.pairs["a->b"]["best"]["value"], rel=1e-5)
    assert m["val_residual"]["closed_form"] == pytest.approx(tuned.pairs["a->b"]["closed_form"]["val_residual"], rel=1e-9)
    assert m["after"]["residual"] < 0.7 * m["closed_form"]["residual"]  # held-out documents agree with validation


def test_resume_completes_exactly_the_missing_trials_and_equals_an_uninterrupted_search(acts, tmp_path):
    small = dict(n_trials=3, steps=30, eval_every=10)
    first = tune_alignment(acts, _cfg(), _tune(**small), storage=tmp_path / "s", progress=False)
    assert (tmp_path / "s" / JOURNAL_FILE).is_file()
    assert first.pairs["a->b"]["n_new_trials"] == 3 and len(first.pairs["a->b"]["trials"]) == 3
    more = tune_alignment(acts, _cfg(), _tune(**{**small, "n_trials": 5}), storage=tmp_path / "s", progress=False)
    assert more.pairs["a->b"]["n_new_trials"] == 2 and [t["number"] for t in more.pairs["a->b"]["trials"]] == [0, 1, 2, 3, 4]
    again = tune_alignment(acts, _cfg(), _tune(**{**small, "n_trials": 5}), storage=tmp_path / "s", progress=False)
    assert again.pairs["a->b"]["n_new_trials"] == 0
    # resuming runs the trials an uninterrupted search runs (per-trial seeded sampler): same params and values
    straight = tune_alignment(acts, _cfg(), _tune(**{**small, "n_trials": 5}), storage=tmp_path / "t", progress=False)

    def key(r):
        return [(t["params"], t["value"], t["state"]) for t in r.pairs["a->b"]["trials"]]

    assert key(more) == key(straight)
    assert key(more)[:3] == key(first)
    # a stored study made with another search or config is refused, naming what differs
    with pytest.raises(ArtifactError, match=r"study 'a->b' made with a different .*\(differs in: search\)"):
        tune_alignment(acts, _cfg(), _tune(**{**small, "steps": 40}), storage=tmp_path / "s", progress=False)
    with pytest.raises(ArtifactError, match=r"differs in: train\)"):
        tune_alignment(acts, _cfg(batch_size=64), _tune(**small), storage=tmp_path / "s", progress=False)


def test_same_seed_same_search_other_seed_other_draws(acts):
    kw = dict(n_trials=4, steps=20, eval_every=10)
    a = tune_alignment(acts, _cfg(), _tune(**kw), progress=False)
    b = tune_alignment(acts, _cfg(), _tune(**kw), progress=False)
    c = tune_alignment(acts, _cfg(), _tune(seed=1, **kw), progress=False)
    assert a.best_params == b.best_params
    assert [t["value"] for t in a.pairs["a->b"]["trials"]] == [t["value"] for t in b.pairs["a->b"]["trials"]]
    assert a.pairs["a->b"]["trials"][0]["params"] != c.pairs["a->b"]["trials"][0]["params"]


@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad=True to a scalar")  # maps.py's error message
def test_diverging_trials_fail_and_are_never_chosen(acts):
    r = tune_alignment(acts, _cfg(), _tune(n_trials=2, steps=10, eval_every=5, lr=(1e8, 1e9), residual_hidden=(0,)),
                       progress=False)
    p = r.pairs["a->b"]
    assert [t["state"] for t in p["trials"]] == ["FAIL", "FAIL"]
    assert all("non-finite loss" in t["user_attrs"]["error"] for t in p["trials"])
    assert p["best"] is None and r.best_params == {} and r.best_train_configs() == {}
    assert "best: none (no trial completed)" in r.table()
    assert r.align_config().pair_train == {}


def test_save_load_table_and_figures(tuned, tmp_path):
    path = tuned.save(tmp_path / "r")
    for f in ("tuning.json", "tuning.csv", "tuning.html", "tuning.txt"):
        assert (path / f).is_file(), f
    back = TuningResult.load(path)
    assert back.best_params == tuned.best_params and back.best_train_configs() == tuned.best_train_configs()
    assert json.loads((path / "tuning.json").read_text())["kind"] == "msma_lens.TuningResult"
    rows = (path / "tuning.csv").read_text().splitlines()
    assert len(rows) == 1 + 12 and rows[0].startswith("pair,number,state,value")
    best = tuned.pairs["a->b"]["best"]
    table = tuned.table()
    assert f"best: trial {best['number']}, validation residual {best['value']:.4f}" in table
    assert f"residual_hidden={best['params']['residual_hidden']}" in table and "PRUNED" in table
    figs = tuned.figures()
    assert set(figs) == {"history", "params"}
    names = [t.name for t in figs["history"].data]
    assert names.count("complete") == names.count("pruned") == names.count("best so far") == 1
    n_complete = sum(t["state"] == "COMPLETE" for t in tuned.pairs["a->b"]["trials"])
    assert len(figs["history"].data[0].x) == n_complete
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "tuning.json").write_text('{"kind": "other"}')
    with pytest.raises(ArtifactError, match="is not a msma_lens.TuningResult"):
        TuningResult.load(tmp_path / "bad")


@pytest.mark.parametrize("field,value,msg", [
    ("n_trials", 0, r"TuneConfig.n_trials must be an integer >= 1, got 0"),
    ("steps", 2.5, r"TuneConfig.steps must be an integer >= 1, got 2.5"),
    ("eval_every", 500, r"TuneConfig.eval_every must be <= steps \(150\), got 500"),
    ("timeout_s", -1, r"TuneConfig.timeout_s must be None or a finite number of seconds > 0, got -1"),
    ("seed", "x", r"TuneConfig.seed must be an integer, got 'x'"),
    ("lambda_info", (0.0, 1.0), r"TuneConfig.lambda_info must be a log-uniform range \(low, high\) with 0 < low < high"),
    ("lr", (1e-2, 1e-3), r"TuneConfig.lr must be a log-uniform range"),
    ("stiefel_lr", (1e-3,), r"TuneConfig.stiefel_lr must be a log-uniform range"),
    ("lambda_curv", (1e-3, float("inf")), r"TuneConfig.lambda_curv must be a log-uniform range"),
    ("residual_hidden", (), r"TuneConfig.residual_hidden must be a non-empty set of distinct integer widths >= 0, got \(\)"),
    ("residual_hidden", (0, 0), r"TuneConfig.residual_hidden must be a non-empty set"),
    ("residual_hidden", (-1, 8), r"TuneConfig.residual_hidden must be a non-empty set"),
    ("try_no_info", 1, r"TuneConfig.try_no_info must be True or False, got 1"),
    ("prune_warmup_steps", -1, r"TuneConfig.prune_warmup_steps must be an integer >= 0, got -1"),
])
def test_bad_tune_config_names_the_field(field, value, msg):
    with pytest.raises(ConfigError, match=msg):
        TuneConfig(**{field: value})


def test_bad_arguments(acts):
    with pytest.raises(ConfigError, match="tune must be a TuneConfig, got dict"):
        tune_alignment(acts, _cfg(), {"n_trials": 1})
    with pytest.raises(ConfigError, match="unknown scale 'c'"):
        tune_alignment(acts, AlignConfig(pairs=(("a", "c"),)), _tune(n_trials=1))
    assert TuneConfig.from_dict(TuneConfig(lr=[1e-4, 1e-3]).to_dict()) == TuneConfig(lr=(1e-4, 1e-3))


def test_pair_train_roundtrips_and_overrides_train(acts):
    special = MapTrainConfig(steps=20, eval_every=5, residual_hidden=4, batch_size=64, lambda_info=0.0)
    cfg = dataclasses.replace(_cfg(steps=30, eval_every=10, residual_hidden=0), pair_train={"a->b": special})
    back = AlignConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and back.pair_train["a->b"] == special and back.train_for("a->b") == special
    assert AlignConfig.from_dict({k: v for k, v in cfg.to_dict().items() if k != "pair_train"}).pair_train == {}  # older configs
    with pytest.raises(ConfigError, match=r"AlignConfig.pair_train: unknown pair 'b->a'; the configured pairs are \['a->b'\]"):
        dataclasses.replace(cfg, pair_train={"b->a": special})
    with pytest.raises(ConfigError, match=r"AlignConfig.pair_train\['a->b'\] must be a MapTrainConfig, got dict"):
        AlignConfig(pairs=(("a", "b"),), pair_train={"a->b": {"steps": 3}})
    r = fit_alignment(acts, cfg, progress=False)
    assert r.history["a->b"][-1]["step"] == 20 and [h["step"] for h in r.history["a->b"]] == [0, 5, 10, 15, 20]
    assert r.config["pair_train"]["a->b"]["residual_hidden"] == 4


def test_cli_tune_writes_the_report_and_resumes(acts, tmp_path, capsys):
    acts.save(tmp_path / "acts")
    argv = ["tune", "--acts", str(tmp_path / "acts"), "--out", str(tmp_path / "o"), "--pairs", "a:b", "--steps", "20",
            "--no-progress"]
    assert main([*argv, "--trials", "2"]) == 0
    out = capsys.readouterr().out
    for f in ("tuning.json", "tuning.csv", "tuning.html", "tuning.txt", f"study/{JOURNAL_FILE}"):
        assert (tmp_path / "o" / f).is_file(), f
    assert "a->b: 2 trials" in out and "tuned a->b: residual_hidden=" in out and "steps=20 eval_every=5" in out
    assert main([*argv, "--trials", "3"]) == 0
    assert "a->b: 3 trials" in capsys.readouterr().out
    r = TuningResult.load(tmp_path / "o")
    assert r.pairs["a->b"]["n_new_trials"] == 1 and r.config["tune"]["n_trials"] == 3
    assert main(["tune", "--acts", str(tmp_path / "acts"), "--out", str(tmp_path / "p"), "--pairs", "a:zz"]) == 2
    assert "--pairs: unknown scale(s) ['zz']" in capsys.readouterr().err


def test_lens_tune_on_a_tiny_model(tiny_gpt2, acts, capsys):
    from msma_lens import MSMA, load_corpus

    lens = MSMA(tiny_gpt2)
    with pytest.raises(ArtifactError, match="captured from model 'synthetic', but this lens uses 'tiny-gpt2'"):
        lens.tune(acts, _cfg(), _tune(n_trials=1))
    cfg = AlignConfig(train=MapTrainConfig(batch_size=64, critic_hidden=16, critic_embed=8, eval_batch_size=64),
                      max_eval_rows=64, pair_metrics=("cka_debiased",), mi_test_steps=0)
    r = lens.tune(texts=load_corpus().texts[:16], cfg=cfg, tune=_tune(n_trials=2, steps=10, eval_every=5), progress=True)
    assert list(r.pairs) == ["global->intermediate", "intermediate->local"]
    assert all(len(p["trials"]) == 2 for p in r.pairs.values()) and r.provenance["model_id"] == "tiny-gpt2"
    assert "tune global->intermediate" in capsys.readouterr().err  # one tqdm bar per pair


def test_an_exhausted_timeout_starts_no_trial(acts):
    r = tune_alignment(acts, _cfg(), _tune(timeout_s=1e-9), progress=False)
    p = r.pairs["a->b"]
    assert p["n_new_trials"] == 0 and p["trials"] == [] and p["best"] is None
    assert p["closed_form"]["val_residual"] > 0.1 and "a->b: 0 trials" in r.table()
