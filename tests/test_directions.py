"""Directions: builders on ScaleActivations, the lens as entry point (its own partition), the deprecated model form."""

from __future__ import annotations

import pytest
import torch

from msma_lens import MSMA, ScaleActivations, Scales
from msma_lens.errors import ArtifactError, ConfigError
from msma_lens.steer.directions import (
    contrastive_direction,
    layer_key,
    layer_scales,
    principal_direction,
    random_direction,
    transfer_direction,
)
from msma_lens.steer.edits import Translate

POS = ["The team won the match and the crowd cheered loudly.", "Birds sing at dawn in spring."]
NEG = ["Prices rose again this week.", "Investors worried about the bank."]
PARTITION = {"local": (0, 1), "global": (2, 3)}  # tiny-gpt2 has 4 blocks; the default is local 0, intermediate 1-2, global 3


@pytest.fixture(scope="module")
def lens(tiny_gpt2):
    return MSMA(tiny_gpt2, PARTITION)


def _mean_acts(lens, texts):
    return lens.capture(texts, pooling="mean", progress=False)


# ----- the lens is the entry point ------------------------------------------------------------------------
def test_lens_contrastive_direction_uses_the_lens_partition(lens, tiny_gpt2):
    d = lens.contrastive_direction(POS, NEG, "global")
    pos, neg = _mean_acts(lens, POS), _mean_acts(lens, NEG)
    assert torch.equal(d, contrastive_direction(pos, neg, "global"))  # = the builder on the lens's own capture
    assert torch.allclose(d, (pos["global"].double().mean(0) - neg["global"].double().mean(0)).float())
    assert d.shape == (64,) and d.dtype == torch.float32 and float(d.norm()) > 0
    default = MSMA(tiny_gpt2)  # global = block 3 only, not 2-3
    assert default.scales["global"] == (3,) and lens.scales["global"] == (2, 3)
    d_default = default.contrastive_direction(POS, NEG, "global")
    assert not torch.allclose(d, d_default, atol=1e-3)
    per = lens.contrastive_direction(POS, NEG, "global", per_layer=True)
    assert sorted(per) == [2, 3] and torch.allclose((per[2] + per[3]) / 2, d, atol=1e-5)
    assert torch.allclose(per[3], d_default, atol=1e-5)  # block 3 alone is the default partition's global scale


def test_lens_principal_direction(lens):
    p = lens.principal_direction(POS + NEG, "local")
    assert p.shape == (64,) and abs(float(p.norm()) - 1) < 1e-5
    acts = lens.capture(POS + NEG, pooling="token", progress=False)
    assert torch.equal(p, principal_direction(acts, "local"))
    X = acts["local"].double()
    top = torch.linalg.eigh((X - X.mean(0)).T @ (X - X.mean(0)))[1][:, -1]
    assert abs(float(torch.dot(p.double(), top))) > 0.9999 and float(X.mean(0) @ p.double()) > 0  # sign: mean projects positively
    per = lens.principal_direction(POS + NEG, "local", per_layer=True)
    assert sorted(per) == [0, 1] and all(abs(float(v.norm()) - 1) < 1e-5 for v in per.values())


def test_per_layer_directions_steer_their_layers(lens, tiny_gpt2):
    per = lens.contrastive_direction(POS, NEG, "global", per_layer=True)
    with lens.steer(Translate("global", per, relative=True)) as rec:
        tiny_gpt2(tiny_gpt2.to_tokens(POS[:1]))
    assert rec.applied(0) and rec.layers(0) == [2, 3]


def test_layer_scales_and_builders_on_per_layer_acts(lens, tiny_gpt2):
    ls = layer_scales(lens.scales, "global")
    assert ls.names == (layer_key("global", 2), layer_key("global", 3)) == ("global-2", "global-3")
    assert ls["global-2"] == (2,)
    from msma_lens.capture import capture

    pos = capture(tiny_gpt2, ls, POS, pooling="mean", progress=False)
    neg = capture(tiny_gpt2, ls, NEG, pooling="mean", progress=False)
    assert torch.equal(contrastive_direction(pos, neg, "global", per_layer=True)[3],
                       (pos["global-3"].double().mean(0) - neg["global-3"].double().mean(0)).float())


# ----- the deprecated model-level form ---------------------------------------------------------------------
def test_deprecated_model_call_warns_and_names_the_default_partition(lens, tiny_gpt2):
    with pytest.warns(DeprecationWarning, match=r"uses the default partition Scales.default\(4\) = Scales\(local=0-0, "
                                                r"intermediate=1-2, global=3-3\)") as rec:
        old = contrastive_direction(tiny_gpt2, POS, NEG, "global")
    assert rec[0].filename == __file__  # points at the caller
    assert torch.allclose(old, MSMA(tiny_gpt2).contrastive_direction(POS, NEG, "global"), atol=1e-6)
    with pytest.warns(DeprecationWarning, match=r"use MSMA\(model, scales\).contrastive_direction") as rec:
        explicit = contrastive_direction(tiny_gpt2, POS, NEG, "global", scales=lens.scales)
    assert not any("default partition" in str(w.message) for w in rec)
    assert torch.allclose(explicit, lens.contrastive_direction(POS, NEG, "global"), atol=1e-6)
    with pytest.warns(DeprecationWarning, match="principal_direction.*is deprecated.*default partition"):
        p = principal_direction(tiny_gpt2, POS + NEG, "global")
    assert torch.allclose(p, MSMA(tiny_gpt2).principal_direction(POS + NEG, "global"), atol=1e-5)
    with pytest.warns(DeprecationWarning), pytest.raises(ConfigError, match="unknown scale 'nope'"):
        contrastive_direction(tiny_gpt2, POS, NEG, "nope", scales=PARTITION)


# ----- errors name the scale -------------------------------------------------------------------------------
def test_errors_name_the_scale(lens):
    with pytest.raises(ConfigError, match=r"unknown scale 'intermediate'; scales are \['local', 'global'\]"):
        lens.contrastive_direction(POS, NEG, "intermediate")
    with pytest.raises(ConfigError, match=r"unknown scale 'intermediate'; scales are"):
        lens.principal_direction(POS, "intermediate", per_layer=True)
    with pytest.raises(ConfigError, match="contrastive direction at scale 'global' is zero: the two text sets give identical"):
        lens.contrastive_direction(POS, POS, "global")
    with pytest.raises(ConfigError, match="contrastive direction at scale 'global' layer 2 is zero"):
        lens.contrastive_direction(POS, POS, "global", per_layer=True)
    pos, neg = _mean_acts(lens, POS), _mean_acts(lens, NEG)
    with pytest.raises(ConfigError, match=r"unknown scale 'intermediate'; these activations have \['local', 'global'\]"):
        contrastive_direction(pos, neg, "intermediate")
    with pytest.raises(ConfigError, match="per_layer=True needs one group per layer of scale 'global'"):
        contrastive_direction(pos, neg, "global", per_layer=True)
    with pytest.raises(ConfigError, match="principal_direction needs >= 2 content tokens at scale 'global', got 1"):
        principal_direction(pos.subset(torch.tensor([0])), "global")
    with pytest.raises(ConfigError, match="negative must be a list of texts, got str"):
        lens.contrastive_direction(POS, "just one text", "global")
    with pytest.raises(ConfigError, match="outlier_factor must be None or > 1"):
        lens.principal_direction(POS, "global", outlier_factor=0.5)
    with pytest.raises(ConfigError, match="expected ScaleActivations.*got list"):
        contrastive_direction(POS, NEG, "global")


def test_builders_refuse_mismatched_captures(lens):
    pos = _mean_acts(lens, POS)
    tok = lens.capture(NEG, pooling="token", progress=False)
    with pytest.raises(ConfigError, match="positive activations have pooling 'mean', but negative activations have 'token'"):
        contrastive_direction(pos, tok, "global")
    other = ScaleActivations(dict(pos.acts), pos.doc_ids, pos.positions, {**pos.meta, "model_id": "gpt2-xl"})
    with pytest.raises(ArtifactError, match="model_id 'tiny-gpt2', but negative activations have 'gpt2-xl'"):
        contrastive_direction(pos, other, "global")
    shifted = ScaleActivations(dict(pos.acts), pos.doc_ids, pos.positions,
                               {**pos.meta, "scales": Scales.from_ranges({"local": (0, 2), "global": (3, 3)}).to_dict()})
    with pytest.raises(ArtifactError, match=r"scale 'global' has layers \[2, 3\] in the positive activations but \[3\]"):
        contrastive_direction(pos, shifted, "global")


def test_principal_direction_is_the_top_pc_without_massive_tokens(tiny_gpt2):
    lens = MSMA(tiny_gpt2)  # global = block 3
    texts = POS + NEG

    def top_pc(X):
        X = X.double()
        return torch.linalg.eigh((X - X.mean(0)).T @ (X - X.mean(0)))[1][:, -1].float()

    def massive(x, hook):  # plant one attention-sink-like token: row 0, position 3
        x = x.clone()
        x[0, 3] *= 1000.0
        return x

    with tiny_gpt2.hooks(fwd_hooks=[("blocks.3.hook_resid_post", massive)]):
        acts = lens.capture(texts, pooling="token", batch_size=4, progress=False)
        p = lens.principal_direction(texts, "global", batch_size=4)
        raw = lens.principal_direction(texts, "global", batch_size=4, outlier_factor=None)
    X = acts["global"]
    n = X.norm(dim=1)
    assert (n > 20 * n.median()).sum() == 1  # exactly the planted token
    assert torch.equal(p, principal_direction(acts, "global")) and torch.equal(raw, principal_direction(acts, "global", outlier_factor=None))
    assert abs(float(torch.dot(p, top_pc(X[n <= 20 * n.median()])))) > 0.999  # the top PC of the remaining tokens
    assert abs(float(torch.dot(raw, top_pc(X)))) > 0.999 and abs(float(torch.dot(raw, p))) < 0.99


# ----- transfer and random ---------------------------------------------------------------------------------
class _FakeMap:
    def __init__(self, W, scale=1.0, model_id=None):
        self.weight, self.scale, self.meta = W, torch.tensor(scale), {"model_id": model_id}


def test_transfer_and_random_directions(tiny_gpt2):
    v = torch.randn(64)
    W = torch.linalg.qr(torch.randn(64, 64))[0]
    assert torch.allclose(transfer_direction(v, W), v @ W, atol=1e-5)
    assert torch.allclose(transfer_direction(v, _FakeMap(W, 2.0)), 2 * v @ W, atol=1e-4)
    assert torch.allclose(transfer_direction(v, _FakeMap(W[:, :16])), v @ W[:, :16], atol=1e-5)

    class Custom:
        def transfer_direction(self, d):
            return -d

    assert torch.equal(transfer_direction(v, Custom()), -v)
    with pytest.raises(ConfigError, match="direction has width 32, but the map expects d_in=64"):
        transfer_direction(torch.randn(32), W)
    with pytest.raises(ArtifactError, match="the map was fitted on model 'gpt2-xl', but the direction is for 'tiny-gpt2'"):
        transfer_direction(v, _FakeMap(W, model_id="gpt2-xl"), model=tiny_gpt2)
    transfer_direction(v, _FakeMap(W, model_id="tiny-gpt2"), model=tiny_gpt2)
    with pytest.raises(ConfigError, match="cannot transfer through a str"):
        transfer_direction(v, "W")
    with pytest.raises(ConfigError, match="direction has zero norm"):
        transfer_direction(torch.zeros(64), W)
    r = random_direction(v, seed=3)
    assert torch.allclose(r.norm(), v.norm()) and torch.equal(r, random_direction(v, seed=3))
    assert not torch.allclose(r, random_direction(v, seed=4))
    rows = random_direction(torch.stack([v, 2 * v]), seed=1)
    assert torch.allclose(rows.norm(dim=-1), torch.stack([v, 2 * v]).norm(dim=-1))
    assert abs(float(random_direction(64).norm()) - 1) < 1e-6


def test_transfer_through_fitted_procrustes_and_crossscalemap():
    from msma_lens.align import procrustes
    from msma_lens.align.maps import CrossScaleMap

    X = torch.randn(200, 16, dtype=torch.float64)
    R = torch.linalg.qr(torch.randn(16, 16, dtype=torch.float64))[0]
    fit = procrustes(X, 3.0 * X @ R, scale=True, bias=True)
    v = torch.randn(16)
    assert torch.allclose(transfer_direction(v, fit), (3.0 * v.double() @ R).float(), atol=1e-4)
    m = CrossScaleMap(16, 8)
    assert torch.allclose(transfer_direction(v, m), v @ m.weight.detach(), atol=1e-5)


def test_lens_transfer_direction_checks_model_and_scales(tiny_gpt2):
    from msma_lens.align.maps import MapTrainConfig
    from msma_lens.align.protocol import AlignConfig, fit_alignment

    lens = MSMA(tiny_gpt2)  # local / intermediate / global: the default pairs G->I, I->L
    g = torch.Generator().manual_seed(0)
    n_docs, T = 12, 10
    Z = torch.randn(n_docs * T, 64, generator=g)
    acts = ScaleActivations({"local": Z + 0.1 * torch.randn(Z.shape, generator=g), "intermediate": 2 * Z, "global": Z.flip(1)},
                            torch.arange(n_docs).repeat_interleave(T), torch.arange(1, T + 1).repeat(n_docs),
                            {"model_id": "tiny-gpt2", "pooling": "token", "scales": lens.scales.to_dict()})
    cfg = AlignConfig(train=MapTrainConfig(steps=2, eval_every=2, batch_size=32, residual_hidden=0), max_eval_rows=32,
                      map_metrics=("residual",), pair_metrics=("cka_debiased",))
    result = fit_alignment(acts, cfg, progress=False)
    v = torch.randn(64, generator=g)
    out = lens.transfer_direction(v, result, "global", "local")
    torch.testing.assert_close(out, (v.double() @ result.linear_map("global", "local").double()).float(), rtol=1e-4, atol=1e-4)
    assert torch.equal(out, transfer_direction(v, result, src="global", dst="local"))
    with pytest.raises(ArtifactError, match="maps were fitted with scales"):
        MSMA(tiny_gpt2, {"local": (0, 1), "intermediate": (2, 2), "global": (3, 3)}).transfer_direction(v, result, "global", "local")
    with pytest.raises(ConfigError, match="unknown scale 'top'"):
        lens.transfer_direction(v, result, "top", "local")
    with pytest.raises(ConfigError, match="needs src= and dst= scale names"):
        lens.transfer_direction(v, result)
