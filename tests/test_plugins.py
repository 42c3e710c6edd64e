"""The plugin registry (msma_lens.plugins) and `msma-lens plugins`, on toy analyses and fake entry points."""

import importlib.metadata as md
import json
import sys
import types
from dataclasses import dataclass

import pytest
import torch

from msma_lens import ScaleActivations, plugins
from msma_lens.cli import main
from msma_lens.errors import ArtifactError, ConfigError


class NormResult(plugins.AnalysisResult):
    def __init__(self, norms: dict[str, float], factor: float):
        self.norms, self.factor, self.provenance = norms, factor, {}

    def to_artifact(self):
        names = list(self.norms)
        return {"norms": torch.tensor([self.norms[s] for s in names], dtype=torch.float64)}, {"scales": names, "factor": self.factor}

    @classmethod
    def from_artifact(cls, tensors, cfg):
        return cls(dict(zip(cfg["scales"], tensors["norms"].tolist())), cfg["factor"])

    def summary(self):
        return "mean norms: " + ", ".join(f"{s}={v:.3f}" for s, v in self.norms.items())

    def figures(self):
        import plotly.graph_objects as go

        return {"norms": go.Figure(go.Bar(x=list(self.norms), y=list(self.norms.values())))}


@dataclass
class MeanNorm:
    """Mean row norm per scale, times a factor."""

    factor: float = 1.0

    def __post_init__(self):
        if not self.factor > 0:
            raise ConfigError(f"MeanNorm: factor must be > 0, got {self.factor!r}")

    def fit(self, acts, lens=None):
        self.seen_lens = lens
        return NormResult({s: float(a.double().norm(dim=1).mean()) * self.factor for s, a in acts.acts.items()}, self.factor)


class OtherAnalysis:
    def __call__(self, acts):
        return NormResult({s: 0.0 for s in acts.scale_names}, 1.0)


@pytest.fixture
def registry(monkeypatch):
    """An empty registry with discovery already done (installed plugins stay out of these tests)."""
    monkeypatch.setattr(plugins, "_REGISTRY", {})
    monkeypatch.setattr(plugins, "_CLASHES", {})
    monkeypatch.setattr(plugins, "_discovered", True)
    return plugins


@pytest.fixture
def acts():
    g = torch.Generator().manual_seed(0)
    return ScaleActivations({"local": torch.randn(30, 4, generator=g), "global": 3 * torch.randn(30, 6, generator=g)},
                            torch.arange(30) // 3, torch.zeros(30, dtype=torch.long), {"model_id": "toy", "pooling": "token"})


def _fake_entry_points(monkeypatch, eps):
    module = types.ModuleType("msma_fake_plugin")
    module.MeanNorm, module.OtherAnalysis, module.not_callable = MeanNorm, OtherAnalysis, 3
    monkeypatch.setitem(sys.modules, "msma_fake_plugin", module)
    entries = [md.EntryPoint(name=n, value=v, group=plugins.GROUP) for n, v in eps]
    monkeypatch.setattr(md, "entry_points", lambda group=None, **kw: entries if group == plugins.GROUP else [])
    plugins.discover(reload=True)


def test_register_get_and_duplicate_names_both(registry):
    assert registry.register("norm", MeanNorm) is MeanNorm
    assert registry.get("norm") is MeanNorm
    registry.register("norm", MeanNorm)  # the same object again: a no-op

    @registry.register("other")
    class Decorated(OtherAnalysis):
        """Decorated toy analysis."""

    assert registry.get("other") is Decorated
    with pytest.raises(ConfigError, match="'norm' is already registered by .*test_plugins:MeanNorm.*test_plugins:OtherAnalysis"):
        registry.register("norm", OtherAnalysis)
    assert [(i.name, i.description, i.source) for i in registry.available()] == [
        ("norm", "Mean row norm per scale, times a factor.", "registered"),
        ("other", "Decorated toy analysis.", "registered")]
    with pytest.raises(ConfigError, match="neither fit"):
        registry.register("bad", type("NoFit", (), {}))
    with pytest.raises(ConfigError, match="not callable"):
        registry.register("bad", 3)
    with pytest.raises(ConfigError, match="plugin names"):
        registry.register(" spaced ", MeanNorm)
    registry.unregister("other")
    with pytest.raises(ConfigError, match="'other' is not registered"):
        registry.unregister("other")


def test_unknown_name_lists_available(registry):
    registry.register("norm", MeanNorm)
    registry.register("zero", OtherAnalysis)
    with pytest.raises(ConfigError, match=r"unknown plugin 'nope'; available: \['norm', 'zero'\].*msma_lens.plugins"):
        registry.get("nope")


def test_run_fits_and_records_provenance(registry, acts, tmp_path):
    registry.register("norm", MeanNorm)
    res = registry.run("norm", acts, factor=2.0)
    assert registry.run("norm", acts, factor=torch.tensor(2.0)).provenance["options"] == {"factor": 2.0}
    for s in acts.scale_names:
        assert res.norms[s] == pytest.approx(2.0 * float(acts[s].double().norm(dim=1).mean()))
    assert res.provenance["plugin"] == "norm" and res.provenance["options"] == {"factor": 2.0}
    assert res.provenance["acts"] == {"model_id": "toy", "pooling": "token"} and res.provenance["n_rows"] == 30
    path = res.save(tmp_path / "r", figures=True)
    assert (path / "norms.html").is_file()
    back = NormResult.load(path)
    assert back.norms == res.norms and back.factor == 2.0 and back.provenance == res.provenance
    with pytest.raises(ArtifactError, match="expected a .*NormResult"):
        NormResult.load(acts.save(tmp_path / "acts"))
    # an analysis with only __call__
    registry.register("zero", OtherAnalysis)
    assert registry.run("zero", acts).norms == {"local": 0.0, "global": 0.0}


def test_run_errors_name_the_problem(registry, acts):
    registry.register("norm", MeanNorm)
    with pytest.raises(ConfigError, match=r"plugin 'norm': .*'facter'.*options are \['factor'\]"):
        registry.run("norm", acts, facter=2.0)
    with pytest.raises(ConfigError, match="factor must be > 0"):
        registry.run("norm", acts, factor=-1.0)
    with pytest.raises(ConfigError, match="got Tensor"):
        registry.run("norm", acts["local"])
    registry.register("raw", lambda: (lambda acts: 42))
    with pytest.raises(ConfigError, match=r"plugin 'raw' .*returned a int without \['save', 'load', 'figures', 'summary'\]"):
        registry.run("raw", acts)


def test_run_with_a_lens_requires_matching_acts(registry, tiny_gpt2):
    from msma_lens import MSMA

    registry.register("norm", MeanNorm)
    lens = MSMA(tiny_gpt2, {"low": range(0, 2), "high": range(2, 4)})
    with pytest.raises(ConfigError, match="MSMA lens without activations"):
        registry.run("norm", lens)
    a = lens.capture(["One short text.", "And another one here."], pooling="mean", progress=False)
    res = registry.run("norm", lens, acts=a)
    assert set(res.norms) == {"low", "high"}
    other = MSMA(tiny_gpt2, {"all": range(0, 4)})
    with pytest.raises(ArtifactError, match="captured with scales"):
        registry.run("norm", other, acts=a)


def test_entry_points_discovered_and_broken_ones_warn(registry, monkeypatch):
    plugins.register("good", MeanNorm)  # as a plugin module that also registers itself on import would
    with pytest.warns(plugins.PluginWarning) as rec:
        _fake_entry_points(monkeypatch, [("good", "msma_fake_plugin:MeanNorm"), ("broken", "msma_no_such_module_xyz:Thing"),
                                         ("missing", "msma_fake_plugin:Missing"), ("notone", "msma_fake_plugin:not_callable"),
                                         ("zero", "msma_fake_plugin:OtherAnalysis")])
    msgs = [str(w.message) for w in rec]
    assert len(msgs) == 3
    assert any("'broken' = msma_no_such_module_xyz:Thing" in m and "ModuleNotFoundError" in m for m in msgs)
    assert any("'missing'" in m and "AttributeError" in m for m in msgs)
    assert any("'notone'" in m and "not callable" in m for m in msgs)
    assert [i.name for i in plugins.available()] == ["good", "zero"]
    assert plugins.get("good") is MeanNorm
    info = plugins.available()[0]
    assert (info.target, info.source, info.description) == ("msma_fake_plugin:MeanNorm", "entry point",
                                                            "Mean row norm per scale, times a factor.")
    with pytest.raises(ConfigError, match="'good' is already registered by entry point 'good'"):
        plugins.register("good", OtherAnalysis)


def test_two_entry_points_with_one_name_are_refused(registry, monkeypatch):
    with pytest.warns(plugins.PluginWarning, match="'dup' is declared by both .*MeanNorm.* and .*OtherAnalysis"):
        _fake_entry_points(monkeypatch, [("dup", "msma_fake_plugin:MeanNorm"), ("dup", "msma_fake_plugin:OtherAnalysis"),
                                         ("fine", "msma_fake_plugin:MeanNorm")])
    with pytest.raises(ConfigError, match="'dup' is declared by .*MeanNorm and .*OtherAnalysis; uninstall one"):
        plugins.get("dup")
    assert plugins.get("fine") is MeanNorm
    with pytest.warns(plugins.PluginWarning, match="'dup' is declared by both"):
        plugins.discover(reload=True)  # the same verdict again, not a longer list
    assert len(plugins._CLASHES["dup"]) == 2


def test_cli_lists_and_runs(registry, monkeypatch, acts, tmp_path, capsys):
    with pytest.warns(plugins.PluginWarning):
        _fake_entry_points(monkeypatch, [("norm", "msma_fake_plugin:MeanNorm"), ("broken", "msma_no_such_module_xyz:X")])
    monkeypatch.setattr(plugins, "_discovered", False)  # the CLI discovers (and reports) them itself
    monkeypatch.setattr(plugins, "_REGISTRY", {})
    assert main(["plugins"]) == 0
    out, err = capsys.readouterr()
    assert "norm" in out and "Mean row norm per scale, times a factor." in out
    assert err.count("\n") == 1 and err.startswith("msma-lens: warning: msma-lens plugin entry point 'broken'")
    assert main(["plugins", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["target"]) for r in rows] == [("norm", "msma_fake_plugin:MeanNorm")]
    acts.save(tmp_path / "acts")
    rc = main(["plugins", "run", "norm", "--acts", str(tmp_path / "acts"), "--out", str(tmp_path / "res"), "-o", "factor=3", "--figures"])
    assert rc == 0
    out = capsys.readouterr().out
    res = NormResult.load(tmp_path / "res")
    assert res.factor == 3 and res.provenance["options"] == {"factor": 3}
    assert res.summary() in out and (tmp_path / "res" / "norms.html").is_file()
    assert main(["plugins", "run", "nope", "--acts", str(tmp_path / "acts"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown plugin 'nope'; available: ['norm']" in err
    assert main(["plugins", "run", "norm", "--acts", str(tmp_path / "acts"), "--out", str(tmp_path / "x"), "-o", "factor=0"]) == 2
    assert "factor must be > 0" in capsys.readouterr().err
