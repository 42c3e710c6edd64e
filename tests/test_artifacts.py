"""Artifacts on disk: scale order through cfg.json, stale temp cleanup, umask modes, strict JSON, metadata checksum."""

import json
import math
import os
import signal
import subprocess
import sys
import warnings

import pytest
import torch

from msma_lens import MSMA, ArtifactError, ConfigError, ScaleActivations, Scales
from msma_lens.align.maps import MapTrainConfig
from msma_lens.align.protocol import AlignConfig, AlignmentResult
from msma_lens.io import artifacts as art

TEXTS = [
    "The cat sat on the mat.",
    "A longer document about the weather, the rain and the sun over the hills.",
    "Prices rose again this week and investors worried.",
    "Mix the flour with water.",
    "Birds sing early in the morning.",
    "She opened the window and looked outside.",
]


def _cheap_cfg() -> AlignConfig:
    return AlignConfig(pair_metrics=("cka_debiased",), map_metrics=("residual",), max_eval_rows=16,
                       train=MapTrainConfig(steps=2, eval_every=1, batch_size=8, patience=None))


def _synthetic_acts(n_docs: int = 4, T: int = 3, d: int = 5) -> ScaleActivations:
    g = torch.Generator().manual_seed(0)
    n = n_docs * T
    scales = Scales.from_ranges({"local": (0, 0), "intermediate": (1, 2), "global": (3, 3)})
    meta = {"model_id": "synthetic", "pooling": "token", "scales": scales.to_dict()}
    acts = {s: torch.randn(n, d, generator=g) for s in scales.names}
    return ScaleActivations(acts, torch.arange(n_docs).repeat_interleave(T), torch.arange(T).repeat(n_docs), meta)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _mode(p) -> int:
    return os.stat(p).st_mode & 0o777


# ----- 1. scale order ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reloaded(tiny_gpt2, tmp_path_factory):
    lens = MSMA(tiny_gpt2)
    acts = lens.capture(TEXTS, pooling="token", progress=False)
    p = acts.save(tmp_path_factory.mktemp("order") / "acts")
    return lens, p, ScaleActivations.load(p)


def test_scale_order_survives_save_load_and_fit(reloaded, tmp_path):
    lens, p, back = reloaded
    on_disk = json.loads((p / "cfg.json").read_text())["meta"]["scales"]
    assert list(on_disk["groups"]) == sorted(lens.scales.names) != list(lens.scales.names)  # keys are sorted on disk
    assert back.scales.names == lens.scales.names == ("local", "intermediate", "global")
    assert back.scale_names == list(lens.scales.names)
    res = lens.fit(back, _cheap_cfg())
    assert set(res.maps) == {"global->intermediate", "intermediate->local"}
    q = res.save(tmp_path / "maps")
    again = AlignmentResult.load(q, model_id=lens.model_id, scales=lens.scales)
    assert set(again.maps) == set(res.maps)


def test_ablate_accepts_reloaded_activations(reloaded):
    lens, _, back = reloaded
    out = lens.ablate(back, _cheap_cfg(), seeds=(0,), variants=("baseline", "closed_form", "full"))
    assert {r["variant"] for r in out.summary} == {"baseline", "closed_form", "full", "selected"}  # selected: the kept map


def test_partition_comparison_ignores_order_but_not_layers():
    a = Scales({"local": range(0, 2), "intermediate": range(2, 4), "global": range(4, 6)})
    b = Scales({"global": range(4, 6), "local": range(0, 2), "intermediate": range(2, 4)})
    assert a.same_partition(b) and b.same_partition(a)
    assert not a.same_partition(Scales({"local": range(0, 3), "intermediate": range(3, 4), "global": range(4, 6)}))
    assert not a.same_partition(Scales({"low": range(0, 2), "intermediate": range(2, 4), "global": range(4, 6)}))
    assert Scales.from_dict(json.loads(json.dumps(b.to_dict(), sort_keys=True))).names == ("global", "local", "intermediate")
    # an old-format spec (no "order", groups key-sorted on disk) is ordered by depth
    old = {"groups": {"global": [4, 5], "intermediate": [2, 3], "local": [0, 1]}, "n_layers": 6, "source": "ranges"}
    assert Scales.from_dict(old).names == ("local", "intermediate", "global")
    with pytest.raises(ConfigError, match="'order'"):
        Scales.from_dict({**old, "order": ["local", "global"]})


def test_old_format_artifact_still_loads_with_a_warning(tiny_gpt2, tmp_path):
    lens = MSMA(tiny_gpt2)
    p = lens.capture(TEXTS, pooling="token", progress=False).save(tmp_path / "acts")
    cfg = json.loads((p / "cfg.json").read_text())
    del cfg["cfg_sha256"]
    del cfg["meta"]["scales"]["order"]
    (p / "cfg.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    with pytest.warns(UserWarning, match=r"cfg\.json: no cfg_sha256 .* cannot be verified"):
        back = ScaleActivations.load(p)
    assert back.scales.names == lens.scales.names
    back.check_matches(lens.model_id, lens.scales)


# ----- 2. stale temp dirs ------------------------------------------------------------------------------------
def test_stale_temps_of_dead_writers_are_removed_live_ones_kept(tmp_path):
    dead, me = _dead_pid(), os.getpid()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        host = art._HOST
        other_host = "0" * 8 if host != "0" * 8 else "1" * 8
        stale = [f".acts.tmp.{dead}.{host}.abc123", f".acts.old.{dead}.{host}.beef", f".acts.old.{dead}"]
        kept = [f".acts.tmp.{me}.{host}.mine", f".acts.tmp.{sleeper.pid}.{host}.live",
                f".acts.tmp.{dead}.{other_host}.remote", ".acts.tmp.k2j4h5g1", f".other.tmp.{dead}.{host}.x"]
        for n in stale + kept:
            (tmp_path / n).mkdir()
            (tmp_path / n / "tensors.safetensors").write_bytes(b"\0" * 1024)
        (tmp_path / f".notes.txt.tmp.{dead}.{host}.q1").write_text("half")
        art.save_artifact(tmp_path / "acts", "test.kind", {"x": torch.ones(3)}, {"a": 1})
        art.write_text_atomic(tmp_path / "notes.txt", "hello")
        left = {p.name for p in tmp_path.iterdir()}
        assert left == set(kept) | {"acts", "notes.txt"}
        # overwriting leaves no temp or .old dir of its own behind
        art.save_artifact(tmp_path / "acts", "test.kind", {"x": torch.zeros(3)}, {"a": 2})
        assert {p.name for p in tmp_path.iterdir()} == left
    finally:
        sleeper.kill()
        sleeper.wait()


_KILLED_WRITER = """
import sys, time
import torch
import msma_lens.io.artifacts as art
def hang(path):
    print("ready", flush=True)
    time.sleep(600)
art.sha256_file = hang  # runs after tensors.safetensors is written into the temp dir
art.save_artifact(sys.argv[1], "test.kind", {"x": torch.ones(1000)}, {})
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_save_killed_midway_is_cleaned_up_by_the_next_save(tmp_path):
    target = tmp_path / "acts"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(target)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "ready"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(f".acts.tmp.{proc.pid}.")]
    assert len(leftovers) == 1 and (leftovers[0] / "tensors.safetensors").is_file()
    assert not target.exists()
    art.save_artifact(target, "test.kind", {"x": torch.ones(2)}, {})
    assert [p.name for p in tmp_path.iterdir()] == ["acts"]


# ----- 3. umask ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("umask, fmode, dmode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700), (0o002, 0o664, 0o775)],
                         ids=["022", "077", "002"])
def test_written_files_follow_the_umask(tmp_path, umask, fmode, dmode):
    old = os.umask(umask)
    try:
        a = art.save_artifact(tmp_path / "a", "test.kind", {"x": torch.ones(2)}, {})
        modes = {"dir": _mode(a), "cfg": _mode(a / "cfg.json"), "tensors": _mode(a / "tensors.safetensors")}
        art.save_artifact(a, "test.kind", {"x": torch.ones(3)}, {})  # replacing an existing artifact
        modes_replaced = {"dir": _mode(a), "cfg": _mode(a / "cfg.json"), "tensors": _mode(a / "tensors.safetensors")}
        t = art.write_text_atomic(tmp_path / "t.txt", "x")
        j = tmp_path / "sub" / "j.json"
        art.write_json_atomic(j, {"a": 1})
        c = art.write_csv_atomic(tmp_path / "c.csv", [{"a": 1}])
        assert os.umask(umask) == umask  # the writers left the umask as it was
    finally:
        os.umask(old)
    assert modes == modes_replaced == {"dir": dmode, "cfg": fmode, "tensors": fmode}
    assert [_mode(p) for p in (t, j, c)] == [fmode] * 3
    assert _mode(tmp_path / "sub") == dmode


# ----- 4. strict JSON -------------------------------------------------------------------------------------
def _strict_loads(text: str):
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def test_json_is_strict_with_non_finite_values_as_null(tmp_path):
    nan, inf = float("nan"), float("inf")
    obj = {"a": nan, "b": [1.0, inf, {"c": -inf, "d": (nan, 2)}], "t": torch.tensor([1.0, float("nan")])}
    p = tmp_path / "x.json"
    art.write_json_atomic(p, obj)
    back = _strict_loads(p.read_text())
    assert back == {"a": None, "b": [1.0, None, {"c": None, "d": [None, 2]}], "t": [1.0, None]}
    restored = art.restore_nan(back["b"])
    assert restored[0] == 1.0 and math.isnan(restored[1]) and math.isnan(restored[2]["c"])
    a = art.save_artifact(tmp_path / "art", "test.kind", {"x": torch.ones(1)}, {"m": {"v": [nan, inf]}})
    assert _strict_loads((a / "cfg.json").read_text())["m"] == {"v": [None, None]}


def test_alignment_metrics_nan_round_trip(reloaded, tmp_path):
    lens, _, back = reloaded
    res = lens.fit(back, _cheap_cfg())
    k = "global->intermediate"
    res.metrics[k]["mi_heldout"] = float("nan")
    res.metrics[k]["before"]["residual"] = float("inf")
    p = res.save(tmp_path / "maps")
    _strict_loads((p / "cfg.json").read_text())
    again = AlignmentResult.load(p)
    assert math.isnan(again.metrics[k]["mi_heldout"]) and math.isnan(again.metrics[k]["before"]["residual"])
    assert "nan nats" in again.table()


# ----- 5. metadata checksum -------------------------------------------------------------------------------
def _edit_model(cfg):
    cfg["meta"]["model_id"] = "gpt2"


def _edit_scales(cfg):
    cfg["meta"]["scales"]["groups"]["local"] = [0, 1]
    cfg["meta"]["scales"]["groups"]["intermediate"] = [2, 2]


def _edit_names(cfg):
    cfg["scale_names"] = cfg["scale_names"][::-1]


@pytest.mark.parametrize("edit", [_edit_model, _edit_scales, _edit_names], ids=["model_id", "scales", "scale_names"])
def test_hand_edited_metadata_is_rejected(tmp_path, edit):
    p = _synthetic_acts().save(tmp_path / "acts")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ScaleActivations.load(p)  # an intact artifact loads without a warning
    cfg = json.loads((p / "cfg.json").read_text())
    edit(cfg)
    (p / "cfg.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    with pytest.raises(ArtifactError, match=r"cfg\.json: metadata checksum mismatch .* metadata was modified"):
        ScaleActivations.load(p)


def test_reformatted_but_unchanged_metadata_still_loads(tmp_path):
    p = _synthetic_acts().save(tmp_path / "acts")
    cfg = json.loads((p / "cfg.json").read_text())
    (p / "cfg.json").write_text(json.dumps(dict(reversed(list(cfg.items())))))  # other key order, no indentation
    assert ScaleActivations.load(p).scale_names == ["local", "intermediate", "global"]
