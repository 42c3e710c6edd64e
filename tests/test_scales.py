import pytest

from msma_lens import ConfigError, Scales


def test_default_thirds_for_smollm2_depth():
    s = Scales.default(30)
    assert s.names == ("local", "intermediate", "global")
    assert s["local"] == tuple(range(0, 10)) and s["intermediate"] == tuple(range(10, 20)) and s["global"] == tuple(range(20, 30))
    assert s.max_layer == 29


def test_from_ranges_fractions_and_any_number_of_groups():
    s = Scales.from_ranges({"a": (0, 1), "b": (2, 2), "c": (3, 5), "d": (6, 7)}, n_layers=8)
    assert len(s) == 4 and s["b"] == (2,) and s.scale_of(4) == "c" and s.scale_of(9) is None
    f = Scales.from_fractions(12, (0.25, 0.75))
    assert f["local"] == (0, 1, 2) and f["intermediate"] == tuple(range(3, 9)) and f["global"] == (9, 10, 11)


def test_presets_convert_hidden_state_indices_to_blocks():
    g = Scales.preset("gpt2")
    # hidden states L 0-2, I 3-8, G 9-12 -> blocks 0-1, 2-7, 8-11 (hidden state 0 = embeddings, not a block)
    assert g["local"] == (0, 1) and g["intermediate"] == tuple(range(2, 8)) and g["global"] == (8, 9, 10, 11)
    assert Scales.preset("bert")["local"] == (0, 1, 2, 3)
    assert Scales.preset("t5")["global"] == (4, 5)
    assert Scales.preset("gpt2-msma-code")["global"] == (7, 8, 9, 10)
    assert "MSPGT" in g.source


def test_roundtrip_and_hash():
    s = Scales.from_ranges({"local": (0, 3), "global": (4, 7)})
    t = Scales.from_dict(s.to_dict())
    assert t.same_partition(s) and t.spec_hash() == s.spec_hash()
    assert Scales.from_ranges({"local": (0, 2), "global": (3, 7)}).spec_hash() != s.spec_hash()


@pytest.mark.parametrize("groups, match", [
    ({"local": range(0, 4), "global": range(3, 6)}, "'local' and 'global' overlap at layer 3"),
    ({"local": []}, "scale 'local' is empty"),
    ({"local": [0, 2, 3]}, "scale 'local' is not contiguous"),
    ({"local": [-1, 0]}, "scale 'local': negative layer"),
    ({}, "at least one group"),
    ({"bad name!": [0]}, "scale name 'bad name!'"),
])
def test_invalid_groups_name_the_group(groups, match):
    with pytest.raises(ConfigError, match=match):
        Scales(groups)


def test_out_of_range_and_wrong_depth():
    with pytest.raises(ConfigError, match=r"scale 'global' has layers \[4, 5\] outside the model's 0..3"):
        Scales({"local": range(0, 2), "global": range(2, 6)}).validate(4)
    with pytest.raises(ConfigError, match="preset 'gpt2' is for 12-layer models, but the model has 30"):
        Scales.preset("gpt2", n_layers=30)
    with pytest.raises(ConfigError, match="built for a 12-layer model, but the model has 4"):
        Scales.coerce(Scales.preset("gpt2"), 4)
    with pytest.raises(ConfigError, match="unknown scale preset 'nope'; valid:"):
        Scales.preset("nope")
    with pytest.raises(ConfigError, match="unknown scale 'nope'; scales are"):
        Scales.default(6)["nope"]
    with pytest.raises(ConfigError, match="3 names were given"):
        Scales.from_fractions(12, (0.5,), names=("a", "b", "c"))
    with pytest.raises(ConfigError, match="scale 'intermediate' is empty"):
        Scales.from_fractions(2, (0.3, 0.4))


# ----- one convention for layer specs: range/list = explicit layers, (first, last) tuple = inclusive ----------
def test_every_input_form_gives_the_same_partition():
    from msma_lens.cli import build_parser

    cli = build_parser().parse_args(["capture", "--scales", "local=0-3,intermediate=4-9,global=10-11", "--out", "x"]).scales
    want = {"local": (0, 1, 2, 3), "intermediate": (4, 5, 6, 7, 8, 9), "global": (10, 11)}
    forms = [
        Scales({"local": range(0, 4), "intermediate": range(4, 10), "global": range(10, 12)}),  # Python range: stop excluded
        Scales({"local": [0, 1, 2, 3], "intermediate": list(range(4, 10)), "global": [10, 11]}),  # explicit layer lists
        Scales({"local": (0, 3), "intermediate": (4, 9), "global": (10, 11)}),  # tuples: inclusive (first, last)
        Scales.from_ranges({"local": (0, 3), "intermediate": (4, 9), "global": (10, 11)}),
        Scales.from_ranges({"local": [0, 3], "intermediate": [4, 9], "global": [10, 11]}),
        Scales.coerce({"local": (0, 3), "intermediate": (4, 9), "global": (10, 11)}, 12),
        cli,  # the CLI's --scales: inclusive
    ]
    for s in forms:
        assert dict(s.groups) == want and s.names == ("local", "intermediate", "global")
    assert Scales.from_dict(forms[2].to_dict()).same_partition(forms[0])
    assert forms[2].to_dict()["groups"] == {"local": [0, 3], "intermediate": [4, 9], "global": [10, 11]}


def test_tuple_is_inclusive_in_the_constructor():
    s = Scales({"local": (0, 9), "global": (10, 10)})  # not layers {0, 9}: that would be non-contiguous
    assert s["local"] == tuple(range(10)) and s["global"] == (10,)
    assert Scales({"g": (2, 3)})["g"] == Scales({"g": [2, 3]})["g"] == (2, 3)  # a 2-layer group reads the same either way
    d = Scales.default(30)
    assert Scales(d.groups).same_partition(d)  # stored groups (tuples of any length) rebuild the partition
    assert Scales({"a": (0, 1, 2)})["a"] == (0, 1, 2)


@pytest.mark.parametrize("groups, match", [
    ({"local": (5, 2)}, r"scale 'local' is empty: inclusive range \(5, 2\) has last < first"),
    ({"local": [0, 9]}, r"scale 'local' is not contiguous and increasing: \[0, 9\]"),  # a list is explicit layers
    ({"local": (0.0, 3)}, "scale 'local': layers must be integers"),
    ({"local": [1.5]}, "scale 'local': layers must be integers"),
    ({"local": 3}, r"scale 'local': layers must be a range, a list of layer indices or an inclusive \(first, last\) tuple"),
    ({"local": "0-3"}, "scale 'local': layers must be a range"),
])
def test_bad_layer_specs_name_the_group(groups, match):
    with pytest.raises(ConfigError, match=match):
        Scales(groups)


def test_select_keeps_named_scales():
    s = Scales.default(12)
    g = s.select("global", "local")
    assert g.names == ("global", "local") and g["global"] == s["global"] and g.n_layers == 12
    with pytest.raises(ConfigError, match="unknown scale 'top'"):
        s.select("top")
