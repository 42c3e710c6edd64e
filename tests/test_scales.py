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
