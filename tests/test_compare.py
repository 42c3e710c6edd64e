"""The comparison suite (msma_lens.compare): units, resumable store, executors, tables, report, cross-model CKA, CLI."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch

import msma_lens as ml
from msma_lens import tl
from msma_lens.analysis.metrics import cka_debiased
from msma_lens.capture.activations import ScaleActivations
from msma_lens.cli import main
from msma_lens.compare import CompareConfig, ResultStore, Unit, crossmodel, executors, plan_units, run_compare, tasks, units
from msma_lens.errors import ConfigError

MODELS = ["tiny-gpt2", "tiny-llama"]


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """The whole grid on two tiny random models, two seeds, the quick budget (run once for the module)."""
    out = tmp_path_factory.mktemp("cmp")
    return run_compare(MODELS, out, seeds=(0, 1), config=CompareConfig.quick(), progress=False), out


# ----- the grid ----------------------------------------------------------------------------------------------
def test_plan_units_is_the_grid_in_phase_order():
    us = plan_units(["a", "b", "c"], seeds=(0, 1), tasks=("crossmodel", "alignment", "discovery", "steering"))
    keys = [u.key for u in us]
    assert keys[:3] == ["discovery--a--seed0", "discovery--b--seed0", "discovery--c--seed0"]
    assert [u.phase for u in us] == [0] * 3 + [1] * (6 + 3 + 3)
    want = sorted(f"alignment--{m}--seed{s}" for m in "abc" for s in (0, 1))
    assert sorted(k for k in keys if k.startswith("alignment")) == want
    assert [k for k in keys if k.startswith("crossmodel")] == ["crossmodel--a+b--seed0", "crossmodel--a+c--seed0",
                                                                "crossmodel--b+c--seed0"]
    assert [k for k in keys if k.startswith("steering")] == [f"steering--{m}--seed0" for m in "abc"]


@pytest.mark.parametrize("kw,msg", [
    ({"models": []}, "models is empty"),
    ({"models": ["a", "a"]}, "model 'a' is listed twice"),
    ({"seeds": (0, 0)}, r"seeds must be distinct integers, got \[0, 0\]"),
    ({"tasks": ("nope",)}, r"unknown task 'nope'; valid: \['discovery', 'alignment', 'steering', 'crossmodel', 'plugins'\]"),
])
def test_plan_units_rejects_bad_grids(kw, msg):
    args = {"models": ["a"], "seeds": (0,), "tasks": ("alignment",), **kw}
    with pytest.raises(ConfigError, match=msg):
        plan_units(args["models"], args["seeds"], args["tasks"])


def test_unit_and_config_validation_name_the_field():
    with pytest.raises(ConfigError, match=r"task 'crossmodel' takes 2 model\(s\), got \['a'\]"):
        Unit("crossmodel", ("a",))
    with pytest.raises(ConfigError, match="CompareConfig.align_docs must be an int >= 4, got 2"):
        CompareConfig(align_docs=2)
    with pytest.raises(ConfigError, match=r"CompareConfig.align_on must be one of \['words', 'documents'\], got 'tokens'"):
        CompareConfig(align_on="tokens")
    with pytest.raises(ConfigError, match="CompareConfig.strengths: unknown intervention kind 'melt'"):
        CompareConfig(strengths={"melt": 1.0})
    with pytest.raises(ConfigError, match="CompareConfig: unknown field 'nope'"):
        CompareConfig.from_dict({"nope": 1})
    assert CompareConfig.from_dict(CompareConfig.quick().to_dict()) == CompareConfig.quick()


# ----- store: skip, kill and resume ----------------------------------------------------------------------------
def test_rerun_skips_every_finished_unit(suite, monkeypatch):
    res, out = suite
    before = {p: p.read_bytes() for p in out.glob("units/*/done.json")}
    assert len(before) == 2 + 4 + 2 + 1

    def boom(*a, **k):
        raise AssertionError("a finished unit ran again")

    monkeypatch.setattr(tasks, "run_task", boom)
    again = run_compare(MODELS, out, seeds=(0, 1), config=CompareConfig.quick(), progress=False)
    assert {p: p.read_bytes() for p in out.glob("units/*/done.json")} == before
    assert again.tables["alignment"] == res.tables["alignment"]


def test_a_killed_run_loses_only_the_unit_in_progress(tmp_path, monkeypatch):
    real = tasks.run_task
    ran = []

    def dies_on_seed1(unit, cfg, store, work):
        ran.append(unit.key)
        if unit.seed == 1:
            (work / "partial.txt").write_text("half-written")
            raise KeyboardInterrupt  # the process is killed inside the unit
        return real(unit, cfg, store, work)

    monkeypatch.setattr(tasks, "run_task", dies_on_seed1)
    cfg = CompareConfig.quick()
    with pytest.raises(KeyboardInterrupt):
        run_compare(["tiny-gpt2"], tmp_path, seeds=(0, 1, 2), tasks=("alignment",), config=cfg, progress=False)
    store = ResultStore(tmp_path)
    u = {s: Unit("alignment", ("tiny-gpt2",), s) for s in (0, 1, 2)}
    assert store.is_done(u[0]) and not store.is_done(u[1]) and not store.unit_dir(u[2]).exists()
    assert (store.unit_dir(u[1]) / "partial.txt").is_file()
    done0 = (store.unit_dir(u[0]) / "done.json").read_bytes()
    monkeypatch.setattr(tasks, "run_task", real)
    ran.clear()
    monkeypatch.setattr(tasks, "run_task", lambda *a: (ran.append(a[0].key), real(*a))[1])
    res = run_compare(["tiny-gpt2"], tmp_path, seeds=(0, 1, 2), tasks=("alignment",), config=cfg, progress=False)
    assert ran == [u[1].key, u[2].key]  # seed 0 was not recomputed
    assert (store.unit_dir(u[0]) / "done.json").read_bytes() == done0
    assert not (store.unit_dir(u[1]) / "partial.txt").exists()  # the interrupted attempt's files were cleared
    assert {r["n_seeds"] for r in res.tables["alignment"]} == {3}


def test_phase1_units_use_the_discovered_partition_of_any_seed(suite, tmp_path):
    res, out = suite
    store = ResultStore(out)
    disc = store.load(Unit("discovery", ("tiny-llama",), 0))["result"]["scales"]
    sc, src = tasks.partition(store, "tiny-llama", 4)
    assert sc.to_dict()["groups"] == disc["groups"] and src == "discovered (seed 0)"
    al = store.load(Unit("alignment", ("tiny-llama",), 1))["result"]
    assert al["scales"]["groups"] == disc["groups"] and al["partition"] == "discovered (seed 0)"
    # a store whose discovery ran at seed 7 only: still found; an empty store: thirds
    import shutil

    shutil.copytree(out / "units" / "discovery--tiny-llama--seed0", tmp_path / "units" / "discovery--tiny-llama--seed7")
    p = tmp_path / "units" / "discovery--tiny-llama--seed7"
    for name in ("done.json", "result.json"):
        d = json.loads((p / name).read_text())
        d["unit"]["seed"] = 7
        (p / name).write_text(json.dumps(d))
    assert tasks.partition(ResultStore(tmp_path), "tiny-llama", 4)[1] == "discovered (seed 7)"
    sc, src = tasks.partition(ResultStore(tmp_path / "empty"), "tiny-llama", 4)
    assert sc.same_partition(ml.Scales.default(4)) and src.startswith("thirds")


def test_store_records_wall_time_and_peak_rss(suite):
    res, out = suite
    t = res.tables["timing"]
    assert len(t) == 9 and all(r["wall_s"] > 0 and r["cpu_s"] > 0 and r["peak_rss_mb"] > 50 for r in t)
    d = json.loads((out / "units" / "alignment--tiny-gpt2--seed0" / "done.json").read_text())
    assert d["unit"] == {"task": "alignment", "models": ["tiny-gpt2"], "seed": 0}
    assert set(d["timing"]) == {"wall_s", "cpu_s", "peak_rss_mb"}


def test_peak_rss_sees_a_transient_allocation():
    with units.PeakRSS(interval=0.01) as m:
        base = units._rss_mb()
        x = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        x += 1
        import time

        time.sleep(0.1)
        del x
    assert m.peak >= base + 50


# ----- executors ---------------------------------------------------------------------------------------------
def test_ray_missing_is_a_clear_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ConfigError, match=r"--executor ray needs Ray, which is not installed: pip install 'msma-lens\[ray\]'"):
        executors.run_units([Unit("alignment", ("tiny-gpt2",))], CompareConfig.quick().to_dict(), "x", executor="ray")
    with pytest.raises(ConfigError, match=r"unknown executor 'dask'; valid: \['local', 'ray'\]"):
        executors.run_units([], {}, "x", executor="dask")


def test_ray_executor_gives_the_sequential_results(tmp_path):
    ray = pytest.importorskip("ray")
    us = [Unit("alignment", ("tiny-gpt2",), s) for s in (0, 1)]
    cfg = CompareConfig.quick().to_dict()
    local = executors.run_units(us, cfg, str(tmp_path / "local"))
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}})
    try:
        remote = executors.run_units(us, cfg, str(tmp_path / "ray"), executor="ray")
    finally:
        ray.shutdown()
    assert [r["unit"] for r in remote] == [r["unit"] for r in local]
    for a, b in zip(local, remote):
        ra, rb = a["result"]["rows"], b["result"]["rows"]
        assert [(r["pair"], r["method"]) for r in ra] == [(r["pair"], r["method"]) for r in rb]
        for x, y in zip(ra, rb):
            for k in ("kl_diag", "kl_floor", "mi_gaussian", "dcor2_u", "cka_debiased", "residual"):
                assert x[k] == pytest.approx(y[k], rel=1e-5, abs=1e-7), (x["pair"], x["method"], k)
    assert ResultStore(tmp_path / "ray").is_done(us[1])


# ----- tables ------------------------------------------------------------------------------------------------
def test_layer_table_has_discovered_cis_thirds_and_published_presets(suite):
    res, _ = suite
    rows = res.tables["layers"]
    for m in MODELS:
        disc = [r for r in rows if r["model"] == m and r["partition"] == "discovered"]
        thirds = [r for r in rows if r["model"] == m and r["partition"] == "thirds"]
        assert [r["scale"] for r in disc] == ["local", "intermediate", "global"]
        assert sum(r["pct_depth"] for r in disc) == pytest.approx(100.0, abs=0.2)
        assert disc[0]["boundary_ci"] is None and all(re.fullmatch(r"\[\d+, \d+\]", r["boundary_ci"]) for r in disc[1:])
        for r in disc[1:]:  # the CI brackets plausible cuts: inside the depth
            lo, hi = map(int, r["boundary_ci"][1:-1].split(", "))
            assert 1 <= lo <= hi <= 3
        assert [(r["first"], r["last"]) for r in thirds] == [(0, 0), (1, 2), (3, 3)]  # Scales.default(4)
    gpt2 = [r for r in rows if r["partition"] == "preset gpt2"]
    assert [(r["first"], r["last"]) for r in gpt2] == [(0, 1), (2, 7), (8, 11)] and "other model" in gpt2[0]["model"]


def test_alignment_table_has_cis_over_seeds_floors_and_invariances(suite):
    res, _ = suite
    rows = res.tables["alignment"]
    assert {(r["model"], r["method"]) for r in rows} == {(m, k) for m in MODELS for k in ("baseline", "closed_form", "trained")}
    for r in rows:
        assert r["n_seeds"] == 2
        for c in ("kl_diag", "kl_floor", "mi_gaussian", "dcor2_u", "cka_debiased"):
            assert math.isfinite(r[c]) and r[f"{c}_ci_lo"] <= r[c] <= r[f"{c}_ci_hi"], (r["model"], r["method"], c)
    # the closed form is a similarity transform plus a shift: CKA, dCor and Gaussian MI cannot change
    for m in MODELS:
        for pair in {r["pair"] for r in rows if r["model"] == m}:
            base = next(r for r in rows if r["model"] == m and r["pair"] == pair and r["method"] == "baseline")
            cf = next(r for r in rows if r["model"] == m and r["pair"] == pair and r["method"] == "closed_form")
            for c in ("cka_debiased", "dcor2_u"):
                assert cf[c] == pytest.approx(base[c], rel=1e-4), (m, pair, c)
            assert cf["kl_floor"] == base["kl_floor"]


def test_alignment_unit_values_match_an_independent_recomputation(suite):
    res, out = suite
    rec = ResultStore(out).load(Unit("alignment", ("tiny-gpt2",), 0))
    row = next(r for r in rec["result"]["rows"] if r["method"] == "baseline")
    # the mean over seeds in the table is the mean of the stored per-seed values
    vals = [next(r for r in ResultStore(out).load(Unit("alignment", ("tiny-gpt2",), s))["result"]["rows"]
                 if r["method"] == "baseline" and r["pair"] == row["pair"])["cka_debiased"] for s in (0, 1)]
    t = next(r for r in res.tables["alignment"]
             if r["model"] == "tiny-gpt2" and r["pair"] == row["pair"] and r["method"] == "baseline")
    assert t["cka_debiased"] == pytest.approx(np.mean(vals))
    from scipy import stats as st

    half = st.t.ppf(0.975, 1) * np.std(vals, ddof=1) / np.sqrt(2)
    assert t["cka_debiased_ci_hi"] - t["cka_debiased"] == pytest.approx(half)


def test_intervention_table_carries_cis_and_holm(suite):
    res, _ = suite
    rows = res.tables["interventions"]
    assert {r["model"] for r in rows} == set(MODELS) and {r["level"] for r in rows} == {"text"}
    assert {(r["scale"], r["intervention"]) for r in rows if r["model"] == "tiny-gpt2"} == {
        (s, k) for s in ("local", "intermediate", "global") for k in ("translate", "rescale")}
    for r in rows:
        assert {"effect_ci_lo", "effect_ci_hi", "p_holm"} <= set(r)
        if r["p_value"] is not None and math.isfinite(r["p_value"]):
            assert r["p_holm"] >= r["p_value"] - 1e-12


def test_text_summary_survives_nan_written_as_null():
    from msma_lens.compare.tables import format_tables

    row = {"model": "m", "level": "text", "scale": "local", "intervention": "rescale", "strength": 1.5, "metric": "ttr", "n": 8,
           "effect": None, "effect_ci_lo": None, "effect_ci_hi": None, "p_value": None, "p_holm": None, "significant": False}
    text = format_tables({"layers": [], "alignment": [], "interventions": [row], "crossmodel": [], "timing": []})
    assert "m               local         rescale      1.5  ttr                   d_z     nan [n/a]" in text


# ----- report ------------------------------------------------------------------------------------------------
def test_report_is_one_self_contained_html_with_json_and_csv(suite):
    res, out = suite
    page = (out / "report.html").read_text()
    assert "<script src=" not in page  # nothing is fetched from the network
    for title in ("(a) semantic layer distribution", "(b) cross-scale alignment", "(c) intervention effects",
                  "per-layer profiles against depth", "debiased CKA, tiny-gpt2 (rows)"):
        assert title in page
    for name in ("layers", "alignment", "interventions", "crossmodel", "timing"):
        assert (out / f"{name}.csv").read_text().count("\n") == len(res.tables[name]) + 1
    data = json.loads((out / "compare.json").read_text())
    assert data["format"] == "msma_lens.Compare" and len(data["units"]) == 9
    assert "(a) semantic layer distribution" in (out / "summary.txt").read_text()
    assert not (out / "shards").exists()  # capture shards are removed at the end


def test_report_inlines_plotly_once(suite):
    _, out = suite
    page = (out / "report.html").read_text()
    assert page.count("window.PlotlyConfig") == 1  # the plotly.js bundle, inlined once
    assert page.count("Plotly.newPlot") == 2  # the profiles and one CKA matrix


# ----- cross-model CKA ---------------------------------------------------------------------------------------
def test_cka_matrix_recovers_a_planted_layer_permutation():
    n, L, d = 200, 6, 16
    g0 = torch.Generator().manual_seed(0)
    A = [torch.randn(n, d, generator=g0) for _ in range(L)]  # independent layers
    perm = [3, 0, 5, 1, 4, 2]  # model b's layer j is model a's layer perm[j], rotated, scaled and shifted
    g = torch.Generator().manual_seed(1)
    B = []
    for j in range(L):
        Q = torch.linalg.qr(torch.randn(d, 2 * d, generator=g).T)[0][:, :d].T  # d x 2d with orthonormal rows
        B.append(3.0 * A[perm[j]] @ Q + 5.0 + 0.05 * torch.randn(n, 2 * d, generator=g))
    docs, pos = torch.arange(n), torch.zeros(n, dtype=torch.long)
    sa = ScaleActivations({f"L{i}": A[i] for i in range(L)}, docs, pos)
    sb = ScaleActivations({f"L{i}": B[i] for i in range(L)}, docs, pos)
    mat = crossmodel.cka_matrix(sa.join(sb, ("a", "b")))
    assert mat.shape == (L, L)
    assert crossmodel.best_match(mat)["b_to_a"] == perm
    assert crossmodel.best_match(mat)["a_to_b"] == [perm.index(i) for i in range(L)]
    for i, j in ((0, 1), (2, 5), (4, 4)):  # independent oracle: the feature-space estimator of analysis.metrics
        assert mat[i, j] == pytest.approx(cka_debiased(A[i], B[j]), abs=1e-9)
    planted = np.zeros((L, L), dtype=bool)
    planted[perm, np.arange(L)] = True
    assert mat[planted].min() > 0.95 and np.abs(mat[~planted]).max() < 0.2


def test_scale_matrix_averages_layer_blocks():
    m = np.arange(12, dtype=float).reshape(4, 3)
    sa = ml.Scales({"x": (0, 1), "y": (2, 3)})
    sb = ml.Scales({"p": [0], "q": (1, 2)})
    sm = crossmodel.scale_matrix(m, sa, sb)
    assert sm["values"] == [[1.5, (1 + 2 + 4 + 5) / 4], [7.5, (7 + 8 + 10 + 11) / 4]]
    assert sm["a_to_b"] == {"x": "q", "y": "q"} and sm["b_to_a"] == {"p": "y", "q": "y"}


def test_word_ids_map_sub_tokens_to_whitespace_words():
    model = ml.load_model("tiny-gpt2")
    text = "Tokenisation splits  words unevenly."
    from msma_lens import tl

    seqs, specials = tl.encode(model, [text])
    w = crossmodel._word_ids(model, text, len(seqs[0]), specials[0])
    assert w[0] == -1  # BOS
    ws = [x for x in w if x >= 0]
    assert sorted(set(ws)) == [0, 1, 2, 3] and ws == sorted(ws)
    tok = model.tokenizer
    for k in range(4):  # the sub-tokens of word k decode to exactly that word (up to the leading space)
        ids = [i for i, x in zip(seqs[0], w) if x == k]
        assert tok.decode(ids).strip() == text.split()[k]


def test_same_model_twice_on_words_gives_the_identity_match():
    model = ml.load_model("tiny-gpt2")
    texts = ml.load_corpus().texts[:4]
    joined = crossmodel.paired_activations(model, model, texts, max_rows=200, seed=0)
    assert len(joined) == 200 and joined.scale_names[:2] == ["a:L0", "a:L1"]
    mat = crossmodel.cka_matrix(joined)
    assert np.allclose(np.diag(mat), 1.0, atol=1e-9)
    assert crossmodel.best_match(mat) == {"a_to_b": [0, 1, 2, 3], "b_to_a": [0, 1, 2, 3]}
    docs = crossmodel.paired_activations(model, model, texts, align_on="documents")
    assert len(docs) == 4 and np.allclose(np.diag(crossmodel.cka_matrix(docs)), 1.0, atol=1e-9)
    with pytest.raises(ConfigError, match="align_on must be 'words' or 'documents', got 'tokens'"):
        crossmodel.paired_activations(model, model, texts, align_on="tokens")


def test_crossmodel_unit_reports_the_scale_matches(suite):
    res, _ = suite
    rows = res.tables["crossmodel"]
    assert len(rows) == 9 and {r["align_on"] for r in rows} == {"words"}
    assert sum(r["best_for_a"] for r in rows) == 3
    for a in ("local", "intermediate", "global"):
        cand = [r for r in rows if r["scale_a"] == a]
        best = max(cand, key=lambda r: r["cka"])
        assert best["best_for_a"]


# ----- plugins -----------------------------------------------------------------------------------------------
class _RowCount:
    """Test plugin: the number of rows it was given."""

    def fit(self, acts):
        return _RowCountResult(len(acts), list(acts.scale_names))


class _RowCountResult:
    def __init__(self, n, scales):
        self.n, self.scales = n, scales

    def save(self, path):
        from pathlib import Path

        Path(path).mkdir(parents=True)
        (Path(path) / "n.json").write_text(json.dumps([self.n, self.scales]))
        return Path(path)

    @classmethod
    def load(cls, path):
        from pathlib import Path

        return cls(*json.loads((Path(path) / "n.json").read_text()))

    def figures(self):
        return {}

    def summary(self):
        return f"{self.n} rows in scales {self.scales}"


class _Broken:
    """Test plugin that fails."""

    def fit(self, acts):
        raise RuntimeError("this plugin is broken")


def test_plugins_task_runs_every_installed_plugin_and_records_failures(tmp_path, monkeypatch):
    from msma_lens import plugins

    plugins.register("test-rowcount", _RowCount)
    plugins.register("test-broken", _Broken)
    try:
        mine = [p for p in plugins.available() if p.name.startswith("test-")]
        monkeypatch.setattr(plugins, "available", lambda: mine)  # not the (slow) installed ones
        res = run_compare(["tiny-gpt2"], tmp_path, seeds=(0,), tasks=("alignment", "plugins"), config=CompareConfig.quick(),
                          keep_shards=True, progress=False)
    finally:
        plugins.unregister("test-rowcount")
        plugins.unregister("test-broken")
    rows = {r["plugin"]: r for r in res.tables["plugins"]}
    assert rows["test-broken"]["error"] == "RuntimeError: this plugin is broken" and rows["test-broken"]["summary"] is None
    al = ResultStore(tmp_path).load(Unit("alignment", ("tiny-gpt2",), 0))["result"]
    assert rows["test-rowcount"]["error"] is None and al["partition"].startswith("thirds")
    assert rows["test-rowcount"]["summary"].endswith("rows in scales ['local', 'intermediate', 'global']")
    # the plugin saw every content token of the alignment task's documents (BOS excluded)
    from msma_lens import tl

    seqs, specials = tl.encode(ml.load_model("tiny-gpt2"), [d.text for d in tasks._docs(CompareConfig.quick().align_docs, 0)])
    n = int(rows["test-rowcount"]["summary"].split()[0])
    assert n == sum(len(q) - sum(sp) for q, sp in zip(seqs, specials))
    unit_dir = ResultStore(tmp_path).unit_dir(Unit("plugins", ("tiny-gpt2",), 0))
    assert _RowCountResult.load(unit_dir / "test-rowcount").n == n
    assert "plugin test-broken on tiny-gpt2: error: RuntimeError: this plugin is broken" in res.summary


# ----- CLI ---------------------------------------------------------------------------------------------------
def test_cli_compare_end_to_end(tmp_path, capsys):
    rc = main(["compare", "--models", "tiny-gpt2,tiny-llama", "--out", str(tmp_path), "--quick", "--seeds", "0",
               "--tasks", "alignment,crossmodel", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "(b) alignment on held-out documents" in out and "cross-model CKA: tiny-gpt2:local best matches" in out
    assert (tmp_path / "report.html").is_file() and (tmp_path / "alignment.csv").is_file()
    assert sorted(p.name for p in (tmp_path / "units").iterdir()) == [
        "alignment--tiny-gpt2--seed0", "alignment--tiny-llama--seed0", "crossmodel--tiny-gpt2+tiny-llama--seed0"]
    assert main(["compare", "--out", str(tmp_path), "--tasks", "alignment,nope"]) == 2
    assert "--tasks: unknown task 'nope'" in capsys.readouterr().err


@pytest.mark.skipif(tl.tl_major() < 3, reason="tiny-bert loads through TransformerBridge (TL >= 3)")
def test_decoder_and_encoder_suite_on_random_models(tmp_path):
    """The encoder path of every task on a random BERT: bidirectional discovery, representation-level effects,
    alignment, and cross-model CKA between a decoder and an encoder on the same words."""
    res = run_compare(["tiny-llama", "tiny-bert"], tmp_path, seeds=(0,), config=CompareConfig.quick(), progress=False)
    lv = {r["model"]: r["level"] for r in res.tables["interventions"]}
    assert lv == {"tiny-llama": "text", "tiny-bert": "representation"}
    enc = [r for r in res.tables["interventions"] if r["model"] == "tiny-bert"]
    assert {r["metric"] for r in enc} == {"probe_p_true", "embedding_norm"}
    assert all(r["n"] == CompareConfig.quick().encoder_docs and math.isfinite(r["effect"]) for r in enc)
    assert {(r["scale"], r["intervention"]) for r in enc} == {
        (s, k) for s in ("local", "intermediate", "global") for k in ("translate", "rescale")}
    disc = {r["result"]["model"]: r["result"] for r in res.records if r["unit"]["task"] == "discovery"}
    assert disc["tiny-bert"]["n_layers"] == 4 and disc["tiny-bert"]["encoder"] and not disc["tiny-llama"]["encoder"]
    # bidirectional attention: a random encoder's attention spreads over the whole text in every layer
    assert min(disc["tiny-bert"]["profiles"]["attn_span"]) > 2
    al = [r for r in res.tables["alignment"] if r["model"] == "tiny-bert"]
    assert {r["method"] for r in al} == {"baseline", "closed_form", "trained"}
    assert all(math.isfinite(r["kl_floor"]) for r in al)
    cross = next(r for r in res.records if r["unit"]["task"] == "crossmodel")["result"]
    assert cross["encoders"] == [False, True] and np.asarray(cross["matrix"]).shape == (4, 4)
    assert np.isfinite(np.asarray(cross["matrix"], dtype=float)).all() and cross["n_rows"] > 50


# ----- real models -------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_compare_two_real_models_decoder_and_encoder(tmp_path):
    res = run_compare(["smollm2-135m", "minilm-l6"], tmp_path, seeds=(0, 1),
                      config=CompareConfig.quick(discovery_docs=16, align_docs=16, align_steps=20, encoder_docs=16,
                                                 cka_docs=8, baseline_check=None), progress=False)
    lv = {r["model"]: r["level"] for r in res.tables["interventions"]}
    assert lv == {"smollm2-135m": "text", "minilm-l6": "representation"}
    enc = [r for r in res.tables["interventions"] if r["model"] == "minilm-l6"]
    assert {r["metric"] for r in enc} == {"probe_p_true", "embedding_norm"} and all(r["n"] == 16 for r in enc)
    # translating the residual by its own mean norm changes the embedding norm: a real effect, CI away from 0
    big = [r for r in enc if r["intervention"] == "translate" and r["metric"] == "embedding_norm"]
    assert any(r["effect_ci_lo"] > 0 or r["effect_ci_hi"] < 0 for r in big)
    disc = {r["result"]["model"]: r for r in res.records if r["unit"]["task"] == "discovery"}
    assert disc["smollm2-135m"]["result"]["n_layers"] == 30 and disc["minilm-l6"]["result"]["n_layers"] == 6
    cross = next(r for r in res.records if r["unit"]["task"] == "crossmodel")["result"]
    assert np.asarray(cross["matrix"]).shape == (30, 6) and cross["n_rows"] > 100
    assert all(math.isfinite(r["kl_floor"]) for r in res.tables["alignment"])


def test_switching_models_frees_the_previous_one():
    import weakref

    tasks._CACHE.clear()
    first = weakref.ref(tasks.get_model("tiny-gpt2"))
    assert tasks.get_model("tiny-gpt2") is first()  # cached while it is the current model
    tasks.get_model("tiny-llama")
    assert first() is None  # gone at once (reference cycles included), not at the next garbage collection
    tasks._CACHE.clear()
