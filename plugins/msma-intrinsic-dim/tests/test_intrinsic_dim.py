"""The intrinsic-dim plugin: known-truth oracles (planted subspaces, a hypercube), persistence, discovery, CLI."""

import importlib.metadata as md
import math
import os
import subprocess
import sys

import pytest
import torch
from msma_intrinsic_dim import IntrinsicDimension, IntrinsicDimResult, pca_dimension, twonn_bootstrap

from msma_lens import ScaleActivations, plugins
from msma_lens.cli import main
from msma_lens.errors import ArtifactError, ConfigError
from msma_lens.report import twonn_dimension

torch.set_num_threads(1)
N = 2000


def planted(n: int, d: int, dim: int, seed: int, cube: bool = False, noise: float = 1e-4) -> torch.Tensor:
    """n points on a random d-dimensional linear subspace of R^dim (Gaussian, or a uniform cube) plus tiny noise."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, d, generator=g, dtype=torch.float64))
    z = torch.rand(n, d, generator=g, dtype=torch.float64) if cube else torch.randn(n, d, generator=g, dtype=torch.float64)
    return (z @ q.T + noise * torch.randn(n, dim, generator=g, dtype=torch.float64)).float()


@pytest.fixture(scope="module")
def acts() -> ScaleActivations:
    """Three scales with known dimension: 3 and 6 (Gaussian on a subspace of R^64), 4 (uniform cube in R^32)."""
    return ScaleActivations({"low": planted(N, 3, 64, 0), "high": planted(N, 6, 64, 1), "cube": planted(N, 4, 32, 2, cube=True)},
                            torch.arange(N) // 20, torch.zeros(N, dtype=torch.long), {"model_id": "synthetic"})


@pytest.fixture(scope="module")
def result(acts) -> IntrinsicDimResult:
    return plugins.run("intrinsic-dim", acts)


def test_planted_subspace_twonn_and_pca_dimension(result, acts):
    for scale, d in (("low", 3), ("high", 6)):
        assert result.twonn[scale] == pytest.approx(d, rel=0.10)
        assert result.pca_dim[scale] == d
        lo, hi = result.twonn_ci[scale]
        assert lo < result.twonn[scale] < hi and hi - lo < 0.25 * d
        assert result.twonn[scale] == pytest.approx(twonn_dimension(acts[scale]), rel=1e-12)  # the core's estimator
    assert result.highest() == "high" and result.highest("pca") == "high"
    assert result.p_highest["high"] == 1.0 and result.p_highest["low"] == 0.0
    assert sum(result.p_highest.values()) == pytest.approx(1.0)
    assert result.n_points == {"low": N, "high": N, "cube": N} and result.n_docs == 100
    assert "highest TwoNN dimension: high" in result.summary()


def test_uniform_hypercube(result):
    assert result.twonn["cube"] == pytest.approx(4, rel=0.12)  # boundary effects bias TwoNN slightly low
    assert result.pca_dim["cube"] == 4  # equal variance in 4 directions: 3 explain 75% < 90%


def test_pca_threshold_and_twonn_bootstrap_formula():
    a = torch.randn(100, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    q, _ = torch.linalg.qr(a - a.mean(0))  # orthonormal, centred columns
    x = torch.cat([3 * q[:, :1], q[:, 1:], torch.zeros(100, 3, dtype=torch.float64)], 1)  # variances 9 : 1 : 0 : 0 : 0
    k, frac = pca_dimension(x, 0.85)
    assert k == 1 and frac[:2].sum() == pytest.approx(1.0) and frac[0] == pytest.approx(0.9, abs=1e-6)
    assert pca_dimension(x, 0.95)[0] == 2 and pca_dimension(torch.ones(10, 3), 0.9)[0] == 0
    # d = (n - 1) / sum(log mu) per resample; n <= 2 points -> NaN
    mu = torch.tensor([math.log(2), math.log(2), math.log(4)], dtype=torch.float64)
    d = twonn_bootstrap(mu, torch.tensor([0, 0, 1]), torch.tensor([[0, 1], [1, 1], [0, 0]]))
    l2 = math.log(2)
    assert d[0] == pytest.approx(2 / (4 * l2)) and math.isnan(d[1]) and d[2] == pytest.approx(3 / (4 * l2))


def test_options_are_validated():
    for bad, match in (({"variance": 0}, "variance"), ({"variance": 1.5}, "variance"), ({"ci": 1.0}, "ci"),
                       ({"n_boot": -1}, "n_boot"), ({"max_points": True}, "max_points"), ({"scales": ["a", "a"]}, "scales")):
        with pytest.raises(ConfigError, match=match):
            IntrinsicDimension(**bad)
    assert IntrinsicDimension(scales="low, high").scales == ["low", "high"]


def test_scale_subset_no_bootstrap_and_errors(acts):
    res = plugins.run("intrinsic-dim", acts, scales=["low"], n_boot=0, variance=0.5)
    assert res.scales == ["low"] and math.isnan(res.twonn_ci["low"][0]) and math.isnan(res.p_highest["low"])
    assert res.pca_dim["low"] < 3
    with pytest.raises(ConfigError, match=r"unknown scale\(s\) \['mid'\]"):
        plugins.run("intrinsic-dim", acts, scales="mid")
    with pytest.raises(ConfigError, match="'intrinsic-dim'.*'varianse'"):
        plugins.run("intrinsic-dim", acts, varianse=0.9)


def test_save_load_round_trip(result, tmp_path):
    path = result.save(tmp_path / "res", figures=True)
    back = IntrinsicDimResult.load(path)
    assert back.scales == result.scales and back.twonn == result.twonn and back.pca_dim == result.pca_dim
    assert back.twonn_ci == result.twonn_ci and back.p_highest == result.p_highest and back.config == result.config
    assert all(torch.equal(back.explained[s], result.explained[s]) for s in result.scales)
    assert back.provenance["plugin"] == "intrinsic-dim" and back.provenance["acts"] == {"model_id": "synthetic"}
    assert back.provenance["plugin_version"] == "0.1.0" and back.summary() == result.summary()
    figs = result.figures()
    assert set(figs) == {"intrinsic_dimension", "pca_spectrum"} and (path / "pca_spectrum.html").is_file()
    assert list(figs["intrinsic_dimension"].data[0].y) == [result.twonn[s] for s in result.scales]
    with pytest.raises(ArtifactError, match="expected a 'msma_intrinsic_dim.IntrinsicDimResult' artifact"):
        IntrinsicDimResult.load(ScaleActivations({"a": torch.zeros(3, 2)}, torch.arange(3), torch.zeros(3)).save(tmp_path / "a"))


def test_discovered_through_the_entry_point():
    eps = {ep.name: ep for ep in md.entry_points(group=plugins.GROUP)}
    assert eps["intrinsic-dim"].value == "msma_intrinsic_dim:IntrinsicDimension"
    assert plugins.get("intrinsic-dim") is IntrinsicDimension
    info = next(i for i in plugins.available() if i.name == "intrinsic-dim")
    assert (info.dist, info.version, info.source) == ("msma-intrinsic-dim", "0.1.0", "entry point")
    assert info.description.startswith("Per-scale intrinsic dimension")


def test_cli_lists_and_runs(acts, tmp_path, capsys):
    assert main(["plugins"]) == 0
    assert "intrinsic-dim" in capsys.readouterr().out
    small = acts.subset(torch.arange(0, N, 4))
    small.save(tmp_path / "acts")
    rc = main(["plugins", "run", "intrinsic-dim", "--acts", str(tmp_path / "acts"), "--out", str(tmp_path / "res"),
               "-o", "n_boot=50", "-o", "scales=low,high"])
    assert rc == 0
    out = capsys.readouterr().out
    res = IntrinsicDimResult.load(tmp_path / "res")
    assert res.scales == ["low", "high"] and res.config["n_boot"] == 50 and res.boot.shape == (50, 2)
    assert res.summary() in out and "highest TwoNN dimension: high" in out


def test_console_script_lists_it():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "msma_lens.cli", "plugins"], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0 and "intrinsic-dim" in out.stdout and "msma-intrinsic-dim" in out.stdout
